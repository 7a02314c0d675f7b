"""LUNA16 CSV files: annotations (truth) and predictions (candidates), read strictly with reasons.

Annotations: ``seriesuid, coordX, coordY, coordZ, diameter_mm`` (optional ``site`` and ``type``
or ``nodule_type``, as hounsfield.synth writes it).
Predictions: ``seriesuid, coordX, coordY, coordZ, probability`` (optional ``diameter_mm``).
Coordinates are patient (world) millimetres as in LUNA16.  A bad row is an
:class:`~hounsfield.errors.InvalidInput` naming the file, line and column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path

from hounsfield.errors import InvalidInput
from hounsfield.evaluate.froc import Detection, Nodule

ANNOTATION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
PREDICTION_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def _rows(path: Path, required: tuple[str, ...]) -> Iterable[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise InvalidInput(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in required if c not in cols]
        if missing:
            raise InvalidInput(f"{path}: missing column(s) {', '.join(missing)} "
                               f"(expected {', '.join(required)})")
        for line, row in enumerate(reader, start=2):
            yield line, {k.strip(): (v or "").strip() for k, v in row.items() if k}


def _float(path: Path, line: int, row: dict[str, str], col: str, *, positive: bool = False) -> float:
    raw = row.get(col, "")
    try:
        v = float(raw)
    except ValueError:
        raise InvalidInput(f"{path}:{line}: column {col}: {raw!r} is not a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise InvalidInput(f"{path}:{line}: column {col}: {raw!r} is not "
                           f"{'a positive' if positive else 'a finite'} number")
    return v


def read_annotations(path: Path | str, *, allow_zero_diameter: bool = False) -> list[Nodule]:
    """Nodules from a LUNA16 ``annotations.csv`` (or ``annotations_excluded.csv`` with
    ``allow_zero_diameter``, where LUNA16 writes -1 for findings without a size)."""
    p = Path(path)
    out = []
    for line, row in _rows(p, ANNOTATION_COLUMNS):
        if not row["seriesuid"]:
            raise InvalidInput(f"{p}:{line}: empty seriesuid")
        d = _float(p, line, row, "diameter_mm", positive=not allow_zero_diameter)
        out.append(Nodule(row["seriesuid"], _float(p, line, row, "coordX"),
                          _float(p, line, row, "coordY"), _float(p, line, row, "coordZ"),
                          d, site=row.get("site", ""),
                          nodule_type=row.get("type") or row.get("nodule_type", "")))
    return out


def read_predictions(path: Path | str) -> list[Detection]:
    """Detections from a LUNA16-style predictions CSV."""
    p = Path(path)
    out = []
    for line, row in _rows(p, PREDICTION_COLUMNS):
        if not row["seriesuid"]:
            raise InvalidInput(f"{p}:{line}: empty seriesuid")
        diam = _float(p, line, row, "diameter_mm") if row.get("diameter_mm") else 0.0
        out.append(Detection(row["seriesuid"], _float(p, line, row, "coordX"),
                             _float(p, line, row, "coordY"), _float(p, line, row, "coordZ"),
                             _float(p, line, row, "probability"), diameter_mm=diam))
    return out


def read_scan_list(path: Path | str) -> tuple[list[str], dict[str, str]]:
    """A list of evaluated scans: one ``seriesuid`` per line, or a CSV with ``seriesuid``
    (and optional ``site``) columns — LUNA16's ``seriesuids.csv`` has no header."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInput(f"{p}: no such file")
    text = p.read_text(encoding="utf-8-sig").splitlines()
    if text and "seriesuid" in text[0]:
        scans, sites = [], {}
        for _line, row in _rows(p, ("seriesuid",)):
            scans.append(row["seriesuid"])
            if row.get("site"):
                sites[row["seriesuid"]] = row["site"]
        return scans, sites
    return [t.split(",")[0].strip() for t in text if t.strip()], {}


def write_predictions(path: Path | str, detections: Iterable[Detection]) -> None:
    """Write detections as a LUNA16 predictions CSV (with ``diameter_mm``)."""
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*PREDICTION_COLUMNS, "diameter_mm"])
        for d in detections:
            w.writerow([d.scan, f"{d.x:.3f}", f"{d.y:.3f}", f"{d.z:.3f}", f"{d.probability:.6f}",
                        f"{d.diameter_mm:.2f}"])


def write_annotations(path: Path | str, nodules: Iterable[Nodule]) -> None:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([*ANNOTATION_COLUMNS, "site", "type"])
        for n in nodules:
            w.writerow([n.scan, f"{n.x:.3f}", f"{n.y:.3f}", f"{n.z:.3f}", f"{n.diameter_mm:.3f}",
                        n.site, n.nodule_type])
