"""What inference hands back: findings in patient mm and the result with its provenance."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hounsfield.models.volume import Volume, to_patient


@dataclass(frozen=True)
class Finding:
    """One nodule candidate: centre in patient mm (x, y, z; DICOM LPS), diameter, probability."""

    x_mm: float
    y_mm: float
    z_mm: float
    diameter_mm: float
    probability: float


@dataclass
class InferenceResult:
    """The findings of one series, and how they were made (``provenance``: model name and
    version, series, plan, precision, device, per-stage seconds, runner settings)."""

    series_instance_uid: str
    findings: list[Finding]
    provenance: dict[str, Any] = field(default_factory=dict)
    #: two-stage detectors, when asked (evaluation): every stage-1 candidate's centre in patient
    #: mm (N x 3), so a report can tell nodules stage 1 missed from those stage 2 ranked low
    candidates_mm: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"series_instance_uid": self.series_instance_uid,
                "findings": [asdict(f) for f in self.findings], "provenance": self.provenance}


def findings_at(vol: Volume, zyx, diameters_mm, probabilities) -> list[Finding]:  # noqa: ANN001
    """Findings at voxel centres ``zyx`` (n x 3, z, y, x; fractional) of ``vol``, in patient mm."""
    zyx = np.asarray(zyx, dtype=np.float64).reshape(-1, 3)
    if not len(zyx):
        return []
    mm = to_patient(vol, zyx)
    return [Finding(float(p[0]), float(p[1]), float(p[2]), float(d), float(s))
            for p, d, s in zip(mm, diameters_mm, probabilities)]
