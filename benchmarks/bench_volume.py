"""Series -> volume: Hounsfield vs SimpleITK ImageSeriesReader vs MONAI LoadImage(PydicomReader).

    python -m benchmarks.bench_volume [--slices 300] [--size 512] [--repeat 3]

Same files, same run (a synthetic 512x512x300 CT written to a temp folder and deleted after):
each reader loads the whole series from the file list (SimpleITK sorts with GDCM's series file
names, MONAI with its own reader), the page cache is warm for all three, best of ``repeat`` runs.
Also checks the three agree on the voxels.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import machine, write_ct_series
from hounsfield.imaging import load_files


def best(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import SimpleITK as sitk
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    tmp = Path(tempfile.mkdtemp(prefix="hf-bench-volume-"))
    try:
        files = write_ct_series(tmp / "ct", args.slices, size=args.size)
        for f in files:
            f.read_bytes()

        def ours():
            return load_files(files).array

        def simpleitk():
            r = sitk.ImageSeriesReader()
            r.SetFileNames(r.GetGDCMSeriesFileNames(str(tmp / "ct")))
            return sitk.GetArrayFromImage(r.Execute())

        loader = LoadImage(reader=PydicomReader(), image_only=True)

        def monai():
            return np.asarray(loader(str(tmp / "ct")))

        t_ours, a = best(ours, args.repeat)
        t_sitk, b = best(simpleitk, args.repeat)
        t_monai, c = best(monai, args.repeat)
        agree = np.array_equal(a, b) and np.array_equal(a, np.transpose(c, (2, 1, 0)))
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"machine: {machine()}")
        print(f"series: {args.slices} x {args.size}x{args.size} CT, {mb:.0f} MB, best of {args.repeat}; voxels agree: {agree}")
        print(f"| reader | seconds | slices/s | ratio (peer time / ours) |")
        print(f"|---|---|---|---|")
        print(f"| Hounsfield load_files | {t_ours:.2f} | {args.slices / t_ours:.0f} | 1.00 |")
        print(f"| SimpleITK ImageSeriesReader | {t_sitk:.2f} | {args.slices / t_sitk:.0f} | {t_sitk / t_ours:.2f} |")
        print(f"| MONAI LoadImage(PydicomReader) | {t_monai:.2f} | {args.slices / t_monai:.0f} | {t_monai / t_ours:.2f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
