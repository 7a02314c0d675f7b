"""Benchmark: synthetic chest CT generation (hounsfield.synth) by stage and size.

Peer: SimpleITK on the same data in the same run —
* scanner step: our ``apply_scanner`` (calibration, in-plane PSF, slice profile, correlated
  noise, FOV circle, quantisation) vs SimpleITK ``SmoothingRecursiveGaussian`` +
  ``AdditiveGaussianNoise`` + ``Cast`` (a simpler degradation) on the same true-HU volume;
* DICOM output: our CT Image Storage data sets encoded to Part 10 and written vs SimpleITK's
  GDCM writer writing the same slices (``ImageFileWriter``, one file per slice).

Usage:  python -m benchmarks.bench_synth [--sizes 48x128x128,300x512x512]
Prints one table; ratios > 1 mean Hounsfield is slower.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.common import machine
from hounsfield.synth.ct import build_ct_datasets, ct_grid, generate_ct, study_seeds, to_part10
from hounsfield.synth.phantom import make_phantom, render
from hounsfield.synth.scanner import apply_scanner
from hounsfield.synth.sites import BUILTIN_SITES


def _t(fn):
    """(result, wall seconds); the process CPU seconds go to CPU[last label] via _label."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _t.cpu = time.process_time() - c0
    return out, time.perf_counter() - t0


class _Timings(dict):
    """Stage -> wall seconds; ``cpu`` holds the process CPU seconds of the same stages."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu: dict[str, float] = {}

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.cpu[key] = _t.cpu


def bench(size: tuple[int, int, int], site_name: str = "hanse") -> dict[str, float]:
    site = BUILTIN_SITES[site_name]
    nz, ny, nx = size
    res = _Timings()
    _ct, res["generate_ct total"] = _t(lambda: generate_ct(site, 1, shape=size, nodules=3))
    ph_seed, noise_rng, _ = study_seeds(1)
    ph, res["phantom (anatomy, trees, nodules)"] = _t(
        lambda: make_phantom(ph_seed, contrast=site.contrast, nodules=3))
    grid = ct_grid(site, ph, rows=ny, cols=nx, slices=nz)
    (vol, _lab, _mask), res["render true HU"] = _t(lambda: render(ph, grid, labels=False))
    vol_copy = vol.copy()
    pixels, res["scanner model (ours)"] = _t(lambda: apply_scanner(vol, grid, site, noise_rng))
    dx, dy, dz = grid.spacing

    def peer_scanner():
        img = sitk.GetImageFromArray(vol_copy)
        img.SetSpacing((dx, dy, dz))
        sig = site.resolution_fwhm_mm / 2.3548
        img = sitk.SmoothingRecursiveGaussian(img, [sig, sig, site.slice_thickness_mm / 2.3548])
        img = sitk.AdditiveGaussianNoise(img, site.noise_sd, 0.0, 1)
        return sitk.Cast(img + 1024.0, sitk.sitkInt16)

    peer_img, res["scanner model (SimpleITK peer)"] = _t(peer_scanner)
    _ct.pixels = pixels
    ds, res["CT data sets (headers)"] = _t(lambda: build_ct_datasets(_ct, np.random.default_rng(0)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)

        def ours_write():
            for i, d in enumerate(_ct.datasets):
                (out / f"h{i:04d}.dcm").write_bytes(to_part10(d))

        _, res["write Part 10 files (ours, pydicom)"] = _t(ours_write)

        def peer_write():
            w = sitk.ImageFileWriter()
            w.KeepOriginalImageUIDOn()
            for k in range(peer_img.GetDepth()):
                sl = peer_img[:, :, k]
                sl.SetMetaData("0008|0060", "CT")
                sl.SetMetaData("0020|0013", str(k + 1))
                w.SetFileName(str(out / f"s{k:04d}.dcm"))
                w.Execute(sl)

        _, res["write DICOM files (SimpleITK/GDCM peer)"] = _t(peer_write)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="48x128x128,128x256x256,300x512x512")
    ap.add_argument("--site", default="hanse")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    for spec in args.sizes.split(","):
        size = tuple(int(v) for v in spec.split("x"))
        r = bench(size, args.site)  # type: ignore[arg-type]
        print(f"\n## {spec} (slices x rows x cols), site {args.site}")
        print(f"{'stage':45s} {'wall s':>8s} {'CPU s':>8s}")
        for k, v in r.items():
            print(f"{k:45s} {v:8.2f} {r.cpu[k]:8.2f}")
        print(f"{'ratio scanner ours / SimpleITK':45s} "
              f"{r['scanner model (ours)'] / r['scanner model (SimpleITK peer)']:8.2f}")
        print(f"{'ratio write ours / SimpleITK':45s} "
              f"{r['write Part 10 files (ours, pydicom)'] / r['write DICOM files (SimpleITK/GDCM peer)']:8.2f}")


if __name__ == "__main__":
    main()
