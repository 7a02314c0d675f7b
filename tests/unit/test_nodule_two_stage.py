"""Two-stage detector pieces: lung mask, blob candidates (spheres found, tubes not preferred),
candidate patches, labelling, non-maximum suppression, and the patch classifier's shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hounsfield.models.candidates import CandidateSpec, find_candidates, lung_mask
from hounsfield.models.detector import NetworkSpec, build_network
from hounsfield.models.two_stage import (classify, extract_patch, extract_patches,
                                         merge_detections)
from hounsfield.models.volume import Volume
from hounsfield.train.data import PreparedVolume
from hounsfield.train.recipe import Augment
from hounsfield.train.two_stage import CandidatePatchDataset, label_candidates

SP = (1.4, 1.4, 2.0)  # x, y, z mm


def chest(seed: int = 0):
    """Air around a soft-tissue body with one lung holding two spheres and a vessel (a tube)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((40, 96, 96), dtype=np.float32)
    hu = np.full(z.shape, -1000.0, np.float32)
    body = ((x - 48) / 44) ** 2 + ((y - 48) / 40) ** 2 <= 1
    lung = ((x - 48) / 34) ** 2 + ((y - 48) / 30) ** 2 <= 1
    hu[body] = 40.0
    hu[lung & (z > 2) & (z < 37)] = -850.0
    spheres = [((20, 40, 35), 8.0), ((12, 60, 60), 14.0)]  # (z, y, x) voxels, diameter mm
    for (cz, cy, cx), d in spheres:
        r2 = ((x - cx) * SP[0]) ** 2 + ((y - cy) * SP[1]) ** 2 + ((z - cz) * SP[2]) ** 2
        hu[r2 <= (d / 2) ** 2] = 30.0
    tube = (((x - 60) * SP[0]) ** 2 + ((y - 35) * SP[1]) ** 2 <= 3.5 ** 2) & lung & (z > 4) & (z < 35)
    hu[tube] = 40.0
    hu += rng.normal(0, 15, hu.shape).astype(np.float32)
    arr = np.clip((hu + 1000) / 1400, 0, 1).astype(np.float32)
    return arr, spheres


def test_lung_mask_and_candidates_find_spheres() -> None:
    arr, spheres = chest()
    spec = CandidateSpec(diameters_mm=(4.5, 9.5, 14.0), max_candidates=60)
    mask = lung_mask(arr, SP, spec, -1000, 400)
    assert mask[20, 48, 48] and not mask[20, 2, 2]  # lung in, outside air out
    assert mask[20, 40, 35] and mask[20, 40, 60]  # sphere and vessel inside the lung mask
    c = find_candidates(arr, SP, spec)
    sp_zyx = np.array(SP[::-1])
    for (cz, cy, cx), d in spheres:
        dist = np.linalg.norm((c.zyx - [cz, cy, cx]) * sp_zyx, axis=1)
        hit = dist <= d / 2
        assert hit.any(), f"sphere {d} mm missed"
        # its best candidate's scale is near its size
        best = np.argmin(np.where(hit, dist, np.inf))
        assert 0.5 * d <= c.diameter_mm[best] <= 2 * d
    # the tube's candidates answer less strongly than the spheres' at the same scale
    tube = np.linalg.norm((c.zyx[:, 1:] - [35, 60]) * sp_zyx[1:], axis=1) < 3
    for s in spec.diameters_mm:
        on_s = c.diameter_mm == s
        sph = np.zeros(len(c), bool)
        for (cz, cy, cx), d in spheres:
            sph |= np.linalg.norm((c.zyx - [cz, cy, cx]) * sp_zyx, axis=1) <= d / 2
        if (tube & on_s).any() and (sph & on_s).any():
            assert c.response[tube & on_s].max() < c.response[sph & on_s].max()


def test_patches_pad_with_zeros_and_are_centred() -> None:
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    p = extract_patch(a, (2, 3, 3), (3, 3, 3))
    np.testing.assert_array_equal(p, a[1:4, 2:5, 2:5])
    p = extract_patch(a, (0, 0, 0), (4, 4, 4))
    assert p[:2, :2, :2].sum() == 0 and p[2, 2, 2] == a[0, 0, 0]
    assert extract_patches(a, np.array([[2, 3, 3], [100, 100, 100]]), (3, 3, 3)).shape == (2, 1, 3, 3, 3)
    assert extract_patch(a, (100, 100, 100), (3, 3, 3)).sum() == 0


def test_labels_and_nms() -> None:
    vol = Volume(np.zeros((20, 40, 40), np.float32), SP, (0.0, 0.0, 0.0), np.eye(3))
    pv = PreparedVolume(vol, np.array([[10.0, 20.0, 20.0]]), np.array([10.0], np.float32))

    class C:  # a Candidates-like triple
        zyx = np.array([[10.0, 20.0, 21.0], [10.0, 20.0, 24.0], [10.0, 20.0, 35.0]])
        diameter_mm = np.array([10.0, 4.0, 4.0])
        response = np.ones(3)

        def __len__(self):
            return 3

    # 1.4 mm from the centre: a hit; 5.6 mm: between r and 1.5 r, left out; 21 mm: negative
    assert label_candidates(pv, C()).tolist() == [1, -1, 0]
    keep = merge_detections(C.zyx, C.diameter_mm, np.array([0.9, 0.95, 0.2]), np.array(SP[::-1]))
    # the 0.95 one (4 mm: 2 mm radius) comes first; the 0.9 one is 4.2 mm from it: kept too
    assert keep.tolist() == [1, 0, 2]
    keep = merge_detections(C.zyx, C.diameter_mm, np.array([0.99, 0.5, 0.2]), np.array(SP[::-1]))
    assert keep.tolist() == [0, 2]  # within the 5 mm radius of the most probable one


