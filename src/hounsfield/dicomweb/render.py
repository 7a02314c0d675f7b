"""Rendered and thumbnail resources (PS3.18 §8.3.5, §10.4.1.1.3, §10.4.1.1.4).

Grayscale: Modality LUT, then the VOI window from the ``window`` query parameter, else the
instance's VOI LUT / Window Center-Width, else the frame's min-max; MONOCHROME1 is inverted.
Colour: PALETTE COLOR through its LUT, YBR converted to RGB.  Output JPEG (default) or PNG.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from hounsfield.errors import InvalidInput

RENDER_MEDIA = ("image/jpeg", "image/png")


def parse_window(value: str | None) -> tuple[float, float, str] | None:
    """``center,width[,function]`` (PS3.18 §8.3.5.1.4); function LINEAR | LINEAR_EXACT | SIGMOID."""
    if not value:
        return None
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidInput("window must be 'center,width[,function]'")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidInput(f"window center and width must be numbers, got {value[:60]!r}") from None
    if not np.isfinite(center) or not np.isfinite(width) or width <= 0:
        raise InvalidInput("window width must be a positive number")
    func = parts[2].upper() if len(parts) == 3 else "LINEAR"
    if func not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        raise InvalidInput(f"unknown VOI LUT function {parts[2]!r}")
    return center, width, func


def parse_viewport(value: str | None, default: int | None = None) -> tuple[int, int] | None:
    """``vw,vh`` (we ignore the optional source region) -> the box the image is fitted into."""
    if not value:
        return (default, default) if default else None
    parts = value.split(",")
    try:
        w, h = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise InvalidInput("viewport must be 'width,height' in pixels") from None
    if not (1 <= w <= 4096 and 1 <= h <= 4096):
        raise InvalidInput("viewport width and height must be 1..4096")
    return w, h


def parse_quality(value: str | None) -> int:
    if not value:
        return 90
    try:
        q = int(value)
    except ValueError:
        raise InvalidInput("quality must be an integer 1..100") from None
    if not 1 <= q <= 100:
        raise InvalidInput("quality must be an integer 1..100")
    return q


def _window(arr: np.ndarray, center: float, width: float, func: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2/3 windowing to 0..1."""
    if func == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))
    if func == "LINEAR_EXACT":
        lo, hi = center - width / 2.0, center + width / 2.0
    else:
        lo, hi = center - 0.5 - (width - 1) / 2.0, center - 0.5 + (width - 1) / 2.0
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def to_8bit(ds: Dataset, frame: int, window: tuple[float, float, str] | None) -> np.ndarray:
    """Frame ``frame`` (0-based) as display-ready uint8 (H, W) or (H, W, 3)."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    arr = pixel_array(ds, index=frame)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        return _scale(rgb.astype(np.float64), 0, float(rgb.max() or 1))
    if arr.ndim == 3:  # colour (already RGB: pydicom converts YBR)
        if arr.dtype == np.uint8:
            return arr
        return _scale(arr.astype(np.float64), 0, float(arr.max() or 1))
    values = apply_modality_lut(arr, ds).astype(np.float64)
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            center, width = float(_first(ds.WindowCenter)), float(_first(ds.WindowWidth))
            if width > 0:
                window = (center, width, str(ds.get("VOILUTFunction") or "LINEAR").upper())
        except (TypeError, ValueError):
            window = None
    if window is not None and window[2] not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        window = (window[0], window[1], "LINEAR")
    if window is not None:
        out = _window(values, *window)
    else:
        if "VOILUTSequence" in ds:
            try:
                values = apply_voi_lut(values, ds).astype(np.float64)
            except (ValueError, TypeError, IndexError, AttributeError):
                pass
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        out = 1.0 - out
    return (out * 255.0 + 0.5).astype(np.uint8)


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((arr - lo) / ((hi - lo) or 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _first(value):  # noqa: ANN001, ANN202
    try:
        return value[0]
    except (TypeError, IndexError):
        return value


def render(ds: Dataset, frame: int, *, media: str = "image/jpeg",
           window: tuple[float, float, str] | None = None,
           viewport: tuple[int, int] | None = None, quality: int = 90) -> bytes:
    """Encode one frame as JPEG or PNG, fitted (aspect kept) into ``viewport``."""
    img = Image.fromarray(to_8bit(ds, frame, window))
    if viewport is not None:
        img.thumbnail(viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if media == "image/png":
        img.save(out, format="PNG")
    else:
        img.save(out, format="JPEG", quality=quality)
    return out.getvalue()
