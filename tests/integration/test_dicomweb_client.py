"""dicomweb-client (a real DICOMweb client) against our server: STOW, QIDO, WADO round trips."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from hounsfield.archive.models import Instance
from tests.helpers import corpus
from tests.web_data import ct_series, to_bytes
from tests.web_fixtures import admin_token, client, ct, live  # noqa: F401

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def stored(client, ct):  # noqa: ANN001, F811
    cts, seg = ct
    result = client.store_instances(cts + [seg])
    assert len(result.ReferencedSOPSequence) == 5
    assert "FailedSOPSequence" not in result
    mr = pydicom.dcmread(corpus("MR_small_jpeg_ls_lossless.dcm"))
    client.store_instances([mr])
    return cts, seg, mr


def test_qido_studies_matching(client, stored):  # noqa: ANN001
    cts, _seg, _mr = stored
    uid = cts[0].StudyInstanceUID
    found = client.search_for_studies(search_filters={"PatientName": "doe*"})
    assert [s["0020000D"]["Value"][0] for s in found] == [uid]
    (study,) = found
    assert study["00080061"]["Value"] == ["CT", "SEG"]
    assert study["00201206"]["Value"] == [2] and study["00201208"]["Value"] == [5]
    assert client.search_for_studies(search_filters={"StudyDate": "20240101-20240131"})
    assert not client.search_for_studies(search_filters={"StudyDate": "20250101-"})
    assert client.search_for_studies(search_filters={"ModalitiesInStudy": "SEG"})
    assert len(client.search_for_studies()) == 2
    assert len(client.search_for_studies(limit=1)) == 1
    assert len(client.search_for_studies(offset=1)) == 1
    # includefield from the index and from an instance's metadata
    (s,) = client.search_for_studies(search_filters={"StudyInstanceUID": uid},
                                     fields=["InstitutionName", "00180060"])
    assert s["00180060"]["Value"] == [120]


def test_qido_series_and_instances(client, stored):  # noqa: ANN001
    cts, seg, _mr = stored
    st = cts[0].StudyInstanceUID
    series = client.search_for_series(st)
    assert {s["00080060"]["Value"][0] for s in series} == {"CT", "SEG"}
    ct_only = client.search_for_series(st, search_filters={"Modality": "CT"})
    assert ct_only[0]["00201209"]["Value"] == [4]
    inst = client.search_for_instances(st, cts[0].SeriesInstanceUID)
    assert [i["00200013"]["Value"][0] for i in inst] == [1, 2, 3, 4]
    everything = client.search_for_instances(st, cts[0].SeriesInstanceUID, fields=["all"])
    assert everything[0]["00280030"]["Value"] == [1.0, 1.0]  # PixelSpacing from the metadata
    assert len(client.search_for_instances()) == 6
    assert client.search_for_series(search_filters={"SeriesInstanceUID": seg.SeriesInstanceUID})


def test_wado_retrieve_and_transfer_syntaxes(client, stored):  # noqa: ANN001
    cts, seg, mr = stored
    st, se = cts[0].StudyInstanceUID, cts[0].SeriesInstanceUID
    study = client.retrieve_study(st)
    assert len(study) == 5
    series = client.retrieve_series(st, se)
    assert sorted(int(d.InstanceNumber) for d in series) == [1, 2, 3, 4]
    np.testing.assert_array_equal(series[0].pixel_array,
                                  next(c for c in cts if c.SOPInstanceUID == series[0].SOPInstanceUID).pixel_array)
    # stored JPEG-LS: '*' gives the stored bytes, explicit VR LE decodes, RLE re-encodes
    args = (mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID)
    as_stored = client.retrieve_instance(*args, media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == JPEGLSLossless
    native = client.retrieve_instance(*args, media_types=(("application/dicom", ExplicitVRLittleEndian),))
    assert native.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    rle = client.retrieve_instance(*args, media_types=(("application/dicom", RLELossless),))
    assert rle.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(native.pixel_array, mr.pixel_array)
    np.testing.assert_array_equal(rle.pixel_array, mr.pixel_array)


def test_wado_metadata_from_the_index_cache(client, stored, live):  # noqa: ANN001, F811
    cts, seg, _mr = stored
    st, se = cts[0].StudyInstanceUID, cts[0].SeriesInstanceUID
    meta = client.retrieve_series_metadata(st, se)
    assert len(meta) == 4
    bulk = meta[0]["7FE00010"]["BulkDataURI"]
    assert bulk.startswith(live.dicomweb + f"/studies/{st}/series/{se}/instances/")
    # metadata comes from the index's JSON cache: it is served even when the files are gone
    with live.archive.session() as s:
        keys = [i.blob_key for i in s.query(Instance).filter(Instance.sop_class_uid == seg.SOPClassUID)]
    path = live.archive.blobs.path(keys[0])
    saved = path.read_bytes()
    path.unlink()
    try:
        seg_meta = client.retrieve_series_metadata(st, seg.SeriesInstanceUID)
        assert seg_meta[0]["00620002"]["Value"][0]["00620005"]["Value"] == ["sphere"]
    finally:
        path.write_bytes(saved)
    study_meta = client.retrieve_study_metadata(st)
    assert len(study_meta) == 5
    # the BulkDataURI resolves
    (pixels,) = client.retrieve_bulkdata(bulk)
    first = next(c for c in cts if c.SOPInstanceUID in bulk)
    assert pixels == first.PixelData


def test_wado_frames_stored_and_transcoded(client, stored):  # noqa: ANN001
    cts, _seg, mr = stored
    c = cts[1]
    frames = client.retrieve_instance_frames(c.StudyInstanceUID, c.SeriesInstanceUID,
                                             c.SOPInstanceUID, [1])
    assert frames[0] == c.PixelData
    args = (mr.StudyInstanceUID, mr.SeriesInstanceUID, mr.SOPInstanceUID, [1])
    raw = client.retrieve_instance_frames(*args, media_types=(("application/octet-stream", "*"),))
    assert raw[0][:2] == b"\xff\xd8"  # the stored JPEG-LS codestream
    native = client.retrieve_instance_frames(
        *args, media_types=(("application/octet-stream", ExplicitVRLittleEndian),))
    assert np.frombuffer(native[0], "<i2").reshape(64, 64).tolist() == mr.pixel_array.tolist()


def test_wado_rendered_and_thumbnails(client, stored, live, admin_token):  # noqa: ANN001, F811
    cts, _seg, _mr = stored
    c = cts[2]
    jpeg = client.retrieve_instance_rendered(c.StudyInstanceUID, c.SeriesInstanceUID,
                                             c.SOPInstanceUID)
    img = np.asarray(Image.open(io.BytesIO(jpeg)))
    assert img.shape == (32, 32) and img.std() > 20  # the sphere and the cylinder show
    png = client.retrieve_instance_rendered(c.StudyInstanceUID, c.SeriesInstanceUID,
                                            c.SOPInstanceUID, media_types=("image/png",),
                                            params={"window": "0,100"})
    assert png[:4] == b"\x89PNG"
    h = {"Authorization": f"Bearer {admin_token}"}
    r = requests.get(f"{live.dicomweb}/studies/{c.StudyInstanceUID}/thumbnail",
                     params={"viewport": "16,16"}, headers=h, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (16, 16)


def _multipart(parts: list[bytes], boundary: str = "b0und4ry") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def test_stow_status_semantics(live, admin_token):  # noqa: ANN001, F811
    h = {"Authorization": f"Bearer {admin_token}", "Accept": "application/dicom+json"}
    new = ct_series(2, 16, seed="stow-semantics")
    body, ctype = _multipart([to_bytes(d) for d in new])
    r = requests.post(live.dicomweb + "/studies", data=body, headers={**h, "Content-Type": ctype},
                      timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    # the same again: duplicates with identical bytes are success
    r = requests.post(live.dicomweb + "/studies", data=body, headers={**h, "Content-Type": ctype},
                      timeout=30)
    assert r.status_code == 200
    # one good, one not DICOM -> 202 with a FailedSOPSequence
    other = ct_series(1, 16, seed="stow-partial")
    body, ctype = _multipart([to_bytes(other[0]), b"this is not DICOM"])
    r = requests.post(live.dicomweb + "/studies", data=body, headers={**h, "Content-Type": ctype},
                      timeout=30)
    assert r.status_code == 202
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    # same SOP Instance UID, different content: conflict, nothing stored -> 409
    changed = new[0].copy()
    changed.PatientName = "SOMEONE^ELSE"
    body, ctype = _multipart([to_bytes(changed)])
    r = requests.post(live.dicomweb + "/studies", data=body, headers={**h, "Content-Type": ctype},
                      timeout=30)
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0x0111]
    # study UID in the URL must match
    body, ctype = _multipart([to_bytes(ct_series(1, 16, seed="stow-wrong-study")[0])])
    r = requests.post(f"{live.dicomweb}/studies/{new[0].StudyInstanceUID}", data=body,
                      headers={**h, "Content-Type": ctype}, timeout=30)
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def test_wado_uri(live, stored, admin_token):  # noqa: ANN001, F811
    cts, _seg, _mr = stored
    c = cts[0]
    params = {"requestType": "WADO", "studyUID": c.StudyInstanceUID,
              "seriesUID": c.SeriesInstanceUID, "objectUID": c.SOPInstanceUID}
    h = {"Authorization": f"Bearer {admin_token}"}
    r = requests.get(live.dicomweb + "/wado", params=params, headers=h, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(r.content)).SOPInstanceUID == c.SOPInstanceUID
    r = requests.get(live.dicomweb + "/wado", params={**params, "contentType": "image/png"},
                     headers=h, timeout=30)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    r = requests.get(live.dicomweb + "/wado", params={**params, "requestType": "X"}, headers=h,
                     timeout=30)
    assert r.status_code == 400
