"""Synthetic multi-site chest CT and radiographs with ground truth (``hounsfield synth``).

Stable API (other packages build datasets with it; names and meanings stay):

``generate_ct(site, seed, *, shape=None, matrix=512, slices=None, nodules=None, detail=1.0,
patient_index=0, tissue=False) -> CTStudy``
    One chest CT series.  ``site`` is a built-in name (``hanse``, ``jingdong``, ``lingnan``,
    ``sakura``) or a :class:`SiteProfile`; ``shape=(slices, rows, cols)`` for small test
    volumes.  ``CTStudy.datasets`` (pydicom CT Image Storage data sets, instance 1 first),
    ``.part10()`` (Part 10 bytes), ``.truth`` (:class:`NoduleTruth` records: ``seriesuid,
    coordX, coordY, coordZ`` in patient mm, ``diameter_mm``, ``nodule_type``, ``shape``,
    ``location``, ``site``, ``label``), ``.mask`` (uint8 ``[z, y, x]``, value ``label`` per
    nodule), ``.pixels`` / ``.hu()`` (stored values / HU ``[z, y, x]``), ``.grid`` (origin,
    spacing), ``.tissue`` (tissue labels when ``tissue=True``).  The same seed gives
    identical pixels; the same seed at two sites is the same patient scanned twice (a
    "travelling" subject, for harmonisation).

``generate_dx(site, seed, *, matrix=1024, nodules=None, phantom=None) -> DXStudy``
    The PA radiograph of the same patient: ``.dataset`` (DX For Presentation), ``.image``,
    ``.truth`` (rows: ``nodule_present``, ``row``, ``col``, ``diameter_px``, ...).

``make_seg(ct) -> Dataset | None``
    DICOM SEG (highdicom) of the nodules, one segment per nodule.

``iter_cases(sites, patients_per_site, *, seed=0, shape=None, matrix=512, slices=None,
dx=True, dx_matrix=1024, seg=True, nodules=None, detail=1.0) -> Iterator[SynthCase]``
    Cases (CT + SEG + DX) for several sites; per-case seeds via ``case_seed(seed, site, i)``.

``synth_to_archive(archive, sites, patients_per_site, *, truth_dir=None, **iter_cases options)
-> SynthReport``
    Store every object through the archive's write path (site label = the synthetic site),
    truth files under ``<data_dir>/synth/``.

``synth_to_folder(out, cases) -> SynthReport`` / ``send_cases(cases, "AE@host:port",
rate=None) -> SynthReport``
    Part 10 files + truth in a folder / C-STORE to a DICOM node as a modality simulator.

``SiteProfile``, ``BUILTIN_SITES``, ``load_sites(path)`` (TOML / YAML), ``resolve_sites``.

``demo_cases(...)`` — the small, quick multi-site set behind ``hounsfield synth demo``.
"""

from __future__ import annotations

from hounsfield.synth.ct import CTStudy, NoduleTruth, generate_ct, read_ct, to_part10
from hounsfield.synth.dx import DXStudy, generate_dx
from hounsfield.synth.output import (
    SynthCase, SynthReport, case_seed, iter_cases, send_cases, synth_to_archive,
    synth_to_folder,
)
from hounsfield.synth.sites import BUILTIN_SITES, SiteProfile, load_sites, resolve_sites
from hounsfield.synth.truth import make_seg, read_annotations, write_annotations

DEMO_OPTIONS = {"shape": (80, 192, 192), "dx_matrix": 512, "detail": 0.5}


def demo_cases(patients_per_site: int = 2, *, seed: int = 0, sites=None):
    """The demo set: every built-in site, small volumes (80 x 192 x 192), 512 px radiographs."""
    return iter_cases(sites or list(BUILTIN_SITES), patients_per_site, seed=seed, **DEMO_OPTIONS)


__all__ = [
    "BUILTIN_SITES", "CTStudy", "DEMO_OPTIONS", "DXStudy", "NoduleTruth", "SiteProfile",
    "SynthCase", "SynthReport", "case_seed", "demo_cases", "generate_ct", "generate_dx",
    "iter_cases", "load_sites", "make_seg", "read_annotations", "read_ct", "resolve_sites",
    "send_cases", "synth_to_archive", "synth_to_folder", "to_part10", "write_annotations",
]
