"""Archive consistency: every index row has its blob (with the recorded size and hash) and every
blob its row.  ``repair`` removes orphan blobs and temporary files and drops rows whose blob is
gone (their series/study/patient rows too when they become empty).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy import delete, select

from hounsfield.archive.archive import Archive
from hounsfield.archive.blobstore import FileBlobStore
from hounsfield.archive.models import Instance, Patient, Series, Study


@dataclass
class CheckReport:
    instances: int = 0
    blobs: int = 0
    missing_blobs: list[str] = field(default_factory=list)   # SOPInstanceUIDs
    corrupt_blobs: list[str] = field(default_factory=list)   # SOPInstanceUIDs
    orphan_blobs: list[str] = field(default_factory=list)    # blob keys
    temp_files: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not (self.missing_blobs or self.corrupt_blobs or self.orphan_blobs or self.temp_files)


def check(archive: Archive, *, verify_hashes: bool = False, repair: bool = False) -> CheckReport:
    report = CheckReport()
    with archive.session() as s:
        rows = s.execute(select(Instance.sop_instance_uid, Instance.blob_key, Instance.size,
                                Instance.sha256)).all()
    report.instances = len(rows)
    keys = set(archive.blobs.keys())
    report.blobs = len(keys)
    indexed = set()
    for uid, key, size, sha in rows:
        indexed.add(key)
        if key not in keys:
            report.missing_blobs.append(uid)
            continue
        if archive.blobs.size(key) != size:
            report.corrupt_blobs.append(uid)
        elif verify_hashes and hashlib.sha256(archive.blobs.read(key)).hexdigest() != sha:
            report.corrupt_blobs.append(uid)
    report.orphan_blobs = sorted(keys - indexed)
    if isinstance(archive.blobs, FileBlobStore):
        import os
        for dirpath, _d, files in os.walk(archive.blobs.root):
            report.temp_files += [os.path.join(dirpath, f) for f in files if f.endswith(".tmp")]
    if repair and not report.clean:
        _repair(archive, report)
        report.repaired = True
    return report


def _repair(archive: Archive, report: CheckReport) -> None:
    for key in report.orphan_blobs:
        archive.blobs.delete(key)
    if isinstance(archive.blobs, FileBlobStore):
        archive.blobs.sweep_temp()
    gone = report.missing_blobs + report.corrupt_blobs
    if not gone:
        return
    with archive.write_session() as s, s.begin():
        keys = s.scalars(select(Instance.blob_key).where(Instance.sop_instance_uid.in_(gone))).all()
        s.execute(delete(Instance).where(Instance.sop_instance_uid.in_(gone)))
        s.execute(delete(Series).where(~Series.id.in_(select(Instance.series_pk))))
        s.execute(delete(Study).where(~Study.id.in_(select(Series.study_pk))))
        s.execute(delete(Patient).where(~Patient.id.in_(select(Study.patient_pk))))
    for key in keys:
        archive.blobs.delete(key)
