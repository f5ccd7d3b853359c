"""Boxes: greedy non-overlapping crop selection, map upsampling, batched crop-and-resize, and
the geometry between the ``size × size`` frame and original-image pixels.

Crop selection follows Appendix B of the A² paper exactly. Given ``M × M`` maps and crop sizes
``s_1 >= ... >= s_k``, crop ``j`` is the integer position ``(x, y)``, ``0 <= x, y <= M - s_j``,
whose ``s_j × s_j`` box covers the largest attention sum among the positions that do not intersect
an earlier box; ties go to the smallest ``y``, then the smallest ``x``. Box sums come from an
integral image (float64), for the whole batch at once; sums that differ by less than 1e-12 of
the map's total (the integral image's rounding) count as ties. When no non-overlapping position is
left for a crop, that crop takes the best position ignoring overlap, and one warning per call says
how often this happened.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CropOverlapWarning", "crop_resize", "greedy_boxes", "to_frame", "to_original",
           "upsample_maps"]


class CropOverlapWarning(UserWarning):
    """A crop could not be placed without overlapping an earlier one."""


def _check_sizes(crop_sizes, M):
    sizes = []
    for s in crop_sizes:
        if isinstance(s, bool) or not float(s).is_integer() or int(s) < 1:
            raise ValueError(f"crop sizes must be positive integers, got {s!r}")
        if int(s) > M:
            raise ValueError(f"crop size {int(s)} is larger than the {M}x{M} map (image_size)")
        sizes.append(int(s))
    if not sizes:
        raise ValueError("at least one crop size is needed")
    return sizes


def greedy_boxes(maps, crop_sizes, *, return_scores=False):
    """Greedy, exact, non-overlapping maximum-mass square boxes.

    Parameters
    ----------
    maps : array-like or Tensor of shape (n, M, M)
        Non-negative attention maps (NumPy or torch; torch tensors stay on their device).
    crop_sizes : sequence of int
        Box sides in map pixels, placed in the given order (pass them largest first, as the paper
        and :class:`~sk_a2.AttentionCropper` do).
    return_scores : bool, default=False
        Also return the map sum inside each box.

    Returns
    -------
    boxes : ndarray of shape (n, k, 4), int64
        ``(x0, y0, x1, y1)`` in map pixels, ``x1``/``y1`` exclusive. A NumPy array for NumPy
        input, a tensor on the input's device for torch input.
    scores : same type, shape (n, k), float64
        Only with ``return_scores=True``.
    """
    is_torch = isinstance(maps, torch.Tensor)
    t = maps if is_torch else torch.as_tensor(np.asarray(maps))
    if t.ndim != 3 or t.shape[1] != t.shape[2]:
        raise ValueError(f"maps must have shape (n, M, M), got {tuple(t.shape)}")
    n, M, _ = t.shape
    sizes = _check_sizes(crop_sizes, M)
    a = t.to(torch.float64)
    integral = F.pad(a.cumsum(1).cumsum(2), (1, 0, 1, 0))
    boxes = torch.zeros((n, len(sizes), 4), dtype=torch.int64, device=a.device)
    scores = torch.zeros((n, len(sizes)), dtype=torch.float64, device=a.device)
    rows = torch.arange(n, device=a.device)
    tie_tol = 1e-12 * a.abs().sum((1, 2))[:, None]
    n_overlapping = 0
    for j, s in enumerate(sizes):
        P = M - s + 1
        sums = (integral[:, s:, s:] - integral[:, :P, s:] - integral[:, s:, :P]
                + integral[:, :P, :P])
        pos = torch.arange(P, device=a.device)
        valid = torch.ones((n, P, P), dtype=torch.bool, device=a.device)
        for prev in range(j):
            x0, y0, x1, y1 = boxes[:, prev].unbind(-1)
            # a box at (x, y) of side s misses [x0, x1) x [y0, y1) iff x >= x1 or x + s <= x0 ...
            x_hit = (pos[None] < x1[:, None]) & (pos[None] + s > x0[:, None])
            y_hit = (pos[None] < y1[:, None]) & (pos[None] + s > y0[:, None])
            valid &= ~(y_hit[:, :, None] & x_hit[:, None, :])
        any_valid = valid.flatten(1).any(1)
        n_overlapping += int((~any_valid).sum())
        valid |= ~any_valid[:, None, None]
        masked = sums.masked_fill(~valid, float("-inf")).flatten(1)
        # sums equal up to the integral image's rounding are ties: the first (smallest y, then x)
        top = masked.max(1, keepdim=True).values
        best = (masked >= top - tie_tol).to(torch.uint8).argmax(1)
        y, x = best // P, best % P
        boxes[:, j] = torch.stack([x, y, x + s, y + s], -1)
        scores[:, j] = masked[rows, best]
    if n_overlapping:
        warnings.warn(
            f"{n_overlapping} crop(s) could not be placed without overlapping an earlier crop "
            "(the map is too small for these crop sizes); they take the best position ignoring "
            "overlap.",
            CropOverlapWarning,
            stacklevel=2,
        )
    if not is_torch:
        boxes, scores = boxes.cpu().numpy(), scores.cpu().numpy()
    return (boxes, scores) if return_scores else boxes


def upsample_maps(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinearly upsample (n, h, w) maps to (n, size, size), ``align_corners=False``."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0]


def _sample_points(lo, hi, out_size, in_size):
    """Bilinear source rows/columns of the interval [lo, hi) resized to ``out_size``.

    Returns the lower and upper source indices (long) and the weight of the upper one, as
    ``F.interpolate(..., mode="bilinear", align_corners=False)`` computes them for the cut
    ``[lo, hi)`` of integer bounds: coordinates are clamped to the crop, so no pixel outside it
    contributes.
    """
    lo, hi = lo.to(torch.float64), hi.to(torch.float64)
    i = torch.arange(out_size, device=lo.device, dtype=torch.float64)
    src = lo[..., None] + (i + 0.5) * (hi - lo)[..., None] / out_size - 0.5
    src = torch.minimum(torch.maximum(src, lo[..., None]), hi[..., None] - 1)
    src = src.clamp(0, in_size - 1)
    i0 = src.floor()
    frac = src - i0
    i0 = i0.long()
    return i0, (i0 + 1).clamp(max=in_size - 1), frac


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, out_size: int) -> torch.Tensor:
    """Cut every box of every image and resize it bilinearly, in one batched operation.

    Parameters
    ----------
    images : Tensor of shape (B, C, H, W), float
    boxes : Tensor of shape (B, k, 4)
        ``(x0, y0, x1, y1)`` in pixels of ``images``, ``x1``/``y1`` exclusive.
    out_size : int

    Returns
    -------
    Tensor of shape (B, k, C, out_size, out_size)
        Equal (to float rounding) to ``F.interpolate(images[b, :, y0:y1, x0:x1], out_size,
        mode="bilinear", align_corners=False)`` for integer boxes: edge pixels are clamped to the
        box, unlike ``torchvision.ops.roi_align``, which samples outside it. Computed with two
        gathers and two linear interpolations over the whole batch: O(out_size²) per crop.
    """
    B, C, H, W = images.shape
    k = boxes.shape[1]
    boxes = boxes.to(images.device)
    y0, y1, fy = _sample_points(boxes[..., 1], boxes[..., 3], out_size, H)  # (B, k, o)
    x0, x1, fx = _sample_points(boxes[..., 0], boxes[..., 2], out_size, W)  # (B, k, o)
    b = torch.arange(B, device=images.device)[:, None, None]
    by_rows = images.permute(0, 2, 1, 3)  # (B, H, C, W)
    fy = fy.to(images.dtype)[..., None, None]
    rows = by_rows[b, y0] * (1 - fy) + by_rows[b, y1] * fy  # (B, k, o, C, W)
    shape = (B, k, out_size, C, out_size)
    fx = fx.to(images.dtype)[:, :, None, None, :]
    out = (rows.gather(-1, x0[:, :, None, None, :].expand(shape)) * (1 - fx)
           + rows.gather(-1, x1[:, :, None, None, :].expand(shape)) * fx)
    return out.permute(0, 1, 3, 2, 4)  # (B, k, C, o, o)


def _frame_scale(image_sizes, size, inverse):
    """(n, 1, 4) factors from original pixels to the frame (or back with ``inverse``)."""
    h = np.asarray(image_sizes)[:, 0].astype(np.float64)
    w = np.asarray(image_sizes)[:, 1].astype(np.float64)
    sx, sy = (w / size, h / size) if inverse else (size / w, size / h)
    return np.stack([sx, sy, sx, sy], axis=-1)[:, None, :]


def to_frame(boxes, image_sizes, size) -> np.ndarray:
    """Boxes (n, k, 4) from original-image pixels to the ``size × size`` frame (float64).

    Coordinates within 1e-3 of an integer are snapped to it, so integer boxes chosen in that
    frame come back exactly.
    """
    out = np.asarray(boxes).astype(np.float64) * _frame_scale(image_sizes, size, inverse=False)
    rounded = np.round(out)
    return np.where(np.abs(out - rounded) < 1e-3, rounded, out)


def to_original(boxes, image_sizes, size) -> np.ndarray:
    """Boxes (n, k, 4) from the ``size × size`` frame to original-image pixels (float32)."""
    out = np.asarray(boxes).astype(np.float64) * _frame_scale(image_sizes, size, inverse=True)
    return out.astype(np.float32)
