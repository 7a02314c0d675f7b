"""DICOMweb benchmark: Hounsfield vs Orthanc + orthanc-dicomweb, same data, same run.

1. WADO-RS series metadata of a CT series (default 300 instances, 512x512): p50 / p95.
2. QIDO-RS study searches over an archive of 10,000 studies: p50 / p95 per query.
3. WADO-RS frames served to 8 concurrent clients: frames/s and MB/s.

Both servers run as their own processes on loopback (ours: ``hounsfield web``, a single uvicorn
process, audit on; Orthanc 1.10 from Debian with its DICOMweb plugin, default threads), and the
same Python client (requests, keep-alive) measures both.  Prints a table with the ratios.

    PYTHONPATH=src python benchmarks/bench_dicomweb.py [--instances 300] [--studies 10000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from hounsfield.archive import Archive  # noqa: E402
from hounsfield.archive.parse import parse_part10  # noqa: E402
from hounsfield.archive.store import store_instances  # noqa: E402
from hounsfield.config import load_settings  # noqa: E402
from hounsfield.web import auth  # noqa: E402
from tests.helpers import free_port, wait_port  # noqa: E402
from tests.web_data import ct_series, to_bytes  # noqa: E402
from tests.web_server import OrthancServer  # noqa: E402


def small_study(i: int) -> bytes:
    """One tiny CT instance per study, with varied names, IDs, dates and modalities."""
    ds = ct_series(1, 8, seed=f"bench-{i}", patient=f"PATIENT{i % 2000:04d}^ANON",
                   patient_id=f"ID{i:05d}", study_date=f"20{10 + i % 14:02d}{1 + i % 12:02d}"
                   f"{1 + i % 28:02d}", accession=f"A{i:06d}", description=f"STUDY {i % 50}")[0]
    if i % 3 == 1:
        ds.Modality = "MR"
    return to_bytes(ds)


def percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    return statistics.median(s) * 1000, s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))] * 1000


def timed(session: requests.Session, url: str, n: int, **kw) -> tuple[float, float, int]:
    session.get(url, **kw).raise_for_status()  # warm
    samples = []
    size = 0
    for _ in range(n):
        t = time.perf_counter()
        r = session.get(url, **kw)
        r.raise_for_status()
        size = len(r.content)
        samples.append(time.perf_counter() - t)
    p50, p95 = percentiles(samples)
    return p50, p95, size


def frames_per_second(base: str, headers: dict, paths: list[str], clients: int,
                      seconds: float) -> tuple[float, float]:
    stop = time.monotonic() + seconds
    counts = [0] * clients
    volume = [0] * clients
    accept = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}

    def worker(k: int) -> None:
        s = requests.Session()
        i = k * 37
        while time.monotonic() < stop:
            r = s.get(base + paths[i % len(paths)], headers={**headers, **accept}, timeout=60)
            r.raise_for_status()
            counts[k] += 1
            volume[k] += len(r.content)
            i += 1

    t = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t
    return sum(counts) / elapsed, sum(volume) / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hf-bench-dw-"))
    ours_proc = None
    orthanc = None
    try:
        print(f"generating a {args.instances}-instance {args.size}x{args.size} CT series and "
              f"{args.studies} one-instance studies ...", flush=True)
        ct = [to_bytes(d) for d in ct_series(args.instances, args.size, seed="bench-series")]
        studies = [small_study(i) for i in range(args.studies)]

        settings = load_settings(data_dir=work / "ours", profile="demo", fsync=False)
        archive = Archive.open(settings)
        t = time.perf_counter()
        for chunk in range(0, len(studies), 500):
            store_instances(archive, [parse_part10(b) for b in studies[chunk:chunk + 500]],
                            source="bench")
        store_instances(archive, [parse_part10(b) for b in ct], source="bench")
        print(f"  loaded ours in {time.perf_counter() - t:.1f} s", flush=True)
        auth.create_user(archive, "bench", "service", None)
        token, _ = auth.issue_token(archive, "bench", days=1)
        archive.close()

        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HOUNSFIELD_FSYNC="false")
        ours_proc = subprocess.Popen(
            [sys.executable, "-c", "from hounsfield.cli.main import app; app()", "--data-dir", str(work / "ours"),
             "--profile", "demo", "web", "--http-port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "ours.log", "wb"))
        wait_port(port, timeout=60)
        ours = (f"http://127.0.0.1:{port}/dicom-web", {"Authorization": f"Bearer {token}"})

        orthanc = OrthancServer(work / "orthanc")
        orthanc.start()
        t = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(orthanc.upload, studies + ct))
        print(f"  loaded Orthanc in {time.perf_counter() - t:.1f} s", flush=True)
        theirs = (orthanc.dicomweb, {})

        first = parse_part10(ct[0])
        st, se = first.study_instance_uid, first.series_instance_uid
        sops = [parse_part10(b).sop_instance_uid for b in ct]
        rows = []
        for label, path, params in [
            (f"WADO-RS series metadata ({args.instances} inst.)",
             f"/studies/{st}/series/{se}/metadata", None),
            ("QIDO studies: OHIF list (limit=101)", "/studies",
             {"limit": "101", "offset": "0", "includefield": "00081030,00080060"}),
            ("QIDO studies: PatientID exact", "/studies", {"PatientID": "ID04242"}),
            ("QIDO studies: PatientName wildcard", "/studies",
             {"PatientName": "PATIENT123*", "limit": "101"}),
            ("QIDO studies: date range + modality", "/studies",
             {"StudyDate": "20150101-20151231", "ModalitiesInStudy": "MR", "limit": "101"}),
        ]:
            result = []
            for base, headers in (ours, theirs):
                s = requests.Session()
                result.append(timed(s, base + path, args.repeat, headers=headers, params=params,
                                    timeout=120))
            rows.append((label, result[0], result[1]))

        paths = [f"/studies/{st}/series/{se}/instances/{sop}/frames/1" for sop in sops]
        fps = [frames_per_second(base, headers, paths, args.clients, args.seconds)
               for base, headers in (ours, theirs)]

        print()
        print(f"machine: {os.cpu_count()}-core CPU, loopback; {args.repeat} repetitions")
        print(f"{'measure':44} {'ours p50/p95 ms':>18} {'Orthanc p50/p95 ms':>20} "
              f"{'Orthanc/ours (p50)':>18}")
        for label, a, b in rows:
            print(f"{label:44} {a[0]:8.1f} /{a[1]:7.1f} {b[0]:9.1f} /{b[1]:8.1f} "
                  f"{b[0] / a[0]:17.1f}x")
        print(f"{'WADO-RS frames, ' + str(args.clients) + ' clients (frames/s, MB/s)':44} "
              f"{fps[0][0]:8.0f} /{fps[0][1]:7.1f} {fps[1][0]:9.0f} /{fps[1][1]:8.1f} "
              f"{fps[0][0] / fps[1][0]:17.2f}x (ours/Orthanc)")
        print(json.dumps({"rows": [(l, a, b) for l, a, b in rows], "frames": fps}))
    finally:
        if ours_proc is not None:
            ours_proc.terminate()
            ours_proc.wait(15)
        if orthanc is not None:
            orthanc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
