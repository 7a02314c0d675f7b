"""Where importable objects come from: files, folders (recursive), zip archives, DICOMDIR.

Each source yields :class:`Item` s — the bytes of one candidate object, or the reason it could
not be read.  Research formats (NIfTI, NRRD, MetaImage) are converted by functions registered
in :data:`CONVERTERS` (suffix -> converter), filled explicitly by :mod:`hounsfield.imaging`.
"""

from __future__ import annotations

import gzip
import io
import os
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pydicom

#: suffix (lower case, e.g. ".nii.gz") -> function(path) -> Part 10 bytes of each instance
CONVERTERS: dict[str, Callable[[Path], Iterable[bytes]]] = {}

MAX_MEMBER_BYTES = 4 << 30


@dataclass
class Item:
    """One candidate object: its bytes (or the file holding them), or why it was not read."""

    name: str
    data: bytes | None = None
    error: str = ""
    skipped: str = ""
    path: Path | None = None  # read lazily (by an importer worker) when data is None

    def load(self) -> Item:
        """The item with its bytes read and gunzipped, or with ``error`` set."""
        if self.data is not None or self.path is None:
            return _gunzip(self)
        try:
            return _gunzip(Item(self.name, data=self.path.read_bytes()))
        except OSError as exc:
            return Item(self.name, error=f"cannot read: {exc.strerror or exc}")


def iter_items(paths: Iterable[Path | str]) -> Iterator[Item]:
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            yield Item(str(path), error="no such file or directory")
        elif path.is_dir():
            yield from _walk(path)
        else:
            yield from _file(path)


def count_candidates(paths: Iterable[Path | str]) -> int:
    """A cheap estimate of the number of items (files; zip members counted as one)."""
    n = 0
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for _d, _s, files in os.walk(p):
                n += len(files)
        elif p.exists():
            n += 1
    return n


def _walk(root: Path) -> Iterator[Item]:
    errors: list[OSError] = []
    for dirpath, dirs, files in os.walk(root, onerror=errors.append):
        dirs.sort()
        for name in sorted(files):
            if name.upper() == "DICOMDIR":
                # the walk reaches every file the index references; following it would double
                yield Item(str(Path(dirpath) / name), skipped="DICOMDIR index (files imported directly)")
                continue
            yield from _file(Path(dirpath) / name)
        while errors:
            e = errors.pop()
            yield Item(str(e.filename or root), error=f"cannot read directory: {e.strerror}")
    while errors:
        e = errors.pop()
        yield Item(str(e.filename or root), error=f"cannot read directory: {e.strerror}")


def _converter_for(path: Path) -> Callable[[Path], Iterable[bytes]] | None:
    name = path.name.lower()
    for suffix in sorted(CONVERTERS, key=len, reverse=True):
        if name.endswith(suffix):
            return CONVERTERS[suffix]
    return None


def _file(path: Path) -> Iterator[Item]:
    name = str(path)
    conv = _converter_for(path)
    if conv is not None:
        try:
            for i, data in enumerate(conv(path)):
                yield Item(f"{name}#{i}", data=data)
        except Exception as exc:  # noqa: BLE001 - a bad research file is refused with its reason
            yield Item(name, error=f"cannot convert: {exc}")
        return
    if path.suffix.lower() == ".raw" and path.with_suffix(".mhd").exists():
        yield Item(name, skipped="MetaImage pixel file (imported with its .mhd)")
        return
    try:
        if zipfile.is_zipfile(path):
            yield from _zip(path)
            return
        if path.name.upper() == "DICOMDIR":
            yield from _dicomdir(path)
            return
    except OSError as exc:
        yield Item(name, error=f"cannot read: {exc.strerror or exc}")
        return
    yield Item(name, path=path)


def _gunzip(item: Item) -> Item:
    """Transparently decompress a gzip-compressed file (``.dcm.gz`` is common in research sets)."""
    if item.data is None or item.data[:2] != b"\x1f\x8b":
        return item
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(item.data)) as gz:
            data = gz.read(MAX_MEMBER_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        return Item(item.name, error=f"corrupt gzip file: {exc}")
    if len(data) > MAX_MEMBER_BYTES:
        return Item(item.name, error=f"refused: decompresses to more than {MAX_MEMBER_BYTES} bytes")
    return Item(item.name, data=data)


def _zip(path: Path) -> Iterator[Item]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Item(str(path), error=f"bad zip archive: {exc}")
        return
    with zf:
        for info in zf.infolist():
            member = f"{path}!{info.filename}"
            if info.is_dir():
                continue
            pure = PurePosixPath(info.filename.replace("\\", "/"))
            if pure.is_absolute() or ".." in pure.parts or ":" in info.filename:
                yield Item(member, error="refused: zip member name escapes the archive (path traversal)")
                continue
            if info.file_size > MAX_MEMBER_BYTES:
                yield Item(member, error=f"refused: member larger than {MAX_MEMBER_BYTES} bytes")
                continue
            if pure.name.upper() == "DICOMDIR":
                yield Item(member, skipped="DICOMDIR index (its files are imported directly)")
                continue
            try:
                data = zf.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
                yield Item(member, error=f"cannot extract: {exc}")
                continue
            yield _gunzip(Item(member, data=data))


def _dicomdir(path: Path) -> Iterator[Item]:
    """Follow a DICOMDIR's records (PS3.10 §8) to the files it references."""
    try:
        ds = pydicom.dcmread(path)
        records = ds.DirectoryRecordSequence
    except Exception as exc:  # noqa: BLE001
        yield Item(str(path), error=f"unreadable DICOMDIR: {exc}")
        return
    root = path.parent.resolve()
    for rec in records:
        ref = rec.get("ReferencedFileID")
        if not ref:
            continue
        parts = [ref] if isinstance(ref, str) else list(ref)
        target = (root.joinpath(*parts)).resolve()
        if not target.is_relative_to(root):
            yield Item(str(target), error="refused: DICOMDIR record points outside its folder")
            continue
        if not target.exists():  # media written in upper case, filesystem in lower (or vice versa)
            alt = root.joinpath(*[p.lower() for p in parts])
            target = alt if alt.exists() else target
        try:
            yield Item(str(target), data=target.read_bytes())
        except OSError as exc:
            yield Item(str(target), error=f"DICOMDIR references an unreadable file: {exc.strerror}")
