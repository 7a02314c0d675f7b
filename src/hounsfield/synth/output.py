"""Where synthetic studies go: a folder, the archive, or a DICOM node over C-STORE.

:func:`iter_cases` generates, for each site and patient, the CT series with its truth, the
nodule SEG and (optionally) the PA radiograph.  Each case's study seed is derived from
``(seed, site, index)`` and recorded, so ``generate_ct(site, case.seed)`` reproduces it.

* :func:`synth_to_folder` — Part 10 files under ``dicom/<site>/<patient>/<series>/``, the
  LUNA16-style ``annotations.csv``, ``dx_truth.csv``, ``masks/<seriesuid>.nii.gz`` and a
  ``manifest.json``.
* :func:`synth_to_archive` — every object through ``parse_part10`` + ``store_instances`` (the
  archive's one write path), site label = the synthetic site; truth files in
  ``<data_dir>/synth/`` (or ``truth_dir``).
* :func:`send_cases` — a modality simulator: C-STORE (PS3.4 B.2) to ``AE@host:port`` at a
  chosen rate (instances per second).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from hounsfield.errors import InvalidInput, PeerError
from hounsfield.synth.ct import CTStudy, NoduleTruth, generate_ct, to_part10  # noqa: F401
from hounsfield.synth.dx import DXTruth, DXStudy, generate_dx
from hounsfield.synth.sites import SiteProfile, resolve_site
from hounsfield.synth.truth import make_seg, write_annotations, write_csv, write_mask_nifti

if TYPE_CHECKING:
    from hounsfield.archive import Archive


@dataclass
class SynthCase:
    """One synthetic patient: CT (+ truth, mask), SEG of the nodules, radiograph."""

    site: SiteProfile
    index: int
    seed: int
    ct: CTStudy | None
    seg: Dataset | None
    dx: DXStudy | None

    def datasets(self) -> list[Dataset]:
        out = list(self.ct.datasets) if self.ct is not None else []
        if self.seg is not None:
            out.append(self.seg)
        if self.dx is not None:
            out.append(self.dx.dataset)
        return out


@dataclass
class SynthReport:
    cases: int = 0
    instances: int = 0
    nodules: int = 0
    bytes: int = 0
    seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    truth_csv: Path | None = None
    dx_csv: Path | None = None
    manifest: list[dict] = field(default_factory=list)


def case_seed(seed: int, site: str, index: int) -> int:
    """The study seed of patient ``index`` at ``site`` (a 32-bit integer)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(site.encode()), index])
    return int(ss.generate_state(1)[0])


def iter_cases(sites: Iterable[str | SiteProfile], patients_per_site: int, *, seed: int = 0,
               shape: tuple[int, int, int] | None = None, matrix: int = 512,
               slices: int | None = None, dx: bool = True, dx_matrix: int = 1024,
               seg: bool = True, nodules: int | None = None, detail: float = 1.0,
               ct: bool = True, first_patient: int = 0) -> Iterator[SynthCase]:
    """Generate the cases one at a time (a full-size CT is a few hundred MB in memory);
    ``ct=False`` gives radiographs only.  Patients are numbered from ``first_patient`` at each
    site (their IDs and seeds follow the number), so a later run with a higher first number
    adds new patients to sites generated before."""
    profiles = [resolve_site(s) for s in sites]
    if patients_per_site < 0:
        raise InvalidInput("patients per site must be >= 0")
    if first_patient < 0:
        raise InvalidInput("the first patient number must be >= 0")
    for site in profiles:
        for i in range(first_patient, first_patient + patients_per_site):
            s = case_seed(seed, site.name, i)
            study = generate_ct(site, s, shape=shape, matrix=matrix, slices=slices,
                                nodules=nodules, detail=detail, patient_index=i) if ct else None
            seg_ds = make_seg(study) if seg and study is not None else None
            dx_st = generate_dx(site, s, matrix=dx_matrix, patient_index=i, nodules=nodules,
                                detail=detail,
                                phantom=study.phantom if study else None) if dx else None
            yield SynthCase(site, i, s, study, seg_ds, dx_st)


