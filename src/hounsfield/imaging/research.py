"""Research formats in: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mhd + .raw,
the LUNA16 format) become a DICOM CT or MR series, so all data flows through one archive.

The file is read with SimpleITK (its readers honour NIfTI qform/sform, NRRD space directions and
MetaImage TransformMatrix), the geometry kept exactly, and the series written by
:mod:`hounsfield.imaging.writer`.  The patient and study are named after the file (``PatientID``
= file stem); UIDs derive from the file's SHA-256, so importing a file twice is a duplicate.
:func:`register` is called explicitly by the importer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from hounsfield.imaging.volume import Volume
from hounsfield.imaging.writer import SeriesInfo, to_part10, volume_to_datasets

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mhd")


def _stem(path: Path) -> str:
    name = path.name
    for suf in sorted(SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    files = [path]
    if path.suffix.lower() in (".mhd", ".nhdr"):  # header + detached pixel file(s)
        files += sorted(p for p in path.parent.glob(_stem(path) + ".*")
                        if p != path and p.suffix.lower() in (".raw", ".zraw", ".gz", ".nrrd", ".img"))
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def guess_modality(vol: Volume) -> str:
    """CT when the values look like Hounsfield units (air near -1000), else MR."""
    a = vol.array
    sample = a.ravel()[:: max(1, a.size // 200_000)]
    return "CT" if float(np.min(sample)) <= -900 and float(np.max(sample)) < 5000 else "MR"


def read_research(path: Path | str) -> Volume:
    """Read a research-format file into a volume (3D scalar images only)."""
    import SimpleITK as sitk

    p = Path(path)
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        raise ValueError(f"unreadable image file: {msg[-1] if msg else exc}") from exc
    if img.GetDimension() == 4 and img.GetSize()[3] == 1:
        img = img[:, :, :, 0]
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)
    if img.GetDimension() != 3:
        raise ValueError(f"only 3D images can become a series; this one is {img.GetDimension()}D "
                         f"{img.GetSize()}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("vector/RGB images cannot become a CT/MR series")
    return Volume.from_sitk(img)


def convert(path: Path, *, modality: str | None = None) -> Iterator[bytes]:
    """Part 10 bytes of each instance of the series ``path`` becomes."""
    vol = read_research(path)
    stem = _stem(path)
    info = SeriesInfo(
        patient_name=stem[:64],
        patient_id=stem[:64],
        modality=modality or guess_modality(vol),
        uid_seed=_digest(path),
        study_description=f"imported {path.name}"[:64],
        series_description=stem[:64],
    )
    for ds in volume_to_datasets(vol, info):
        yield to_part10(ds)


def register(converters: dict[str, Callable[[Path], Iterable[bytes]]]) -> None:
    """Add the research-format converters to the importer's registry (explicit, no discovery)."""
    for suffix in SUFFIXES:
        converters[suffix] = convert
