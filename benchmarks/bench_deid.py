"""De-identification throughput (instances/s) vs the pydicom read+write floor.

    python -m benchmarks.bench_deid [--n 1000] [--size 512]

Same in-memory Part 10 files, same run: the floor reads and re-writes every file with pydicom
(no de-identification); then the PS3.15 Basic Profile engine (``deidentify_bytes``: header
parsed and rewritten, encoded Pixel Data copied), then engine plus verifier (what
``hounsfield deid`` does per instance).  Target: >= 500 instances/s.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import pydicom

from benchmarks.common import machine, write_ct_series
from hounsfield.deid.engine import Deidentifier, deidentify_bytes
from hounsfield.deid.profile import DeidOptions
from hounsfield.deid.verify import Reference, verify


_ENGINE: Deidentifier | None = None


def _init() -> None:
    global _ENGINE
    warnings.simplefilter("ignore")
    _ENGINE = Deidentifier(b"bench-key", DeidOptions())


def _work(chunk: list[bytes]) -> int:
    for b in chunk:
        deidentify_bytes(_ENGINE, b)  # type: ignore[arg-type]
    return len(chunk)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-deid-"))
    try:
        files = write_ct_series(tmp / "src", args.n, size=args.size, studies=10)
        blobs = []
        for f in files:  # add the identifying header of a real CT
            ds = pydicom.dcmread(f)
            ds.InstitutionName = "St Elsewhere General"
            ds.ReferringPhysicianName = "Smith^John"
            ds.OperatorsName = "Jones^Ann"
            ds.AccessionNumber = "A123456"
            ds.PatientBirthDate = "19610704"
            ds.StationName = "CT01"
            ds.DeviceSerialNumber = "SN 42"
            ds.SeriesDescription = "CHEST W/O " + str(ds.PatientName)
            ds.private_block(0x0009, "ACME 1.0", create=True).add_new(0x01, "LO", "secret")
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            blobs.append(buf.getvalue())
        mb = sum(map(len, blobs)) / 1e6

        t0 = time.perf_counter()
        for b in blobs:
            out = io.BytesIO()
            pydicom.dcmread(io.BytesIO(b)).save_as(out, enforce_file_format=True)
        floor = time.perf_counter() - t0

        engine = Deidentifier(b"bench-key", DeidOptions())
        t0 = time.perf_counter()
        for b in blobs:
            deidentify_bytes(engine, b)
        ours = time.perf_counter() - t0

        from concurrent.futures import ProcessPoolExecutor

        workers = os.cpu_count() or 2
        with ProcessPoolExecutor(workers, initializer=_init) as pool:
            list(pool.map(_work, [blobs[:4]] * workers))  # start-up outside the clock
            t0 = time.perf_counter()
            chunks = [blobs[i:i + 32] for i in range(0, len(blobs), 32)]
            assert sum(pool.map(_work, chunks)) == len(blobs)
            parallel = time.perf_counter() - t0

        c0 = time.process_time()
        for b in blobs[:200]:
            deidentify_bytes(engine, b)
        cpu_per = (time.process_time() - c0) / min(200, len(blobs))

        t0 = time.perf_counter()
        leaks = 0
        for b in blobs:
            ref = Reference.of(pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True))
            out, res = deidentify_bytes(engine, b)
            leaks += len(verify(res.dataset, engine.options, original=ref))
        checked = time.perf_counter() - t0

        n = len(blobs)
        print(f"machine: {machine()}")
        print(f"{n} CT instances {args.size}x{args.size} ({mb:.0f} MB), in memory; leaks found: {leaks}")
        print("| step | instances/s | ratio to floor |")
        print("|---|---|---|")
        print(f"| pydicom read+write (floor, no de-id) | {n / floor:.0f} | 1.00 |")
        print(f"| Hounsfield de-identify (read, profile, write) | {n / ours:.0f} | {floor / ours:.2f} |")
        print(f"| Hounsfield de-identify + verify | {n / checked:.0f} | {floor / checked:.2f} |")
        print(f"| Hounsfield de-identify, {workers} worker processes | {n / parallel:.0f} | {floor / parallel:.2f} |")
        print(f"CPU time per instance (one process): {cpu_per * 1e3:.2f} ms = {1 / cpu_per:.0f} instances per CPU-second; "
              f"load average during the run: {os.getloadavg()[0]:.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
