"""C-FIND study-level latency over an archive of 10,000 studies: Hounsfield vs Orthanc.

Both archives hold the same 10,000 single-instance studies (synthetic, tiny pixels); the same
pynetdicom client sends the same study-level queries to both (one association per query, as a
PACS or viewer does) and we report the median and p95 wall time per query.

    PYTHONPATH=src:. python benchmarks/bench_cfind.py [--studies 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402,E501
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND  # noqa: E402

from hounsfield.pacs.scu import _on_open as nodelay  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from tests.dimse_peers import PEER_ENV, HounsfieldServer, Orthanc  # noqa: E402

NAMES = ["SMITH", "JONES", "GARCIA", "MUELLER", "ROSSI", "DUBOIS", "NOVAK", "TANAKA", "KIM",
         "SILVA", "COHEN", "IVANOV", "NIELSEN", "MURPHY", "KOWALSKI", "YILMAZ", "OKAFOR",
         "HANSEN", "LOPEZ", "BROWN"]


def make_studies(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    px = rng.integers(0, 100, (8, 8), dtype=np.uint16).tobytes()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        mr = i % 3 == 0
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage if mr else CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName = f"{NAMES[i % len(NAMES)]}^P{i:05d}"
        ds.PatientID = f"PID{i:05d}"
        ds.AccessionNumber = f"ACC{i:06d}"
        ds.StudyDate = f"{2000 + i % 25}{1 + i % 12:02d}{1 + i % 28:02d}"
        ds.StudyTime = "101010"
        ds.StudyDescription = "bench"
        ds.Modality = "MR" if mr else "CT"
        ds.SeriesNumber = ds.InstanceNumber = 1
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = px
        p = folder / f"s{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        out.append(p)
    return out


QUERIES = {
    "PatientID exact (1 match)": {"PatientID": "PID04321"},
    "AccessionNumber exact (1)": {"AccessionNumber": "ACC007777"},
    "PatientName wildcard (~5%)": {"PatientName": "TANAKA*"},
    "StudyDate one month (~1/300)": {"StudyDate": "20170601-20170630"},
    "Modality MR + year (~1%)": {"ModalitiesInStudy": "MR", "StudyDate": "20100101-20101231"},
}


def query(port: int, aec: str, filters: dict[str, str]) -> tuple[float, int]:
    ae = AE("BENCH")
    ae.add_requested_context(FIND)
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber",
              "ModalitiesInStudy", "StudyDescription"):
        setattr(ds, k, "")
    for k, v in filters.items():
        setattr(ds, k, v)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=aec,
                         evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])  # TCP_NODELAY
    n = 0
    for status, ident in assoc.send_c_find(ds, FIND):
        if status and status.Status in (0xFF00, 0xFF01):
            n += 1
    assoc.release()
    return time.perf_counter() - t0, n


def load(files: list[Path], port: int, aec: str) -> None:
    chunks = [files[i::4] for i in range(4)]
    procs = [subprocess.Popen(["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, c)],
                              env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c in chunks]
    for p in procs:
        if p.wait():
            raise RuntimeError("storescu failed while loading")


def measure(port: int, aec: str, repeat: int) -> dict[str, tuple[float, float, int]]:
    out = {}
    for name, f in QUERIES.items():
        times, n = [], 0
        for _ in range(repeat):
            t, n = query(port, aec, f)
            times.append(t)
        times.sort()
        out[name] = (statistics.median(times), times[int(0.95 * (len(times) - 1))], n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hf-cfind-"))
    try:
        files = make_studies(base / "studies", args.studies)
        hf = HounsfieldServer(base / "hf" / "var").start()
        orthanc = Orthanc(base / "orthanc").start()
        try:
            t = time.perf_counter()
            load(files, hf.port, "HOUNSFIELD")
            print(f"loaded Hounsfield in {time.perf_counter() - t:.0f} s", flush=True)
            t = time.perf_counter()
            load(files, orthanc.dicom_port, orthanc.aet)
            print(f"loaded Orthanc in {time.perf_counter() - t:.0f} s", flush=True)
            ours = measure(hf.port, "HOUNSFIELD", args.repeat)
            theirs = measure(orthanc.dicom_port, orthanc.aet, args.repeat)
        finally:
            hf.stop()
            orthanc.stop()
        print(f"\n{machine()}")
        print(f"C-FIND STUDY level over {args.studies} studies, {args.repeat} runs each "
              "(one association per query)\n")
        print("| query | matches | Hounsfield median / p95 ms | Orthanc median / p95 ms | "
              "speed-up (median) |")
        print("|---|---|---|---|---|")
        for name in QUERIES:
            m1, p1, n1 = ours[name]
            m2, p2, n2 = theirs[name]
            match = f"{n1}" if n1 == n2 else f"{n1} (Orthanc {n2})"
            print(f"| {name} | {match} | {m1 * 1e3:.1f} / {p1 * 1e3:.1f} | "
                  f"{m2 * 1e3:.1f} / {p2 * 1e3:.1f} | {m2 / m1:.2f}x |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
