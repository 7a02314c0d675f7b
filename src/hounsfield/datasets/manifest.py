"""Versioned nodule datasets: selected series + truth, patient-level splits, hashed manifest.

A dataset version is a folder ``<data_dir>/datasets/<name>/<version>/`` holding
``manifest.json`` (series, patients, sites, splits, per-series content hashes, truth, the
dataset hash) and ``annotations.csv`` (the truth, LUNA16 columns).  Versions are immutable:
creating a dataset again with the same name makes version N+1.

Splits are at patient level (all series of a patient share one split) and stratified by site.
Series of *held-out* sites never enter the base model's splits: they get their own
``heldout-train`` / ``heldout-validation`` / ``heldout-test`` splits, used to fine-tune for and
test on a new hospital.  :func:`check_manifest` verifies that no patient is in two splits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from hounsfield.errors import Conflict, InvalidInput, NotFound
from hounsfield.evaluate.froc import Nodule
from hounsfield.evaluate.luna_csv import write_annotations

SPLITS = ("train", "validation", "test")
ALL_SPLITS = SPLITS + tuple(f"heldout-{s}" for s in SPLITS)


@dataclass
class DatasetRef:
    name: str
    version: int
    path: Path
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def series(self, split: str) -> list[dict[str, Any]]:
        if split not in ALL_SPLITS:
            raise InvalidInput(f"unknown split {split!r}; one of {', '.join(ALL_SPLITS)}")
        return [s for s in self.manifest["series"] if s["split"] == split]

    def nodules(self, series_uids: Sequence[str] | None = None) -> list[Nodule]:
        keep = None if series_uids is None else set(series_uids)
        site = {s["series_instance_uid"]: s["site"] for s in self.manifest["series"]}
        return [Nodule(n["seriesuid"], n["coordX"], n["coordY"], n["coordZ"], n["diameter_mm"],
                       site=site.get(n["seriesuid"], ""), nodule_type=n.get("type", ""))
                for n in self.manifest["nodules"] if keep is None or n["seriesuid"] in keep]


def datasets_root(settings) -> Path:
    return Path(settings.data_dir) / "datasets"


def _valid_name(name: str) -> tuple[bool, str]:
    if not name or len(name) > 64:
        return False, "dataset name must be 1-64 characters"
    if not all(c.isalnum() or c in "-_." for c in name) or name[0] in ".-":
        return False, "dataset name may use letters, digits, '-', '_', '.' and not start with . or -"
    return True, ""


def _series_rows(archive, sites: Sequence[str] | None, modality: str) -> list[dict[str, Any]]:
    from hounsfield.archive.models import Instance, Patient, Series, Study

    with archive.session() as s:
        q = (select(Series.series_instance_uid, Series.site, Study.site, Study.study_instance_uid,
                    Patient.patient_id, Patient.issuer_of_patient_id, Series.id)
             .join(Study, Series.study_pk == Study.id).join(Patient, Study.patient_pk == Patient.id)
             .where(Series.modality == modality))
        rows = s.execute(q).all()
        out = []
        for uid, ser_site, st_site, study_uid, pid, issuer, pk in rows:
            site = ser_site or st_site or ""
            if sites and site not in sites:
                continue
            hashes = sorted(h for (h,) in s.execute(select(Instance.sha256)
                                                    .where(Instance.series_pk == pk)))
            out.append({
                "series_instance_uid": uid, "study_instance_uid": study_uid,
                "patient": f"{issuer}/{pid}" if issuer else pid, "site": site,
                "instances": len(hashes),
                "sha256": hashlib.sha256("\n".join(hashes).encode()).hexdigest(),
            })
    return sorted(out, key=lambda r: r["series_instance_uid"])


def assign_splits(series: list[dict[str, Any]], *, heldout_sites: Sequence[str],
                  fractions: tuple[float, float, float], seed: int) -> None:
    """Patient-level, per-site (stratified) split assignment, in place."""
    rng = np.random.default_rng(seed)
    by_site: dict[str, list[str]] = {}
    for r in series:
        pats = by_site.setdefault(r["site"], [])
        if r["patient"] not in pats:
            pats.append(r["patient"])
    patient_split: dict[tuple[str, str], str] = {}
    for site in sorted(by_site):
        pats = sorted(by_site[site])
        rng.shuffle(pats)
        n = len(pats)
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        if n >= 3:  # every site contributes to validation and test when it can
            n_val, n_test = max(n_val, 1), max(n_test, 1)
        prefix = "heldout-" if site in heldout_sites else ""
        for i, p in enumerate(pats):
            split = "test" if i < n_test else ("validation" if i < n_test + n_val else "train")
            patient_split[(site, p)] = prefix + split
    for r in series:
        r["split"] = patient_split[(r["site"], r["patient"])]


def check_manifest(manifest: dict[str, Any]) -> tuple[bool, str]:
    """No patient in two splits; every nodule on a listed series; hash matches content."""
    seen: dict[str, str] = {}
    for r in manifest["series"]:
        prev = seen.setdefault(r["patient"], r["split"])
        if prev != r["split"]:
            return False, f"patient {r['patient']!r} is in splits {prev!r} and {r['split']!r}"
    uids = {r["series_instance_uid"] for r in manifest["series"]}
    stray = [n["seriesuid"] for n in manifest["nodules"] if n["seriesuid"] not in uids]
    if stray:
        return False, f"{len(stray)} nodule(s) on series not in the dataset (e.g. {stray[0]})"
    if manifest.get("hash") != content_hash(manifest):
        return False, "manifest hash does not match its content (edited after creation?)"
    return True, ""


def content_hash(manifest: dict[str, Any]) -> str:
    body = {k: manifest[k] for k in ("series", "nodules", "heldout_sites", "fractions", "seed")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def create_dataset(archive, settings, name: str, truth: Sequence[Nodule], *,
                   sites: Sequence[str] | None = None, heldout_sites: Sequence[str] = (),
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 0,
                   modality: str = "CT", truth_source: str = "",
                   only_annotated: bool = False) -> DatasetRef:
    """Create the next version of dataset ``name`` from archived series and a truth list.

    Every selected series is evaluated: a series with no truth row is nodule-free (as in
    LUNA16), unless ``only_annotated`` restricts the dataset to series named in the truth.
    """
    ok, why = _valid_name(name)
    if not ok:
        raise InvalidInput(why)
    if abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise InvalidInput("split fractions must be >= 0 and sum to 1")
    series = _series_rows(archive, sites, modality)
    truth_uids = {n.scan for n in truth}
    if only_annotated:
        series = [r for r in series if r["series_instance_uid"] in truth_uids]
    if not series:
        raise InvalidInput(f"no {modality} series in the archive match (sites: {sites or 'all'})")
    known = {r["series_instance_uid"] for r in series}
    missing = sorted(truth_uids - known)
    if missing and sites is None:
        raise InvalidInput(f"{len(missing)} truth series are not in the archive "
                           f"(e.g. {missing[0]}); import them first")
    site_set = {r["site"] for r in series}
    bad = [s for s in heldout_sites if s not in site_set]
    if bad:
        raise InvalidInput(f"held-out site(s) {', '.join(bad)} have no series; sites: "
                           f"{', '.join(sorted(site_set))}")
    assign_splits(series, heldout_sites=heldout_sites, fractions=fractions, seed=seed)
    nodules = [{"seriesuid": n.scan, "coordX": n.x, "coordY": n.y, "coordZ": n.z,
                "diameter_mm": n.diameter_mm, "type": n.nodule_type}
               for n in truth if n.scan in known]
    root = datasets_root(settings) / name
    root.mkdir(parents=True, exist_ok=True)
    versions = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    version = max(versions, default=0) + 1
    manifest: dict[str, Any] = {
        "name": name, "version": version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "modality": modality, "truth_source": truth_source, "seed": seed,
        "fractions": list(fractions), "heldout_sites": sorted(heldout_sites),
        "series": series, "nodules": nodules,
    }
    manifest["hash"] = content_hash(manifest)
    ok, why = check_manifest(manifest)
    if not ok:  # a bug, not bad input: refuse to write an inconsistent dataset
        raise Conflict(f"dataset check failed: {why}")
    folder = root / str(version)
    tmp = root / f".{version}.tmp"
    tmp.mkdir(exist_ok=False)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    site = {r["series_instance_uid"]: r["site"] for r in series}
    write_annotations(tmp / "annotations.csv",
                      [Nodule(n["seriesuid"], n["coordX"], n["coordY"], n["coordZ"],
                              n["diameter_mm"], site=site[n["seriesuid"]],
                              nodule_type=n["type"]) for n in nodules])
    os.replace(tmp, folder)
    return DatasetRef(name, version, folder, manifest)


def open_dataset(settings, ref: str) -> DatasetRef:
    """``NAME`` (latest version) or ``NAME@VERSION``."""
    name, _, ver = ref.partition("@")
    root = datasets_root(settings) / name
    if not root.is_dir():
        raise NotFound(f"no dataset named {name!r}")
    if ver:
        if not ver.isdigit():
            raise InvalidInput(f"dataset version must be a number, got {ver!r}")
        folder = root / ver
    else:
        versions = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
        if not versions:
            raise NotFound(f"dataset {name!r} has no versions")
        folder = root / str(versions[-1])
    if not (folder / "manifest.json").is_file():
        raise NotFound(f"dataset {name}@{ver} does not exist")
    manifest = json.loads((folder / "manifest.json").read_text())
    return DatasetRef(name, int(folder.name), folder, manifest)


def list_datasets(settings) -> list[dict[str, Any]]:
    root = datasets_root(settings)
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        for v in sorted((p for p in d.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            m = json.loads((v / "manifest.json").read_text())
            out.append(summary(DatasetRef(d.name, int(v.name), v, m)))
    return out


def summary(ds: DatasetRef) -> dict[str, Any]:
    m = ds.manifest
    counts: dict[str, dict[str, int]] = {}
    nod_by_series: dict[str, int] = {}
    for n in m["nodules"]:
        nod_by_series[n["seriesuid"]] = nod_by_series.get(n["seriesuid"], 0) + 1
    for r in m["series"]:
        c = counts.setdefault(r["split"], {"series": 0, "patients": 0, "nodules": 0})
        c["series"] += 1
        c["nodules"] += nod_by_series.get(r["series_instance_uid"], 0)
    for split in counts:
        counts[split]["patients"] = len({r["patient"] for r in m["series"] if r["split"] == split})
    ok, why = check_manifest(m)
    return {"dataset": ds.ref, "created_at": m["created_at"], "hash": m["hash"],
            "series": len(m["series"]), "nodules": len(m["nodules"]),
            "sites": sorted({r["site"] for r in m["series"]}), "heldout_sites": m["heldout_sites"],
            "splits": counts, "check": "ok" if ok else why}
