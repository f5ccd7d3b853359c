"""PIL's bicubic resize, reproduced exactly in torch, on any device.

:func:`sk_a2.images.resize_rgb` resizes with ``PIL.Image.resize(..., Image.BICUBIC)``; images
decoded on a GPU (:mod:`sk_a2.decode`) are resized here instead, on the device, to the same bytes,
so that both decoders give the model the same pixels (and the cropper the same boxes).

What PIL computes (``libImaging/Resample.c``), and this module with it:

* a separable filter: one pass along the width (skipped when the width does not change), one
  along the height (skipped when it does not change), the intermediate image being uint8. Which
  pass runs first changes the last bit of some pixels, and recent Pillow versions choose it by a
  rule of their own; :func:`pass_order` reads that choice from Pillow once per (input size,
  output size), by resizing a one-band probe image of that size;
* per output pixel ``x``: ``center = (x + 0.5) * scale`` with ``scale = in / out``; the filter
  (Keys' cubic, ``a = -0.5``, support 2) is stretched by ``max(scale, 1)`` (antialiasing when
  shrinking), evaluated in double precision at the input pixels ``xmin..xmax`` it covers and
  normalised to sum 1;
* the weights are turned into 22-bit fixed point (``int(w * 2**22 ± 0.5)``, rounded half away
  from zero); each output is ``(sum(pixel * weight) + 2**21) >> 22``, clipped to 0..255.

The sums are exact integers below ``2**53``, so they are computed here as float64 matrix
products (on CUDA too) and give PIL's bytes exactly; ``tests/test_resize.py`` checks this against
PIL on photographs for several scales up and down.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["pass_order", "pil_bicubic", "resize_weights"]

_PRECISION_BITS = 32 - 8 - 2
_SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic with ``a = -0.5``, as PIL's ``bicubic_filter`` evaluates it."""
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """PIL's fixed-point bicubic weights from ``in_size`` to ``out_size`` pixels.

    Returns an ``(out_size, in_size)`` int64 array: row ``x`` holds the weights (in units of
    ``2**-22``) of the input pixels that output pixel ``x`` is made of.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    out = np.zeros((out_size, in_size), dtype=np.int64)
    for x in range(out_size):
        center = (x + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C casts truncate toward zero
        xmax = min(int(center + support + 0.5), in_size)
        w = _bicubic((np.arange(xmin, xmax, dtype=np.float64) - center + 0.5) * (1.0 / filterscale))
        total = 0.0
        for v in w.tolist():  # summed in order, as PIL does (np.sum would pair them)
            total += v
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION_BITS)),
                         np.trunc(0.5 + w * (1 << _PRECISION_BITS)))
        out[x, xmin:xmax] = fixed.astype(np.int64)
    return out


def _pass(image: torch.Tensor, weights: np.ndarray, dim: int) -> torch.Tensor:
    """One PIL pass along ``dim`` (0: rows, 1: columns) of an ``(H, W, C)`` float64 image of
    integers, returning integers in 0..255 (float64)."""
    w = torch.as_tensor(weights, dtype=torch.float64, device=image.device)
    if dim == 1:
        acc = torch.einsum("hwc,ow->hoc", image, w)
    else:
        acc = torch.einsum("hwc,oh->owc", image, w)
    acc = torch.floor((acc + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS))
    return acc.clamp_(0, 255)


def pil_bicubic(image: torch.Tensor, size) -> torch.Tensor:
    """Resize an ``(H, W, C)`` uint8 tensor to ``size`` (an int for a square, or
    ``(height, width)``) exactly as ``PIL.Image.resize((width, height), Image.BICUBIC)`` does,
    on the tensor's device.

    Returns an ``(height, width, C)`` uint8 tensor (the input itself when the size is unchanged).
    """
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    in_h, in_w = int(image.shape[0]), int(image.shape[1])
    if (in_h, in_w) == (out_h, out_w):
        return image
    x = image.to(torch.float64)
    passes = [(1, in_w, out_w), (0, in_h, out_h)]
    if in_w != out_w and in_h != out_h and pass_order(in_h, in_w, out_h, out_w) == "hw":
        passes.reverse()
    for dim, n_in, n_out in passes:
        if n_in != n_out:
            x = _pass(x, resize_weights(n_in, n_out), dim)
    return x.to(torch.uint8)


@functools.lru_cache(maxsize=4096)
def pass_order(in_h: int, in_w: int, out_h: int, out_w: int) -> str:
    """``"wh"`` (width pass first) or ``"hw"``: the order in which this Pillow resizes an image
    of ``in_h x in_w`` to ``out_h x out_w``, read by resizing a random one-band probe image of
    that size (once per sizes in this process; the order does not depend on the bands)."""
    from PIL import Image

    probe = np.random.default_rng(in_h * 7919 + in_w).integers(0, 256, (in_h, in_w),
                                                                dtype=np.uint8)
    ref = torch.from_numpy(np.asarray(
        Image.fromarray(probe).resize((out_w, out_h), Image.BICUBIC)).copy())
    x = torch.from_numpy(probe)[..., None].to(torch.float64)
    wh = _pass(_pass(x, resize_weights(in_w, out_w), 1), resize_weights(in_h, out_h), 0)
    return "wh" if torch.equal(wh[..., 0].to(torch.uint8), ref) else "hw"
