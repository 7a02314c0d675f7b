"""Stage-1 candidate recall of the two-stage nodule detector on a dataset's cached volumes.

A nodule is found when a candidate's (refined) centre lies within its radius (the LUNA16 hit
rule) — also reported within max(radius, 2 mm).  Prints recall per split, per size bin and per
nodule type, candidates per CT and seconds per CT.  The candidate settings are the recipe's
(``--preset``) with ``--set key=json`` overrides of its ``candidates`` section.

    PYTHONPATH=src python -m benchmarks.nodule_candidate_recall --data-dir var/full \
        --dataset lung --split train --split heldout-test --limit 20 \
        --set 'per_scale=[1500,1200,800,300,150,100,60]'
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

BINS = [(0, 5), (5, 8), (8, 15), (15, 100)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dataset", default="lung")
    ap.add_argument("--split", action="append", default=None)
    ap.add_argument("--limit", type=int, default=0, help="CTs per split (0 = all)")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--set", action="append", default=[], help="candidates.KEY=JSON")
    ap.add_argument("--misses", action="store_true", help="list the missed nodules")
    ap.add_argument("--budget", action="append", default=[],
                    help="JSON per-scale counts: also report the recall of the first N "
                    "candidates of each scale (a smaller budget, from the same candidates)")
    a = ap.parse_args(argv)

    from hounsfield.archive import Archive
    from hounsfield.config import load_settings
    from hounsfield.datasets.manifest import open_dataset
    from hounsfield.models.two_stage import cached_candidates, spec_key
    from hounsfield.train.data import prepare_split
    from hounsfield.train.recipe import load_recipe

    over = {}
    for kv in a.set:
        k, _, v = kv.partition("=")
        over[k] = json.loads(v)
    recipe = load_recipe("lung-nodule-detection", preset=a.preset)
    spec = type(recipe.candidates).model_validate({**recipe.candidates.model_dump(), **over})
    settings = load_settings(data_dir=a.data_dir)
    archive = Archive.open(settings)
    ds = open_dataset(settings, a.dataset)
    cache = Path(settings.data_dir) / "cache" / "preprocessed"
    print(f"spec {spec_key(spec)}: {spec.model_dump_json()}")
    tot = defaultdict(lambda: [0, 0, 0])  # key -> [found r, found max(r,2), n]
    n_ct = n_cand = 0
    budgets = [json.loads(b) for b in a.budget]
    bud_hits = [[0, 0, 0] for _ in budgets]  # hits, nodules, candidates
    secs = []
    for split in a.split or ["train", "validation"]:
        rows = ds.series(split)[: a.limit or None]
        uids = [r["series_instance_uid"] for r in rows]
        types = defaultdict(list)
        for n in ds.nodules(uids):
            types[n.scan].append(n.nodule_type)
        vols = prepare_split(archive, ds, split, recipe.plan, cache, limit=a.limit)
        for uid, pv in zip(uids, vols):
            f = cache / f"cand-{spec_key(spec)}" / f"{pv.cache_key}.npz"
            t0 = time.perf_counter()
            fresh = not f.is_file()
            c = cached_candidates(pv.volume.array, pv.volume.spacing, spec,
                                  hu_min=recipe.plan.hu_min, hu_max=recipe.plan.hu_max,
                                  cache_file=f)
            if fresh:
                secs.append(time.perf_counter() - t0)
            n_ct += 1
            n_cand += len(c)
            sp = np.asarray(pv.volume.spacing[::-1])
            for b, acc in zip(budgets, bud_hits):
                keep = _first_per_scale(c.diameter_mm, spec.diameters_mm, b)
                acc[2] += int(keep.sum())
                for ctr, d in zip(pv.centres_zyx, pv.diameters_mm):
                    acc[1] += 1
                    if keep.any():
                        acc[0] += bool(np.linalg.norm((c.zyx[keep] - ctr) * sp, axis=1).min() <= d / 2)
            for j, (ctr, d) in enumerate(zip(pv.centres_zyx, pv.diameters_mm)):
                dist = (np.linalg.norm((c.zyx - ctr) * sp, axis=1).min() if len(c) else 1e9)
                hit, near = dist <= d / 2, dist <= max(d / 2, 2.0)
                t = types[uid][j] if j < len(types[uid]) else "?"
                b = next(f"{lo}-{hi}mm" for lo, hi in BINS if lo <= d < hi)
                for key in ("all", f"split {split}", f"size {b}", f"type {t}"):
                    tot[key][0] += hit
                    tot[key][1] += near
                    tot[key][2] += 1
                if a.misses and not hit:
                    print(f"  miss {split} {uid[-8:]} d={d:.1f}mm {t} nearest {dist:.1f}mm")
    print(f"{n_ct} CTs, {n_cand / max(n_ct, 1):.0f} candidates/CT"
          + (f", {np.mean(secs):.1f} s/CT computed" if secs else " (all cached)"))
    for k in sorted(tot, key=lambda s: (s != "all", s)):
        h, nr, n = tot[k]
        print(f"{k:24s} {h:4d}/{n:<4d} {h / n:6.1%}   within max(r,2mm): {nr / n:6.1%}")
    for b, (h, n, k) in zip(budgets, bud_hits):
        print(f"budget {b}: recall {h}/{n} {h / max(n, 1):.1%}, {k / max(n_ct, 1):.0f} candidates/CT")
    return 0


def _first_per_scale(diam: np.ndarray, scales, budget) -> np.ndarray:
    """Mask of the first ``budget[k]`` candidates of scale ``k`` (they are stored strongest
    first within each scale)."""
    keep = np.zeros(len(diam), bool)
    for d, n in zip(scales, budget):
        idx = np.nonzero(diam == d)[0][:n]
        keep[idx] = True
    return keep


if __name__ == "__main__":
    raise SystemExit(main())
