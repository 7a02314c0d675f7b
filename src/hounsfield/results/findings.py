"""Each finding measured from the image once, for every object that reports it.

Findings are duck-typed: any object with ``x_mm, y_mm, z_mm`` (patient LPS mm), ``diameter_mm``
and ``probability`` (0..1). Each is segmented from the volume (:func:`hounsfield.imaging.segment.
grow_region`), measured, numbered "Nodule 1", "Nodule 2", ... by decreasing probability, and
given a tracking UID derived from the input, the model and its centre — the UID by which later
reviews (radiologist verdicts) attach to the finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from hounsfield.errors import InvalidInput
from hounsfield.imaging.segment import Measurements, Region, grow_region, measure
from hounsfield.imaging.volume import Volume
from hounsfield.results.equipment import AIModel
from hounsfield.results.uids import derive_uid


@dataclass
class MeasuredFinding:
    """One finding with its segmentation and measurements.

    ``number`` (1-based) is also its SEG segment number; ``label`` "Nodule n" its tracking
    identifier; ``tracking_uid`` its Tracking UID in the SEG and the SR; ``centre`` the
    detection point (LPS mm); ``region``/``measurements`` from the image; ``slice_k`` the
    volume slice its key image and planar ROI are drawn on.
    """

    number: int
    label: str
    tracking_uid: str
    centre: np.ndarray
    diameter_mm: float
    probability: float
    region: Region
    measurements: Measurements
    slice_k: int
    source: Any = None

    @property
    def boundary_found(self) -> bool:
        return self.region.ok

    @property
    def segmentation_note(self) -> str:
        """The segment description: how the outline was found, or that it was not."""
        return self.region.reason


def _number(obj: Any, name: str) -> float:
    try:
        v = float(getattr(obj, name))
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"finding {obj!r} has no numeric {name}") from exc
    if not math.isfinite(v):
        raise InvalidInput(f"finding {obj!r}: {name} is not finite ({v})")
    return v


def measure_findings(volume: Volume, findings: list[Any], model: AIModel, *,
                     input_key: str) -> list[MeasuredFinding]:
    """Segment and measure ``findings`` on ``volume``; highest probability first."""
    rows = []
    for f in findings:
        c = np.array([_number(f, "x_mm"), _number(f, "y_mm"), _number(f, "z_mm")])
        d, p = _number(f, "diameter_mm"), _number(f, "probability")
        if d <= 0:
            raise InvalidInput(f"finding at {c.round(1).tolist()} mm: diameter {d} is not positive")
        if not 0.0 <= p <= 1.0:
            raise InvalidInput(f"finding at {c.round(1).tolist()} mm: probability {p} is not in 0..1")
        rows.append((c, d, p, f))
    rows.sort(key=lambda r: (-r[2], tuple(r[0])))
    out = []
    for n, (c, d, p, f) in enumerate(rows, start=1):
        region = grow_region(volume, tuple(c), d)
        m = measure(volume, region)
        tracking = derive_uid(input_key, model.key, "tracking", f"{c[0]:.2f}", f"{c[1]:.2f}",
                              f"{c[2]:.2f}", f"{d:.2f}")
        out.append(MeasuredFinding(n, f"Nodule {n}", tracking, c, d, p, region, m,
                                   _key_slice(volume, region, m), f))
    return out


def _key_slice(volume: Volume, region: Region, m: Measurements) -> int:
    """The slice through the region's centroid; where the mask misses it, its largest slice."""
    ijk = np.linalg.solve(volume.affine[:3, :3], m.centroid - volume.affine[:3, 3])
    k = int(np.clip(round(float(ijk[2])), 0, volume.shape[0] - 1))
    k0 = region.box[0].start
    per_slice = region.mask.reshape(region.mask.shape[0], -1).sum(1)
    if 0 <= k - k0 < len(per_slice) and per_slice[k - k0] > 0:
        return k
    return k0 + int(np.argmax(per_slice))
