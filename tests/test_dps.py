"""Perturbed top-k and the candidate bank, against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import norm

from sk_a2._dps import box_mass_matrix, candidate_bank, hard_topk, perturbed_topk


def test_candidate_bank_224():
    bank = candidate_bank(224)
    assert bank.shape == (58, 4)
    sides = bank[:, 2] - bank[:, 0]
    assert (sides == bank[:, 3] - bank[:, 1]).all()
    assert (sides[:49] == 64).all() and (sides[49:] == 32).all()
    assert bank.min() == 0 and bank.max() == 224
    assert sorted(set(bank[:49, 0])) == sorted(set(bank[:49, 1]))
    assert len(set(bank[:49, 0])) == 7 and len(set(bank[49:, 0])) == 3
    assert len({tuple(b) for b in bank}) == 58


def test_candidate_bank_scales():
    bank = candidate_bank(112)
    sides = bank[:, 2] - bank[:, 0]
    assert set(sides[:49]) == {32} and set(sides[49:]) == {16} and bank.max() == 112


def test_box_mass_matrix_equals_upsample_and_sum():
    rng = np.random.RandomState(0)
    maps = rng.rand(3, 4, 5)
    size = 40
    boxes = np.array([[0, 0, 40, 40], [3, 7, 21, 25], [30, 1, 40, 11]])
    up = F.interpolate(torch.tensor(maps)[:, None], size=(size, size), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    expected = np.stack([up[:, y0:y1, x0:x1].sum((1, 2)) for x0, y0, x1, y1 in boxes], 1)
    M = box_mass_matrix((4, 5), size, boxes)
    got = maps.reshape(3, -1) @ M
    np.testing.assert_allclose(got[:, :-1], expected, rtol=1e-10)
    np.testing.assert_allclose(got[:, -1], up.sum((1, 2)), rtol=1e-10)


def test_hard_topk_sorted_indices():
    s = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(hard_topk(s, 2).numpy(), [[1, 3], [0, 2]])


def test_small_noise_equals_hard_topk():
    rng = np.random.RandomState(1)
    scores = rng.randn(6, 10)
    k = 3
    gen = torch.Generator().manual_seed(0)
    out = perturbed_topk(torch.tensor(scores), k, sigma=1e-6, n_samples=16, generator=gen)
    expected = np.zeros((6, k, 10))
    for i, row in enumerate(scores):
        chosen = sorted(np.argsort(row)[::-1][:k])
        expected[i, np.arange(k), chosen] = 1.0
    np.testing.assert_array_equal(out.numpy(), expected)


def _exact_expectation(s, sigma):
    """E[onehot(sorted top-2 of s + sigma Z)] for 3 scores, by 1-D quadrature: (2, 3)."""
    z = np.linspace(-9, 9, 6001)
    out = np.zeros((2, 3))
    for e in range(3):  # e is excluded iff it is the minimum
        others = [j for j in range(3) if j != e]
        dens = norm.pdf(z)
        for j in others:
            dens = dens * norm.sf((s[e] + sigma * z - s[j]) / sigma)
        p_min = np.trapezoid(dens, z)
        for slot, j in enumerate(others):
            out[slot, j] += p_min
    return out


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_expectation_and_gradient_match_exact_and_finite_differences(sigma):
    s = np.array([0.3, -0.2, 0.1])
    G = np.array([[1.0, -2.0, 0.5], [-0.7, 0.4, 1.5]])  # upstream gradient
    exact = _exact_expectation(s, sigma)
    np.testing.assert_allclose(exact.sum(1), 1.0, atol=1e-8)
    st = torch.tensor(s[None], requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    y = perturbed_topk(st, 2, sigma, n_samples=200_000, generator=gen)
    np.testing.assert_allclose(y[0].detach().numpy(), exact, atol=5e-3)
    (y[0] * torch.tensor(G)).sum().backward()
    h = 1e-4
    fd = np.zeros(3)
    for e in range(3):
        d = np.eye(3)[e] * h
        fd[e] = ((G * _exact_expectation(s + d, sigma)).sum()
                 - (G * _exact_expectation(s - d, sigma)).sum()) / (2 * h)
    assert np.abs(fd).max() > 0.1  # a real gradient, not a flat function
    np.testing.assert_allclose(st.grad[0].numpy(), fd, atol=0.02 / sigma)


def test_fixed_noise_is_deterministic_and_checked():
    s = torch.randn(2, 5, dtype=torch.float64)
    noise = torch.randn(2, 7, 5, dtype=torch.float64)
    a = perturbed_topk(s, 2, 0.3, noise=noise)
    b = perturbed_topk(s, 2, 0.3, noise=noise)
    assert torch.equal(a, b)
    np.testing.assert_allclose(a.sum(-1).numpy(), 1.0)
    with pytest.raises(ValueError, match="k must be"):
        perturbed_topk(s, 6, 0.3, 4)
    with pytest.raises(ValueError, match="sigma"):
        perturbed_topk(s, 2, 0.0, 4)
