"""Site profiles from files, radiograph projection and its truth, NIfTI masks."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from hounsfield.cli.main import app
from hounsfield.errors import InvalidInput
from hounsfield.synth import BUILTIN_SITES, generate_ct, generate_dx, load_sites, resolve_sites
from hounsfield.synth.truth import write_mask_nifti

TOML = """
[[site]]
name = "lakeside"
institution = "Lakeside Hospital"
manufacturer = "SIEMENS"
model = "SOMATOM Force"
kernel = "Br40d"
noise_sd = 18.0
noise_grain_mm = 0.9
resolution_fwhm_mm = 0.9
slice_thickness_mm = 1.5
slice_spacing_mm = 1.5
hu_offset = 5.0
fov_mm = 380
charset = "ISO_IR 144"
name_script = "cyrillic"
"""

YAML = """
site:
  - name: harbour
    institution: Harbour Clinic
    manufacturer: Canon Medical Systems
    model: Aquilion Prime SP
    kernel: FC13
    noise_sd: 11
    noise_grain_mm: 1.4
    resolution_fwhm_mm: 1.2
    slice_thickness_mm: 2.0
    slice_spacing_mm: 2.0
    fov_mm: 350
    contrast: true
    charset: ISO_IR 126
    name_script: greek
"""


def test_sites_from_toml_and_yaml(tmp_path):
    t = tmp_path / "sites.toml"
    t.write_text(TOML, encoding="utf-8")
    y = tmp_path / "sites.yaml"
    y.write_text(YAML, encoding="utf-8")
    a, b = load_sites(t), load_sites(y)
    assert a["lakeside"].noise_sd == 18.0 and b["harbour"].contrast is True
    profiles = resolve_sites(["hanse", "lakeside"], a)
    assert [p.name for p in profiles] == ["hanse", "lakeside"]
    ct = generate_ct(a["lakeside"], 1, shape=(8, 32, 32), nodules=0)
    assert ct.datasets[0].SpecificCharacterSet == "ISO_IR 144"
    assert ct.patient.name.encode("iso8859_5") in ct.part10()[0]


@pytest.mark.parametrize("text,needle", [
    ('[[site]]\nname = "x"\nbogus = 1\n', "bogus"),
    (TOML.replace('"ISO_IR 144"', '"ISO_IR 999"'), "unsupported Specific Character Set"),
    (TOML.replace('"ISO_IR 144"', '"ISO_IR 100"'), "cannot encode cyrillic"),
    (TOML.replace("noise_sd = 18.0", "noise_sd = -1"), "noise_sd"),
    ("not toml at all [", "not valid"),
    ('site = 3\n', "expected a list"),
])
def test_bad_site_files_say_what_is_wrong(tmp_path, text, needle):
    p = tmp_path / "sites.toml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInput) as e:
        load_sites(p)
    assert needle in e.value.reason


def test_unknown_site_names_the_known_ones():
    with pytest.raises(InvalidInput) as e:
        resolve_sites(["nowhere"])
    assert "hanse" in e.value.reason


def test_builtin_sites_differ_like_scanners():
    p = list(BUILTIN_SITES.values())
    assert len(p) >= 4
    assert len({s.manufacturer for s in p}) == len(p)
    assert len({s.kernel for s in p}) == len(p)
    assert max(s.noise_sd for s in p) / min(s.noise_sd for s in p) > 3
    assert min(s.slice_thickness_mm for s in p) <= 0.8 and max(s.slice_thickness_mm for s in p) >= 2.5
    assert {s.contrast for s in p} == {True, False}
    assert {"ISO_IR 192", "GB18030"} <= {s.charset for s in p}


def test_radiograph_of_the_same_patient_with_truth():
    ct = generate_ct("hanse", 42, shape=(16, 64, 64), nodules=2)
    dx = generate_dx("hanse", 42, matrix=256, nodules=2)
    assert dx.patient == ct.patient
    assert dx.study_uid != ct.study_uid
    assert [r["label"] for r in dx.truth] == [1, 2]
    img = dx.image.astype(float)
    assert img.shape == (256, 256) and dx.dataset.Modality == "DX"
    # lungs are darker (less attenuation) than the spine / mediastinum column
    mid = img[80:170, 120:136].mean()
    lateral = np.concatenate([img[80:170, 60:90], img[80:170, 166:196]], axis=1).mean()
    assert mid > lateral + 100
    for r, t in zip(dx.truth, ct.truth):
        assert r["nodule_present"] == 1
        assert 0 <= r["row"] < 256 and 0 <= r["col"] < 256
        assert r["diameter_mm"] == pytest.approx(t.diameter_mm, abs=0.01)
        # the projected centre: column follows patient x (left on the image right)
        assert r["col"] == pytest.approx(
            (t.coordX - ct.phantom.offset[0] + 215.0) / dx.pixel_mm - 0.5, abs=0.6)
    none = generate_dx("hanse", 43, matrix=128, nodules=0)
    assert none.truth[0]["nodule_present"] == 0
    same = generate_dx("hanse", 43, matrix=128, nodules=0)
    assert np.array_equal(same.image, none.image)


def test_nifti_mask_geometry_matches_the_csv(tmp_path):
    ct = generate_ct("sakura", 8, shape=(24, 64, 64), nodules=2)
    path = write_mask_nifti(ct, tmp_path / "m.nii.gz")
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    inv = np.linalg.inv(img.affine)
    for t in ct.truth:
        ras = np.array([-t.coordX, -t.coordY, t.coordZ, 1.0])
        i, j, k = np.rint(inv @ ras)[:3].astype(int)
        assert data[i, j, k] == t.label


def test_cli_lists_sites_with_a_sites_file(tmp_path):
    t = tmp_path / "sites.toml"
    t.write_text(TOML, encoding="utf-8")
    r = CliRunner().invoke(app, ["synth", "sites", "--sites-file", str(t)],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "lakeside" in r.output and "hanse" in r.output
    r = CliRunner().invoke(app, ["synth", "ct", "-n", "1", "--shape", "8x32"])
    assert r.exit_code == 2 and "SLICESxROWSxCOLS" in r.output
    r = CliRunner().invoke(app, ["synth", "ct", "-n", "1", "-s", "nowhere", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "unknown site" in r.output


def test_seg_round_trips_to_the_mask():
    import io

    import highdicom as hd
    import pydicom

    from hounsfield.synth import make_seg, to_part10

    ct = generate_ct("jingdong", 31, shape=(20, 64, 64), nodules=2)
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(to_part10(make_seg(ct)))))
    assert [int(d.SegmentNumber) for d in seg.SegmentSequence] == [1, 2]
    uids = [(ct.study_uid, ct.series_uid, d.SOPInstanceUID) for d in ct.datasets]
    labelmap = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[u[2] for u in uids], combine_segments=True,
        ignore_spatial_locations=True, skip_overlap_checks=True)
    # source order is instance order = descending z; the mask is ascending z
    assert np.array_equal(np.asarray(labelmap), ct.mask[::-1])


def test_bad_generation_arguments_are_refused():
    for kwargs in ({"seed": -1}, {"seed": 1, "nodules": 9}, {"seed": 1, "shape": (4, 8, 8)}):
        seed = kwargs.pop("seed")
        with pytest.raises(InvalidInput):
            generate_ct("hanse", seed, **kwargs)
    with pytest.raises(InvalidInput):
        generate_dx("hanse", 1, matrix=10)


def test_cli_dx_only(tmp_path):
    r = CliRunner().invoke(app, ["synth", "dx", "-n", "2", "-s", "sakura", "--matrix", "128",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert len(list(tmp_path.rglob("*.dcm"))) == 2
    rows = (tmp_path / "dx_truth.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("sopinstanceuid,studyuid,patient_id,site,nodule_present")
    assert not (tmp_path / "annotations.csv").read_text(encoding="utf-8").splitlines()[1:]
