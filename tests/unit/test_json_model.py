"""The index's DICOM JSON (PS3.18 F.2) read straight from encoded elements must equal what
pydicom's own per-element conversion gives, on every file of the offline corpus."""

from __future__ import annotations

import warnings
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from hounsfield.dicom.json_model import BULK_THRESHOLD, BULK_VRS, _length, dataset_to_json
from tests.helpers import corpus_files


def _reference(ds: Dataset, prefix: str = "") -> dict[str, Any]:
    """The JSON through pydicom's DataElement.to_json_dict for every element."""
    out: dict[str, Any] = {}
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag.element == 0x0000:
            continue
        tag = f"{elem.tag:08X}"
        path = f"{prefix}{tag}"
        if elem.VR == "SQ":
            items = [_reference(item, f"{path}/{i}/") for i, item in enumerate(elem.value or [])]
            out[tag] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif elem.VR in BULK_VRS and _length(elem) > BULK_THRESHOLD:
            out[tag] = {"vr": elem.VR, "BulkDataURI": f"bulkdata/{path}"}
        else:
            try:
                out[tag] = elem.to_json_dict(None, 1 << 30)
            except Exception:  # noqa: BLE001 - the same fallback as the index's
                out[tag] = {"vr": "UN"}
    return out


def _read(path):  # noqa: ANN001, ANN202
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - junk files of the corpus
            return None


def test_fast_json_equals_pydicom_on_the_corpus():
    compared = 0
    for path in corpus_files():
        fast_ds, ref_ds = _read(path), _read(path)
        if fast_ds is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                expected = _reference(ref_ds)
            except Exception:  # noqa: BLE001 - a file pydicom cannot walk at all
                continue
            got = dataset_to_json(fast_ds)
            again = dataset_to_json(_read(path))  # values converted before: from the cache
        # the fallback VR for values pydicom cannot convert is decided per element in both
        _normalise_unconvertible(got, expected)
        _normalise_unconvertible(again, expected)
        assert got == expected, path.name
        assert again == expected, path.name
        compared += 1
    assert compared > 100


def _normalise_unconvertible(got: dict, expected: dict) -> None:
    for tag, ref in expected.items():
        mine = got.get(tag)
        if ref == {"vr": "UN"} and isinstance(mine, dict) and set(mine) == {"vr"}:
            got[tag] = ref
        elif isinstance(ref, dict) and ref.get("vr") == "SQ" and isinstance(mine, dict):
            for a, b in zip(mine.get("Value", []), ref.get("Value", []), strict=False):
                _normalise_unconvertible(a, b)


@pytest.mark.parametrize("raw, vr, value", [
    (b"ORIGINAL\\PRIMARY\\AXIAL ", "CS", ["ORIGINAL", "PRIMARY", "AXIAL"]),
    (b"1.2.840.10008.1.2\x00", "UI", ["1.2.840.10008.1.2"]),
    (b"  STORESCU  ", "AE", ["STORESCU"]),
    (b"", "CS", None),
])
def test_raw_text_values(raw, vr, value):  # noqa: ANN001
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from hounsfield.dicom.json_model import raw_json

    got = raw_json(RawDataElement(Tag(0x0008, 0x0008), vr, len(raw), raw, 0, False, True))
    assert got == ({"vr": vr, "Value": value} if value else {"vr": vr})


def test_index_attributes_from_raw_elements_equal_pydicom():
    """parse_part10's attribute reader (raw bytes for simple VRs) against pydicom's values."""
    from hounsfield.archive import parse

    keywords = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                "Modality", "StudyDate", "StudyTime", "SeriesDate", "ContentTime", "Rows",
                "Columns", "BitsAllocated", "NumberOfFrames", "PhotometricInterpretation",
                "ImageType", "PatientSex", "FrameOfReferenceUID", "PixelSpacing",
                "ImagePositionPatient", "PatientName", "InstanceNumber", "SliceThickness"]
    compared = 0
    for path in corpus_files():
        fast_ds, ref_ds = _read(path), _read(path)
        if fast_ds is None:
            continue
        for k in keywords:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert parse._s(fast_ds, k) == parse._s_decoded(ref_ds, k), (path.name, k)
            compared += 1
    assert compared > 1000
