"""The two-stage nodule detector's ``gpu`` preset at full resolution, self-contained for a GPU box.

Runs where MONAI, SimpleITK, the archive and MLflow are absent (torch, numpy, scipy, PyYAML,
pydantic and pydicom suffice): synthetic chest CTs from ``hounsfield.synth.ct.generate_ct``
(training sites hanse / jingdong / lingnan, held-out site sakura), resampled to the preset's
spacing with their lung masks (CPU worker pool), stage-1 candidates on the GPU
(``hounsfield.models.candidates_torch``), then the
stage-2 ``PatchClassifier`` trained on the GPU (bf16 autocast, patches cut on the GPU) for a
fixed time, and LUNA16 FROC / CPM (``hounsfield.evaluate.froc``) on the held-out site.
Prints the time of each phase and the result as one JSON line.

    python scripts/gpu_nodule_run.py [--train-patients 6] [--test-patients 10] [--minutes 2.5]

Same recipe file as ``hounsfield train`` (``presets.gpu``); the archive-based command is the
product path, this script is the measurement on a machine that cannot run the archive.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
# import hounsfield.synth.ct without the package __init__ (which pulls SEG / NIfTI writers)
_pkg = types.ModuleType("hounsfield.synth")
_pkg.__path__ = [str(ROOT / "src" / "hounsfield" / "synth")]
sys.modules.setdefault("hounsfield.synth", _pkg)

import yaml  # noqa: E402

from hounsfield.models.candidates import CandidateSpec, find_candidates, refine_centres  # noqa: E402
from hounsfield.models.detector import NetworkSpec  # noqa: E402


def recipe(preset: str | None) -> dict:
    data = yaml.safe_load((ROOT / "src/hounsfield/train/recipes/lung-nodule-detection.yaml").read_text())
    presets = data.pop("presets")

    def merge(a: dict, b: dict) -> dict:
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    return merge(data, presets[preset]) if preset and preset != "cpu" else data


def make_case(job: tuple[str, int, int, dict]) -> dict:
    """One synthetic CT -> resampled [0, 1] volume, nodules in its voxels, its lung mask (CPU
    worker); the blob candidates follow in the main process, on the GPU."""
    from scipy import ndimage

    from hounsfield.models.candidates import lung_mask
    from hounsfield.synth.ct import generate_ct

    site, seed, matrix, r = job
    t0 = time.perf_counter()
    ct = generate_ct(site, seed, matrix=matrix)
    hu = ct.hu()
    g = ct.grid
    sp_xyz = tuple(float(v) for v in r["plan"]["spacing_mm"])
    src_zyx = np.array(g.spacing[::-1])
    dst_zyx = np.array(sp_xyz[::-1])
    shape = tuple(int(v) for v in np.floor((np.array(hu.shape) - 1) * src_zyx / dst_zyx) + 1)
    lo, hi = float(r["plan"]["hu_min"]), float(r["plan"]["hu_max"])
    arr = ndimage.affine_transform(np.clip(hu, lo, hi), dst_zyx / src_zyx, output_shape=shape,
                                   order=1, mode="nearest")
    arr = ((arr - lo) / (hi - lo)).astype(np.float32)
    t1 = time.perf_counter()
    origin = np.array(g.origin)
    cz = np.array([[(n.coordZ - origin[2]) / sp_xyz[2], (n.coordY - origin[1]) / sp_xyz[1],
                    (n.coordX - origin[0]) / sp_xyz[0]] for n in ct.truth]).reshape(-1, 3)
    spec = CandidateSpec.model_validate(r["candidates"])
    mask = lung_mask(arr, sp_xyz, spec, lo, hi)
    return {"site": site, "seed": seed, "array": arr, "mask": mask, "spacing_zyx": dst_zyx,
            "nodules": cz, "diam": np.array([n.diameter_mm for n in ct.truth]),
            "types": [n.nodule_type for n in ct.truth], "synth_s": t1 - t0,
            "mask_s": time.perf_counter() - t1}


def add_candidates(c: dict, r: dict, device: str | None) -> None:
    """Stage-1 candidates of one case (torch on ``device``, scipy when None)."""
    t0 = time.perf_counter()
    sp_xyz = tuple(float(v) for v in r["plan"]["spacing_mm"])
    spec = CandidateSpec.model_validate(r["candidates"])
    cands = refine_centres(c["array"], find_candidates(
        c["array"], sp_xyz, spec, hu_min=float(r["plan"]["hu_min"]),
        hu_max=float(r["plan"]["hu_max"]), device=device, mask=c.pop("mask")))
    c["cands"], c["cdiam"] = cands.zyx, cands.diameter_mm
    c["cand_s"] = time.perf_counter() - t0


def patches(vol, centres, patch):
    """Patches (n, 1, *patch) cut on the volume's device; zero outside the volume."""
    import torch

    p = torch.tensor(patch, device=vol.device)
    c = torch.round(centres).long() - p // 2
    grids = torch.meshgrid(*(torch.arange(int(s), device=vol.device) for s in patch), indexing="ij")
    idx = [c[:, k, None, None, None] + grids[k][None] for k in range(3)]
    ok = torch.ones_like(idx[0], dtype=torch.bool)
    for k in range(3):
        ok &= (idx[k] >= 0) & (idx[k] < vol.shape[k])
        idx[k] = idx[k].clamp(0, vol.shape[k] - 1)
    return (vol[idx[0], idx[1], idx[2]] * ok)[:, None]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-patients", type=int, default=6, help="per training site")
    ap.add_argument("--test-patients", type=int, default=10, help="held-out site sakura")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--minutes", type=float, default=2.5, help="classifier training time")
    ap.add_argument("--preset", default="gpu", help="recipe preset (cpu = the top level)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--budget-s", type=float, default=0,
                    help="whole run's time limit: training stops early to leave 60 s for evaluation")
    ap.add_argument("--candidate-device", default="auto",
                    help="torch device of the blob filter (auto: the GPU, else scipy)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    import torch

    from hounsfield.evaluate.froc import (Detection, Nodule, cpm, curve_of, match,
                                          operating_threshold, sensitivity_at)
    from hounsfield.models.detector import build_network
    from hounsfield.models.two_stage import merge_detections

    r = recipe(args.preset)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {torch.cuda.get_device_name(0) if dev.type == 'cuda' else 'cpu'}, torch "
          f"{torch.__version__}, plan {r['plan']['spacing_mm']} mm, patch {r['patch']}", flush=True)
    jobs = [(s, args.seed + 1000 * k + i, args.matrix, r)
            for k, s in enumerate(("hanse", "jingdong", "lingnan")) for i in range(args.train_patients)]
    jobs += [("sakura", args.seed + 9000 + i, args.matrix, r) for i in range(args.test_patients)]
    t0 = time.perf_counter()
    os.environ["OMP_NUM_THREADS"] = "1"
    cand_dev = (("cuda" if dev.type == "cuda" else None) if args.candidate_device == "auto"
                else args.candidate_device)
    cases = []
    with ProcessPoolExecutor(args.workers) as pool:
        for c in pool.map(make_case, jobs):  # candidates on the GPU while workers go on
            add_candidates(c, r, cand_dev)
            cases.append(c)
            print(f"  {len(cases)}/{len(jobs)} {c['site']} {c['seed']}: {len(c['cands'])} candidates, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    t_data = time.perf_counter() - t0
    train = [c for c in cases if c["site"] != "sakura"]
    test = [c for c in cases if c["site"] == "sakura"]
    print(f"data: {len(cases)} CTs in {t_data:.0f} s (per CT: synth+resample "
          f"{np.mean([c['synth_s'] for c in cases]):.0f} s and lung mask "
          f"{np.mean([c['mask_s'] for c in cases]):.0f} s on one core, candidates "
          f"{np.mean([c['cand_s'] for c in cases]):.1f} s on {cand_dev or 'one core'}; "
          f"{np.mean([len(c['cands']) for c in cases]):.0f} candidates per CT); shape "
          f"{cases[0]['array'].shape}", flush=True)

    patch = tuple(int(v) for v in r["patch"])
    vols = [torch.from_numpy(c["array"]).to(dev) for c in cases]
    pos, neg = [], []
    for vi, c in enumerate(cases[:len(train)]):
        sp = c["spacing_zyx"]
        for z, d in zip(c["nodules"], c["diam"]):
            pos.append((vi, z, d))
        if len(c["nodules"]):
            dist = np.linalg.norm((c["cands"][:, None] - c["nodules"][None]) * sp, axis=2)
            far = ~(dist <= 1.5 * c["diam"][None] / 2).any(axis=1)
        else:
            far = np.ones(len(c["cands"]), bool)
        neg += [(vi, z) for z in c["cands"][far]]
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = build_network(NetworkSpec.model_validate(r["network"])).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=float(r["optimizer"]["lr"]),
                            weight_decay=float(r["optimizer"]["weight_decay"]))
    bs = int(r["batch_size"])
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    t0 = time.perf_counter()
    steps, losses = 0, []
    train_s = args.minutes * 60
    if args.budget_s:
        train_s = min(train_s, args.budget_s - 60 - (t0 - t_start))
    while time.perf_counter() - t0 < train_s:
        batch, labels = [], []
        for _ in range(bs):
            if rng.random() < float(r["positive_fraction"]):
                vi, z, d = pos[rng.integers(len(pos))]
                sp = cases[vi]["spacing_zyx"]
                z = z + rng.uniform(-1, 1, 3) * np.minimum(d / 3 / sp, 2.0)
                labels.append(1.0)
            else:
                vi, z = neg[rng.integers(len(neg))]
                z = z + rng.integers(-1, 2, 3)
                labels.append(0.0)
            x = patches(vols[vi], torch.tensor(z[None], device=dev, dtype=torch.float32), patch)[0]
            for ax in range(1, 4):
                if rng.random() < 0.5:
                    x = x.flip(ax)
            if patch[1] == patch[2]:
                x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
            a = r.get("augment", {})  # the recipe's intensity scaling and noise
            x = x * float(1 + rng.uniform(-1, 1) * float(a.get("intensity", 0)))
            if float(a.get("noise", 0)):
                x = x + torch.randn_like(x) * float(a["noise"])
            batch.append(x)
        xb = torch.stack(batch)
        yb = torch.tensor(labels, device=dev)
        with amp:
            logit = net(xb).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None):
            torch.nn.utils.clip_grad_norm_(net.parameters(), float(r.get("gradient_clip", 12.0)))
            opt.step()
        steps += 1
        losses.append(float(loss.detach()))
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_train = time.perf_counter() - t0
    print(f"training: {steps} steps of {bs} in {t_train:.0f} s; loss first/last 50: "
          f"{np.mean(losses[:50]):.3f} / {np.mean(losses[-50:]):.3f}", flush=True)

    net.eval()
    t0 = time.perf_counter()
    scans, nods, dets = [], [], []
    for vi, c in enumerate(cases):
        if c["site"] != "sakura":
            continue
        sid = f"sakura-{c['seed']}"
        scans.append(sid)
        sp = c["spacing_zyx"]
        for z, d, t in zip(c["nodules"], c["diam"], c["types"]):
            nods.append(Nodule(sid, *(z[::-1] * sp[::-1]), float(d), "sakura", t))
        probs = []
        with torch.inference_mode(), amp:
            for i in range(0, len(c["cands"]), 512):
                cz = torch.tensor(c["cands"][i:i + 512], device=dev, dtype=torch.float32)
                probs.append(torch.sigmoid(net(patches(vols[vi], cz, patch)).float()).cpu().numpy())
        p = np.concatenate(probs) if probs else np.zeros(0)
        keep = merge_detections(c["cands"], c["cdiam"], p, sp)[:int(r["inference"]["top_k"])]
        for k in keep:
            x, y, z = c["cands"][k][::-1] * sp[::-1]
            dets.append(Detection(sid, float(x), float(y), float(z), float(p[k]), float(c["cdiam"][k])))
    t_eval = time.perf_counter() - t0
    m = match(scans, nods, dets)
    fps, sens, _ = curve_of(m)
    found = np.concatenate([np.zeros(0, bool)] + [
        (np.linalg.norm((c["cands"][:, None] - c["nodules"][None]) * c["spacing_zyx"], axis=2)
         <= c["diam"][None] / 2).any(axis=0) for c in test if len(c["nodules"])])
    recall = float(found.mean()) if len(found) else float("nan")
    diam = np.array([n.diameter_mm for n in nods])
    thr = operating_threshold(m, 1.0)
    hit1 = m.nodule_hit & (m.nodule_scores >= thr)
    small = diam < 6
    out = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
           "preset": args.preset, "spacing_mm": r["plan"]["spacing_mm"],
           "train_ct": len(train), "test_ct": len(test), "test_nodules": len(nods),
           "data_s": round(t_data), "train_s": round(t_train), "steps": steps,
           "eval_s": round(t_eval, 1), "candidate_recall_test": round(recall, 3),
           "cpm": round(float(cpm(fps, sens)), 3),
           "sens_at_1fp": round(float(sensitivity_at(fps, sens, [1.0])[0]), 3),
           "found_at_1fp_lt6mm": f"{int(hit1[small].sum())}/{int(small.sum())}",
           "found_at_1fp_ge6mm": f"{int(hit1[~small].sum())}/{int((~small).sum())}",
           "candidate_recall_lt6mm": f"{int(found[small].sum())}/{int(small.sum())}"}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
