"""The DIMSE data set codec: its fast writer must give pydicom's bytes exactly, and every
transfer syntax must round-trip."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from hounsfield.dicom.codec import (
    DEFLATED_LE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    _encode_flat,
    decode_dataset,
    encode_dataset,
)
from hounsfield.ingest import qr


def _pydicom(ds: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def _responses(with_values: bool = False) -> list:
    """C-FIND responses as the Q/R SCP builds them, at every level, with awkward values (and
    the index values each was built from)."""
    keys = ["PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate",
            "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
            "StudyDescription", "ReferencedStudySequence", "SeriesNumber", "Rows",
            "InstanceNumber", "RetrieveAETitle", "SOPInstanceUID", "SeriesInstanceUID"]
    values = [
        {"PatientName": "Doe^Jane", "PatientID": "P1", "StudyInstanceUID": "1.2.3",
         "ModalitiesInStudy": "CT\\MR", "NumberOfStudyRelatedInstances": 12},
        {"PatientName": "山田^太郎=ヤマダ^タロウ", "PatientID": "P2", "StudyInstanceUID": "1.2.34",
         "StudyDescription": "Thorax — low dose", "NumberOfStudyRelatedInstances": 0},
        {"PatientName": "Müller^Jürgen", "PatientID": "", "StudyInstanceUID": "1.2.3.4.5",
         "StudyDate": "20240101", "AccessionNumber": "A" * 16, "SeriesNumber": 3, "Rows": 512,
         "InstanceNumber": 65535, "SOPInstanceUID": "1.2.3.4.5.6.7"},
    ]
    out = []
    for level in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
        for v in values:
            ds = qr._response(qr.FindRequest(level, {}, keys), v, "HOUNSFIELD", None)
            out.append((ds, v) if with_values else ds)
    return out


@pytest.mark.parametrize("implicit", [True, False])
def test_fast_writer_equals_pydicom(implicit):
    for ds in _responses():
        assert _encode_flat(ds, implicit) == _pydicom(ds, implicit)


@pytest.mark.parametrize("ts", [IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE])
def test_round_trip_in_every_transfer_syntax(ts):
    for ds in _responses():
        raw = encode_dataset(ds, ts)
        assert len(raw) % 2 == 0
        back = decode_dataset(raw, ts)
        assert [(e.tag, str(e.value or "")) for e in back if e.VR != "SQ"] == \
            [(e.tag, str(e.value or "")) for e in ds if e.VR != "SQ"]


def test_what_the_fast_writer_leaves_to_pydicom():
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller"                   # Latin-1 text: pydicom's encoder
    assert _encode_flat(ds, True) is None
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    seq = Dataset()
    seq.ReferencedStudySequence = [item]         # a sequence with items
    assert _encode_flat(seq, False) is None
    assert decode_dataset(encode_dataset(seq, EXPLICIT_LE), EXPLICIT_LE) \
        .ReferencedStudySequence[0].ReferencedSOPInstanceUID == "1.2.3"


def test_responses_equal_the_keyword_built_ones():
    """The Q/R SCP builds response elements directly from the index's values; the bytes equal
    those of a data set built attribute by attribute the checked way (setattr)."""
    for ds, values in _responses(with_values=True):
        ref = Dataset()
        for elem in ds:
            v = values.get(elem.keyword, elem.value)
            setattr(ref, elem.keyword, "" if v is None else v)
        for implicit in (True, False):
            assert _pydicom(ds, implicit) == _pydicom(ref, implicit)