def _prepared_chest(max_candidates: int):  # noqa: ANN202
    """The phantom chest as a prepared volume with its nodule truth, and its candidates."""
    arr, spheres = chest()
    vol = Volume(arr, SP, (0.0, 0.0, 0.0), np.eye(3))
    pv = PreparedVolume(vol, np.array([s[0] for s in spheres], float),
                        np.array([s[1] for s in spheres], np.float32))
    spec = CandidateSpec(diameters_mm=(4.5, 9.5), max_candidates=max_candidates)
    return pv, find_candidates(arr, SP, spec)


def test_patch_dataset_is_deterministic_and_balanced() -> None:
    pv, cands = _prepared_chest(30)
    ds = CandidatePatchDataset([pv], [cands], (8, 16, 16), patches_per_volume=64,
                               positive_fraction=0.5, seed=3)
    items = [ds[i] for i in range(len(ds))]
    assert items[0]["image"].shape == (1, 8, 16, 16)
    share = float(np.mean([float(it["label"]) for it in items]))
    assert 0.3 < share < 0.7
    torch.testing.assert_close(ds[5]["image"], items[5]["image"])
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i]["image"], items[i]["image"]) for i in range(8))


def test_patch_classifier_scores_a_batch() -> None:
    net = build_network(NetworkSpec(name="patch_cnn", features=(4, 4, 8, 8, 8, 0)))
    out = net(torch.rand(3, 1, 8, 16, 16))
    assert out.shape == (3,)
    assert torch.allclose(torch.sigmoid(net.head[-1].bias), torch.tensor(0.1192), atol=1e-3)


def test_hard_negative_mining_and_candidate_positives() -> None:
    pv, cands = _prepared_chest(40)
    aug = Augment(intensity=0.1, noise=0.01, candidate_positives=1.0)
    ds = CandidatePatchDataset([pv], [cands], (8, 16, 16), patches_per_volume=32,
                               positive_fraction=0.5, seed=3, augment=aug, hard_fraction=1.0)
    # every nodule has a stage-1 candidate within its radius to centre positives on
    assert all(len(c) for c in ds.pos_cands)
    net = build_network(NetworkSpec(name="patch_cnn", features=(4, 4, 8, 8, 8, 0))).eval()
    pool = ds.mine(net, sample=10, pool=3, seed=0)
    assert len(pool) == 3 and len(set(pool.tolist())) == 3
    assert pool.max() < len(ds.neg)
    # the same weights and seed give the same pool (every DDP rank agrees)
    np.testing.assert_array_equal(pool, ds.mine(net, sample=10, pool=3, seed=0))
    # scoring every negative: the pool is the three the network ranks highest
    everything = ds.mine(net, sample=len(ds.neg), pool=3, seed=0)
    scores = classify(net, pv.volume.array, np.array([c for _v, c in ds.neg]), (8, 16, 16))
    assert sorted(everything.tolist()) == sorted(np.argsort(-scores, kind="stable")[:3].tolist())
    ds.set_hard(pool)
    negs = [it for it in (ds[i] for i in range(len(ds))) if float(it["label"]) == 0]
    assert negs and all(torch.isfinite(n["image"]).all() for n in negs)


def test_classify_with_flips_is_the_mean_over_the_eight_mirror_images() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkSpec(name="patch_cnn", features=(4, 4, 8, 8, 8, 0))).eval()
    arr, spheres = chest(3)
    centres = np.array([s[0] for s in spheres] + [(20, 48, 48)], dtype=float)
    patch = (8, 16, 16)
    got = classify(net, arr, centres, patch, batch_size=2, flips=True)
    x = torch.from_numpy(extract_patches(arr, centres, patch))
    with torch.no_grad():
        expected = np.mean([torch.sigmoid(net(x.flip(dims))).numpy() for dims in
                            [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]], axis=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # a random network is not mirror-symmetric: the averaged score differs from the plain one
    assert not np.allclose(got, classify(net, arr, centres, patch))



def test_centre_head_reads_the_middle_of_each_block_and_keeps_old_bundles_loading() -> None:
    """``NetworkSpec.centre``: the head also reads the central voxels of blocks 2-4, so it can
    tell a candidate on a nodule from one beside it; the convolutions stay the same modules, so
    a bundle saved without the centre head loads as before."""
    from hounsfield.models.detector import _centre

    spec = NetworkSpec(name="patch_cnn", features=(8, 16, 32, 48, 64, 0), centre=True)
    net = build_network(spec)
    old = build_network(spec.model_copy(update={"centre": False}))
    assert set(old.state_dict()) == set(net.state_dict())
    assert old.head[0].in_features == 2 * 48 and net.head[0].in_features == 2 * 48 + 16 + 32 + 48
    assert net(torch.rand(3, 1, 16, 32, 32)).shape == (3,)
    # even sizes: the middle two voxels along each axis; odd: the middle one
    f = torch.zeros(1, 1, 4, 5, 6)
    f[0, 0, 1:3, 2, 2:4] = 1.0
    f[0, 0, 0, 0, 0] = 100.0
    assert _centre(f).item() == 1.0
    with pytest.raises(ValueError, match="option of patch_cnn"):
        NetworkSpec(name="basic_unet", centre=True)
