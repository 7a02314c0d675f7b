"""``pull``: query a PACS (C-FIND, PS3.4 C.4.1) and retrieve the matching studies into the
archive with C-MOVE to our own AE title (PS3.4 C.4.2) or C-GET (PS3.4 C.4.3)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Literal

from pydicom.dataset import Dataset

from hounsfield import audit
from hounsfield.archive.archive import Archive
from hounsfield.archive.query import instances_of
from hounsfield.config import RemoteNode
from hounsfield.dicom import status as st
from hounsfield.errors import InvalidInput, PeerError
from hounsfield.ingest.qr import STUDY_ROOT  # noqa: F401  (documents the model used)
from hounsfield.pacs import scu
from hounsfield.pacs.delivery import NO_ASSOCIATION, DeliveryReport, Item
from hounsfield.pacs.destinations import label

Method = Literal["move", "get"]


def parse_query(text: str | list[str]) -> dict[str, str]:
    """``"PatientID=123 StudyDate=20200101-"`` (or a list of ``key=value``) -> filters."""
    from pydicom.datadict import tag_for_keyword

    parts = text.split() if isinstance(text, str) else [p for t in text for p in t.split()]
    out: dict[str, str] = {}
    for p in parts:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise InvalidInput(f"query terms are Keyword=value, got {p!r}")
        if tag_for_keyword(key) is None:
            raise InvalidInput(f"{key!r} is not a DICOM keyword (e.g. PatientID, StudyDate, "
                               "AccessionNumber, ModalitiesInStudy)")
        out[key] = value
    if not out:
        raise InvalidInput("empty query: give at least one Keyword=value (e.g. PatientID=123)")
    return out


def study_identifier(filters: Mapping[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    ds.PatientID = ""
    ds.PatientName = ""
    ds.StudyDate = ""
    ds.NumberOfStudyRelatedInstances = ""
    for k, v in filters.items():
        setattr(ds, k, v)
    return ds


def pull(archive: Archive, node: RemoteNode, filters: Mapping[str, str], *,
         method: Method = "move", on_study: Callable[[Item], None] | None = None
         ) -> DeliveryReport:
    """Find studies matching ``filters`` at ``node`` and retrieve each into the archive.

    With ``move`` our Storage SCP (``hounsfield serve``, or one the caller started) must be
    listening and known to the PACS under ``settings.dicom.ae_title``.  Each study is retried
    ``scu_retries`` times; the report has one item per study (status, instances received).
    """
    settings = archive.settings
    matches = scu.find(settings, node, study_identifier(filters))
    report = DeliveryReport(f"C-{method.upper()}", label(node))
    if not matches:
        report.notes.append(f"no study at {label(node)} matches {dict(filters)}")
    for m in matches:
        uid = str(m.get("StudyInstanceUID", "") or "")
        if not uid:
            continue
        expected = _int(m.get("NumberOfStudyRelatedInstances"))
        item = _retrieve_study(archive, node, uid, expected, method)
        report.items.append(item)
        if on_study:
            on_study(item)
    report.save(archive)
    entries = [audit.Entry(action=audit.Action.C_MOVE if method == "move" else audit.Action.C_GET,
                           actor=settings.dicom.ae_title, role="SCU", source=label(node),
                           study_instance_uid=i.study_instance_uid,
                           outcome=audit.Outcome.SUCCESS if i.ok else audit.Outcome.MAJOR_FAILURE,
                           detail=i.detail) for i in report.items]
    audit.record_many(archive, entries)
    return report


def _retrieve_study(archive: Archive, node: RemoteNode, uid: str, expected: int | None,
                    method: Method) -> Item:
    settings = archive.settings
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = uid
    detail, final = "", NO_ASSOCIATION
    for attempt in range(settings.dicom.scu_retries + 1):
        if attempt:
            time.sleep(settings.dicom.scu_retry_delay_s)
        try:
            if method == "move":
                final, counts = scu.move(settings, node, ident, settings.dicom.ae_title)
            else:
                classes = _sop_classes(settings, node, uid)
                final, counts = scu.get(archive, node, ident, classes)
        except PeerError as exc:
            final, detail = NO_ASSOCIATION, exc.reason
            continue
        with archive.session() as s:
            have = len(instances_of(s, uid))
        detail = (f"{counts.get('completed', 0)} completed, {counts.get('failed', 0)} failed, "
                  f"{counts.get('warning', 0)} warning; {have} in archive"
                  + (f" of {expected} at the PACS" if expected is not None else ""))
        if final == st.SUCCESS and (expected is None or have >= expected):
            return Item("", uid, final, attempt + 1, detail)
        if final == st.SUCCESS:
            final = st.SUBOPS_WARNING
    return Item("", uid, final, settings.dicom.scu_retries + 1, detail or st.name(final))


def _sop_classes(settings, node: RemoteNode, uid: str) -> list[str]:  # noqa: ANN001
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE"
    ident.StudyInstanceUID = uid
    ident.SeriesInstanceUID = ""
    ident.SOPInstanceUID = ""
    ident.SOPClassUID = ""
    try:
        rows = scu.find(settings, node, ident)
    except PeerError:
        rows = []
    classes = [str(r.SOPClassUID) for r in rows if r.get("SOPClassUID")]
    if not classes:
        from hounsfield.dicom.transfer import STORAGE_SOP_CLASSES
        classes = list(STORAGE_SOP_CLASSES)
    return list(dict.fromkeys(classes))


def _int(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None
