"""Series -> volume against SimpleITK's ImageSeriesReader, on the real corpus and synthetic
series; geometry checks and refusals; conversions to SimpleITK / NIfTI / MONAI."""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from hounsfield.errors import InvalidDicom, InvalidInput
from hounsfield.imaging import load_files, stacks_of, volume_from_datasets
from hounsfield.imaging.series import volume_from_stack
from hounsfield.imaging.volume import Volume
from tests.helpers import corpus, corpus_files
from tests.unit.imaging_helpers import phantom, rotation, write_series

warnings.filterwarnings("ignore", category=UserWarning)


def sitk_series(paths: list[Path]) -> sitk.Image:
    r = sitk.ImageSeriesReader()
    if len(paths) == 1:
        return sitk.ReadImage(str(paths[0]))
    folder = str(paths[0].parent)
    wanted = {str(p) for p in paths}
    for sid in r.GetGDCMSeriesIDs(folder):
        names = r.GetGDCMSeriesFileNames(folder, sid)
        if set(names) == wanted:
            r.SetFileNames(names)
            return r.Execute()
    r.SetFileNames(sorted(wanted))  # GDCM sorts by position
    return r.Execute()


def assert_same(vol: Volume, img: sitk.Image, *, atol: float = 1e-3) -> None:
    """Same voxel grid in patient space and same values (slice order may be reversed)."""
    a = sitk.GetArrayFromImage(img)
    d = np.array(img.GetDirection()).reshape(3, 3)
    assert vol.shape == a.shape
    np.testing.assert_allclose(vol.spacing, img.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(vol.direction[:, :2], d[:, :2], atol=1e-4)
    if np.allclose(vol.direction[:, 2], d[:, 2], atol=1e-4):
        np.testing.assert_allclose(vol.origin, img.GetOrigin(), atol=atol)
        np.testing.assert_allclose(vol.array, a, atol=atol)
    else:  # ITK's multi-frame reader keeps file order; the same grid walked the other way
        np.testing.assert_allclose(vol.direction[:, 2], -d[:, 2], atol=1e-4)
        far = np.array(img.GetOrigin()) + d @ (np.array(img.GetSpacing()) * (np.array(img.GetSize()) - 1) * [0, 0, 1])
        np.testing.assert_allclose(vol.origin, far, atol=atol)
        np.testing.assert_allclose(vol.array, a[::-1], atol=atol)


def corpus_series() -> list[tuple[str, list[Path]]]:
    """Every real multi-slice image series of the corpus: (name, files of one stack)."""
    by_series: dict[str, list[Path]] = defaultdict(list)
    for p in corpus_files():
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            single = int(str(ds.get("NumberOfFrames", 1) or 1)) == 1
        except Exception:  # noqa: BLE001
            continue
        if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds and single:
            by_series[str(ds.SeriesInstanceUID)].append(p)
    out = []
    for uid, paths in sorted(by_series.items()):
        positions = set()
        for p in paths:
            positions.add(tuple(pydicom.dcmread(p, stop_before_pixels=True, force=True).ImagePositionPatient))
        if len(positions) == len(paths) > 1:
            out.append((paths[0].parent.name + ":" + uid[-12:], paths))
    return out


CORPUS_SERIES = corpus_series()


def test_corpus_has_multislice_series():
    assert len(CORPUS_SERIES) >= 5


@pytest.mark.parametrize("name,paths", CORPUS_SERIES, ids=[n for n, _ in CORPUS_SERIES])
def test_corpus_series_matches_simpleitk(name, paths):
    dss = [pydicom.dcmread(p, force=True) for p in paths]
    stacks = stacks_of(dss)
    by_sop = {str(ds.SOPInstanceUID): p for ds, p in zip(dss, paths, strict=True)}
    for st in stacks:
        files = [by_sop[f.sop_instance_uid] for f in st.frames]
        try:
            vol = volume_from_stack(st)
        except InvalidInput as exc:  # a sparse (sub-sampled) series: refused, then resampled
            assert "irregular slice spacing" in exc.reason
            vol = volume_from_stack(st, resample=True)
            for f, d in zip(st.frames, st.distances, strict=True):
                k = int(round((d - st.distances[0]) / vol.spacing[2]))
                np.testing.assert_allclose(vol.world((0, 0, k)), f.position, atol=1e-3)
                ref = sitk.GetArrayFromImage(sitk.ReadImage(str(by_sop[f.sop_instance_uid])))[0]
                np.testing.assert_allclose(vol.array[k], ref, atol=1e-3)
            continue
        assert vol.sop_instance_uids == [f.sop_instance_uid for f in st.frames]
        assert_same(vol, sitk_series(files))


@pytest.mark.parametrize("name", ["eCT_Supplemental.dcm", "rtdose.dcm"])
def test_corpus_multiframe_matches_simpleitk(name):
    path = corpus(name)
    vol = load_files([path])
    img = sitk.ReadImage(str(path))
    if name == "rtdose.dcm":  # ITK leaves DoseGridScaling out; we apply it (Gy)
        img = sitk.Cast(img, sitk.sitkFloat64) * float(pydicom.dcmread(path).DoseGridScaling)
    assert_same(vol, img, atol=1e-6 if name == "rtdose.dcm" else 1e-3)
    assert vol.frame_numbers and all(n >= 1 for n in vol.frame_numbers)


def test_enhanced_without_functional_groups_is_refused_with_reason():
    with pytest.raises(InvalidDicom, match="no functional groups"):
        load_files([corpus("emri_small.dcm")])


ORIENTATIONS = {
    "axial": np.eye(3),
    "coronal": np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=float),
    "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float),
    "oblique": rotation(0.3, -0.2, 0.5),
}