def _manifest(case: SynthCase, files: list[str] | None = None) -> dict:
    m: dict = {"site": case.site.name, "index": case.index, "seed": case.seed}
    ct = case.ct
    if ct is not None:
        m.update({"patient_id": ct.patient.patient_id, "study_uid": ct.study_uid,
                  "ct_series_uid": ct.series_uid, "slices": ct.grid.shape[0],
                  "rows": ct.grid.shape[1], "columns": ct.grid.shape[2],
                  "spacing_mm": [round(v, 5) for v in ct.grid.spacing],
                  "nodules": len(ct.truth)})
    elif case.dx is not None:
        m.update({"patient_id": case.dx.patient.patient_id,
                  "nodules": len(case.dx.phantom.nodules)})
    m.update({"seg_sop_uid": case.seg.SOPInstanceUID if case.seg is not None else None,
         "dx_sop_uid": case.dx.dataset.SOPInstanceUID if case.dx is not None else None,
         "dx_study_uid": case.dx.study_uid if case.dx is not None else None})
    if files is not None:
        m["files"] = files
    return m


def _write_truth(cases_truth: list[NoduleTruth], dx_truth: list[dict], truth_dir: Path,
                 report: SynthReport) -> None:
    report.truth_csv = truth_dir / "annotations.csv"
    write_annotations(report.truth_csv, cases_truth)
    if dx_truth:
        report.dx_csv = truth_dir / "dx_truth.csv"
        write_csv(report.dx_csv, [_Row(r) for r in dx_truth], DXTruth.CSV_FIELDS)
    (truth_dir / "manifest.json").write_text(json.dumps(report.manifest, indent=1,
                                                        ensure_ascii=False), encoding="utf-8")


def _collect(case: SynthCase, truth_dir: Path, truth: list[NoduleTruth], dx_truth: list[dict],
             report: SynthReport) -> None:
    if case.ct is not None:
        write_mask_nifti(case.ct, truth_dir / "masks" / f"{case.ct.series_uid}.nii.gz")
        truth += case.ct.truth
        report.nodules += len(case.ct.truth)
    if case.dx is not None:
        dx_truth += case.dx.truth
    report.cases += 1


class _Row:
    def __init__(self, d: dict) -> None:
        self.d = d

    def row(self) -> dict:
        return self.d


def synth_to_folder(out: Path | str, cases: Iterable[SynthCase], *,
                    on_case: Callable[[SynthCase], None] | None = None) -> SynthReport:
    """Write every case as Part 10 files plus truth (CSV, NIfTI masks, manifest) under ``out``."""
    out = Path(out)
    report = SynthReport()
    t0 = time.perf_counter()
    truth: list[NoduleTruth] = []
    dx_truth: list[dict] = []
    for case in cases:
        pid = (case.ct.patient if case.ct is not None else case.dx.patient).patient_id
        base = out / "dicom" / case.site.name / pid
        files = []
        for ds in case.datasets():
            sub = {"CT": "CT", "SEG": "SEG", "DX": "DX"}[ds.Modality]
            name = f"{int(ds.InstanceNumber):04d}.dcm" if sub == "CT" else f"{sub.lower()}.dcm"
            path = base / sub / name
            path.parent.mkdir(parents=True, exist_ok=True)
            data = to_part10(ds)
            path.write_bytes(data)
            files.append(str(path.relative_to(out)))
            report.bytes += len(data)
            report.instances += 1
        _collect(case, out, truth, dx_truth, report)
        report.manifest.append(_manifest(case, files))
        if on_case:
            on_case(case)
    _write_truth(truth, dx_truth, out, report)
    report.seconds = time.perf_counter() - t0
    return report


