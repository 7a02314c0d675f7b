"""Importer: real corpus, every transfer syntax, containers, bad input, concurrency."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel
import pydicom
import pytest
from pydicom.uid import UID

from hounsfield.archive.check import check
from hounsfield.archive.query import find_studies, instances_of
from hounsfield.ingest.importer import import_paths
from tests.helpers import PYDICOM_CHARSETS, PYDICOM_DATA, PYDICOM_FILES, corpus, corpus_files
from tests.unit.test_archive_store import make_ds, to_bytes

NIBABEL_DICOM = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"


def test_whole_offline_corpus(any_archive):
    """Every file of the corpus ends in exactly one bucket; the archive stays consistent."""
    roots = [PYDICOM_FILES, PYDICOM_CHARSETS, PYDICOM_DATA, NIBABEL_DICOM]
    n_files = sum(1 for r in roots for p in r.rglob("*") if p.is_file())
    report = import_paths(any_archive, roots)
    assert report.imported > 100
    assert report.seen == n_files
    # blobs are the exact bytes of the Part 10 files that had a preamble
    with any_archive.session() as s:
        for inst in instances_of(s, pydicom.dcmread(corpus("CT_small.dcm")).StudyInstanceUID):
            assert any_archive.blobs.read(inst.blob_key) == corpus("CT_small.dcm").read_bytes()
    r = check(any_archive, verify_hashes=True)
    assert r.clean, r


def test_every_transfer_syntax_is_imported_headers_only(archive):
    """One file per transfer syntax in the corpus is stored byte-identical (nothing decoded)."""
    by_ts: dict[str, Path] = {}
    for f in corpus_files():
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            ts = str(ds.file_meta.TransferSyntaxUID)
            if "SOPInstanceUID" in ds and "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
                by_ts.setdefault(ts, f)
        except Exception:  # noqa: BLE001
            continue
    names = {UID(ts).name for ts in by_ts}
    for wanted in ("JPEG Baseline (Process 1)", "JPEG Lossless, Non-Hierarchical, First-Order "
                   "Prediction (Process 14 [Selection Value 1])", "JPEG-LS Lossless Image Compression",
                   "JPEG 2000 Image Compression (Lossless Only)", "RLE Lossless",
                   "Deflated Explicit VR Little Endian", "Explicit VR Big Endian",
                   "Implicit VR Little Endian"):
        assert wanted in names, f"corpus lacks {wanted}"
    for ts, f in by_ts.items():
        report = import_paths(archive, [f])
        assert not report.refused, (ts, report.refused)
        sop = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        with archive.session() as s:
            (inst,) = instances_of(s, sop)
            if report.imported:  # else: a sibling file in another syntax shares the UID
                assert inst.transfer_syntax_uid == ts
                assert archive.blobs.read(inst.blob_key) == f.read_bytes()
            else:
                assert report.conflicts or report.duplicates


def test_dicomdir_and_zip(archive, tmp_path):
    dicomdir = PYDICOM_FILES / "dicomdirtests" / "DICOMDIR"
    r1 = import_paths(archive, [dicomdir])
    assert r1.imported > 10 and not r1.refused
    zpath = tmp_path / "study.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.write(corpus("CT_small.dcm"), "a/CT_small.dcm")
        zf.write(corpus("MR_small.dcm"), "b/MR_small.dcm")
        zf.writestr("../../evil.dcm", corpus("MR_small.dcm").read_bytes())
        zf.writestr("/abs.dcm", b"x")
    r2 = import_paths(archive, [zpath])
    assert r2.imported == 2
    reasons = dict(r2.refused)
    assert any("path traversal" in why for why in reasons.values())
    assert len(r2.refused) == 2
    assert not (tmp_path.parent / "evil.dcm").exists()


def test_gzip_dicom_from_nibabel(archive):
    r = import_paths(archive, [NIBABEL_DICOM / "siemens_dwi_0.dcm.gz"])
    assert r.imported == 1


def good_bytes(**kw) -> bytes:
    return to_bytes(make_ds(**kw))


@pytest.mark.parametrize("case,data,reason", [
    ("empty", b"", "empty file"),
    ("junk", b"hello, not dicom" * 10, "not a DICOM file"),
    ("nosop", None, "missing required attribute(s): SOPInstanceUID"),
    ("nostudy", None, "StudyInstanceUID"),
    ("truncated", None, "truncated"),
])
def test_bad_input_refused_with_reason(archive, tmp_path, case, data, reason):
    if case == "nosop":
        ds = make_ds()
        del ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
        data = to_bytes(ds)
    elif case == "nostudy":
        ds = make_ds()
        del ds.StudyInstanceUID
        data = to_bytes(ds)
    elif case == "truncated":
        data = corpus("CT_small.dcm").read_bytes()[:-1000]
    f = tmp_path / f"{case}.dcm"
    f.write_bytes(data)
    r = import_paths(archive, [f])
    assert r.imported == 0 and len(r.refused) == 1
    assert reason in r.refused[0][1]
    assert list(archive.blobs.keys()) == []
    with archive.session() as s:
        assert find_studies(s, {}) == []


def test_no_preamble_and_odd_values_accepted_with_warnings(archive, tmp_path):
    ds = make_ds(InstanceNumber="12", SliceThickness="1.0")
    raw = to_bytes(ds)
    bare = pydicom.dcmread(io.BytesIO(raw))
    bare.preamble = None
    bare.file_meta = pydicom.dataset.FileMetaDataset()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, bare, enforce_file_format=False, implicit_vr=True, little_endian=True)
    body = buf.getvalue()
    assert body[128:132] != b"DICM"
    # an odd IS value, written raw (scanners do send these)
    f = tmp_path / "bare.dcm"
    f.write_bytes(body)
    r = import_paths(archive, [f])
    assert r.imported == 1
    assert any("preamble" in w for _n, w in r.warnings)
    odd = to_bytes(make_ds(InstanceNumber="987654"))
    assert odd.count(b"987654") == 1
    g = tmp_path / "odd.dcm"
    g.write_bytes(odd.replace(b"987654", b"twelve"))  # InstanceNumber (IS) that is not a number
    r2 = import_paths(archive, [g])
    assert r2.imported == 1
    assert any("InstanceNumber" in w for _n, w in r2.warnings)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any folder (CI runs as root)")
def test_unreadable_directory(archive, tmp_path):
    """A folder the importer cannot list is refused with its reason; the rest is imported."""
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.dcm").write_bytes(good_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        r = import_paths(archive, [tmp_path])
    finally:
        locked.chmod(0o755)
    assert r.imported == 1
    assert any("cannot read directory" in why for _n, why in r.refused)


def test_unreadable_directory_as_root_uses_missing_path(archive, tmp_path):
    r = import_paths(archive, [tmp_path / "nope"])
    assert r.refused == [(str(tmp_path / "nope"), "no such file or directory")]


def _cli(data_dir: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hounsfield.cli", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, **kw)


def _many_files(folder: Path, n: int, study: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i:05d}.dcm").write_bytes(good_bytes(InstanceNumber=i + 1, PatientID=f"P{i % 7}",
                                                         study=study or pydicom.uid.generate_uid()))


def test_two_imports_at_once_corrupt_nothing(tmp_path):
    src = tmp_path / "src"
    _many_files(src, 300)
    data = tmp_path / "var"
    _cli(data, "db", "upgrade", check=True)
    procs = [subprocess.Popen([sys.executable, "-m", "hounsfield.cli", "--data-dir", str(data),
                               "import", str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()
    out = _cli(data, "check", "--verify-hashes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "300 indexed instances, 300 blobs" in out.stdout


def test_kill_minus_9_mid_import_then_check_and_rerun(tmp_path):
    src = tmp_path / "src"
    _many_files(src, 1500)
    data = tmp_path / "var"
    _cli(data, "db", "upgrade", check=True)
    p = subprocess.Popen([sys.executable, "-m", "hounsfield.cli", "--data-dir", str(data), "import",
                          str(src)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    # wait until some blobs exist, then kill -9 in the middle of the import
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(len(f) for _d, _s, f in os.walk(data / "blobs")) > 200 if (data / "blobs").exists() else False:
            break
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)  # the import and its worker processes, as a crash would
    p.wait()
    first = _cli(data, "check")
    # a consistent archive: at most orphans/temp files, never a row without its blob
    assert "rows without blob" not in first.stdout, first.stdout
    assert "blobs with wrong size" not in first.stdout, first.stdout
    _cli(data, "check", "--repair", check=True)
    rerun = _cli(data, "import", str(src))
    assert rerun.returncode == 0, rerun.stderr
    final = _cli(data, "check", "--verify-hashes")
    assert final.returncode == 0, final.stdout
    assert "1500 indexed instances, 1500 blobs" in final.stdout
