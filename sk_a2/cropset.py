"""``CropSet``, the type every stage passes on, and the crop parameters every cropper shares.

Croppers return a :class:`CropSet`; :class:`~sk_a2.CropEmbedder` and
:class:`~sk_a2.ZeroShotCLIPClassifier` take one. Boxes are stored in original-image pixels;
:func:`sk_a2.boxes.to_frame` and :func:`sk_a2.boxes.to_original` convert between those and the
pixels of the image resized to ``size × size`` (the *frame* in which croppers choose boxes and
embedders cut them).
:func:`effective_crop_sizes` resolves the ``crop_sizes`` / ``n_crops`` parameters shared by every
cropper.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

from ._param_validation import IMAGE_SIZE, Interval, SequenceOf
from .boxes import to_frame
from .images import check_source

__all__ = [
    "CROP_CONSTRAINTS",
    "CropSet",
    "check_boxes",
    "effective_crop_sizes",
]


def _box_problem(finite, ordered_x, ordered_y) -> str:
    if not finite:
        return "is not finite"
    if not ordered_x:
        return "has x0 >= x1"
    return "has y0 >= y1" if not ordered_y else "lies outside the frame"


def check_boxes(boxes, image_sizes) -> None:
    """Refuse boxes ``(n, k, 4)`` that are not finite, have ``x0 >= x1`` or ``y0 >= y1``, or
    leave the ``0..W x 0..H`` frame of their image (``image_sizes`` ``(n, 2)``, original pixels),
    and image sizes below 1. A float rounding of up to ``1e-3 + 1e-6 * side`` pixels past an
    edge is tolerated (boxes mapped from the model's frame in float32).
    """
    sizes = np.asarray(image_sizes)
    small = np.flatnonzero((sizes < 1).any(axis=1))
    if small.size:
        i = int(small[0])
        raise ValueError(f"image_sizes[{i}] = {sizes[i].tolist()}: the (height, width) of an "
                         "image must both be at least 1")
    b = np.asarray(boxes, dtype=np.float64)
    h, w = (sizes[:, None, 0].astype(np.float64), sizes[:, None, 1].astype(np.float64))
    x0, y0, x1, y1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    finite = np.isfinite(b).all(axis=-1)
    ordered_x, ordered_y = x0 < x1, y0 < y1
    inside = ((x0 >= -1e-3) & (y0 >= -1e-3)
              & (x1 <= w * (1 + 1e-6) + 1e-3) & (y1 <= h * (1 + 1e-6) + 1e-3))
    bad = np.argwhere(~(finite & ordered_x & ordered_y & inside))
    if not len(bad):
        return
    i, j = (int(v) for v in bad[0])
    more = f" (and {len(bad) - 1} more boxes)" if len(bad) > 1 else ""
    raise ValueError(
        f"boxes[{i}, {j}] = [{', '.join(str(v) for v in np.float32(b[i, j]))}] "
        f"{_box_problem(finite[i, j], ordered_x[i, j], ordered_y[i, j])}{more}; boxes must be "
        f"finite with x0 < x1 and y0 < y1 inside the 0..{int(w[i, 0])} x 0..{int(h[i, 0])} "
        f"frame of their image: (x0, y0, x1, y1) in original pixels, image_sizes[{i}] = "
        f"{sizes[i].tolist()} being its (height, width)"
    )


class CropSet:
    """Images and the square boxes chosen in each, without the crop pixels.

    A ``CropSet`` is what croppers return and what :class:`~sk_a2.CropEmbedder` and
    :class:`~sk_a2.ZeroShotCLIPClassifier` take. It holds references to the image sources (paths
    stay paths), so it is light for any dataset size.

    Parameters
    ----------
    images : sequence or ndarray
        The image sources, as validated by :func:`sk_a2.images.as_sources`.
    boxes : array-like of shape (n, k, 4)
        ``(x0, y0, x1, y1)`` in original-image pixels, ``x1``/``y1`` exclusive: finite, with
        ``x0 < x1`` and ``y0 < y1``, inside the ``0..W x 0..H`` frame of their image (see
        :func:`check_boxes`); anything else is a ``ValueError`` naming the box.
    scores : array-like of shape (n, k)
        Attention mass inside each box (NaN where a cropper has no attention).
    image_sizes : array-like of shape (n, 2)
        Original ``(height, width)`` of each image, each at least 1.
    full_embeddings : ndarray of shape (n, d), optional
        Each full image's embedding, when the cropper's attention pass computed it
        (``AttentionCropper(embed_full_image=True)``); :class:`~sk_a2.CropEmbedder` with
        ``include_full_image=True`` and the same model then uses it instead of a second forward.
    full_embedding_source : dict, optional
        Where ``full_embeddings`` come from: ``model_id``, ``image_size`` and ``precision``.
    image_keys : sequence of str, optional
        Each image's content key (:func:`sk_a2.cache.image_key`), when the cropper computed them:
        the embedder then uses them for its cache and to take the cropper's decoded pixels
        (:mod:`sk_a2.pixel_store`) instead of digesting and decoding each image again.

    Notes
    -----
    Indexing with an int array, a boolean mask or a slice gives the ``CropSet`` of those images,
    so scikit-learn's cross-validation can split it. ``len`` is the number of images and
    ``n_crops`` the number of boxes per image.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2 import CropSet
    >>> images = np.zeros((2, 64, 96, 3), dtype=np.uint8)
    >>> boxes = [[[0, 0, 32, 32], [40, 8, 72, 40]], [[10, 10, 42, 42], [50, 20, 82, 52]]]
    >>> crops = CropSet(images, boxes, scores=np.full((2, 2), np.nan), image_sizes=[[64, 96]] * 2)
    >>> crops
    CropSet(n_images=2, n_crops=2)
    >>> len(crops), crops.shape
    (2, (2, 2))
    >>> crops[[1]].boxes.tolist()
    [[[10.0, 10.0, 42.0, 42.0], [50.0, 20.0, 82.0, 52.0]]]
    >>> crops.first(1).n_crops
    1
    """

    def __init__(self, images, boxes, scores, image_sizes, full_embeddings=None,
                 full_embedding_source=None, image_keys=None):
        self.images = images
        self.image_keys = None if image_keys is None else list(image_keys)
        self.full_embeddings = full_embeddings
        self.full_embedding_source = full_embedding_source
        self.boxes = np.asarray(boxes, dtype=np.float32)
        self.scores = np.asarray(scores, dtype=np.float32)
        self.image_sizes = np.asarray(image_sizes, dtype=np.int64)
        n = len(images)
        if self.boxes.ndim != 3 or self.boxes.shape[0] != n or self.boxes.shape[2] != 4:
            raise ValueError(f"boxes must have shape ({n}, k, 4), got {self.boxes.shape}")
        if self.scores.shape != self.boxes.shape[:2]:
            raise ValueError(
                f"scores must have shape {self.boxes.shape[:2]}, got {self.scores.shape}"
            )
        if self.image_sizes.shape != (n, 2):
            raise ValueError(f"image_sizes must have shape ({n}, 2), got {self.image_sizes.shape}")
        if full_embeddings is not None and (np.ndim(full_embeddings) != 2
                                            or len(full_embeddings) != n):
            raise ValueError(f"full_embeddings must have shape ({n}, d), got "
                             f"{np.shape(full_embeddings)}")
        if self.image_keys is not None and len(self.image_keys) != n:
            raise ValueError(f"image_keys must hold {n} keys, got {len(self.image_keys)}")
        check_boxes(self.boxes, self.image_sizes)
        if not isinstance(images, np.ndarray):
            for i, source in enumerate(images):
                check_source(source, f"images[{i}]")

    def __len__(self):
        return len(self.images)

    def with_images(self, images) -> CropSet:
        """The same boxes on other sources of the same images (e.g. decoded ones)."""
        return CropSet(images, self.boxes, self.scores, self.image_sizes,
                       self.full_embeddings, self.full_embedding_source, self.image_keys)

    @property
    def n_crops(self) -> int:
        return self.boxes.shape[1]

    @property
    def shape(self):
        return self.boxes.shape[:2]

    def __repr__(self):
        return f"CropSet(n_images={len(self)}, n_crops={self.n_crops})"

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key = key[0] if len(key) in (1, 2) and (len(key) == 1 or key[1] is Ellipsis) else key
            if isinstance(key, tuple):
                raise IndexError("CropSet supports indexing images only, e.g. cs[idx]")
        if isinstance(key, numbers.Integral):
            key = [operator.index(key)]
        if isinstance(key, slice):
            idx = np.arange(len(self))[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                if idx.shape != (len(self),):
                    raise IndexError(f"boolean mask of shape {idx.shape} for {len(self)} images")
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = idx.astype(np.int64)
            elif not np.issubdtype(idx.dtype, np.integer):
                raise IndexError(f"CropSet indices must be integers, got dtype {idx.dtype}")
        if isinstance(self.images, np.ndarray):
            images = self.images[idx]
        else:
            images = [self.images[i] for i in idx]
        full = None if self.full_embeddings is None else self.full_embeddings[idx]
        keys = None if self.image_keys is None else [self.image_keys[i] for i in idx]
        return CropSet(images, self.boxes[idx], self.scores[idx], self.image_sizes[idx],
                       full, self.full_embedding_source, keys)

    def first(self, k: int) -> CropSet:
        """The same images with only their first ``k`` boxes."""
        if not 1 <= k <= self.n_crops:
            raise ValueError(f"k must be in [1, {self.n_crops}], got {k}")
        return CropSet(self.images, self.boxes[:, :k], self.scores[:, :k], self.image_sizes,
                       self.full_embeddings, self.full_embedding_source, self.image_keys)

    def frame_boxes(self, size: int) -> np.ndarray:
        """Boxes in the pixels of the image resized to ``size × size`` (float64).

        Coordinates within 1e-3 of an integer are snapped to it, so integer boxes chosen in that
        frame come back exactly (see :func:`sk_a2.boxes.to_frame`).
        """
        return to_frame(self.boxes, self.image_sizes, size)


def int_list(value, message) -> list:
    """``value`` as a list: an int ``v`` gives ``[v]``, an iterable its items.

    Anything else raises ``ValueError(message)``; the items themselves are not checked.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise ValueError(message) from None


def effective_crop_sizes(crop_sizes, n_crops, image_size=None) -> list[int]:
    """Crop sizes largest first; ``n_crops`` takes the first k, repeating the last size.

    With ``image_size``, a size larger than it is a ``ValueError``.
    """
    sizes = int_list(crop_sizes, f"crop_sizes must be a sequence of ints, got {crop_sizes!r}")
    if not sizes:
        raise ValueError("crop_sizes is empty: at least one crop size is needed")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"crop_sizes must hold positive ints, got {crop_sizes!r}")
    sizes = sorted((int(s) for s in sizes), reverse=True)
    if image_size is not None and sizes[0] > image_size:
        raise ValueError(
            f"crop size {sizes[0]} is larger than image_size={image_size}: crop sizes are in "
            "pixels of the image resized to image_size x image_size"
        )
    if n_crops is None:
        return sizes
    if isinstance(n_crops, bool) or not isinstance(n_crops, numbers.Integral) or n_crops < 1:
        raise ValueError(f"n_crops must be None or a positive int, got {n_crops!r}")
    n_crops = int(n_crops)
    return (sizes + [sizes[-1]] * n_crops)[:n_crops]


def _positive_int(value) -> bool:
    return (isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
            and value >= 1)


#: Parameter rules shared by every cropper (see :mod:`sk_a2._param_validation`).
CROP_CONSTRAINTS = {
    "crop_sizes": [Interval(numbers.Integral, 1, None, closed="left"),
                   SequenceOf(_positive_int, "a non-empty sequence of positive integers")],
    "n_crops": [None, Interval(numbers.Integral, 1, None, closed="left")],
    "image_size": [IMAGE_SIZE],
}
