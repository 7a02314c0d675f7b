"""The torch (GPU) blob filter gives the scipy path's candidates; the distance-transform lung-mask
dilation equals the structuring-element one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from hounsfield.models.candidates import (CandidateSpec, _ellipsoid, dilate_ellipsoid,
                                          find_candidates, lung_mask)
from hounsfield.models.candidates_torch import gaussian, largest_eigenvalue, max_filter
from hounsfield.infer.device import candidate_device

from tests.unit.test_nodule_two_stage import SP, chest


@pytest.mark.parametrize("sigma", [(0.5, 0.5, 0.5), (1.2, 3.0, 2.2), (6.0, 9.0, 9.0)])
def test_gaussian_equals_scipy_including_repeated_reflection(sigma) -> None:
    a = np.random.default_rng(1).random((9, 20, 17)).astype(np.float32)  # radius > size at 9
    ours = gaussian(torch.from_numpy(a), sigma).numpy()
    np.testing.assert_allclose(ours, ndimage.gaussian_filter(a, sigma), rtol=0, atol=2e-6)


def test_max_filter_equals_scipy_nearest() -> None:
    a = np.random.default_rng(2).random((12, 30, 25)).astype(np.float32)
    a[3:5, 4:9, :] = -np.inf
    for size in ([3, 3, 3], [5, 9, 7], [1, 21, 3]):
        np.testing.assert_array_equal(max_filter(torch.from_numpy(a), size).numpy(),
                                      ndimage.maximum_filter(a, size=size, mode="nearest"))


def test_largest_eigenvalue_closed_form() -> None:
    m = np.random.default_rng(3).normal(size=(5000, 3, 3))
    m = (m + m.transpose(0, 2, 1)).astype(np.float32)
    m[:10] = np.diag([-2.0, -2.0, -2.0])  # repeated eigenvalue (p = 0)
    m[10:20] = np.diag([-1.0, -3.0, -3.0])
    t = torch.from_numpy(m)
    ours = largest_eigenvalue(t[:, 0, 0], t[:, 1, 1], t[:, 2, 2], t[:, 0, 1], t[:, 0, 2], t[:, 1, 2])
    np.testing.assert_allclose(ours.numpy(), np.linalg.eigvalsh(m)[:, 2], rtol=1e-5, atol=1e-5)


def test_torch_candidates_equal_scipy_candidates() -> None:
    arr, _ = chest(4)
    spec = CandidateSpec(diameters_mm=(3.0, 4.5, 9.5, 14.0), per_scale=(60, 40, 20, 10),
                         clip_hu=-400, faint_clip_hu=-650, faint_per_scale=(30, 30, 0, 0))
    a = find_candidates(arr, SP, spec)
    b = find_candidates(arr, SP, spec, device="cpu")
    assert len(a) >= 25  # several per scale and pass
    np.testing.assert_array_equal(a.zyx, b.zyx)
    np.testing.assert_array_equal(a.diameter_mm, b.diameter_mm)
    np.testing.assert_allclose(a.response, b.response, rtol=1e-4, atol=1e-6)
    # a given mask is used as is
    mask = lung_mask(arr, SP, spec, -1000, 400)
    c = find_candidates(arr, SP, spec, device="cpu", mask=mask)
    np.testing.assert_array_equal(b.zyx, c.zyx)


def test_dilation_by_distance_transform_is_the_structuring_element_dilation() -> None:
    rng = np.random.default_rng(5)
    for r in ([1, 1, 1], [3, 4, 4], [5, 9, 9], [2, 7, 3]):
        m = rng.random((30, 60, 50)) < 0.002
        expected = ndimage.binary_dilation(m, structure=_ellipsoid(r))
        got = dilate_ellipsoid(m, r)
        assert 0 < expected.sum() < m.size
        np.testing.assert_array_equal(got, expected)
    assert not dilate_ellipsoid(np.zeros((4, 5, 6), bool), [1, 2, 2]).any()


def test_candidate_device_choice() -> None:
    assert candidate_device("cpu") is None  # scipy is the faster on CPUs
    assert candidate_device(torch.device("cuda", 1)) == "cuda:1"
    assert candidate_device() == ("cuda" if torch.cuda.is_available() else None)
