"""Instances, frames and transfer syntaxes for WADO-RS (PS3.18 §8.7.3, §10.4; PS3.5 §8, §10).

Stored bytes are served as they are whenever the client accepts the stored transfer syntax
(``transfer-syntax=*`` or the same UID).  Otherwise we transcode: any syntax pydicom can decode
to Explicit VR Little Endian, and native pixels to the lossless syntaxes we can encode
(RLE, JPEG-LS, JPEG 2000).  Lossy targets are not produced (406).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels import get_encoder
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from hounsfield.errors import InvalidInput, NotFound

NATIVE = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                    "1.2.840.10008.1.2.1.99"})
ENCODABLE = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})

#: PS3.18 Table 8.7.3-5: transfer syntax -> the media type of a frame in that syntax
FRAME_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg", "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}
#: the default transfer syntax a frame media type implies when none is named
MEDIA_DEFAULT_TS: dict[str, str] = {
    "application/octet-stream": ExplicitVRLittleEndian,
    "image/jpeg": "1.2.840.10008.1.2.4.70", "image/jls": JPEGLSLossless,
    "image/jp2": JPEG2000Lossless, "image/dicom-rle": RLELossless,
}


def load(data: bytes, *, pixels: bool = True) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=True)


def can_produce(stored: str, target: str) -> bool:
    """Whether we can deliver an instance stored in ``stored`` in ``target``."""
    if target == stored or target == "*":
        return True
    if stored == ExplicitVRBigEndian:
        return False  # its OW values (pixels, LUTs) would need byte swapping: not offered
    if target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        return True  # native data re-encodes; compressed data decodes
    return target in ENCODABLE


# -- whole instances ------------------------------------------------------------------------

def transcode_instance(data: bytes, stored: str, target: str) -> bytes:
    """The Part 10 bytes of an instance in ``target`` (``*`` or ``stored`` = unchanged)."""
    if target in ("*", stored):
        return data
    ds = load(data)
    if "PixelData" in ds and stored not in NATIVE:
        ds.decompress()  # -> Explicit VR Little Endian, pixel module updated
    if target in ENCODABLE and "PixelData" in ds:
        ds.compress(target, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(target)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# -- frames ---------------------------------------------------------------------------------

@dataclass
class FrameSource:
    """The decoded header of one instance plus its pixel data, for frame access."""

    ds: Dataset
    stored: str
    count: int

    @staticmethod
    def native_tail(data: bytes, stored: str, rows: int | None, columns: int | None,
                    bits: int | None, frames: int | None) -> bytes | None:
        """Fast path for the common case (native little endian, Pixel Data last in the file):
        the pixel bytes without parsing the header, or None when the layout is not exactly
        that (the element header before the tail must declare exactly its length)."""
        if stored not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) or not rows \
                or not columns or not bits or bits % 8:
            return None
        for spp in (1, 3):
            size = rows * columns * spp * (bits // 8) * max(frames or 1, 1)
            padded = size + (size & 1)
            if stored == ExplicitVRLittleEndian:
                head = data[-padded - 12:-padded] if padded + 12 <= len(data) else b""
                ok = len(head) == 12 and head[:4] == b"\xe0\x7f\x10\x00" and \
                    head[4:6] in (b"OW", b"OB") and int.from_bytes(head[8:12], "little") == padded
            else:
                head = data[-padded - 8:-padded] if padded + 8 <= len(data) else b""
                ok = len(head) == 8 and head[:4] == b"\xe0\x7f\x10\x00" and \
                    int.from_bytes(head[4:8], "little") == padded
            if ok:
                return data[len(data) - padded:len(data) - padded + size]
        return None

    @classmethod
    def of(cls, data: bytes, stored: str) -> FrameSource:
        try:
            ds = load(data)
        except Exception as exc:  # noqa: BLE001 - stored leniently; say why we cannot read it now
            raise InvalidInput(f"the stored instance cannot be read for its pixels: {exc}") from exc
        if "PixelData" not in ds:
            raise NotFound("this instance has no pixel data (no frames)")
        return cls(ds, stored, _frame_count(ds))

    def check(self, numbers: list[int]) -> None:
        bad = [n for n in numbers if n < 1 or n > self.count]
        if bad:
            raise NotFound(f"frame {bad[0]} does not exist: the instance has {self.count} "
                           f"frame(s), numbered from 1")

    def frame(self, number: int, target: str) -> bytes:
        """Frame ``number`` (1-based) in ``target`` (``*`` = as stored)."""
        ts = self.stored if target == "*" else target
        if ts == self.stored and self.stored not in NATIVE:
            return get_frame(self.ds.PixelData, number - 1, number_of_frames=self.count)
        if ts in NATIVE or ts == self.stored:
            return self._native(number, big=ts == ExplicitVRBigEndian)
        if ts in ENCODABLE:
            arr = pixel_array(self.ds, index=number - 1, as_rgb=False)
            return get_encoder(ts).encode(arr, **self._encode_options())
        raise InvalidInput(f"cannot transcode frames to transfer syntax {ts}")

    def _native(self, number: int, *, big: bool = False) -> bytes:
        ds = self.ds
        bits = int(ds.get("BitsAllocated") or 8)
        if self.stored in NATIVE and self.stored != ExplicitVRBigEndian and bits % 8 == 0 \
                and not big:
            size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1) \
                * bits // 8
            start = (number - 1) * size
            return bytes(ds.PixelData[start:start + size])
        arr = pixel_array(ds, index=number - 1, as_rgb=False, raw=True)
        if bits == 1:
            return pack_bits(arr)
        if big:
            arr = arr.astype(arr.dtype.newbyteorder(">"))
        elif arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return arr.tobytes()

    def _encode_options(self) -> dict:
        ds = self.ds
        return {
            "rows": int(ds.Rows), "columns": int(ds.Columns),
            "samples_per_pixel": int(ds.get("SamplesPerPixel") or 1),
            "bits_allocated": int(ds.BitsAllocated), "bits_stored": int(ds.BitsStored),
            "pixel_representation": int(ds.get("PixelRepresentation") or 0),
            "photometric_interpretation": str(ds.PhotometricInterpretation),
            "number_of_frames": 1, "planar_configuration": 0,
        }


def _frame_count(ds: Dataset) -> int:
    """NumberOfFrames read leniently (real files say '1A' or '2.0'); 1 when absent or unreadable."""
    raw = str(ds.get("NumberOfFrames", "") or "").strip()
    digits = "".join(ch for ch in raw.split(".")[0] if ch.isdigit())
    return max(int(digits), 1) if digits else 1


def frame_media(part_type: str, ts: str) -> str:
    """Content-Type of one frame part (PS3.18 §8.7.3.5)."""
    if part_type in ("application/octet-stream", "", "*/*", "*") or ts in NATIVE:
        return f"application/octet-stream; transfer-syntax={ts}"
    return f"{FRAME_MEDIA.get(ts, part_type)}; transfer-syntax={ts}"


def parse_frame_list(value: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5] (PS3.18 §8.3.3.1: comma-separated, 1-based)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        if not item.isdigit() or len(item) > 9:
            raise InvalidInput(f"frame numbers are positive integers separated by commas, "
                               f"got {value[:60]!r}")
        out.append(int(item))
    if not out or len(out) > 10000:
        raise InvalidInput("frame list must name 1 to 10000 frames")
    return out