@pytest.mark.parametrize("orient", list(ORIENTATIONS))
def test_synthetic_series_matches_simpleitk(tmp_path, orient):
    vol = phantom(direction=ORIENTATIONS[orient])
    paths = write_series(tmp_path, vol, seed=orient)
    loaded = load_files(paths)
    assert_same(loaded, sitk_series(paths))
    assert loaded.same_geometry(vol)
    np.testing.assert_array_equal(loaded.array, vol.array)
    assert loaded.array.dtype == np.int16


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_compressed_series_decode(tmp_path, ts):
    vol = phantom(shape=(4, 40, 40))
    paths = write_series(tmp_path, vol, transfer_syntax=ts, seed=str(ts))
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == ts
    loaded = load_files(paths)
    np.testing.assert_array_equal(loaded.array, vol.array)
    assert_same(loaded, sitk_series(paths))


def test_non_integer_rescale_gives_float(tmp_path):
    vol = phantom(shape=(3, 8, 8))
    vol = vol.with_array(vol.array.astype(np.float32) * 0.37 + 0.1)
    loaded = load_files(write_series(tmp_path, vol))
    assert loaded.array.dtype == np.float32
    assert np.abs(loaded.array - vol.array).max() < 0.01 * 0.37 * 1000


def test_gantry_tilt_refused_then_resampled(tmp_path):
    vol = phantom(shape=(6, 16, 16), spacing=(1.0, 1.0, 2.0))

    def tilt(k, ds):
        pos = [float(v) for v in ds.ImagePositionPatient]
        pos[1] += 0.5 * k * 2.0 * np.tan(np.radians(15))  # shear along y, 15 degrees
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]

    paths = write_series(tmp_path, vol, mutate=tilt)
    with pytest.raises(InvalidInput, match="gantry tilt"):
        load_files(paths)
    out = load_files(paths, resample=True)
    assert out.meta["resampled"] and out.meta["gantry_tilt_deg"] > 5
    np.testing.assert_allclose(out.direction, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(out.array[0], vol.array[0], atol=1e-3)


def test_missing_slice_refused_then_resampled(tmp_path):
    vol = phantom(shape=(8, 12, 12), spacing=(1.0, 1.0, 2.0))
    paths = write_series(tmp_path, vol, mutate=lambda k, ds: k != 4, shuffle=False)
    with pytest.raises(InvalidInput, match="irregular slice spacing") as err:
        load_files(paths)
    assert "between" in err.value.reason
    out = load_files(paths, resample=True)
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.array[4], (vol.array[3].astype(float) + vol.array[5]) / 2, atol=1e-3)
    np.testing.assert_allclose(out.array[5], vol.array[5])


