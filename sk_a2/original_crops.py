"""Crops cut from the original pixels (``CropEmbedder(crop_source="original")``).

The paper cuts each crop from the image already resized to the model's square input and resizes
the cut back up. Here each box, kept by :class:`~sk_a2.CropSet` in original-image pixels, is cut
from the decoded original instead and resized once to ``size × size``:

* the original is decoded with the conversions of :func:`sk_a2.images.load_rgb` (EXIF orientation
  applied, grayscale repeated, 16-bit scaled to 8 bit), so both crop sources see the same pixels;
* box coordinates are rounded to whole pixels and clipped to the image (never padded); a box left
  empty by the clipping is a ``ValueError``;
* the cut is resized bilinearly with ``align_corners=False`` and antialiasing
  (``F.interpolate(..., antialias=True)``): when a side shrinks, every source pixel under the
  output pixel's triangle filter contributes (PIL's ``BILINEAR`` filter); when it grows, this is
  plain bilinear interpolation with edge pixels clamped to the cut, exactly what the resized path
  computes. So with originals of exactly ``size × size`` both sources give the same crops;
* a full-image box (``include_full_image``, or plain images) is the whole original resized with
  :func:`sk_a2.images.resize_rgb`, as in the resized path, so the full-image embedding does not
  depend on the crop source.

JPEG draft decoding
-------------------
A JPEG file can be decoded at a reduced DCT scale ``1/r`` (``r`` in 2, 4, 8,
:meth:`PIL.Image.Image.draft`) for about ``1/r²`` of the decoding work. Draft pixels are not a
full decode shrunk: the DCT scaling acts as an ``r × r`` box filter, where the full path applies
only the final antialiasing triangle filter. So draft mode is used only where that final filter
dominates: when every box of the image (a full-image box too) stays at least ``2 * size`` pixels
a side after the reduction, i.e. the decoded cut is still shrunk at least 2× by the final resize.
Then crops differ from full decoding by 1 to 3 grey levels of 255 on average on high-frequency
content (less the more the final resize shrinks; measured, and bounded in the tests, against a
JPEG quality 95 encoding error of about 2.6 levels on the same content), and box edges, rounded
to whole draft pixels, move by at most ``r / 2`` original pixels: less than a quarter of an
output pixel. For typical A² crops (a 64 px box in a 224 px frame, so 29 % of the
side) that needs originals above about 3,100 px, i.e. multi-megapixel photographs. Pass
``draft=False`` to :func:`load_original_crops` to rule it out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ._data import prefetched
from .images import load_rgb, resize_rgb, swaps_axes

__all__ = [
    "CROP_SOURCES",
    "OriginalCrops",
    "clip_boxes",
    "cut_resize",
    "draft_scale",
    "iter_original_crop_batches",
    "load_original_crops",
    "original_boxes",
]

#: Where :class:`~sk_a2.CropEmbedder` cuts crops: the paper's ``image_size`` resize, or the
#: decoded original.
CROP_SOURCES = ("resized", "original")

_DRAFT_SCALES = (8, 4, 2)


def original_boxes(X, include_full_image):
    """A :class:`~sk_a2.CropSet`'s boxes in original pixels, full image last when asked.

    Returns ``boxes`` (n, m, 4) float64 and ``full`` (n, m) bool, the full-image boxes.
    """
    boxes = X.boxes.astype(np.float64)
    full = np.zeros(boxes.shape[:2], dtype=bool)
    if include_full_image:
        h, w = X.image_sizes[:, 0].astype(np.float64), X.image_sizes[:, 1].astype(np.float64)
        whole = np.stack([np.zeros_like(w), np.zeros_like(h), w, h], axis=-1)[:, None]
        boxes = np.concatenate([boxes, whole], axis=1)
        full = np.concatenate([full, np.ones((len(X), 1), dtype=bool)], axis=1)
    return boxes, full


def clip_boxes(boxes, hw, *, where="image"):
    """Round ``(m, 4)`` boxes to whole pixels and clip them to an image of ``hw = (H, W)``.

    Returns an ``(m, 4)`` int64 array. A box with no pixel left inside the image is a
    ``ValueError`` naming ``where``.
    """
    h, w = int(hw[0]), int(hw[1])
    b = np.round(np.asarray(boxes, dtype=np.float64)).astype(np.int64)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    empty = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if empty.any():
        j = int(np.flatnonzero(empty)[0])
        raise ValueError(
            f"{where}: box {j} {np.asarray(boxes)[j].tolist()} lies outside the {h}x{w} original "
            "image after rounding to whole pixels"
        )
    return b


def cut_resize(rgb, boxes, size, *, full=None):
    """Cut each box of one ``(H, W, 3)`` uint8 image and resize it to ``size × size``.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), uint8
    boxes : ndarray of shape (m, 4), int
        Whole-pixel ``(x0, y0, x1, y1)`` inside the image (see :func:`clip_boxes`).
    size : int
    full : ndarray of shape (m,), bool, optional
        Boxes to take as the whole image resized with :func:`sk_a2.images.resize_rgb`.

    Returns
    -------
    Tensor of shape (m, 3, size, size), float32 in [0, 1]
    """
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.float32)
    image = torch.from_numpy(np.require(rgb, requirements=("C", "W"))).permute(2, 0, 1)
    for j, (x0, y0, x1, y1) in enumerate(np.asarray(boxes).tolist()):
        if full is not None and full[j]:
            pixels = torch.from_numpy(np.array(resize_rgb(rgb, size), copy=True)).permute(2, 0, 1)
            out[j] = pixels.float().div_(255.0)
            continue
        cut = image[:, y0:y1, x0:x1].float().div_(255.0)[None]
        if cut.shape[-2:] != (size, size):
            cut = F.interpolate(cut, size=(size, size), mode="bilinear", align_corners=False,
                                antialias=True)
        out[j] = cut[0]
    return out


def draft_scale(boxes, size) -> int:
    """The JPEG draft reduction for these boxes: the largest ``r`` in (8, 4, 2) leaving every box
    side at least ``2 * size`` pixels, or 1."""
    b = np.asarray(boxes, dtype=np.float64)
    if not len(b):
        return 1
    min_side = float(min((b[:, 2] - b[:, 0]).min(), (b[:, 3] - b[:, 1]).min()))
    for r in _DRAFT_SCALES:
        if min_side / r >= 2 * size:
            return r
    return 1


def _decode(source, boxes, size, draft, index):
    """Decode ``source``; a JPEG file is decoded in draft mode when :func:`draft_scale` allows.

    Returns the RGB array and the ``(H, W)`` of the full decode (they differ only in draft mode).
    """
    r = draft_scale(boxes, size) if draft and isinstance(source, (str, os.PathLike)) else 1
    if r > 1:
        try:
            with Image.open(source) as img:
                if img.format == "JPEG":
                    w, h = img.size
                    img.draft(None, (-(-w // r), -(-h // r)))
                    img.load()
                    return load_rgb(img, index), ((w, h) if swaps_axes(img) else (h, w))
        except Exception:
            pass  # unreadable: load_rgb below raises the documented error
    rgb = load_rgb(source, index)
    return rgb, rgb.shape[:2]


def load_original_crops(source, boxes, size, *, image_size=None, full=None, index=None,
                        draft=True):
    """Decode one original and return its boxes cut and resized: (m, 3, size, size) float32.

    Parameters
    ----------
    source : str, path-like, PIL.Image.Image or ndarray
    boxes : array-like of shape (m, 4)
        ``(x0, y0, x1, y1)`` in original-image pixels (after EXIF orientation).
    size : int
    image_size : tuple of int, optional
        The ``(H, W)`` the boxes refer to (``CropSet.image_sizes``); an original of another size
        is a ``ValueError`` (the file changed since the crops were chosen).
    full : ndarray of shape (m,), bool, optional
        Boxes that stand for the whole image (see :func:`cut_resize`).
    index : int, optional
        Position in ``X``, for error messages.
    draft : bool, default=True
        Allow JPEG draft decoding (module docstring).
    """
    where = "image" if index is None else f"X[{index}]"
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rgb, hw = _decode(source, boxes, size, draft, index)
    if image_size is not None and tuple(hw) != tuple(int(v) for v in image_size):
        raise ValueError(
            f"{where} is {hw[0]}x{hw[1]} pixels but its boxes were chosen on a "
            f"{int(image_size[0])}x{int(image_size[1])} image; was the file replaced?"
        )
    if tuple(rgb.shape[:2]) != tuple(hw):
        sy, sx = rgb.shape[0] / hw[0], rgb.shape[1] / hw[1]
        boxes = boxes * np.array([sx, sy, sx, sy])
    return cut_resize(rgb, clip_boxes(boxes, rgb.shape[:2], where=where), size, full=full)


@dataclass(eq=False)
class OriginalCrops(Dataset):
    """Worker-side dataset: item ``i`` is the crops of image ``i`` as ``(m_i, 3, size, size)``.

    ``boxes[i]`` is an ``(m_i, 4)`` array in original pixels and ``full[i]`` an ``(m_i,)`` mask of
    full-image boxes; ``m_i`` may differ between images.
    """

    sources: object
    boxes: object
    full: object
    image_sizes: object
    size: int
    indices: object = None

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        index = i if self.indices is None else int(self.indices[i])
        return load_original_crops(
            self.sources[i], self.boxes[i], self.size, image_size=self.image_sizes[i],
            full=self.full[i], index=index,
        )


def _concat(items):
    return torch.cat(items), [len(t) for t in items]


def iter_original_crop_batches(dataset, *, batch_size, num_workers, device, verbose=False,
                               desc=""):
    """Yield ``(start, crops, counts)``: the crops of ``batch_size`` images, concatenated on
    ``device``, and how many belong to each image. ``num_workers`` threads of the process's
    decoding pool (a resolved int, see ``sk_a2._data``) decode, cut and resize up to two batches
    ahead of the model."""
    from tqdm.auto import tqdm

    n = len(dataset)
    starts = range(0, n, batch_size)
    jobs = ([lambda i=i: dataset[i] for i in range(s, min(s + batch_size, n))] for s in starts)
    with tqdm(total=n, desc=desc, unit="img", disable=not verbose) as progress:
        for start, items in zip(starts, prefetched(jobs, num_workers)):
            crops, counts = _concat(items)
            if device.type == "cuda":
                crops = crops.pin_memory()
            yield start, crops.to(device, non_blocking=True), counts
            progress.update(len(counts))
