"""Real DIMSE peers for the tests and benchmarks: dcmtk tools, Orthanc, our own node as a
subprocess, and a generator of synthetic CT series.  Every peer gets a free port and
``TCP_NODELAY=1`` in its environment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.helpers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
PEER_ENV = {**os.environ, "TCP_NODELAY": "1"}


def have(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def make_ct_series(folder: Path, n: int, *, size: int = 512, patient_id: str = "BENCH1",
                   study_uid: str | None = None, seed: int = 0) -> list[Path]:
    """``n`` 16-bit CT slices (size x size) of one series, written as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4000, size=(size, size), dtype=np.uint16).tobytes()
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = f"Bench^{patient_id}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = f"ACC{patient_id}"[:16]
        ds.StudyID = "1"
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = pixels
        p = folder / f"ct{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


def dcmtk(tool: str, *args: str, timeout: float = 120, check: bool = False
          ) -> subprocess.CompletedProcess:
    return subprocess.run([tool, *args], env=PEER_ENV, capture_output=True, text=True,
                          timeout=timeout, check=check)


class HounsfieldServer:
    """``hounsfield serve`` as a subprocess (so it can be killed with -9)."""

    def __init__(self, data_dir: Path, *, port: int | None = None, env: dict | None = None,
                 ae_title: str = "HOUNSFIELD") -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.ae_title = ae_title
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HOUNSFIELD_PROFILE": "demo",
                    **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"serve-{self.port}.log"

    def start(self) -> HounsfieldServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from hounsfield.cli.main import app; app()", "--data-dir", str(self.data_dir),
             "serve", "--role", "dicom", "--dicom-port", str(self.port),
             "--ae-title", self.ae_title],
            env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60)
        return self

    def kill9(self) -> None:
        if self.proc:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Orthanc:
    """A throwaway Orthanc (Debian) with its own SQLite index and storage, on free ports.

    Orthanc 1.10 binds 0.0.0.0; it is used over loopback only.
    """

    def __init__(self, base: Path, *, modalities: dict[str, tuple[str, str, int]] | None = None,
                 aet: str = "ORTHANC", dicomweb: bool = False,
                 users: dict[str, str] | None = None, extra: dict | None = None) -> None:
        """``dicomweb``: load the DICOMweb plugin (``/dicom-web/``); ``users``: HTTP basic
        authentication with these user -> password pairs (REST calls here use the first);
        ``extra``: more configuration keys."""
        self.base = base
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.dicomweb = dicomweb
        self.users = users or {}
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self) -> Orthanc:
        self.base.mkdir(parents=True, exist_ok=True)
        cfg = {
            "Name": "hf-test", "StorageDirectory": str(self.base / "db"),
            "IndexDirectory": str(self.base / "db"), "DicomAet": self.aet,
            "DicomPort": self.dicom_port, "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True, "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowGet": True,
            "UnknownSopClassAccepted": True,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [], "StableAge": 60, "HttpServerEnabled": True,
            "DicomScpTimeout": 30, "StorageCompression": False,
            "MaximumStorageSize": 0, "ConcurrentJobs": 2, "LimitFindResults": 0,
            "LimitFindInstances": 0, "SaveJobs": False,
        }
        if self.dicomweb:
            plugins = self.base / "plugins"
            plugins.mkdir(exist_ok=True)
            if not (plugins / "libOrthancDicomWeb.so").exists():
                (plugins / "libOrthancDicomWeb.so").symlink_to(
                    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
            cfg["Plugins"] = [str(plugins)]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Ssl": False}
        if self.users:
            cfg["AuthenticationEnabled"] = True
            cfg["RegisteredUsers"] = dict(self.users)
        cfg.update(self.extra)
        (self.base / "orthanc.json").write_text(json.dumps(cfg))
        self.proc = subprocess.Popen(["Orthanc", str(self.base / "orthanc.json")], env=PEER_ENV,
                                     stdout=open(self.base / "orthanc.log", "wb"),
                                     stderr=subprocess.STDOUT)
        wait_port(self.http_port, timeout=60)
        wait_port(self.dicom_port, timeout=60)
        return self

    def rest(self, path: str, body: object | None = None) -> object:
        raw = self.rest_bytes(path, body)
        return json.loads(raw) if raw else None

    def rest_bytes(self, path: str, body: object | None = None) -> bytes:
        """The raw body of a REST call (``/instances/{id}/file``: the DICOM file)."""
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
        if self.users:
            import base64

            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.read()

    def upload(self, files: list[Path]) -> None:
        for f in files:
            self.rest("/instances", f.read_bytes())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_until(pred, timeout: float = 30.0, interval: float = 0.1) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return False


# -- pytest fixtures (imported by name into the DIMSE test modules) ---------------------------
import pytest  # noqa: E402


@pytest.fixture
def node_factory(tmp_path: Path):
    """Start in-process DICOM nodes: ``make(profile=..., **dicom_settings) -> DicomNode``."""
    from hounsfield.archive import Archive
    from hounsfield.config import load_settings
    from hounsfield.ingest.scp import DicomNode

    started = []

    def make(*, profile: str = "demo", data_dir: Path | None = None,
             database_url: str | None = None, **dicom) -> DicomNode:
        dicom.setdefault("port", free_port())
        settings = load_settings(data_dir=data_dir or tmp_path / f"var{len(started)}",
                                 profile=profile, dicom=dicom, database_url=database_url,
                                 secret_key=None if profile == "demo" else "x" * 32)
        archive = Archive.open(settings)
        node = DicomNode(archive)
        node.start()  # listening once start() returns (no probe: it would hold a slot)
        started.append((node, archive))
        return node

    yield make
    for node, archive in started:
        node.stop()
        archive.close()


def corpus_unique(names: list[str]) -> list[Path]:
    """Corpus files by name, keeping one file per SOPInstanceUID."""
    import pydicom

    from tests.helpers import corpus

    seen, out = set(), []
    for n in names:
        p = corpus(n)
        uid = str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
        if uid not in seen:
            seen.add(uid)
            out.append(p)
    return out


def sop_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def make_3d_sr_and_pdf(folder: Path) -> list[Path]:
    """A Comprehensive 3D SR (from pydicom's SR test file) and an Encapsulated PDF."""
    import pydicom
    from pydicom.uid import Comprehensive3DSRStorage, EncapsulatedPDFStorage

    from tests.helpers import corpus

    folder.mkdir(parents=True, exist_ok=True)
    sr = pydicom.dcmread(corpus("test-SR.dcm"))
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = Comprehensive3DSRStorage
    sr.SOPInstanceUID = sr.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sr.save_as(folder / "sr3d.dcm")
    pdf = Dataset()
    pdf.file_meta = FileMetaDataset()
    pdf.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pdf.SOPClassUID = pdf.file_meta.MediaStorageSOPClassUID = EncapsulatedPDFStorage
    pdf.SOPInstanceUID = pdf.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    pdf.StudyInstanceUID, pdf.SeriesInstanceUID = generate_uid(), generate_uid()
    pdf.PatientName, pdf.PatientID, pdf.Modality = "Pdf^Doc", "PDF1", "DOC"
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    pdf.save_as(folder / "doc.dcm", enforce_file_format=True)
    return [folder / "sr3d.dcm", folder / "doc.dcm"]
