"""Parse a DICOM object (headers only — pixels are never decoded) into what the index keeps.

Read leniently: odd values (bad VRs, invalid numbers, a missing preamble, non-conformant UIDs)
are accepted and listed in ``warnings``.  Refused, with a reason (:class:`InvalidDicom`): empty
or non-DICOM bytes, a data set that stops early, a DICOMDIR, and a missing StudyInstanceUID /
SeriesInstanceUID / SOPInstanceUID / SOPClassUID.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings as pywarnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
)

from hounsfield.dicom.json_model import (character_set, dataset_to_json, raw_json, remember,
                                         value_key)
from hounsfield.dicom.uids import is_lenient_uid, validate_uid
from hounsfield.errors import InvalidDicom

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_DELIM_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"


@dataclass
class ParsedInstance:
    """One instance ready to index: its exact Part 10 bytes and the attributes we keep."""

    data: bytes | None  # None once the blob was written by whoever parsed it (see importer)
    sha256: str
    size: int
    patient: dict[str, str]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    metadata_json: dict[str, Any] | None  # None until finish_json() when parsed with defer_json
    warnings: list[str] = field(default_factory=list)
    header: Dataset | None = None  # kept only while the DICOM JSON is deferred

    def finish_json(self) -> dict[str, Any]:
        """The DICOM JSON of the header (computed now if it was deferred)."""
        if self.metadata_json is None:
            try:
                self.metadata_json = dataset_to_json(self.header)
            except Exception as exc:  # noqa: BLE001
                raise InvalidDicom(f"cannot represent the header as DICOM JSON: "
                                   f"{_short(exc)}") from exc
            self.header = None
        return self.metadata_json

    @property
    def sop_instance_uid(self) -> str:
        return self.instance["sop_instance_uid"]

    @property
    def series_instance_uid(self) -> str:
        return self.series["series_instance_uid"]

    @property
    def study_instance_uid(self) -> str:
        return self.study["study_instance_uid"]


def parse_part10(data: bytes, *, name: str = "", sha256: Callable[[], str] | None = None,
                 defer_json: bool = False) -> ParsedInstance:
    """Parse ``data`` (a Part 10 file, or a bare data set which is wrapped into one).

    ``sha256``: returns the hex SHA-256 of ``data`` — lets a caller hash on another thread
    (hashlib releases the GIL) while this parses; used only when ``data`` is kept as it is.
    ``defer_json``: leave the DICOM JSON to :meth:`ParsedInstance.finish_json` (a caller can
    start writing the blob first)."""
    label = f"{name}: " if name else ""
    if not data:
        raise InvalidDicom(f"{label}empty file (0 bytes)")
    notes: list[str] = []
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    with pywarnings.catch_warnings(record=True) as caught:
        pywarnings.simplefilter("always")
        try:
            fp = io.BytesIO(data)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
            pixel_pos = fp.tell()
        except (InvalidDicomError, EOFError, struct.error, ValueError, KeyError, OSError,
                NotImplementedError, TypeError, IndexError, AttributeError, OverflowError,
                UnicodeDecodeError, LookupError) as exc:
            raise InvalidDicom(f"{label}not a readable DICOM file: {_short(exc)}") from exc
    notes.extend(sorted({_short(w.message) for w in caught}))

    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if "SOPClassUID" not in ds and getattr(ds, "file_meta", None) is not None and \
            getattr(ds.file_meta, "MediaStorageSOPClassUID", None) == MEDIA_STORAGE_DIRECTORY:
        raise InvalidDicom(f"{label}a DICOMDIR (media storage directory) is an index, not an instance")
    if not has_preamble and (len(ds) == 0 or not any(
            k in ds for k in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"))):
        raise InvalidDicom(f"{label}not a DICOM file: no 'DICM' prefix and no DICOM identifiers")
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                           "SOPClassUID") if not _s(ds, k)]
    if missing:
        raise InvalidDicom(f"{label}missing required attribute(s): {', '.join(missing)}")
    if not has_preamble:
        try:
            data, ts = _wrap_part10(ds, data)
        except Exception as exc:  # noqa: BLE001
            raise InvalidDicom(f"{label}no preamble and cannot be re-encoded: {_short(exc)}") from exc
        notes.append("no 128-byte preamble/DICM prefix: Part 10 header added")
    elif not ts:
        raise InvalidDicom(f"{label}file meta information has no TransferSyntaxUID")
    else:
        _check_pixel_data_complete(data, pixel_pos, ts, label)
    for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        value = _s(ds, k)
        ok, why = validate_uid(value)
        if not ok:
            if not is_lenient_uid(value):
                raise InvalidDicom(f"{label}{k} is not a UID: {why}")
            notes.append(f"{k} is not strictly valid ({why}); accepted")
    meta_sop = getattr(ds.file_meta, "MediaStorageSOPInstanceUID", None)
    if meta_sop and str(meta_sop) != _s(ds, "SOPInstanceUID"):
        notes.append("MediaStorageSOPInstanceUID differs from SOPInstanceUID; the latter is used")

    instance = {
        "sop_instance_uid": _s(ds, "SOPInstanceUID"),
        "sop_class_uid": _s(ds, "SOPClassUID"),
        "instance_number": _int(ds, "InstanceNumber", notes),
        "transfer_syntax_uid": ts,
        "rows": _int(ds, "Rows", notes),
        "columns": _int(ds, "Columns", notes),
        "number_of_frames": _int(ds, "NumberOfFrames", notes),
        "bits_allocated": _int(ds, "BitsAllocated", notes),
        "photometric_interpretation": _s(ds, "PhotometricInterpretation"),
        "pixel_spacing": _s(ds, "PixelSpacing") or _s(ds, "ImagerPixelSpacing"),
        "slice_thickness": _float(ds, "SliceThickness", notes),
        "image_position_patient": _s(ds, "ImagePositionPatient"),
        "image_orientation_patient": _s(ds, "ImageOrientationPatient"),
        "content_date": _s(ds, "ContentDate"),
        "content_time": _s(ds, "ContentTime"),
    }
    patient = {
        "patient_id": _s(ds, "PatientID"),
        "issuer_of_patient_id": _s(ds, "IssuerOfPatientID"),
        "patient_name": _s(ds, "PatientName"),
        "patient_birth_date": _s(ds, "PatientBirthDate"),
        "patient_sex": _s(ds, "PatientSex"),
    }
    study = {
        "study_instance_uid": _s(ds, "StudyInstanceUID"),
        "study_date": _s(ds, "StudyDate"),
        "study_time": _s(ds, "StudyTime"),
        "accession_number": _s(ds, "AccessionNumber"),
        "study_id": _s(ds, "StudyID"),
        "study_description": _s(ds, "StudyDescription"),
        "referring_physician_name": _s(ds, "ReferringPhysicianName"),
        "institution_name": _s(ds, "InstitutionName"),
    }
    series = {
        "series_instance_uid": _s(ds, "SeriesInstanceUID"),
        "modality": _s(ds, "Modality"),
        "series_number": _int(ds, "SeriesNumber", notes),
        "series_description": _s(ds, "SeriesDescription"),
        "series_date": _s(ds, "SeriesDate"),
        "series_time": _s(ds, "SeriesTime"),
        "body_part_examined": _s(ds, "BodyPartExamined"),
        "performed_procedure_step_start_date": _s(ds, "PerformedProcedureStepStartDate"),
        "performed_procedure_step_start_time": _s(ds, "PerformedProcedureStepStartTime"),
        "manufacturer": _s(ds, "Manufacturer"),
        "manufacturer_model_name": _s(ds, "ManufacturerModelName"),
        "institution_name": _s(ds, "InstitutionName"),
        "station_name": _s(ds, "StationName"),
        "frame_of_reference_uid": _s(ds, "FrameOfReferenceUID"),
    }
    meta = None
    if not defer_json:
        try:
            meta = dataset_to_json(ds)
        except Exception as exc:  # noqa: BLE001
            raise InvalidDicom(f"{label}cannot represent the header as DICOM JSON: "
                               f"{_short(exc)}") from exc
    return ParsedInstance(
        data=data,
        sha256=sha256() if sha256 is not None and has_preamble else hashlib.sha256(data).hexdigest(),
        size=len(data),
        patient=patient,
        study=study,
        series=series,
        instance=instance,
        metadata_json=meta,
        warnings=notes,
        header=ds if defer_json else None,
    )


def _check_pixel_data_complete(data: bytes, pos: int, ts: str, label: str) -> None:
    """Refuse files whose pixel data element is cut short (the header parse cannot see it)."""
    if ts == DeflatedExplicitVRLittleEndian or pos >= len(data):
        return
    if pos + 8 > len(data):
        raise InvalidDicom(f"{label}truncated: the file ends inside the pixel data element header")
    big = ts == ExplicitVRBigEndian
    fmt = ">" if big else "<"
    group, elem = struct.unpack(fmt + "HH", data[pos:pos + 4])
    if ((group << 16) | elem) not in _PIXEL_TAGS:
        return
    vr = data[pos + 4:pos + 6]
    # some writers use implicit VR despite an explicit transfer syntax (pydicom reads those too)
    implicit = ts == ImplicitVRLittleEndian or not (vr.isalpha() and vr.isupper())
    if implicit:
        (length,) = struct.unpack(fmt + "L", data[pos + 4:pos + 8])
        start = pos + 8
    else:
        if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN"):
            if pos + 12 > len(data):
                raise InvalidDicom(f"{label}truncated inside the pixel data element header")
            (length,) = struct.unpack(fmt + "L", data[pos + 8:pos + 12])
            start = pos + 12
        else:
            (length,) = struct.unpack(fmt + "H", data[pos + 6:pos + 8])
            start = pos + 8
    if length == 0xFFFFFFFF:
        delim = _SEQ_DELIM_BE if big else _SEQ_DELIM
        if data.rfind(delim, start) < 0:
            raise InvalidDicom(
                f"{label}truncated: encapsulated pixel data has no sequence delimiter "
                f"(file is {len(data)} bytes)"
            )
    elif start + length > len(data):
        raise InvalidDicom(
            f"{label}truncated: pixel data declares {length} bytes but only "
            f"{len(data) - start} follow"
        )


def _wrap_part10(ds: Dataset, raw: bytes) -> tuple[bytes, str]:
    """Give a bare data set (no preamble) a Part 10 header, keeping its encoding."""
    implicit = getattr(ds, "is_implicit_VR", None)
    little = getattr(ds, "is_little_endian", True)
    if getattr(ds, "original_encoding", None):
        implicit, little = ds.original_encoding
    ts = ImplicitVRLittleEndian if implicit else (
        ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    existing_ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if existing_ts:
        ts = existing_ts
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    full = pydicom.dcmread(io.BytesIO(raw), force=True)
    full.file_meta = meta
    out = io.BytesIO()
    full.save_as(out, enforce_file_format=True, implicit_vr=None)
    return out.getvalue(), str(ts)


def _s(ds: Dataset, keyword: str) -> str:
    """The attribute as text ('' when absent or undecodable; values joined by backslashes)."""
    tag = tag_for_keyword(keyword)
    raw = ds._dict.get(tag) if tag is not None else None  # noqa: SLF001
    if raw is None and tag is not None:
        return ""  # absent (pydicom's get would look it up the long way and say the same)
    if isinstance(raw, RawDataElement):  # simple VRs: read from the bytes, as pydicom would
        text = _number_text(raw, tag)  # IS / DS as written (their JSON is numbers)
        if text is not None:
            return text
        fast = raw_json(raw)
        if fast is not None:
            values = fast.get("Value") or []
            if len(values) == 1:
                return str(values[0]).strip()
            return "\\".join(str(v) for v in values)
        key = value_key(tag, raw, character_set(ds))  # others: decoded once per distinct value
        if key is not None:
            text = _TEXT.get(key)
            return text if text is not None else remember(_TEXT, key, _s_decoded(ds, keyword))
    return _s_decoded(ds, keyword)


_TEXT: dict[tuple, str] = {}  # value_key -> _s_decoded (patient, study, series repeat)


def _number_text(raw: RawDataElement, tag: int) -> str | None:
    """An IS / DS value as pydicom prints it (each value without its padding), read from the
    bytes; ``None`` for other VRs or bytes that are not plain ASCII."""
    vr = raw.VR
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return None
    value = raw.value
    if vr not in ("IS", "DS") or not isinstance(value, bytes) or not value.isascii():
        return None
    parts = [v.strip(" \0") for v in value.decode("ascii").rstrip(" \0").split("\\")]
    if len(parts) == 1 and not parts[0]:
        return ""
    return "\\".join(parts)


def _s_decoded(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - undecodable values are treated as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str, notes: list[str]) -> int | None:
    raw = _s(ds, keyword)
    if not raw:
        return None
    try:
        return int(float(raw.split("\\")[0]))
    except ValueError:
        notes.append(f"{keyword} is not a number ({raw!r}); ignored")
        return None


def _float(ds: Dataset, keyword: str, notes: list[str]) -> float | None:
    raw = _s(ds, keyword)
    if not raw:
        return None
    try:
        return float(raw.split("\\")[0])
    except ValueError:
        notes.append(f"{keyword} is not a number ({raw!r}); ignored")
        return None


def _short(exc: object) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