def synth_to_archive(archive: Archive, sites: Iterable[str | SiteProfile], patients_per_site: int, *,
                     truth_dir: Path | str | None = None,
                     on_case: Callable[[SynthCase], None] | None = None,
                     **options) -> SynthReport:
    """Generate cases (``options`` as :func:`iter_cases`) and store them in ``archive`` via
    ``parse_part10`` + ``store_instances`` with ``site`` = the synthetic site's name.

    Truth (annotations.csv, dx_truth.csv, masks/*.nii.gz, manifest.json) goes to
    ``truth_dir`` (default ``<data_dir>/synth``).
    """
    from hounsfield.archive.parse import parse_part10
    from hounsfield.archive.store import store_instances

    truth_dir = Path(truth_dir) if truth_dir else archive.settings.data_dir / "synth"
    report = SynthReport()
    t0 = time.perf_counter()
    truth: list[NoduleTruth] = []
    dx_truth: list[dict] = []
    for case in iter_cases(sites, patients_per_site, **options):
        parsed = []
        for ds in case.datasets():
            data = to_part10(ds)
            parsed.append(parse_part10(data, name=f"synth:{ds.SOPInstanceUID}"))
            report.bytes += len(data)
        for k in range(0, len(parsed), 64):
            for o in store_instances(archive, parsed[k:k + 64], source="synth",
                                     site=case.site.name):
                report.statuses[o.status] = report.statuses.get(o.status, 0) + 1
        report.instances += len(parsed)
        _collect(case, truth_dir, truth, dx_truth, report)
        report.manifest.append(_manifest(case))
        if on_case:
            on_case(case)
    _write_truth(truth, dx_truth, truth_dir, report)
    report.seconds = time.perf_counter() - t0
    return report


def parse_destination(to: str) -> tuple[str, str, int]:
    """``AE@host:port`` -> (AE title, host, port); a clear error otherwise."""
    if "@" not in to or ":" not in to.rsplit("@", 1)[1]:
        raise InvalidInput(f"destination {to!r}: expected AE@host:port, e.g. PACS@10.0.0.5:104")
    ae, rest = to.rsplit("@", 1)
    host, port_s = rest.rsplit(":", 1)
    if not 1 <= len(ae) <= 16 or "\\" in ae or not ae.strip():
        raise InvalidInput(f"destination {to!r}: AE title must be 1-16 characters")
    try:
        port = int(port_s)
    except ValueError:
        raise InvalidInput(f"destination {to!r}: port {port_s!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise InvalidInput(f"destination {to!r}: port must be 1..65535")
    return ae.strip(), host, port


def send_cases(cases: Iterable[SynthCase], to: str, *, rate: float | None = None,
               calling_ae: str = "HF_SYNTH", timeout: float = 30.0,
               on_instance: Callable[[Dataset, int], None] | None = None) -> SynthReport:
    """C-STORE every object of ``cases`` to ``to`` (``AE@host:port``), one association per
    case, at most ``rate`` instances per second.  Raises :class:`PeerError` when the peer
    cannot be reached or rejects the association; per-instance failures are counted in
    ``statuses`` (hex status -> count)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import (
        CTImageStorage, DigitalXRayImageStorageForPresentation, SegmentationStorage,
    )
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ae_title, host, port = parse_destination(to)
    if rate is not None and rate <= 0:
        raise InvalidInput("rate must be > 0 instances per second")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for sop in (CTImageStorage, SegmentationStorage, DigitalXRayImageStorageForPresentation):
        ae.add_requested_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    report = SynthReport()
    t0 = time.perf_counter()
    interval = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter()
    for case in cases:
        assoc = ae.associate(host, port, ae_title=ae_title)
        if not assoc.is_established:
            raise PeerError(f"{to}: association {'rejected' if assoc.is_rejected else 'failed'}"
                            " (is the node running and does it accept our AE title "
                            f"{calling_ae!r}?)")
        try:
            for ds in case.datasets():
                if interval:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    next_at = max(next_at + interval, time.perf_counter() - interval)
                try:
                    status = assoc.send_c_store(ds)
                except (ValueError, RuntimeError) as exc:  # no accepted presentation context
                    key = f"not sent: {exc}"[:120]
                    report.statuses[key] = report.statuses.get(key, 0) + 1
                    continue
                code = int(getattr(status, "Status", 0xFFFF)) if status else 0xFFFF
                key = f"0x{code:04X}"
                report.statuses[key] = report.statuses.get(key, 0) + 1
                report.instances += 1
                if on_instance:
                    on_instance(ds, code)
                if not assoc.is_established:
                    raise PeerError(f"{to}: the peer closed the association")
        finally:
            if assoc.is_established:
                assoc.release()
        report.cases += 1
        report.nodules += len(case.ct.truth) if case.ct is not None else 0
        report.manifest.append(_manifest(case))
    report.seconds = time.perf_counter() - t0
    return report
