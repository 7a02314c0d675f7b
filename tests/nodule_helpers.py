"""Small synthetic chest-CT-like series (spheres in noise) written as DICOM into an archive.

Mechanics-only test data until ``hounsfield.synth`` is available here: a lung-density box with
noise, a few solid spheres (nodules) at known patient-mm positions, written with pydicom as a CT
Image Storage series and stored through the archive's one write path.
"""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from hounsfield.archive.parse import parse_part10
from hounsfield.archive.store import store_instances
from hounsfield.dicom.uids import derived_uid
from hounsfield.evaluate.froc import Nodule


def sphere_volume(shape_zyx, spacing_xyz, origin_xyz, nodules_mm, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = rng.normal(-800, 40, shape_zyx).astype(np.float32)  # lung parenchyma + noise
    vol[:, :, :4] = 40  # a "chest wall" strip
    z, y, x = np.indices(shape_zyx, dtype=np.float32)
    px = origin_xyz[0] + x * spacing_xyz[0]
    py = origin_xyz[1] + y * spacing_xyz[1]
    pz = origin_xyz[2] + z * spacing_xyz[2]
    for cx, cy, cz, d in nodules_mm:
        r2 = (px - cx) ** 2 + (py - cy) ** 2 + (pz - cz) ** 2
        vol[r2 <= (d / 2) ** 2] = 30 + rng.normal(0, 20)
    return vol


def write_series(archive, *, patient: str, site: str, nodules_mm, seed: int,
                 shape_zyx=(24, 64, 64), spacing_xyz=(1.5, 1.5, 2.0),
                 origin_xyz=(-48.0, -48.0, -20.0)) -> str:
    """Store one series; returns its SeriesInstanceUID."""
    vol = sphere_volume(shape_zyx, spacing_xyz, origin_xyz, nodules_mm, seed)
    study = derived_uid("test-study", patient, site, str(seed))
    series = derived_uid("test-series", patient, site, str(seed))
    parsed = []
    for k in range(shape_zyx[0]):
        ds = Dataset()
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = derived_uid(series, str(k))
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.FrameOfReferenceUID = derived_uid(study, "for")
        ds.Modality = "CT"
        ds.PatientID = patient
        ds.PatientName = f"Test^{patient}"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [origin_xyz[0], origin_xyz[1], origin_xyz[2] + k * spacing_xyz[2]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing_xyz[1], spacing_xyz[0]]
        ds.SliceThickness = spacing_xyz[2]
        ds.Rows, ds.Columns = shape_zyx[1], shape_zyx[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = np.clip(vol[k], -1024, 3000).astype(np.int16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        parsed.append(parse_part10(buf.getvalue(), name=f"{series}-{k}"))
    out = store_instances(archive, parsed, source="test", site=site)
    bad = [o for o in out if o.status not in ("stored", "duplicate")]
    if bad:
        raise RuntimeError(f"store failed: {bad[0]}")
    return series


def make_sites(archive, *, sites=("A", "B", "C"), patients_per_site: int = 5,
               seed: int = 0, shape_zyx=(24, 64, 64)) -> list[Nodule]:
    """Multi-site archive: each patient one series with 0-2 nodules (4-12 mm); returns truth."""
    rng = np.random.default_rng(seed)
    truth = []
    for si, site in enumerate(sites):
        for p in range(patients_per_site):
            n = int(rng.integers(0, 3)) if p else 1
            nods = []
            for _ in range(n):
                d = float(rng.uniform(5, 12))
                c = (float(rng.uniform(-30, 30)), float(rng.uniform(-30, 30)),
                     float(rng.uniform(-10, 20)))
                nods.append((*c, d))
            uid = write_series(archive, patient=f"{site}-{p}", site=site, nodules_mm=nods,
                               seed=seed * 1000 + si * 100 + p, shape_zyx=shape_zyx)
            truth += [Nodule(uid, c[0], c[1], c[2], c[3], site=site,
                             nodule_type="solid") for c in nods]
    return truth


def write_zoo_retinanet_bundle(root, *, backbone: str = "resnet10",
                               pixdim=(1.5, 1.5, 2.0), roi=(64, 64, 32),
                               score_thresh: float = 0.02, seed: int = 0,
                               extra: dict | None = None):
    """A bundle laid out like MONAI's model-zoo ``lung_nodule_ct_detection`` (its
    ``inference.json`` written as a ConfigParser program: ``$`` expressions, ``@`` references,
    ``_target_`` constructors), with random weights from MONAI's own RetinaNet; the
    classification bias is zeroed so untrained weights still produce boxes."""
    import json
    from pathlib import Path

    import torch
    from monai.networks.nets import resnet

    from hounsfield.models.zoo import _BackboneWithFPN

    root = Path(root)
    (root / "configs").mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    cfg = {
        "whether_raw_luna16": False,
        "whether_resampled_luna16": "$(not @whether_raw_luna16)",
        "imports": ["$import glob", "$import os"],
        "bundle_root": "./",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": True,
        "infer_patch_size": list(roi),
        "anchor_generator": {
            "_target_": "monai.apps.detection.utils.anchor_utils.AnchorGeneratorWithAnchorShape",
            "feature_map_scales": [1, 2, 4],
            "base_anchor_shapes": [[6, 8, 4], [8, 6, 5], [10, 10, 6]]},
        "backbone": f"$monai.networks.nets.resnet.{backbone}(spatial_dims=3,n_input_channels=1,"
                    "conv1_t_stride=[2,2,1],conv1_t_size=[7,7,7])",
        "feature_extractor": "$monai.apps.detection.networks.retinanet_network."
                             "resnet_fpn_feature_extractor(@backbone,3,False,[1,2],None)",
        "network_def": {"_target_": "RetinaNet", "spatial_dims": 3, "num_classes": 1,
                        "num_anchors": 3, "feature_extractor": "@feature_extractor",
                        "size_divisible": [16, 16, 8]},
        "network": "$@network_def.to(@device)",
        "detector": {"_target_": "RetinaNetDetector", "network": "@network",
                     "anchor_generator": "@anchor_generator", "debug": False},
        "detector_ops": [
            "$@detector.set_target_keys(box_key='box', label_key='label')",
            f"$@detector.set_box_selector_parameters(score_thresh={score_thresh},"
            "topk_candidates_per_level=1000,nms_thresh=0.22,detections_per_img=300)",
            "$@detector.set_sliding_window_inferer(roi_size=@infer_patch_size,overlap=0.25,"
            "sw_batch_size=1,mode='constant',device='cpu')"],
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "meta_key_postfix": "meta_dict",
             "reader": "itkreader", "affine_lps_to_ras": True},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim),
             "_disabled_": "@whether_resampled_luna16"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1024.0,
             "a_max": 300.0, "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
    }
    cfg.update(extra or {})
    (root / "configs" / "inference.json").write_text(json.dumps(cfg, indent=4))
    (root / "configs" / "metadata.json").write_text(json.dumps(
        {"name": "lung_nodule_ct_detection", "version": "0.6.9", "monai_version": "1.4.0",
         "task": "CT lung nodule detection", "description": "test bundle, random weights"}))
    from monai.apps.detection.networks.retinanet_network import RetinaNet

    torch.manual_seed(seed)
    bb = getattr(resnet, backbone)(spatial_dims=3, n_input_channels=1, conv1_t_stride=[2, 2, 1],
                                   conv1_t_size=[7, 7, 7])
    net = RetinaNet(spatial_dims=3, num_classes=1, num_anchors=3,
                    feature_extractor=_BackboneWithFPN(bb, [1, 2]), size_divisible=[16, 16, 8])
    state = net.state_dict()
    state["classification_head.cls_logits.bias"].zero_()
    torch.save({"model": state}, root / "models" / "model.pt")
    return root
