"""Synthetic CT: truth consistency, tissue HU per site, reproducibility, sites that differ."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from hounsfield.synth import BUILTIN_SITES, generate_ct, read_ct
from hounsfield.synth.anatomy import Tissue

SHAPE = (48, 128, 128)
SITES = list(BUILTIN_SITES)


@pytest.fixture(scope="module")
def studies():
    """The same patient (seed) scanned at every built-in site, with three nodules."""
    return {s: generate_ct(s, 20260101, shape=SHAPE, nodules=3, tissue=True) for s in SITES}


def _region(ct, tissue: Tissue, erode: int = 2) -> np.ndarray:
    m = ct.tissue == tissue
    # homogeneous interior only: away from edges in-plane and from neighbouring slices
    st = np.zeros((3, 3, 3), bool)
    st[1] = True
    return ndimage.binary_erosion(m, st, iterations=erode) & m


@pytest.mark.parametrize("site", SITES)
def test_truth_centre_inside_mask_and_diameter_matches(studies, site):
    ct = studies[site]
    assert len(ct.truth) == 3
    dx, dy, dz = ct.grid.spacing
    for t in ct.truth:
        idx = ct.grid.index_of(np.array([t.coordX, t.coordY, t.coordZ]))
        assert ct.mask[idx] == t.label, f"centre of nodule {t.label} not in its mask"
        voxels = int((ct.mask == t.label).sum())
        d_eq = 2.0 * (3.0 * voxels * dx * dy * dz / (4.0 * np.pi)) ** (1.0 / 3.0)
        assert abs(d_eq - t.diameter_mm) <= max(dx, dy, dz), (t, d_eq)
        assert 3.0 <= t.diameter_mm <= 30.0
        assert t.seriesuid == ct.series_uid and t.site == site
    assert set(np.unique(ct.mask)) == {0} | {t.label for t in ct.truth}


@pytest.mark.parametrize("site", SITES)
def test_tissue_hu_ranges_hold_per_site(studies, site):
    ct = studies[site]
    hu = ct.hu()
    contrast = BUILTIN_SITES[site].contrast
    ranges = {
        Tissue.LUNG: (-930, -770),
        Tissue.FAT: (-140, -60),
        Tissue.MUSCLE: (10, 95),
        Tissue.BLOOD: (200, 420) if contrast else (10, 80),
    }
    for tissue, (lo, hi) in ranges.items():
        region = _region(ct, tissue, erode=1)
        assert region.sum() > 50, tissue
        mean = float(hu[region].mean())
        assert lo <= mean <= hi, f"{site} {tissue.name}: mean {mean:.0f} HU not in [{lo}, {hi}]"
    # air outside the body (inside the reconstruction circle) and bone
    assert float(np.median(hu[ct.tissue == Tissue.AIR])) < -900
    assert float(np.percentile(hu[ct.tissue == Tissue.BONE], 90)) > 300


def test_same_seed_reproduces_pixels_uids_and_truth():
    a = generate_ct("jingdong", 99, shape=(24, 96, 96))
    b = generate_ct("jingdong", 99, shape=(24, 96, 96))
    assert np.array_equal(a.pixels, b.pixels)
    assert np.array_equal(a.mask, b.mask)
    assert [t.row() for t in a.truth] == [t.row() for t in b.truth]
    assert a.part10() == b.part10()
    c = generate_ct("jingdong", 100, shape=(24, 96, 96))
    assert not np.array_equal(a.pixels, c.pixels)
    assert c.series_uid != a.series_uid


def _fingerprint(ct) -> tuple[float, float]:
    """(noise, intensity): std and mean HU in a homogeneous region (upper abdomen, liver)."""
    hu = ct.hu()
    r = _region(ct, Tissue.ABDOMEN, erode=3)
    assert r.sum() > 500
    return float(hu[r].std()), float(hu[r].mean())


def test_sites_differ_measurably_in_noise_and_intensity(studies):
    fp = {s: _fingerprint(studies[s]) for s in SITES}
    for s in SITES:  # the nominal noise level comes out
        assert 0.8 * BUILTIN_SITES[s].noise_sd < fp[s][0] < 1.25 * BUILTIN_SITES[s].noise_sd, fp
    for i, s in enumerate(SITES):
        for t in SITES[i + 1:]:
            (ns, ms), (nt, mt) = fp[s], fp[t]
            assert max(ns, nt) / min(ns, nt) > 1.25, f"{s} vs {t}: noise {ns:.1f} vs {nt:.1f}"
            assert abs(ms - mt) > 4.0, f"{s} vs {t}: mean {ms:.1f} vs {mt:.1f} HU"


def test_slices_follow_site_spacing_and_geometry_round_trips():
    ct = generate_ct("lingnan", 5, matrix=64)
    site = BUILTIN_SITES["lingnan"]
    assert ct.grid.spacing[2] == pytest.approx(site.slice_spacing_mm)
    assert 140 <= ct.grid.shape[0] <= 185  # ~300-350 mm at 2.0 mm
    ds = [pydicom.dcmread(io.BytesIO(b)) for b in ct.part10()[:3]]
    assert [d.InstanceNumber for d in ds] == [1, 2, 3]
    z = [float(d.ImagePositionPatient[2]) for d in ds]
    assert z[0] > z[1] > z[2]  # instance 1 is the most superior slice
    assert float(ds[0].PixelSpacing[0]) == pytest.approx(site.fov_mm / 64, rel=1e-5)
    vol = read_ct([pydicom.dcmread(io.BytesIO(b)) for b in ct.part10()])
    assert np.allclose(vol, ct.hu())


@pytest.mark.parametrize("site,expected", [
    ("hanse", None), ("jingdong", "王"), ("lingnan", None), ("sakura", "=")])
def test_patient_names_in_the_site_character_set(site, expected):
    ct = generate_ct(site, 3, shape=(8, 32, 32), nodules=0)
    raw = ct.part10()[0]
    ds = pydicom.dcmread(io.BytesIO(raw))
    assert str(ds.PatientName) == ct.patient.name
    charset = BUILTIN_SITES[site].charset
    if charset == "GB18030":
        assert ct.patient.name.split("=")[1].encode("gb18030") in raw
        assert ct.patient.name.split("=")[1].encode("utf-8") not in raw
    elif charset == "ISO_IR 192":
        assert ct.patient.name.encode("utf-8") in raw
    elif charset == "ISO_IR 100":
        assert ct.patient.name.encode("latin-1") in raw
    else:
        assert b"\x1b$B" in raw  # ISO 2022 escape to JIS X 0208
    if expected == "王":
        assert any("\u4e00" <= ch <= "\u9fff" for ch in ct.patient.name)


def test_nodule_variety_and_realistic_counts():
    from hounsfield.synth.phantom import make_phantom

    kinds, shapes, locations, counts = set(), set(), set(), []
    for seed in range(8):
        ph = make_phantom(seed, contrast=False, detail=0.3)
        counts.append(len(ph.nodules))
        for n in ph.nodules:
            kinds.add(n.kind)
            shapes.add(n.shape)
            locations.add(n.location)
    for seed in range(3):
        for n in make_phantom(100 + seed, contrast=False, nodules=5, detail=0.3).nodules:
            kinds.add(n.kind)
            shapes.add(n.shape)
            locations.add(n.location)
    assert all(0 <= c <= 5 for c in counts) and 0 in counts and max(counts) >= 2
    assert kinds == {"solid", "part-solid", "ground-glass"}
    assert shapes == {"round", "lobulated", "spiculated"}
    assert locations == {"isolated", "juxtapleural", "juxtavascular"}


def test_a_case_is_reproduced_from_its_recorded_seed():
    from hounsfield.synth import case_seed, iter_cases

    case = next(iter_cases(["sakura"], 1, seed=11, shape=(10, 48, 48), dx=False, seg=False))
    assert case.seed == case_seed(11, "sakura", 0)
    again = generate_ct("sakura", case.seed, shape=(10, 48, 48))
    assert np.array_equal(again.pixels, case.ct.pixels)
    assert case_seed(11, "sakura", 1) != case.seed != case_seed(11, "hanse", 0)


def test_first_patient_adds_new_patients_to_a_site():
    from hounsfield.errors import InvalidInput
    from hounsfield.synth import case_seed, iter_cases

    kw = dict(seed=11, shape=(10, 48, 48), dx=False, seg=False)
    first = [c.ct.patient.patient_id for c in iter_cases(["hanse"], 2, **kw)]
    more = list(iter_cases(["hanse"], 2, first_patient=2, **kw))
    assert first == ["SYN-HANSE-00000", "SYN-HANSE-00001"]
    assert [c.ct.patient.patient_id for c in more] == ["SYN-HANSE-00002", "SYN-HANSE-00003"]
    assert [c.seed for c in more] == [case_seed(11, "hanse", 2), case_seed(11, "hanse", 3)]
    with pytest.raises(InvalidInput, match="first patient"):
        next(iter_cases(["hanse"], 1, first_patient=-1, **kw))