def test_differing_rows_refused(tmp_path):
    vol = phantom(shape=(4, 12, 12))

    def shrink(k, ds):
        if k == 2:
            ds.Rows = 6
            ds.PixelData = ds.PixelData[: 6 * 12 * 2]

    with pytest.raises(InvalidInput, match="differing Rows/Columns"):
        load_files(write_series(tmp_path, vol, mutate=shrink))


def test_missing_pixel_spacing_names_the_instance(tmp_path):
    vol = phantom(shape=(3, 8, 8))
    paths = write_series(tmp_path, vol, mutate=lambda k, ds: ds.__delattr__("PixelSpacing") if k == 1 else None)
    with pytest.raises(InvalidDicom, match=r"2\.25\.\d+: missing PixelSpacing"):
        load_files(paths)


def test_unsupported_photometric_refused():
    with pytest.raises(InvalidDicom, match="unsupported photometric interpretation 'RGB'"):
        load_files([corpus("SC_rgb.dcm")])


def test_corrupt_compressed_frame_names_the_instance(tmp_path):
    vol = phantom(shape=(3, 40, 40))
    paths = write_series(tmp_path, vol, transfer_syntax=JPEG2000Lossless)
    ds = pydicom.dcmread(paths[0])
    from pydicom.encaps import encapsulate, generate_frames
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 3] + b"\0" * 16])
    ds.save_as(paths[0])
    with pytest.raises(InvalidDicom, match=f"{ds.SOPInstanceUID}: cannot decode pixel data"):
        load_files(paths)


