"""Benchmark: nodule inference on a 512x512x300 CT — ours vs MONAI's sliding_window_inference.

Part 1, the sliding window: the same dense network (the recipe's ``heatmap`` preset, random
weights unless --bundle), same preprocessed volume, same window size / overlap / batch, same
precision, in the same run.  Prints a table with seconds and the ratio MONAI / ours (>= 1 means
ours is no slower), and checks that both produce the same output.

Part 2, the shipped two-stage detector (CPU recipe, random weights unless --two-stage-bundle)
end to end on the same CT: preprocessing, stage-1 candidates, stage-2 patch classifier.

    python -m benchmarks.bench_nodule_inference [--precision bf16] [--repeat 1]

The CT is a chest-shaped phantom (air around an elliptic body, two lungs, noise), so the share
of air windows is realistic; hounsfield.synth's full phantom gives similar numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch


def chest_phantom(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Air (-1000 HU) around an elliptic soft-tissue body with two lungs (-850 HU) and noise."""
    rng = np.random.default_rng(0)
    z, y, x = shape
    yy, xx = np.mgrid[0:y, 0:x].astype(np.float32)
    cy, cx = y / 2, x / 2
    fov_x, fov_y = x * spacing[0], y * spacing[1]
    body = ((xx - cx) * spacing[0] / (0.42 * fov_x)) ** 2 + ((yy - cy) * spacing[1] / (0.32 * fov_y)) ** 2 <= 1
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lungs |= (((xx - cx - side * 0.17 * x) / (0.13 * x)) ** 2 + ((yy - cy) / (0.2 * y)) ** 2) <= 1
    sl = np.where(body, np.where(lungs, -850.0, 40.0), -1000.0).astype(np.float32)
    vol = np.repeat(sl[None], z, axis=0)
    noise = rng.normal(0, 25, (z, y, x)).astype(np.float32)
    return np.where(vol > -1000, vol + noise, vol)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="300,512,512", help="z,y,x of the CT")
    ap.add_argument("--spacing", default="0.7,0.7,1.25", help="x,y,z mm of the CT")
    ap.add_argument("--precision", default="both", choices=["fp32", "bf16", "both"])
    ap.add_argument("--preset", default="heatmap", help="recipe preset of the dense network")
    ap.add_argument("--two-stage-bundle", default=None, help="a trained two-stage bundle")
    ap.add_argument("--bundle", default=None, help="use a trained bundle's network")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    from monai.inferers import sliding_window_inference

    from hounsfield.infer import autocast, sliding_window
    from hounsfield.models.bundle import load_network
    from hounsfield.models.detector import build_network, decode
    from hounsfield.models.volume import Volume
    from hounsfield.train.recipe import load_recipe

    recipe = load_recipe("lung-nodule-detection", preset=args.preset)
    torch.manual_seed(0)
    net = load_network(args.bundle)[0] if args.bundle else build_network(recipe.network)
    net.eval()
    shape = tuple(int(v) for v in args.shape.split(","))
    spacing = tuple(float(v) for v in args.spacing.split(","))
    ct = Volume(chest_phantom(shape, spacing), spacing, (0.0, 0.0, 0.0), np.eye(3), series_instance_uid="bench")
    t0 = time.perf_counter()
    prep = recipe.plan.apply(ct)
    t_prep = time.perf_counter() - t0
    img = torch.from_numpy(prep.array)[None]
    inf = recipe.inference
    from benchmarks.common import machine

    print(machine(), f"load average {open('/proc/loadavg').read().split()[:3]}")
    print(f"CT {shape} at {spacing} mm -> network input {tuple(prep.array.shape)} at "
          f"{tuple(round(s, 3) for s in prep.spacing)} mm; preprocessing {t_prep:.1f} s")
    print(f"network {recipe.network.name} {recipe.network.features} "
          f"({sum(p.numel() for p in net.parameters()) / 1e6:.2f} M params), roi {inf.roi}, "
          f"overlap {inf.overlap}, batch {inf.batch_size}, threads {torch.get_num_threads()}")
    precs = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    rows = []
    for prec in precs:
        ours, theirs = [], []
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            out = sliding_window(net, img, inf.roi, overlap=inf.overlap,
                                 batch_size=inf.batch_size, precision=prec)
            dets = decode(out, threshold=inf.threshold, top_k=inf.top_k)
            ours.append(time.perf_counter() - t0)
            ours_cpu = time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            ctx = autocast(prec, torch.device("cpu")) if prec != "fp32" else contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                ref = sliding_window_inference(img[None], inf.roi, inf.batch_size, net,
                                               overlap=inf.overlap, mode="constant")
            ref = ref[0].float()
            decode(ref, threshold=inf.threshold, top_k=inf.top_k)
            theirs.append(time.perf_counter() - t0)
            theirs_cpu = time.process_time() - c0
        diff = float((out - ref).abs().max())
        a, b = min(ours), min(theirs)
        rows.append((prec, a, b, b / a, diff, ours_cpu, theirs_cpu))
    print(f"{'precision':>9} {'ours s':>8} {'MONAI s':>8} {'MONAI/ours':>10} {'max |diff|':>10}"
          f" {'ours CPU s':>10} {'MONAI CPU s':>11} {'total incl. prep s':>18}")
    for prec, a, b, r, d, oc, tc in rows:
        print(f"{prec:>9} {a:8.1f} {b:8.1f} {r:10.2f} {d:10.2e} {oc:10.1f} {tc:11.1f}"
              f" {a + t_prep:18.1f}")
    two_stage(ct, precs, args.two_stage_bundle)


def two_stage(ct, precs, bundle) -> None:
    """The shipped two-stage detector end to end on the CT (plan, candidates, classifier)."""
    from hounsfield.infer import TwoStageRunner, load_runner
    from hounsfield.models.detector import build_network
    from hounsfield.train.recipe import load_recipe

    if bundle:
        runner = load_runner(bundle)
    else:
        r = load_recipe("lung-nodule-detection")
        torch.manual_seed(0)
        runner = TwoStageRunner(build_network(r.network).eval(), r.plan, r.candidates, r.patch,
                                threshold=0.0, top_k=r.inference.top_k,
                                batch_size=r.inference.batch_size)
    print(f"two-stage detector: network {runner.net.__class__.__name__} "
          f"({sum(p.numel() for p in runner.net.parameters()) / 1e6:.2f} M params), "
          f"patch {runner.patch}, up to "
          f"{sum(runner.candidates.per_scale or ()) or runner.candidates.max_candidates} candidates")
    print(f"{'precision':>9} {'prep s':>7} {'cand. s':>7} {'classif. s':>10} {'#cand':>6} {'total s':>8}")
    for prec in precs:
        t0 = time.perf_counter()
        res = runner.run_volume(ct, precision=prec)
        tot = time.perf_counter() - t0
        p = res.provenance
        # the template's infer stage (network_s) is stage 1 (candidates_s) + the classifier
        print(f"{prec:>9} {p['preprocess_s']:7.1f} {p['candidates_s']:7.1f} "
              f"{p['network_s'] - p['candidates_s'] + p['postprocess_s']:10.1f}"
              f" {p['candidates']:6d} {tot:8.1f}")


if __name__ == "__main__":
    main()
