"""Baseline croppers without attention: the paper's center-crop and random-crop baselines.

:class:`CenterCropper` and :class:`RandomCropper` return a :class:`~sk_a2.CropSet` with the
same ``crop_sizes`` / ``n_crops`` semantics as :class:`~sk_a2.AttentionCropper`, so they drop
into the same pipeline in its place::

    Pipeline([("crop", CenterCropper(crop_sizes=(128,))),
              ("emb", CropEmbedder("dinov2_vits14")),
              ("lr", LogisticRegression(max_iter=1000))])

They run no model and decode no pixels of image files: only the image sizes are read (the
header of a file, the shape of an array). Their ``scores`` are NaN, since there is no attention.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._param_validation import FitTransformOnceMixin, validated_call
from .boxes import CropOverlapWarning, to_original
from .cropset import CROP_CONSTRAINTS, CropSet, effective_crop_sizes
from .images import as_sources, image_digest, image_sizes

__all__ = ["CenterCropper", "RandomCropper"]

class _BaselineCropper(FitTransformOnceMixin, TransformerMixin, BaseEstimator):
    """Shared validation and tags of the baseline croppers."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.requires_fit = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = []
        return tags

    _parameter_constraints = dict(CROP_CONSTRAINTS)

    def _validate(self):
        return self.image_size, effective_crop_sizes(self.crop_sizes, self.n_crops,
                                                     self.image_size)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Check the parameters; return ``self``.

        Nothing is learned from ``X`` and ``y`` (both ignored).
        """
        _, self.crop_sizes_ = self._validate()
        return self

    def _frame_boxes(self, sources, hw, image_size, sizes):
        raise NotImplementedError

    @validated_call
    def transform(self, X):
        """Place the crops of each image; only the image sizes are read.

        Parameters
        ----------
        X : sequence of image sources, or (n, H, W, 3) uint8 array
            Files are opened for their header only.

        Returns
        -------
        CropSet
            ``boxes`` (n, k, 4) in original-image pixels (float32); ``scores`` (n, k) all NaN.
        """
        check_is_fitted(self)
        image_size, sizes = self._validate()
        sources = as_sources(X)
        hw = image_sizes(sources)
        frame = self._frame_boxes(sources, hw, image_size, sizes)
        boxes = to_original(frame, hw, image_size)
        scores = np.full(boxes.shape[:2], np.nan, dtype=np.float32)
        return CropSet(sources, boxes, scores, hw)


class CenterCropper(_BaselineCropper):
    """Crops centred in the image: the paper's center-crop baseline.

    Every box is a square of side ``s`` (in pixels of the image resized to
    ``image_size × image_size``) at offset ``(image_size - s) // 2`` on both axes, so it is
    off-centre by half a pixel when ``image_size - s`` is odd. Boxes are then mapped back to
    original-image pixels, where a non-square image gives a rectangle. With several sizes the
    boxes are nested (all share the centre), largest first; a repeated size (``n_crops`` larger
    than the number of sizes) gives identical boxes.

    Parameters
    ----------
    crop_sizes : sequence of int, default=(128,)
        Crop sides in pixels of the ``image_size`` frame; used largest first.
    n_crops : int, default=None
        ``None``: one crop per size. ``k``: the first ``k`` sizes, the last size repeating when
        ``k`` exceeds them (as :class:`~sk_a2.AttentionCropper`).
    image_size : int, default=224
        Side of the square frame the crop sizes refer to (the embedding model's input).

    Attributes
    ----------
    crop_sizes_ : list of int
        The sizes of the crops, in order.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.baselines import CenterCropper
    >>> X = np.zeros((2, 100, 200, 3), dtype=np.uint8)
    >>> CenterCropper(crop_sizes=(112,)).fit_transform(X).boxes[0].tolist()
    [[50.0, 25.0, 150.0, 75.0]]
    """

    def __init__(self, *, crop_sizes=(128,), n_crops=None, image_size=224):
        self.crop_sizes = crop_sizes
        self.n_crops = n_crops
        self.image_size = image_size

    def _frame_boxes(self, sources, hw, image_size, sizes):
        one = np.asarray(
            [[(image_size - s) // 2, (image_size - s) // 2,
              (image_size - s) // 2 + s, (image_size - s) // 2 + s] for s in sizes],
            dtype=np.int64,
        )
        return np.broadcast_to(one, (len(hw), len(sizes), 4))


class RandomCropper(_BaselineCropper):
    """Crops at random positions: the paper's random-crop baseline.

    Boxes are placed in the ``image_size × image_size`` frame, largest first, like the greedy
    rule of :class:`~sk_a2.AttentionCropper` with the attention replaced by chance: the box of
    side ``s`` takes an integer position ``(x, y)``, ``0 <= x, y <= image_size - s``, drawn
    uniformly among the positions where it does not intersect an earlier box of the same image.
    When no such position is left, it is drawn uniformly among all positions, and one
    :class:`~sk_a2.boxes.CropOverlapWarning` per call says how often this happened. Boxes are
    then mapped back to original-image pixels.

    Every image has its own random generator, seeded by ``seed_`` (drawn in ``fit`` from
    ``random_state``) and a digest of the image: its absolute file path for a path, its pixels
    and shape for an array or a PIL image. So an image gets the same boxes whatever other images
    are in ``X`` and in whatever order, and transforming the same ``X`` twice with a fitted
    cropper gives the same boxes (identical images get identical boxes).

    Parameters
    ----------
    crop_sizes : sequence of int, default=(64,)
        Crop sides in pixels of the ``image_size`` frame; used largest first, each box placed
        before the next smaller one.
    n_crops : int, default=None
        ``None``: one crop per size. ``k``: the first ``k`` sizes, the last size repeating when
        ``k`` exceeds them (as :class:`~sk_a2.AttentionCropper`); each repeat is a new box.
    image_size : int, default=224
        Side of the square frame the crop sizes refer to (the embedding model's input).
    random_state : int, RandomState instance or None, default=None
        Draws ``seed_`` in ``fit``. An int gives the same boxes on every fit; ``None`` a new
        ``seed_`` per fit (fixed for that fitted estimator).

    Attributes
    ----------
    crop_sizes_ : list of int
        The sizes of the crops, in order.
    seed_ : int
        The seed that, with each image's digest, determines its boxes.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.baselines import RandomCropper
    >>> X = np.random.RandomState(0).randint(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    >>> crops = RandomCropper(crop_sizes=(32, 16), image_size=64, random_state=0).fit_transform(X)
    >>> crops.boxes.shape
    (3, 2, 4)
    """

    _parameter_constraints = {**CROP_CONSTRAINTS, "random_state": ["random_state"]}

    def __init__(self, *, crop_sizes=(64,), n_crops=None, image_size=224, random_state=None):
        self.crop_sizes = crop_sizes
        self.n_crops = n_crops
        self.image_size = image_size
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Check the parameters and draw ``seed_`` from ``random_state``; return ``self``.

        Nothing is learned from ``X`` and ``y`` (both ignored).
        """
        super().fit(X, y)
        self.seed_ = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        return self

    def _frame_boxes(self, sources, hw, image_size, sizes):
        boxes = np.zeros((len(hw), len(sizes), 4), dtype=np.int64)
        n_overlapping = 0
        for i in range(len(hw)):
            digest = image_digest(sources[i])
            words = [int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")]
            rng = np.random.default_rng([self.seed_, *words])
            boxes[i], n_over = _random_boxes(rng, image_size, sizes)
            n_overlapping += n_over
        if n_overlapping:
            warnings.warn(
                f"{n_overlapping} random crop(s) could not be placed without overlapping an "
                "earlier crop (image_size is too small for these crop sizes); they were placed "
                "anywhere.",
                CropOverlapWarning,
                stacklevel=4,
            )
        return boxes


def _random_boxes(rng, image_size, sizes):
    """Boxes (k, 4) in the frame, each uniform among the positions free of earlier boxes."""
    out = np.zeros((len(sizes), 4), dtype=np.int64)
    n_overlapping = 0
    for j, s in enumerate(sizes):
        positions = image_size - s + 1
        pos = np.arange(positions)
        valid = np.ones((positions, positions), dtype=bool)
        for x0, y0, x1, y1 in out[:j]:
            x_hit = (pos < x1) & (pos + s > x0)
            y_hit = (pos < y1) & (pos + s > y0)
            valid &= ~(y_hit[:, None] & x_hit[None, :])
        free = np.flatnonzero(valid)
        if free.size:
            flat = int(free[rng.integers(free.size)])
        else:
            n_overlapping += 1
            flat = int(rng.integers(positions * positions))
        y, x = divmod(flat, positions)
        out[j] = (x, y, x + s, y + s)
    return out, n_overlapping
