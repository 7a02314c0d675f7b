"""Dataset fingerprint per site and scanner (the first stage of an nnU-Net-style pipeline).

For every CT/MR series in the archive (optionally one site / modality) the largest stack is
loaded and summarised; series are grouped by (site, manufacturer, model).  Each group records
the spacing and slice-thickness distribution, volume shapes, modalities, reconstruction kernels,
and intensity statistics of the body (CT: voxels above -500 HU; MR: above 10 % of the 99th
percentile), from a fixed-size random sample of voxels per series (seeded: reproducible).
A pooled entry per modality feeds :class:`~hounsfield.imaging.plan.PreprocessingPlan`.
The result is plain JSON, readable and diffable between hospitals.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import select

from hounsfield.errors import HounsfieldError
from hounsfield.imaging.series import load_series
from hounsfield.imaging.volume import Volume

PERCENTILES = (0.5, 1, 5, 25, 50, 75, 95, 99, 99.5)
VERSION = 1


def body_voxels(vol: Volume, modality: str) -> np.ndarray:
    a = vol.array
    if modality == "CT":
        return a[a > -500]
    p99 = float(np.percentile(a, 99)) if a.size else 0.0
    return a[a > 0.1 * p99] if p99 > 0 else a.ravel()


def intensity_stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    v = values.astype(np.float64)
    out = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
           "max": float(v.max()), "n": int(v.size)}
    for p, q in zip(PERCENTILES, np.percentile(v, PERCENTILES), strict=True):
        out[f"p{p:g}"] = float(q)
    return out


def _dist(values: list) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    axis = 0 if a.ndim > 1 else None
    r = lambda x: np.round(x, 4).tolist()  # noqa: E731
    return {"median": r(np.median(a, axis=axis)), "min": r(a.min(axis=axis)),
            "max": r(a.max(axis=axis)), "p10": r(np.percentile(a, 10, axis=axis)),
            "p90": r(np.percentile(a, 90, axis=axis))}


def fingerprint(archive, *, site: str | None = None, modality: str | None = None,  # noqa: ANN001
                samples_per_series: int = 10_000, seed: int = 0,
                on_item: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The fingerprint of the archive's CT/MR series (see the module docstring)."""
    from hounsfield.archive.models import Series

    stmt = select(Series.series_instance_uid, Series.site, Series.modality, Series.manufacturer,
                  Series.manufacturer_model_name).where(Series.modality.in_(("CT", "MR")))
    if site:
        stmt = stmt.where(Series.site == site)
    if modality:
        stmt = stmt.where(Series.modality == modality.upper())
    with archive.session() as s:
        rows = s.execute(stmt.order_by(Series.id)).all()
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str, str], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    pooled: dict[str, list[np.ndarray]] = defaultdict(list)
    pooled_spacing: dict[str, list] = defaultdict(list)
    skipped = []
    for uid, st_site, mod, manu, model in rows:
        try:
            vol = load_series(archive, uid)
        except HounsfieldError as exc:
            skipped.append({"series": uid, "reason": exc.reason})
            continue
        finally:
            if on_item:
                on_item(uid)
        g = groups[(st_site or "", manu or "", model or "")]
        body = body_voxels(vol, mod)
        sample = body if body.size <= samples_per_series else rng.choice(body, samples_per_series,
                                                                         replace=False)
        g["spacing"].append(list(vol.spacing))
        g["shape"].append(list(vol.shape[::-1]))
        if vol.meta.get("slice_thickness"):
            g["thickness"].append(float(vol.meta["slice_thickness"]))
        g["modality"].append(mod)
        g["kernel"].append(vol.meta.get("kernel") or "")
        g["sample"].append(sample)
        pooled[mod].append(sample)
        pooled_spacing[mod].append(list(vol.spacing))
    out_groups = []
    for (st_site, manu, model), g in sorted(groups.items()):
        out_groups.append({
            "site": st_site, "manufacturer": manu, "model": model,
            "n_series": len(g["spacing"]),
            "modalities": dict(Counter(g["modality"])),
            "kernels": dict(Counter(k for k in g["kernel"] if k)),
            "spacing_mm": _dist(g["spacing"]),
            "slice_thickness_mm": _dist(g["thickness"]),
            "shape_ijk": _dist(g["shape"]),
            "intensity_body": intensity_stats(np.concatenate(g["sample"])),
        })
    return {
        "version": VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "filters": {"site": site, "modality": modality},
        "groups": out_groups,
        "pooled": {m: {"n_series": len(pooled_spacing[m]), "spacing_mm": _dist(pooled_spacing[m]),
                       "intensity_body": intensity_stats(np.concatenate(v))}
                   for m, v in sorted(pooled.items())},
        "skipped": skipped,
    }
