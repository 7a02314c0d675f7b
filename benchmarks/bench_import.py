"""Import throughput vs the parsing floor (pydicom dcmread(stop_before_pixels=True)).

    python -m benchmarks.bench_import [--n 2000]

Same files, same run: first the floor (every file read and parsed, headers only), then
``hounsfield import`` into a fresh archive with durability on (fsync of every blob and its
folder, SQLite WAL synchronous=FULL).  Prints instances/s, MB/s and our share of the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import pydicom

from benchmarks.common import machine, write_ct_series
from hounsfield.archive import Archive
from hounsfield.config import load_settings
from hounsfield.ingest.importer import import_paths


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-import-"))
    try:
        files = write_ct_series(tmp / "src", args.n, studies=8)
        mb = sum(f.stat().st_size for f in files) / 1e6
        # warm the page cache equally for both runs
        for f in files:
            f.read_bytes()
        t0 = time.perf_counter()
        for f in files:
            pydicom.dcmread(f, stop_before_pixels=True)
        floor = time.perf_counter() - t0

        # the disk's floor for a durable copy: write each file's bytes to a new file + fsync
        copy_dir = tmp / "copy"
        copy_dir.mkdir()
        t0 = time.perf_counter()
        for f in files:
            data = f.read_bytes()
            fd = os.open(copy_dir / f.name, os.O_WRONLY | os.O_CREAT, 0o640)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
        fd = os.open(copy_dir, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        copy_floor = time.perf_counter() - t0
        shutil.rmtree(copy_dir)

        archive = Archive.open(load_settings(data_dir=tmp / "var", profile="demo"))
        t0 = time.perf_counter()
        report = import_paths(archive, [tmp / "src"])
        ours = time.perf_counter() - t0
        assert report.imported == args.n, report
        archive.close()
        print(f"machine: {machine()}")
        print(f"{args.n} CT instances 512x512x16-bit, {mb:.0f} MB")
        print("| what | s | instances/s | MB/s | share of floor |")
        print("|---|---|---|---|---|")
        print(f"| pydicom dcmread(stop_before_pixels=True) (floor) | {floor:.2f} | "
              f"{args.n / floor:.0f} | {mb / floor:.0f} | 100% |")
        print(f"| durable copy (read + write + fsync each file, one thread) | {copy_floor:.2f} | "
              f"{args.n / copy_floor:.0f} | {mb / copy_floor:.0f} | {floor / copy_floor * 100:.0f}% |")
        print(f"| hounsfield import (fsync on) | {ours:.2f} | {args.n / ours:.0f} | "
              f"{mb / ours:.0f} | {floor / ours * 100:.0f}% |")
        print(f"ours / durable copy: {copy_floor / ours:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
