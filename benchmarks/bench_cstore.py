"""C-STORE ingest benchmark: Hounsfield vs Orthanc (Debian, SQLite index) vs dcmtk storescp.

1,000 synthetic 512x512 16-bit CT instances (generated into a temporary folder, not committed)
are sent by dcmtk's storescu (TCP_NODELAY=1) over 1 association and over 4 in parallel, to
each receiver in turn, on the same machine in the same run.  Hounsfield runs as
``hounsfield serve`` with durability on (fsync + index commit before each acknowledgement).
Besides the rates it prints the CPU time the whole machine spent per instance while each
receiver was fed (senders, receiver and kernel together, from /proc/stat) and how busy the
CPUs were: where the ratio to Orthanc is bounded by this machine's cores rather than by
waiting, that column shows it.

    PYTHONPATH=src:. python benchmarks/bench_cstore.py [--n 1000] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dimse_peers import PEER_ENV, HounsfieldServer, Orthanc, make_ct_series  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from tests.helpers import free_port, wait_port  # noqa: E402


class Sent(NamedTuple):
    secs: float
    cpu_s: float  # CPU time of the whole machine while sending (every process, and the kernel)
    busy: float  # share of the machine's CPUs busy while sending


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)  # idle and iowait are not busy


def send(files: list[Path], port: int, aec: str, assocs: int) -> Sent:
    chunks = [files[i::assocs] for i in range(assocs)]
    b0, j0 = _machine_jiffies()
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aec", aec, "127.0.0.1", str(port), *map(str, c)],
                              env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for c in chunks]
    for p in procs:
        _out, err = p.communicate()
        if p.returncode:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    secs = time.perf_counter() - t0
    b1, j1 = _machine_jiffies()
    return Sent(secs, (b1 - b0) / os.sysconf("SC_CLK_TCK"), (b1 - b0) / max(j1 - j0, 1))


def run_hounsfield(files, work: Path, assocs: int) -> Sent:
    server = HounsfieldServer(work / "hf" / "var").start()
    try:
        return send(files, server.port, "HOUNSFIELD", assocs)
    finally:
        server.stop()


def run_hounsfield_pynetdicom(files, work: Path, assocs: int) -> Sent:
    """The same node with the lean storage path off: every association through pynetdicom."""
    server = HounsfieldServer(work / "hf" / "var",
                              env={"HOUNSFIELD_DICOM__LEAN_STORAGE": "false"}).start()
    try:
        return send(files, server.port, "HOUNSFIELD", assocs)
    finally:
        server.stop()


def run_hounsfield_x2(files, work: Path, assocs: int) -> Sent:
    """Two `serve` processes sharing the port and the data dir (dicom.reuse_port)."""
    env = {"HOUNSFIELD_DICOM__REUSE_PORT": "true"}
    first = HounsfieldServer(work / "hf" / "var", env=env).start()
    second = HounsfieldServer(work / "hf" / "var", port=first.port, env=env).start()
    # the port answers as soon as the first listens: wait until the second has started too
    # (both log to the same file), or its start-up would be timed with the transfer
    deadline = time.monotonic() + 60
    while second.log.read_text(errors="replace").count("Ctrl-C") < 2:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the second node did not start: see {second.log}")
        time.sleep(0.1)
    try:
        return send(files, first.port, "HOUNSFIELD", assocs)
    finally:
        second.stop()
        first.stop()


def run_orthanc(files, work: Path, assocs: int) -> Sent:
    orthanc = Orthanc(work / "orthanc").start()
    try:
        return send(files, orthanc.dicom_port, orthanc.aet, assocs)
    finally:
        orthanc.stop()


def run_storescp(files, work: Path, assocs: int) -> Sent:
    port = free_port()
    out = work / "storescp"
    out.mkdir(parents=True)
    p = subprocess.Popen(["storescp", "--fork", "-od", str(out), str(port)], env=PEER_ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return send(files, port, "STORESCP", assocs)
    finally:
        p.terminate()
        p.wait(10)


RECEIVERS = {"Hounsfield": run_hounsfield,
             "Hounsfield, pynetdicom path": run_hounsfield_pynetdicom,
             "Hounsfield x2 processes": run_hounsfield_x2,
             "Orthanc": run_orthanc, "storescp (disk)": run_storescp}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--assocs", default="1,4")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="hf-bench-"))
    try:
        files = make_ct_series(base / "ct", args.n, size=args.size)
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{args.n} CT instances {args.size}x{args.size} 16-bit, {mb:.0f} MB; "
              f"storescu with TCP_NODELAY=1; {machine()}")
        results: dict[tuple[str, int], Sent] = {}
        for assocs in [int(a) for a in args.assocs.split(",")]:
            for name, fn in RECEIVERS.items():
                work = base / f"{name.replace(' ', '_')}-{assocs}"
                sent = fn(files, work, assocs)
                results[(name, assocs)] = sent
                shutil.rmtree(work, ignore_errors=True)
                print(f"  {name:24s} {assocs} assoc: {args.n / sent.secs:7.1f} inst/s", flush=True)
        print()
        print("| receiver | associations | instances/s | MB/s | vs Orthanc "
              "| machine CPU per instance (busy) |")
        print("|---|---|---|---|---|---|")
        for (name, assocs), sent in results.items():
            ratio = results[("Orthanc", assocs)].secs / sent.secs
            print(f"| {name} | {assocs} | {args.n / sent.secs:.0f} | {mb / sent.secs:.1f} "
                  f"| {ratio:.2f}x | {sent.cpu_s / args.n * 1000:.2f} ms ({sent.busy:.0%}) |")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
