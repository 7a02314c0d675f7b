"""Site profiles: what makes one hospital's scanner look different from another's.

A :class:`SiteProfile` is typed data (pydantic).  It sets the DICOM identity of the scanner
(manufacturer, model, kernel, institution), the physics that make images differ between sites
(noise level and texture, in-plane resolution, edge enhancement of sharp kernels, slice
thickness and spacing, HU calibration offset and scale, field of view, contrast or not) and
the header habits (pixel representation, rescale intercept, padding outside the reconstruction
circle, the character set of patient names).

Four built-in profiles (:data:`BUILTIN_SITES`) differ as much as real scanners do.  Users add
more from a TOML or YAML file (:func:`load_sites`)::

    [[site]]
    name = "lakeside"
    manufacturer = "SIEMENS"
    model = "SOMATOM Force"
    kernel = "Br40d"
    noise_sd = 18.0
    ...

or ``site: [{name: lakeside, ...}]`` in YAML.  Unknown keys are refused with the key's name.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator,
)

from hounsfield.errors import InvalidInput

NameScript = Literal["latin", "chinese", "japanese", "cyrillic", "greek"]

# Specific Character Set (0008,0005) values we write, by name script (PS3.3 C.12.1.1.2)
CHARSETS: dict[str, tuple[str, ...]] = {
    "ISO_IR 100": ("latin",),
    "ISO_IR 192": ("latin", "chinese", "japanese", "cyrillic", "greek"),
    "GB18030": ("latin", "chinese"),
    "ISO 2022 IR 6\\ISO 2022 IR 87": ("japanese",),
    "ISO_IR 144": ("cyrillic",),
    "ISO_IR 126": ("greek",),
}


class SiteProfile(BaseModel):
    """One hospital's CT scanner and habits.  All lengths in millimetres, HU in Hounsfield."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$",
                      description="site label (recorded as the archive's site)")
    institution: str = Field(max_length=64)
    station_name: str = Field(default="CT01", max_length=16)
    manufacturer: str = Field(max_length=64)
    model: str = Field(max_length=64)
    software_versions: str = Field(default="1.0", max_length=64)
    kernel: str = Field(max_length=16, description="ConvolutionKernel (0018,1210)")
    kvp: float = Field(default=120.0, ge=70, le=150)
    tube_current_ma: int = Field(default=200, ge=10, le=1000)
    # physics --------------------------------------------------------------------------------
    noise_sd: float = Field(ge=0, le=200, description="noise std (HU) in a water-like region")
    noise_grain_mm: float = Field(gt=0, le=5, description="noise correlation length (texture)")
    resolution_fwhm_mm: float = Field(gt=0, le=5, description="in-plane PSF FWHM")
    edge_enhancement: float = Field(default=0.0, ge=0, le=3,
                                    description="unsharp-mask gain of sharp kernels (0 = none)")
    slice_thickness_mm: float = Field(ge=0.5, le=5)
    slice_spacing_mm: float = Field(ge=0.3, le=5)
    hu_offset: float = Field(default=0.0, ge=-100, le=100, description="calibration offset (HU)")
    hu_scale: float = Field(default=1.0, ge=0.8, le=1.2, description="calibration scale")
    fov_mm: float = Field(ge=250, le=500, description="reconstruction diameter")
    contrast: bool = False
    # header habits --------------------------------------------------------------------------
    pixel_representation: Literal[0, 1] = 1
    bits_stored: Literal[12, 16] = 16
    rescale_intercept: float = -1024.0
    padding_hu: float | None = Field(
        default=None, description="HU written outside the reconstruction circle (None = air)")
    charset: str = "ISO_IR 192"
    name_script: NameScript = "latin"
    country: str = Field(default="DE", min_length=2, max_length=2)

    @field_validator("charset")
    @classmethod
    def _charset(cls, v: str) -> str:
        if v not in CHARSETS:
            raise ValueError(f"unsupported Specific Character Set {v!r}; one of {sorted(CHARSETS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SiteProfile:
        if self.name_script not in CHARSETS[self.charset]:
            raise ValueError(f"character set {self.charset!r} cannot encode "
                             f"{self.name_script} names")
        if self.pixel_representation == 0 and self.bits_stored == 16 and self.rescale_intercept > -1024:
            raise ValueError("unsigned pixels need rescale_intercept <= -1024 to store air")
        if self.padding_hu is not None:
            stored = self.padding_hu - self.rescale_intercept
            lo = -(2 ** (self.bits_stored - 1)) if self.pixel_representation else 0
            hi = 2 ** (self.bits_stored - (1 if self.pixel_representation else 0)) - 1
            if not lo <= stored <= hi:
                raise ValueError(f"padding_hu {self.padding_hu:g} cannot be stored with these "
                                 "pixel_representation / bits_stored / rescale_intercept")
        return self


BUILTIN_SITES: dict[str, SiteProfile] = {
    p.name: p for p in (
        # soft kernel, 1 mm slices, no offset, Latin-1 names
        SiteProfile(
            name="hanse", institution="Hanse Klinikum Nord", station_name="CTNORD1",
            manufacturer="SIEMENS", model="SOMATOM Definition AS", software_versions="syngo CT VA48A",
            kernel="B31f", kvp=120, tube_current_ma=180, noise_sd=14.0, noise_grain_mm=1.1,
            resolution_fwhm_mm=1.0, edge_enhancement=0.0, slice_thickness_mm=1.0,
            slice_spacing_mm=1.0, hu_offset=0.0, hu_scale=1.0, fov_mm=350, contrast=False,
            pixel_representation=0, bits_stored=12, rescale_intercept=-1024.0,
            charset="ISO_IR 100", name_script="latin", country="DE"),
        # sharp lung kernel (edge enhanced, fine grain, high noise), GE padding, UTF-8 Chinese
        SiteProfile(
            name="jingdong", institution="Jingdong People's Hospital", station_name="GECT64",
            manufacturer="GE MEDICAL SYSTEMS", model="LightSpeed VCT", software_versions="07MW18.4",
            kernel="LUNG", kvp=120, tube_current_ma=250, noise_sd=32.0, noise_grain_mm=0.55,
            resolution_fwhm_mm=0.75, edge_enhancement=0.9, slice_thickness_mm=1.25,
            slice_spacing_mm=1.25, hu_offset=-8.0, hu_scale=1.01, fov_mm=360, contrast=False,
            pixel_representation=1, bits_stored=16, rescale_intercept=-1024.0, padding_hu=-3024.0,
            charset="ISO_IR 192", name_script="chinese", country="CN"),
        # thick overlapping slices, smooth coarse noise, contrast, GB18030 Chinese
        SiteProfile(
            name="lingnan", institution="Lingnan Central Hospital", station_name="ICT256",
            manufacturer="Philips", model="iCT 256", software_versions="4.1.6",
            kernel="B", kvp=100, tube_current_ma=160, noise_sd=9.0, noise_grain_mm=1.9,
            resolution_fwhm_mm=1.5, edge_enhancement=0.0, slice_thickness_mm=2.5,
            slice_spacing_mm=2.0, hu_offset=12.0, hu_scale=0.98, fov_mm=400, contrast=True,
            pixel_representation=0, bits_stored=12, rescale_intercept=-1024.0,
            charset="GB18030", name_script="chinese", country="CN"),
        # thin slices, medium-sharp kernel, negative offset, contrast, Japanese ISO 2022
        SiteProfile(
            name="sakura", institution="Sakura University Hospital", station_name="AQONE",
            manufacturer="TOSHIBA", model="Aquilion ONE", software_versions="V6.0SP0001",
            kernel="FC52", kvp=120, tube_current_ma=220, noise_sd=22.0, noise_grain_mm=0.8,
            resolution_fwhm_mm=0.9, edge_enhancement=0.4, slice_thickness_mm=0.8,
            slice_spacing_mm=0.8, hu_offset=-15.0, hu_scale=1.02, fov_mm=320, contrast=True,
            pixel_representation=1, bits_stored=16, rescale_intercept=0.0,
            charset="ISO 2022 IR 6\\ISO 2022 IR 87", name_script="japanese", country="JP"),
    )
}


def load_sites(path: Path | str) -> dict[str, SiteProfile]:
    """Read site profiles from a TOML (``[[site]]`` tables) or YAML (``site:`` list) file.

    Raises :class:`InvalidInput` naming the file, the site and the offending field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read site file {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".toml":
            doc = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            doc = yaml.safe_load(text) or {}
        else:
            raise InvalidInput(f"site file {path}: use .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise InvalidInput(f"site file {path} is not valid: {exc}") from exc
    if not isinstance(doc, Mapping) or not isinstance(doc.get("site"), list):
        raise InvalidInput(f"site file {path}: expected a list named 'site' ([[site]] in TOML)")
    out: dict[str, SiteProfile] = {}
    for i, entry in enumerate(doc["site"]):
        try:
            profile = SiteProfile.model_validate(entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(site)'}: {e['msg']}"
                for e in exc.errors())
            raise InvalidInput(f"site file {path}, site #{i + 1}: {problems}") from exc
        if profile.name in out:
            raise InvalidInput(f"site file {path}: site {profile.name!r} defined twice")
        out[profile.name] = profile
    return out


def resolve_sites(names: Iterable[str] | None = None,
                  extra: Mapping[str, SiteProfile] | None = None) -> list[SiteProfile]:
    """Profiles for ``names`` (built-in or from ``extra``); all of them when ``names`` is None."""
    known = {**BUILTIN_SITES, **(extra or {})}
    if names is None:
        return list(known.values())
    out = []
    for n in names:
        if n not in known:
            raise InvalidInput(f"unknown site {n!r}; known: {', '.join(sorted(known))}")
        out.append(known[n])
    return out


def resolve_site(site: str | SiteProfile) -> SiteProfile:
    if isinstance(site, SiteProfile):
        return site
    return resolve_sites([site])[0]
