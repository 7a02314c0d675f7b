"""The scanner model: how a site's CT turns the true phantom into stored pixel values.

In order: HU calibration (``hu * scale + offset``); the in-plane point-spread function (a
Gaussian of the site's FWHM, sharpened by an unsharp mask for edge-enhancing kernels, applied
separably); the slice sensitivity profile along z (Gaussian of FWHM = slice thickness);
correlated noise (white noise filtered in-plane to the site's grain, scaled to the site's noise
level and the patient's size); the reconstruction circle (outside it: air or the vendor's
padding value); and quantisation to the stored integers.

Everything runs slab by slab in place (float32), so a 512x512x300 series needs about one extra
slab of memory.  The noise comes from the generator passed in: same seed, same pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from hounsfield.synth.grid import Grid
from hounsfield.synth.sites import SiteProfile

SLAB = 8
FWHM = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _noise_gain(sigma_px: float, size: int = 65) -> float:
    """Std of filtered unit white noise (exact, from the discrete kernel)."""
    d = np.zeros((size, size), np.float64)
    d[size // 2, size // 2] = 1.0
    k = _grain(d, sigma_px)
    return float(np.sqrt((k * k).sum()))


def _grain(img: np.ndarray, sigma_px: float, out: np.ndarray | None = None) -> np.ndarray:
    """In-plane Gaussian correlation of white noise: the site's noise grain."""
    s = (0.0,) * (img.ndim - 2) + (sigma_px, sigma_px)
    return ndimage.gaussian_filter(img, s, truncate=2.5, output=out)


def _psf_1d(sigma_px: float, edge: float) -> np.ndarray | None:
    """1-D kernel of the in-plane PSF: a Gaussian, sharpened for edge-enhancing kernels
    (unsharp mask ``(1 + e) g - e (g * g2)``, applied separably); None for a negligible PSF."""
    if sigma_px <= 0.25 and edge <= 0:
        return None
    s1 = max(sigma_px, 0.25)
    s2 = float(np.hypot(s1, 1.5 * s1 + 0.6))   # g convolved with the unsharp-mask Gaussian
    r = int(np.ceil(2.5 * s2))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g1 = np.exp(-0.5 * (x / s1) ** 2)
    g1 /= g1.sum()
    if edge <= 0:
        return g1
    g2 = np.exp(-0.5 * (x / s2) ** 2)
    g2 /= g2.sum()
    # per axis (1 + e1)^2 = 1 + edge: the 2-D kernel's high-frequency gain is the site's
    e1 = float(np.sqrt(1.0 + edge) - 1.0)
    return (1.0 + e1) * g1 - e1 * g2


def apply_scanner(vol: np.ndarray, grid: Grid, site: SiteProfile, rng: np.random.Generator, *,
                  noise_scale: float = 1.0) -> np.ndarray:
    """Degrade the true-HU ``vol`` (float32, modified in place) and return the stored
    integer pixel values (int16 for signed, uint16 for unsigned PixelRepresentation)."""
    nz, ny, nx = vol.shape
    dx, dy, dz = grid.spacing
    scale, offset = np.float32(site.hu_scale), np.float32(site.hu_offset)
    sig = site.resolution_fwhm_mm / FWHM / dx
    sig_z = site.slice_thickness_mm / FWHM / dz
    edge = np.float32(site.edge_enhancement)
    psf = _psf_1d(sig, float(edge))
    for k0 in range(0, nz, SLAB):
        sl = vol[k0:k0 + SLAB]
        sl *= scale
        sl += offset
        if psf is not None:  # separable PSF: rows, then columns
            ndimage.correlate1d(sl, psf, axis=1, output=sl, mode="nearest")
            ndimage.correlate1d(sl, psf, axis=2, output=sl, mode="nearest")
    if sig_z > 0.25 and nz > 1:
        ndimage.gaussian_filter1d(vol, sig_z, axis=0, truncate=3.0, output=vol)

    grain = max(site.noise_grain_mm / dx, 0.35)
    gain = _noise_gain(grain)
    amp = np.float32(site.noise_sd * noise_scale / gain) if site.noise_sd > 0 else None
    # reconstruction circle and stored-value conversion
    xs, ys, _ = grid.axes()
    xc = grid.origin[0] + dx * (nx - 1) / 2
    yc = grid.origin[1] + dy * (ny - 1) / 2
    outside = ((xs[None, :] - xc) ** 2 + (ys[:, None] - yc) ** 2) > (site.fov_mm / 2) ** 2
    pad = np.float32(site.padding_hu if site.padding_hu is not None else -1000.0)
    lo, hi = _stored_range(site)
    out = np.empty(vol.shape, np.int16 if site.pixel_representation else np.uint16)
    inter = np.float32(site.rescale_intercept)
    for k0 in range(0, nz, SLAB):
        sl = vol[k0:k0 + SLAB]
        if amp is not None:
            w = rng.standard_normal(sl.shape, dtype=np.float32)
            _grain(w, grain, out=w)
            w *= amp
            sl += w
        np.copyto(sl, pad, where=outside[None])
        sl -= inter
        np.rint(sl, out=sl)
        np.clip(sl, lo, hi, out=sl)
        out[k0:k0 + SLAB] = sl
    return out


def _stored_range(site: SiteProfile) -> tuple[float, float]:
    bits = site.bits_stored
    if site.pixel_representation:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def stored_to_hu(stored: np.ndarray, site: SiteProfile) -> np.ndarray:
    """Modality LUT (PS3.3 C.11.1): HU = stored * slope + intercept (slope is 1)."""
    return stored.astype(np.float32) + np.float32(site.rescale_intercept)
