"""Differentiable patch selection: a fixed bank of candidate crops and perturbed top-k.

Perturbed top-k (Berthet et al., 2020, as used for patch selection by Cordonnier et al., 2021,
"Differentiable Patch Selection for Image Recognition") replaces the hard choice of the ``k``
best-scoring candidates by its expectation under Gaussian noise on the scores:

``Y(s) = E_Z[ onehot(topk(s + σ Z)) ]``,  ``Z ~ N(0, I)``,

an ``(k, m)`` matrix whose row ``j`` holds the probability that candidate ``c`` fills slot ``j``
(the selected indices are sorted, so slot order follows candidate order). ``Y`` is smooth in
``s`` and its Jacobian has the closed form ``∂Y/∂s = E_Z[ onehot(topk(s + σ Z)) Zᵀ ] / σ``.
Both expectations are estimated with the same ``n_samples`` noise draws. As ``σ → 0``, ``Y``
becomes the hard top-k indicator.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["box_mass_matrix", "candidate_bank", "hard_topk", "perturbed_topk"]

#: The paper's bank in the 224-pixel frame: (crop side, grid positions per axis), largest first.
BANK_224 = ((64, 7), (32, 3))


def candidate_bank(image_size: int = 224) -> np.ndarray:
    """The fixed candidate crops of Appendix G in the ``image_size`` frame: (58, 4) float64.

    49 crops of side ``round(64 · image_size / 224)`` on a regular 7 × 7 grid, then 9 of side
    ``round(32 · image_size / 224)`` on a 3 × 3 grid; each grid spans the frame edge to edge
    (first crop at 0, last ending at ``image_size``), positions rounded to whole pixels.
    Boxes are ``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive.
    """
    boxes = []
    for side224, per_axis in BANK_224:
        side = max(1, round(side224 * image_size / 224))
        starts = np.round(np.linspace(0, image_size - side, per_axis))
        for y0 in starts:
            for x0 in starts:
                boxes.append((x0, y0, x0 + side, y0 + side))
    return np.asarray(boxes, dtype=np.float64)


def box_mass_matrix(grid_size, image_size: int, boxes) -> np.ndarray:
    """Linear map from a patch-grid map to the mass of its upsampled map inside each box.

    A ``(grid_h, grid_w)`` map upsampled bilinearly to ``image_size × image_size``
    (``align_corners=False``, as :class:`~sk_a2.AttentionCropper` does) puts
    ``(a.ravel() @ M)[c]`` inside box ``c`` and ``(a.ravel() @ M)[-1]`` in the whole frame.

    Returns
    -------
    ndarray of shape (grid_h * grid_w, len(boxes) + 1), float64
    """
    gh, gw = grid_size
    basis = torch.eye(gh * gw, dtype=torch.float64).reshape(-1, 1, gh, gw)
    up = torch.nn.functional.interpolate(basis, size=(image_size, image_size), mode="bilinear",
                                         align_corners=False)[:, 0]
    integral = torch.nn.functional.pad(up.cumsum(1).cumsum(2), (1, 0, 1, 0))
    b = np.asarray(boxes, dtype=np.int64)
    x0, y0, x1, y1 = (torch.as_tensor(b[:, i]) for i in range(4))
    inside = (integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0]
              + integral[:, y0, x0])
    total = integral[:, -1, -1:]
    return torch.cat([inside, total], 1).numpy()


def hard_topk(scores, k: int):
    """Indices of the ``k`` largest scores per row, sorted ascending: (n, k) int64.

    Ties go to the lower index.
    """
    s = torch.as_tensor(scores)
    order = torch.argsort(-s, dim=-1, stable=True)[..., :k]
    return torch.sort(order, dim=-1).values


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, k, sigma, noise):
        perturbed = scores[:, None, :] + sigma * noise  # (n, S, m)
        idx = hard_topk(perturbed, k)  # (n, S, k)
        onehot = torch.nn.functional.one_hot(idx, scores.shape[-1]).to(scores.dtype)
        ctx.save_for_backward(onehot, noise)
        ctx.sigma = sigma
        return onehot.mean(1)

    @staticmethod
    def backward(ctx, grad_output):
        onehot, noise = ctx.saved_tensors
        # dY[k, c]/ds[e] = E[onehot[k, c] * Z[e]] / sigma, contracted with grad_output[k, c]
        weight = torch.einsum("nkc,nskc->ns", grad_output, onehot)
        grad = torch.einsum("ns,nse->ne", weight, noise) / (noise.shape[1] * ctx.sigma)
        return grad, None, None, None


def perturbed_topk(scores, k: int, sigma: float, n_samples: int = None, *, noise=None,
                   generator=None):
    """Perturbed top-k selection, differentiable in ``scores``.

    Parameters
    ----------
    scores : Tensor of shape (n, m)
    k : int
        Candidates to select, ``1 <= k <= m``.
    sigma : float
        Standard deviation of the Gaussian noise added to the scores (``> 0``).
    n_samples : int
        Noise draws per row (ignored when ``noise`` is given).
    noise : Tensor of shape (n, n_samples, m), default=None
        Standard-normal draws to use; fixed draws make the output a deterministic function.
    generator : torch.Generator, default=None
        Source of the draws when ``noise`` is None.

    Returns
    -------
    Tensor of shape (n, k, m)
        Row ``j`` of image ``i`` holds the estimated probability that each candidate is the
        ``j``-th selected (in candidate order); each row sums to 1.
    """
    n, m = scores.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}], got {k}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if noise is None:
        noise = torch.randn((n, n_samples, m), generator=generator, dtype=scores.dtype)
        noise = noise.to(scores.device)
    return _PerturbedTopK.apply(scores, int(k), float(sigma), noise)
