"""Research formats in (NIfTI, NRRD, MetaImage) -> a valid DICOM series in the archive, and
back out with the same geometry and values (within rescale quantisation)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from hounsfield.archive.models import Series
from hounsfield.imaging import load_series
from hounsfield.imaging.research import convert
from hounsfield.imaging.volume import Volume
from hounsfield.ingest.importer import import_paths
from tests.unit.imaging_helpers import phantom, rotation


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def only_series(archive) -> str:
    with archive.session() as s:
        uids = [r[0] for r in s.query(Series.series_instance_uid).all()]
    assert len(uids) == 1
    return uids[0]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mhd"])
def test_research_file_imports_as_series_with_same_geometry(archive, tmp_path, suffix):
    vol = phantom(shape=(7, 18, 22), spacing=(0.75, 0.8, 1.25), direction=rotation(0.1, 0.2, -0.3))
    path = tmp_path / f"case-0001{suffix}"
    sitk.WriteImage(vol.to_sitk(), str(path))
    rep = import_paths(archive, [path])
    assert rep.imported == 7, rep.refused
    if suffix == ".mhd":  # the .raw pixel file next to it is skipped, not refused
        assert not rep.refused
    back = load_series(archive, only_series(archive))
    assert back.same_geometry(vol, atol=1e-4)
    np.testing.assert_array_equal(back.array, vol.array)  # integers fit: stored exactly
    with archive.session() as s:
        from hounsfield.archive.models import Patient
        p = s.query(Patient).one()
        assert p.patient_id == "case-0001" and p.patient_name == "case-0001"
    again = import_paths(archive, [path])
    assert again.duplicates == 7 and again.imported == 0


def test_float_mr_nifti_round_trip_within_quantisation(archive, tmp_path):
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 150.0, size=(20, 16, 9)).astype(np.float32)  # (i, j, k)
    affine = np.array([[-0.9, 0, 0, 90], [0, 0.9, 0, -120], [0, 0, 3.0, -40], [0, 0, 0, 1]])
    path = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    assert import_paths(archive, [path]).imported == 9
    uid = only_series(archive)
    back = load_series(archive, uid)
    ref = Volume.from_nifti(nib.load(path))
    if not back.same_geometry(ref, atol=1e-4):  # left-handed grid: DICOM stacks it along -k
        back = back.reversed_k()
    assert back.same_geometry(ref, atol=1e-4)
    step = float(data.max() - data.min()) / 65000
    assert np.abs(back.array - ref.array).max() <= step
    nifti_again = back.to_nifti()
    np.testing.assert_allclose(nifti_again.affine, affine, atol=1e-4)
    assert back.modality == "MR"


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_written_series_is_dciodvfy_clean(tmp_path, modality):
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is not installed: scripts/setup.sh")
    vol = phantom(shape=(2, 8, 8))
    if modality == "MR":
        vol = vol.with_array(vol.array.astype(np.float32) * 0.5 + 1000.25)
    src = tmp_path / "in.nii.gz"
    sitk.WriteImage(vol.to_sitk(), str(src))
    for n, data in enumerate(convert(src, modality=modality)):
        f = tmp_path / f"{n}.dcm"
        f.write_bytes(data)
        assert dciodvfy_errors(f) == []
        assert pydicom.dcmread(f).Modality == modality


def test_unreadable_and_4d_files_are_refused_with_reason(archive, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    img4 = tmp_path / "fmri.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 5), np.float32), np.eye(4)), img4)
    rep = import_paths(archive, [bad, img4])
    reasons = dict(rep.refused)
    assert rep.imported == 0
    assert "cannot convert" in reasons[str(bad)]
    assert "only 3D images" in reasons[str(img4)]