def test_localizer_plus_axial_takes_the_axial_stack(tmp_path):
    axial = write_series(tmp_path / "a", phantom(shape=(5, 10, 10)), seed="s")
    loc = write_series(tmp_path / "l", phantom(shape=(1, 10, 10), direction=ORIENTATIONS["coronal"]),
                       seed="s-loc", mutate=lambda k, ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    dss = [pydicom.dcmread(p) for p in axial + loc]
    vol = volume_from_datasets(dss)
    assert vol.shape[0] == 5 and vol.meta["stacks"] == 2


def test_two_echoes_are_split_and_must_be_chosen(tmp_path):
    v = phantom(shape=(4, 8, 8))
    e1 = write_series(tmp_path / "1", v, seed="e", modality="MR", mutate=lambda k, ds: setattr(ds, "EchoNumbers", "1"))
    e2 = write_series(tmp_path / "2", v.with_array(v.array + 5), seed="e2", modality="MR",
                      mutate=lambda k, ds: setattr(ds, "EchoNumbers", "2"))
    dss = [pydicom.dcmread(p) for p in e1 + e2]
    with pytest.raises(InvalidInput, match="several stacks"):
        volume_from_datasets(dss)
    assert len(stacks_of(dss)) == 2
    a, b = volume_from_datasets(dss, stack=0), volume_from_datasets(dss, stack=1)
    assert {int(a.array[0, 0, 0]) - int(b.array[0, 0, 0])} <= {5, -5}


def test_conversions_keep_geometry():
    vol = phantom(direction=ORIENTATIONS["oblique"])
    vol.sop_instance_uids = [f"1.2.{k}" for k in range(vol.shape[0])]
    back = Volume.from_sitk(vol.to_sitk())
    assert back.same_geometry(vol) and np.array_equal(back.array, vol.array)
    nii = vol.to_nifti()
    back = Volume.from_nifti(nii)
    assert back.same_geometry(vol) and np.array_equal(back.array, vol.array)
    mt = vol.to_metatensor()
    assert tuple(mt.shape) == vol.shape[::-1]
    back = Volume.from_metatensor(mt)
    assert back.same_geometry(vol) and back.sop_instance_uids == vol.sop_instance_uids
    # MONAI's own reading of the NIfTI gives the same affine as ours
    np.testing.assert_allclose(np.asarray(mt.affine), nii.affine, atol=1e-6)


def test_load_series_from_archive(archive, tmp_path):
    from hounsfield.imaging import load_series
    from hounsfield.ingest.importer import import_paths

    vol = phantom(shape=(5, 10, 12))
    paths = write_series(tmp_path, vol)
    rep = import_paths(archive, paths)
    assert rep.imported == 5
    uid = str(pydicom.dcmread(paths[0]).SeriesInstanceUID)
    loaded = load_series(archive, uid)
    assert loaded.same_geometry(vol) and np.array_equal(loaded.array, vol.array)
    assert len(set(loaded.sop_instance_uids)) == 5


def test_every_corpus_file_loads_or_is_refused_with_a_reason():
    """Real files in every transfer syntax: a volume equal to the decoded pixels, or a reason."""
    from hounsfield.errors import HounsfieldError

    loaded = refused = 0
    for p in corpus_files():
        try:
            ds = pydicom.dcmread(p, force=True)
        except Exception:  # noqa: BLE001 - not DICOM at all: the importer's business
            continue
        if "PixelData" not in ds:
            continue
        try:
            vol = load_files([p])
        except HounsfieldError as exc:
            assert exc.reason and ("frame" in exc.reason or ":" in exc.reason or "stack" in exc.reason)
            refused += 1
            continue
        ref = pydicom.dcmread(p, force=True)
        if int(str(ref.get("NumberOfFrames", 1) or 1)) == 1 and "PerFrameFunctionalGroupsSequence" not in ref:
            px = ref.pixel_array.astype(np.float64)
            px = px * float(ref.get("RescaleSlope", 1) or 1) + float(ref.get("RescaleIntercept", 0) or 0)
            np.testing.assert_allclose(vol.array[0], px, atol=1e-3, err_msg=p.name)
        loaded += 1
    assert loaded >= 20 and refused >= 5


def test_per_frame_rescale_from_functional_groups(tmp_path):
    ds = pydicom.dcmread(corpus("eCT_Supplemental.dcm"))
    from pydicom.dataset import Dataset
    raw = ds.pixel_array.astype(np.float64)
    for n, (slope, intercept) in enumerate([(1.0, -1024.0), (0.5, -1000.0)]):
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "HU"
        ds.PerFrameFunctionalGroupsSequence[n].PixelValueTransformationSequence = [pvt]
    path = tmp_path / "eCT.dcm"
    ds.save_as(path)
    vol = load_files([path])
    assert vol.array.dtype == np.float32
    by_frame = {f: vol.array[k] for k, f in enumerate(vol.frame_numbers)}
    np.testing.assert_allclose(by_frame[1], raw[0] - 1024, atol=1e-3)
    np.testing.assert_allclose(by_frame[2], raw[1] * 0.5 - 1000, atol=1e-3)


def test_metatensor_matches_monai_reading_the_same_series(tmp_path):
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    vol = phantom(shape=(6, 12, 14), direction=ORIENTATIONS["oblique"])
    write_series(tmp_path / "s", vol, seed="monai", shuffle=False)  # MONAI orders by InstanceNumber
    loaded = load_files(sorted((tmp_path / "s").glob("*.dcm")))
    ours = loaded.to_metatensor()
    theirs = LoadImage(reader=PydicomReader(), image_only=True)(str(tmp_path / "s"))
    assert tuple(theirs.shape) == tuple(ours.shape)
    np.testing.assert_allclose(np.asarray(theirs), np.asarray(ours), atol=1e-3)
    np.testing.assert_allclose(np.asarray(theirs.affine), np.asarray(ours.affine), atol=1e-4)


@pytest.mark.parametrize("orient", ["axial", "oblique"])
def test_enhanced_multiframe_from_highdicom_matches(tmp_path, orient):
    """highdicom's Legacy Converted Enhanced CT (per-frame functional groups) of our series."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    vol = phantom(shape=(5, 12, 14), direction=ORIENTATIONS[orient])
    paths = write_series(tmp_path / "s", vol, seed=f"mf-{orient}")
    mf = LegacyConvertedEnhancedCTImage([pydicom.dcmread(p) for p in paths],
                                        series_instance_uid=generate_uid(), series_number=9,
                                        sop_instance_uid=generate_uid(), instance_number=1)
    out = tmp_path / "mf.dcm"
    mf.save_as(out)
    loaded = load_files([out])
    assert loaded.same_geometry(vol)
    np.testing.assert_array_equal(loaded.array, vol.array)
    assert sorted(loaded.frame_numbers) == [1, 2, 3, 4, 5]
    assert_same(loaded, sitk.ReadImage(str(out)))
