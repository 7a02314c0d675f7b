"""LUNA16 lesion matching, the FROC curve and the competition performance metric (CPM).

Definitions (Setio et al., "Validation, comparison, and combination of algorithms for automatic
detection of pulmonary nodules in CT images: the LUNA16 challenge", MedIA 2017, §3.3):

* a detection *hits* a nodule when the detection's centre lies within the nodule's radius
  (Euclidean distance in patient millimetres < diameter / 2);
* each nodule is scored by the highest probability among the detections that hit it (missed
  nodules score 0); a detection that hits several close nodules counts for each of them;
* detections that hit a nodule but are not its best are neither true nor false positives;
  detections that hit no nodule are false positives; detections within an *excluded* finding
  (LUNA16's ``annotations_excluded.csv``) are ignored;
* the CPM is the mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per scan.

The curve and the CPM are computed exactly as ``monai.metrics.compute_froc_curve_data`` and
``compute_froc_score`` compute them (thresholds are the distinct scores, the lowest one dropped,
then linear interpolation), so numbers are comparable with MONAI-based pipelines; a unit test
checks equality.  Everything here is vectorised numpy: scoring 10^5 detections takes milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

CPM_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Nodule:
    """A reference nodule: centre in patient mm (x, y, z as LUNA16's coordX/Y/Z), diameter in mm."""

    scan: str
    x: float
    y: float
    z: float
    diameter_mm: float
    site: str = ""
    nodule_type: str = ""


@dataclass(frozen=True)
class Detection:
    """A detection: centre in patient mm and a probability (score) in any monotone scale."""

    scan: str
    x: float
    y: float
    z: float
    probability: float
    diameter_mm: float = 0.0


@dataclass
class Matching:
    """The outcome of LUNA16 matching over a set of scans.

    ``nodule_scores[i]`` is the best probability of a detection hitting nodule ``i`` (0 if missed)
    and ``nodule_hit[i]`` whether any detection hit it; ``fp_probs`` are the probabilities of
    false-positive detections; ``fp_scan[j]`` the scan index of false positive ``j``.
    """

    scans: list[str]
    nodules: list[Nodule]
    nodule_scores: np.ndarray
    nodule_hit: np.ndarray
    fp_probs: np.ndarray
    fp_scan: np.ndarray
    nodule_scan: np.ndarray
    detection_count: int
    scan_max: np.ndarray
    ignored: int = 0
    scan_sites: dict[str, str] = field(default_factory=dict)

    @property
    def num_scans(self) -> int:
        return len(self.scans)

    @property
    def num_nodules(self) -> int:
        return len(self.nodules)


def match(
    scans: Sequence[str],
    nodules: Sequence[Nodule],
    detections: Sequence[Detection],
    excluded: Sequence[Nodule] = (),
) -> Matching:
    """LUNA16 matching of ``detections`` to ``nodules`` over the listed ``scans``.

    ``scans`` is the full list of evaluated scans (scans with no nodule count for the FP rate);
    detections and nodules of scans not listed are ignored (a typo in a predictions file must not
    silently join the evaluation: the CSV layer reports them).
    """
    scan_list = list(dict.fromkeys(scans))
    index = {s: i for i, s in enumerate(scan_list)}
    nods = [n for n in nodules if n.scan in index]
    by_scan_nod: dict[str, list[int]] = {}
    for i, n in enumerate(nods):
        by_scan_nod.setdefault(n.scan, []).append(i)
    by_scan_exc: dict[str, list[Nodule]] = {}
    for n in excluded:
        by_scan_exc.setdefault(n.scan, []).append(n)
    by_scan_det: dict[str, list[Detection]] = {}
    for d in detections:
        if d.scan in index:
            by_scan_det.setdefault(d.scan, []).append(d)

    scores = np.zeros(len(nods), dtype=np.float64)
    hit = np.zeros(len(nods), dtype=bool)
    fps: list[np.ndarray] = []
    fp_scan: list[np.ndarray] = []
    ignored = 0
    count = 0
    scan_max = np.full(len(scan_list), -np.inf)
    for scan, dets in by_scan_det.items():
        count += len(dets)
        pts = np.array([(d.x, d.y, d.z) for d in dets], dtype=np.float64)
        probs = np.array([d.probability for d in dets], dtype=np.float64)
        scan_max[index[scan]] = probs.max()
        hits_any = np.zeros(len(dets), dtype=bool)
        idx = by_scan_nod.get(scan, [])
        if idx:
            centres = np.array([(nods[i].x, nods[i].y, nods[i].z) for i in idx])
            radii = np.array([nods[i].diameter_mm / 2.0 for i in idx])
            d2 = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
            inside = d2 < (radii[None, :] ** 2)
            hits_any = inside.any(axis=1)
            for k, i in enumerate(idx):
                col = inside[:, k]
                if col.any():
                    hit[i] = True
                    scores[i] = probs[col].max()
        exc = by_scan_exc.get(scan, [])
        ignore = np.zeros(len(dets), dtype=bool)
        if exc:
            ec = np.array([(e.x, e.y, e.z) for e in exc])
            er = np.array([max(e.diameter_mm, 0.0) / 2.0 for e in exc])
            d2e = ((pts[:, None, :] - ec[None, :, :]) ** 2).sum(-1)
            ignore = (d2e < er[None, :] ** 2).any(axis=1) & ~hits_any
            ignored += int(ignore.sum())
        is_fp = ~hits_any & ~ignore
        fps.append(probs[is_fp])
        fp_scan.append(np.full(int(is_fp.sum()), index[scan], dtype=np.int64))
    return Matching(
        scans=scan_list,
        nodules=nods,
        nodule_scores=scores,
        nodule_hit=hit,
        fp_probs=np.concatenate(fps) if fps else np.zeros(0),
        fp_scan=np.concatenate(fp_scan) if fp_scan else np.zeros(0, dtype=np.int64),
        nodule_scan=np.array([index[n.scan] for n in nods], dtype=np.int64),
        detection_count=count,
        scan_max=scan_max,
        ignored=ignored,
        scan_sites={n.scan: n.site for n in nods if n.site},
    )


def froc_curve(
    fp_probs: np.ndarray, tp_probs: np.ndarray, num_targets: int, num_images: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FP/scan, sensitivity and threshold arrays, as ``monai.metrics.compute_froc_curve_data``.

    Thresholds are the distinct values of ``fp_probs ∪ tp_probs`` except the lowest, in rising
    order, followed by a final (0 FP, 0 sensitivity) point (threshold +inf).  ``tp_probs`` holds
    one score per target (0 for a missed one).  Returns arrays in MONAI's order (decreasing FP).
    """
    if num_images <= 0:
        raise ValueError("no scans to evaluate")
    fp = np.sort(np.asarray(fp_probs, dtype=np.float64))
    tp = np.sort(np.asarray(tp_probs, dtype=np.float64))
    thresholds = np.unique(np.concatenate([fp, tp]))[1:]
    n_fp = fp.size - np.searchsorted(fp, thresholds, side="left")
    n_tp = tp.size - np.searchsorted(tp, thresholds, side="left")
    fps = np.append(n_fp, 0) / float(num_images)
    sens = np.append(n_tp, 0) / float(num_targets) if num_targets else np.zeros(fps.size)
    return fps, sens, np.append(thresholds, np.inf)


def cpm(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float] = CPM_FP_RATES) -> float:
    """Mean interpolated sensitivity at ``rates`` FP/scan (``monai.metrics.compute_froc_score``)."""
    return float(np.mean(sensitivity_at(fps, sens, rates)))


def sensitivity_at(fps: np.ndarray, sens: np.ndarray, rates: Sequence[float]) -> np.ndarray:
    """Linearly interpolated sensitivity at each FP/scan rate (curve from :func:`froc_curve`)."""
    return np.interp(np.asarray(rates, dtype=np.float64), fps[::-1], sens[::-1])


def curve_of(m: Matching) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FROC curve of a matching."""
    return froc_curve(m.fp_probs, m.nodule_scores, m.num_nodules, m.num_scans)


def operating_threshold(m: Matching, max_fp_per_scan: float) -> float:
    """The lowest score threshold whose FP/scan does not exceed ``max_fp_per_scan``.

    Detections with probability >= the threshold are reported.  Candidates are every distinct
    detection score (including the lowest, which the MONAI-style curve drops), so the operating
    point is the real one; ``inf`` when no detection at all may be reported.
    """
    fp = np.sort(m.fp_probs)
    cands = np.unique(np.concatenate([fp, m.nodule_scores[m.nodule_hit]]))
    if cands.size == 0:
        return float("inf")
    n_fp = fp.size - np.searchsorted(fp, cands, side="left")
    ok = np.nonzero(n_fp / float(m.num_scans) <= max_fp_per_scan + 1e-12)[0]
    return float(cands[ok[0]]) if ok.size else float("inf")
