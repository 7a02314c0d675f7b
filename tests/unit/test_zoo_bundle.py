"""MONAI model-zoo RetinaNet bundles (lung_nodule_ct_detection layout) run without evaluating
their config: the typed reader, the torchvision-free network, and the whole pipeline compared
with MONAI's own transforms (Orientationd, ScaleIntensityRanged, ClipBoxToImaged,
AffineBoxToWorldCoordinated, ConvertBoxModed) on the same volume and weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hounsfield.infer.zoo import load_zoo_runner
from hounsfield.errors import InvalidInput
from hounsfield.imaging.volume import Volume
from hounsfield.models.zoo import load_zoo_config, reorient
from tests.nodule_helpers import sphere_volume, write_zoo_retinanet_bundle


def _volume(direction=np.eye(3), shape=(32, 64, 64), spacing=(1.5, 1.5, 2.0)) -> Volume:
    arr = sphere_volume(shape, spacing, (-48, -48, -20), [(0, 0, 0, 8), (20, -10, 10, 6)], 3)
    return Volume(array=arr, spacing=spacing, origin=(-48.0, -48.0, -20.0), direction=direction,
                  modality="CT", series_instance_uid="1.2.3")


@pytest.mark.parametrize("direction", [
    np.eye(3),                                                   # axial, as most CTs
    np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),              # coronal
    np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]),               # sagittal
    np.array([[-1.0, 0, 0], [0, -1, 0], [0, 0, -1]]),            # every axis reversed
])
def test_reorient_matches_monai_orientation(direction) -> None:
    from monai.transforms import Orientation

    vol = _volume(direction)
    ref = Orientation(axcodes="RAS")(vol.to_metatensor()[None])
    ours = reorient(vol, "RAS")
    np.testing.assert_array_equal(ours.array.transpose(2, 1, 0), ref[0].numpy())
    np.testing.assert_allclose(ours.affine_ras, ref.affine.numpy(), atol=1e-9)
    # every voxel keeps its patient position
    k, j, i = 5, 17, 40
    val = vol.array[k, j, i]
    p = vol.world((i, j, k))
    ijk = np.linalg.solve(ours.affine[:3, :3], p - ours.affine[:3, 3]).round().astype(int)
    assert ours.array[ijk[2], ijk[1], ijk[0]] == val


def test_runner_matches_monai_pipeline(tmp_path) -> None:
    """Same volume (already at the bundle's pixdim), same weights: our findings equal what the
    bundle's own MONAI transforms make of the detector's boxes."""
    from monai.apps.detection.transforms.dictionary import (AffineBoxToWorldCoordinated,
                                                            ClipBoxToImaged, ConvertBoxModed)
    from monai.transforms import Compose, Orientationd, ScaleIntensityRanged

    runner = load_zoo_runner(write_zoo_retinanet_bundle(tmp_path / "zoo"), name="zoo",
                             version="1")
    vol = _volume()
    ours = runner.run_volume(vol)
    assert len(ours.findings) == 300  # detections_per_img, random weights with a zeroed bias

    data = {"image": vol.to_metatensor()[None]}
    data = Compose([Orientationd("image", "RAS"),
                    ScaleIntensityRanged("image", -1024.0, 300.0, 0.0, 1.0, clip=True)])(data)
    det = runner.detector
    with torch.no_grad():
        pred = det([data["image"].as_tensor().float()], use_inferer=True)[0]
    post = Compose([
        ClipBoxToImaged(box_keys="box", label_keys=["label", "score"],
                        box_ref_image_keys="image", remove_empty=True),
        AffineBoxToWorldCoordinated(box_keys="box", box_ref_image_keys="image",
                                    affine_lps_to_ras=True),
        ConvertBoxModed(box_keys="box", src_mode="xyzxyz", dst_mode="cccwhd")])
    out = post({"image": data["image"], "box": pred[det.target_box_key],
                "label": pred[det.target_label_key],
                "score": pred[det.pred_score_key]})
    ref_boxes = out["box"].numpy()
    ref_scores = out["score"].numpy()
    order = np.argsort(-ref_scores, kind="stable")
    ref_boxes, ref_scores = ref_boxes[order], ref_scores[order]
    got = np.array([[f.x_mm, f.y_mm, f.z_mm] for f in ours.findings])
    np.testing.assert_allclose([f.probability for f in ours.findings], ref_scores, rtol=1e-5)
    np.testing.assert_allclose(got, ref_boxes[:, :3], atol=1e-3)
    np.testing.assert_allclose([f.diameter_mm for f in ours.findings],
                               ref_boxes[:, 3:].mean(axis=1), atol=1e-3)
    assert ours.provenance["detector"] == "monai-zoo RetinaNet (resnet10 FPN)"
    assert ours.provenance["network_shape"] == [64, 64, 32]


def test_runner_resamples_to_the_bundle_pixdim(tmp_path) -> None:
    runner = load_zoo_runner(write_zoo_retinanet_bundle(tmp_path / "zoo", pixdim=(2.0, 2.0, 2.5)))
    res = runner.run_volume(_volume(spacing=(1.0, 1.0, 1.25)))
    assert res.provenance["network_shape"] == [32, 32, 16]
    assert res.findings  # and every finding lies inside the scanned volume
    xyz = np.array([[f.x_mm, f.y_mm, f.z_mm] for f in res.findings])
    assert (xyz.min(axis=0) >= [-48.6, -48.6, -20.7]).all()
    assert (xyz.max(axis=0) <= [-48 + 64 + 0.6, -48 + 64 + 0.6, -20 + 40 + 0.7]).all()


def test_config_is_read_not_evaluated(tmp_path) -> None:
    cfg = load_zoo_config(write_zoo_retinanet_bundle(tmp_path / "ok"))
    assert (cfg.backbone, cfg.returned_layers, cfg.pixdim) == ("resnet10", [1, 2], (1.5, 1.5, 2.0))
    assert (cfg.roi_size, cfg.nms_thresh, cfg.detections_per_img) == ([64, 64, 32], 0.22, 300)
    assert (cfg.a_min, cfg.a_max, cfg.axcodes) == (-1024.0, 300.0, "RAS")

    evil = write_zoo_retinanet_bundle(tmp_path / "evil", extra={
        "backbone": "$monai.networks.nets.resnet.resnet10(spatial_dims=__import__('os')"
                    ".system('touch pwned'))"})
    with pytest.raises(InvalidInput, match="does not evaluate expressions"):
        load_zoo_runner(evil)
    assert not (tmp_path / "pwned").exists()

    other = write_zoo_retinanet_bundle(tmp_path / "seg", extra={
        "network_def": {"_target_": "SegResNet", "spatial_dims": 3}})
    with pytest.raises(InvalidInput, match="not a MONAI RetinaNet"):
        load_zoo_runner(other)

    positional = write_zoo_retinanet_bundle(tmp_path / "pos", extra={"detector_ops": [
        "$@detector.set_box_selector_parameters(0.02,1000,0.22,300)"]})
    with pytest.raises(InvalidInput, match="keyword arguments only"):
        load_zoo_runner(positional)

    wrong = write_zoo_retinanet_bundle(tmp_path / "wrong")  # resnet10 weights ...
    text = (wrong / "configs" / "inference.json").read_text().replace("resnet10", "resnet18")
    (wrong / "configs" / "inference.json").write_text(text)  # ... a resnet18 config
    with pytest.raises(InvalidInput, match="weights do not fit"):
        load_zoo_runner(wrong)

    (wrong / "configs" / "inference.json").write_text(json.dumps({"network_def": {}}))
    with pytest.raises(InvalidInput, match="RetinaNet"):
        load_zoo_runner(wrong)
