"""Detector pieces: sliding window == MONAI's, heatmap decoding, geometry, recipes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hounsfield.errors import InvalidInput
from hounsfield.infer import sliding_window
from hounsfield.models.detector import NetworkSpec, build_network, decode, heatmap_targets
from hounsfield.models.volume import PreprocessPlan, Volume, to_patient, to_voxel
from hounsfield.train.recipe import load_recipe


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_network(NetworkSpec(features=(4, 4, 8, 8, 16, 4))).eval()


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_sliding_window_equals_monai(tiny_net, overlap) -> None:
    from monai.inferers import sliding_window_inference

    g = torch.Generator().manual_seed(1)
    img = torch.rand((1, 20, 70, 45), generator=g)
    img[:, :, :40, :] = 0.0  # "air": constant windows take the shortcut
    roi = (16, 32, 32)
    ours = sliding_window(tiny_net, img, roi, overlap=overlap, batch_size=3)
    with torch.inference_mode():
        ref = sliding_window_inference(img[None], roi, 3, tiny_net, overlap=overlap,
                                       mode="constant")[0]
    assert ours.shape == ref.shape
    # voxels at y >= 40 lie only in windows that see tissue: there the result is MONAI's.
    # A window of one constant value ("air") is computed once: on constant input every
    # InstanceNorm layer divides float rounding noise by sqrt(eps), so what any implementation
    # returns there is CPU-kernel noise (it differs between AVX2 and AVX-512 machines, and
    # from a float64 run) — it is checked to be our one probe's output, finite.
    torch.testing.assert_close(ours[:, :, 40:], ref.float()[:, :, 40:], atol=2e-5, rtol=1e-4)
    assert torch.isfinite(ours).all()
    if overlap == 0.0:  # the first window (z 0, y 0, x 0) is all air: the probe's output
        with torch.inference_mode():
            probe = tiny_net(torch.zeros((1, 1, *roi)))[0]
        torch.testing.assert_close(ours[:, :16, :32, :32], probe, atol=0, rtol=0)


def test_sliding_window_pads_small_images(tiny_net) -> None:
    img = torch.rand((1, 8, 20, 20))
    out = sliding_window(tiny_net, img, (16, 32, 32), batch_size=2, precision="bf16")
    assert out.shape == (2, 8, 20, 20) and torch.isfinite(out).all()
    with pytest.raises(InvalidInput):
        sliding_window(tiny_net, img, (16, 32, 32), overlap=1.0)


def test_targets_and_decode_round_trip() -> None:
    shape = (24, 40, 40)
    centres = np.array([[8.0, 10.0, 12.0], [16.0, 30.0, 25.0]])
    dmm = np.array([6.0, 12.0], dtype=np.float32)
    dvox = dmm[:, None] / np.array([2.0, 1.0, 1.0])
    heat, size, mask = heatmap_targets(shape, centres, dvox, dmm)
    assert heat[8, 10, 12] == 1.0 and heat[16, 30, 25] == 1.0 and mask.sum() > 0
    logit = torch.logit(torch.from_numpy(heat).clamp(1e-4, 1 - 1e-4))
    out = torch.stack([logit, torch.from_numpy(size)])
    dets = decode(out, threshold=0.5)
    assert len(dets) == 2
    got = sorted((tuple(round(v) for v in d.zyx), round(d.diameter_mm, 3)) for d in dets)
    assert got == [((8, 10, 12), 6.0), ((16, 30, 25), 12.0)]


def test_volume_geometry_round_trip() -> None:
    a = np.pi / 7
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    vol = Volume(np.zeros((5, 6, 7), np.float32), (0.8, 0.7, 2.5), (10.0, -20.0, 30.0), direction)
    zyx = np.array([[1.5, 2.0, 3.25], [4.0, 5.0, 6.0]])
    np.testing.assert_allclose(to_voxel(vol, to_patient(vol, zyx)), zyx, atol=1e-9)
    # voxel (k, j, i) = (1, 2, 3) lies at origin + direction @ (3*0.8, 2*0.7, 1*2.5)
    np.testing.assert_allclose(to_patient(vol, np.array([[1.0, 2.0, 3.0]]))[0],
                               np.array([10.0, -20.0, 30.0]) + direction @ [2.4, 1.4, 2.5])
    vol.array[:] = -2000.0
    vol.array[2, 3, 3] = 0.0
    prep = PreprocessPlan(spacing_mm=(1.6, 1.4, 2.5)).apply(vol)
    assert prep.array.shape == (5, 3, 4) and prep.array.dtype == np.float32
    assert prep.spacing == (1.6, 1.4, 2.5) and 0.0 <= prep.array.min() <= prep.array.max() <= 1.0
    # voxel 0 keeps its patient position after resampling (same origin and direction)
    np.testing.assert_allclose(to_patient(prep, np.zeros((1, 3))), to_patient(vol, np.zeros((1, 3))))


def test_recipes_validate(tmp_path) -> None:
    r = load_recipe("lung-nodule-detection")
    assert r.detector == "two-stage" and r.network.name == "patch_cnn"
    assert r.precision == "fp32" and r.targets.min_cpm == 0.9
    h = load_recipe("lung-nodule-detection", preset="heatmap")
    assert h.detector == "heatmap" and h.network.name == "basic_unet" and h.precision == "auto"
    bad_spec = tmp_path / "bad_spec.yaml"
    bad_spec.write_text("name: x\ncandidates:\n  diameters_mm: [3, 6]\n  per_scale: [10]\n")
    with pytest.raises(InvalidInput, match="per_scale"):
        load_recipe(bad_spec)
    assert load_recipe("lung-nodule-detection", preset="gpu").precision == "amp"
    with pytest.raises(InvalidInput, match="no preset"):
        load_recipe("lung-nodule-detection", preset="nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbatch_size: 0\n")
    with pytest.raises(InvalidInput, match="batch_size"):
        load_recipe(bad)
    bad.write_text("name: x\nlearning_rate: 1\n")
    with pytest.raises(InvalidInput, match="learning_rate"):
        load_recipe(bad)
    bad.write_text("name: [unclosed\n")
    with pytest.raises(InvalidInput, match="YAML"):
        load_recipe(bad)
    with pytest.raises(InvalidInput, match="unknown recipe"):
        load_recipe("no-such-recipe")
    # test-time augmentation: on for the two-stage presets, refused for a heatmap recipe
    assert r.inference.tta_top_k == 100 and h.inference.tta_top_k == 0
    bad.write_text("name: x\ndetector: heatmap\ninference:\n  tta_top_k: 10\n")
    with pytest.raises(InvalidInput, match="tta_top_k"):
        load_recipe(bad)
