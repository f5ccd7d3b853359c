"""Croppers: image sources in, :class:`CropSet` (boxes per image) out."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._base import (
    MODEL_CONSTRAINTS,
    ImageTransformerTagsMixin,
    ModelEstimatorMixin,
)
from ._param_validation import FitTransformOnceMixin, Interval, StrOptions, validated_call
from .attention import HEAD_AGGREGATIONS, MapSource, layer_maps, map_keys, resolve_layer
from .boxes import greedy_boxes, to_original, upsample_maps
from .cache import EntryLayout, cached_rows, digest, image_key, model_key
from .cropset import CROP_CONSTRAINTS, CropSet, effective_crop_sizes
from .decode import DECODERS, check_decoder
from .device import resolve_device
from .images import as_sources, take
from .ray_engine import ENGINE_CONSTRAINTS, check_engine, run

__all__ = ["AttentionCropper", "CropSet"]  # CropSet re-exported from sk_a2.cropset


def crop_columns(crops: CropSet) -> dict:
    """A :class:`CropSet`'s per-image arrays, named as the cropper's cache entries."""
    columns = {"boxes": crops.boxes, "scores": crops.scores, "image_size": crops.image_sizes}
    if crops.full_embeddings is not None:
        columns["embedding"] = crops.full_embeddings
    return columns


class AttentionCropper(
    ModelEstimatorMixin, ImageTransformerTagsMixin, FitTransformOnceMixin, TransformerMixin,
    BaseEstimator
):
    """Greedy, non-overlapping crops at the peaks of a ViT's CLS attention (A²'s *where*).

    For each image (resized to ``image_size × image_size``), the CLS query's attention over the
    patches at block ``layer`` is aggregated over heads, bilinearly upsampled to
    ``image_size × image_size`` and renormalised; then square boxes of ``crop_sizes`` (in those
    pixels, largest first) are placed greedily where they cover the most attention without
    overlapping earlier boxes (Appendix B of the paper, exact).

    Parameters
    ----------
    model : str or torch.nn.Module, default="dinov2_vits14"
        Attention model: a short name (:func:`sk_a2.list_models`), ``"timm:<name>"``,
        ``"open_clip:<arch>:<pretrained>"``, or a timm ViT / open_clip CLIP module (then a pickle
        of this estimator contains its weights).
    weights : str or path-like, default=None
        Local state-dict file for ``model`` (see :mod:`sk_a2.models`).
    crop_sizes : sequence of int, default=(64,)
        Crop sides in pixels of the ``image_size`` frame; used largest first.
    n_crops : int, default=None
        ``None``: one crop per size. ``k``: the first ``k`` sizes, the last size repeating when
        ``k`` exceeds them (so ``GridSearchCV`` can search ``n_crops`` with fixed sizes).
    image_size : int, default=224
        Side of the square model input.
    head_aggregation : {"mean", "max", "entropy_weighted", "lowest_entropy_mean", "topk_mean", \
            "head_pruned"}, default="mean"
        How heads combine (defined in :mod:`sk_a2.attention`).
    layer : int, default=-1
        Block whose attention is used; negative counts from the end.
    batch_size : int, default=32
        Images per forward pass.
    num_workers : int or "auto", default="auto"
        Threads decoding and resizing images, up to two batches ahead of the model; they are
        started once per process and kept (see ``sk_a2._data``). ``"auto"``: ``min(8, CPU
        cores)`` on CUDA, 1 on CPU (where the model's own threads use every core); 0 decodes
        in the calling thread.
    decoder : {"auto", "cpu", "cuda"}, default="auto"
        Who decodes JPEG files: PIL on the CPU, or nvJPEG on the CUDA device (then resized there
        to PIL's exact bytes); ``"auto"`` is ``"cuda"`` on a CUDA device with torchvision
        installed. Other formats, in-memory images and JPEG files nvJPEG cannot take are
        decoded on the CPU. See :mod:`sk_a2.decode`.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Numeric precision of the attention forward. ``"auto"``: float32 (bf16 attention moves
        the boxes of 20-30 % of images, on CUDA as on CPU; see :mod:`sk_a2.precision`).
    embed_full_image : bool, default=False
        Also keep each full image's embedding by this model from the same forward pass (which
        then runs to the end instead of stopping at block ``layer``), in the returned
        ``CropSet``. A :class:`CropEmbedder` with the same model, weights, image size and
        precision and ``include_full_image=True`` uses it instead of a second forward.
    cache : None, "memory" or path, default=None
        Keep attention maps keyed by image content and every parameter that changes them, so
        refits (``GridSearchCV`` candidates and folds, other crop counts or sizes) reselect crops
        without running the model again. See :mod:`sk_a2.cache`.
    engine : None or "ray", default=None
        ``"ray"``: the attention forwards run on a Ray cluster (``docs/ray.md``).
    engine_options : dict, default=None
        Ray engine settings for the attention forwards (:data:`sk_a2.ray_engine.ENGINE_OPTIONS`).
    verbose : bool, default=False
        Show a progress bar over images.

    Attributes
    ----------
    crop_sizes_ : list of int
        The sizes of the crops, in order.
    grid_size_ : tuple of int
        The attention model's patch grid ``(grid_h, grid_w)``.
    weights_digest_ : str or None
        Digest of the ``weights`` file's bytes at ``fit`` time (``None`` without a file). A
        fitted (or unpickled) estimator refuses to run once the file's content differs.

    Examples
    --------
    With the offline DINOv2 ViT-S/14 weights, on images of the embedded synthetic benchmark:

    >>> from sk_a2 import AttentionCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> data = make_spurious_images(n_samples=10, image_size=112, random_state=0)
    >>> cropper = AttentionCropper("imgfocus_vits14", crop_sizes=(48, 24), image_size=112,
    ...                            device="cpu")
    >>> crops = cropper.fit_transform(data.images[:3])
    >>> crops.boxes.shape  # (n_images, n_crops, 4): (x0, y0, x1, y1) in original pixels
    (3, 2, 4)
    >>> (crops.boxes[:, :, 2] - crops.boxes[:, :, 0]).tolist()  # largest crop first
    [[48.0, 24.0], [48.0, 24.0], [48.0, 24.0]]
    >>> cropper.attention_maps(data.images[:3]).shape  # the 8 x 8 patch grid
    (3, 8, 8)
    """

    def __init__(
        self,
        model="dinov2_vits14",
        *,
        weights=None,
        crop_sizes=(64,),
        n_crops=None,
        image_size=224,
        head_aggregation="mean",
        layer=-1,
        batch_size=32,
        num_workers="auto",
        device="auto",
        precision="auto",
        embed_full_image=False,
        cache=None,
        verbose=False,
        engine=None,
        engine_options=None,
        decoder="auto",
    ):
        super().__init__(model, weights=weights, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, device=device, precision=precision, cache=cache,
                         verbose=verbose, engine=engine, engine_options=engine_options)
        self.decoder = decoder
        self.crop_sizes = crop_sizes
        self.n_crops = n_crops
        self.head_aggregation = head_aggregation
        self.layer = layer
        self.embed_full_image = embed_full_image

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        **CROP_CONSTRAINTS,
        **ENGINE_CONSTRAINTS,
        "head_aggregation": [StrOptions(HEAD_AGGREGATIONS)],
        "layer": [Interval(numbers.Integral, None, None, closed="neither")],
        "embed_full_image": ["boolean"],
        "decoder": [StrOptions(DECODERS)],
    }

    def _validate(self):
        """The rules across parameters (each parameter's own rule: ``_parameter_constraints``)."""
        self._check_precision()
        check_engine(self.engine, self.engine_options)
        check_decoder(self.decoder, resolve_device(self.device))
        return effective_crop_sizes(self.crop_sizes, self.n_crops, self.image_size)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Check the parameters and load the attention model.

        Nothing is learned from ``X``: the attention model is pretrained.

        Parameters
        ----------
        X : ignored
        y : ignored

        Returns
        -------
        self
        """
        sizes = self._validate()
        vm = self._fit_model()
        resolve_layer(self.layer, vm.num_layers)
        self.crop_sizes_ = sizes
        self.grid_size_ = vm.grid_size
        return self

    def map_source(self):
        """The :class:`~sk_a2.attention.MapSource` of this cropper's maps: its model, image
        size, head aggregation, precision, cache, batching and decoder."""
        args = self._cache_args()
        return MapSource(self._load(), self.image_size, self.head_aggregation,
                         self._precision("attention"), args["cache"], args["model_id"],
                         self.batch_size, self.num_workers, self.verbose, self.decoder)

    def _map_keys(self, sources, image_keys=None):
        """Cache keys of the attention maps of ``sources`` (None without a cache);
        ``image_keys``: their content keys, computed here when not given."""
        source = self.map_source()
        if source.cache is None:
            return None
        layer = resolve_layer(self.layer, source.vm.num_layers)
        return map_keys(source, sources, [layer], image_keys)[layer]

    def _compute_maps(self, sources, embed=False, image_keys=None):
        """Aggregated patch maps ``"map"`` (n, grid_h, grid_w) float32, original sizes
        ``"image_size"`` (n, 2) and, with ``embed``, full-image embeddings ``"embedding"``
        (n, d) from the same forward pass (:func:`sk_a2.attention.layer_maps`, which reads
        and stores them in the cache)."""
        out = layer_maps(self.map_source(), sources, [self.layer], embed=embed,
                         image_keys=image_keys)
        out["map"] = out["map"][0]
        del out["shares"], out["blocks"]
        return out

    @validated_call
    def layer_maps(self, X, layers=None):
        """The maps of several blocks of each image, all from one forward pass per batch.

        With a ``cache``, they are stored under the keys this cropper reads, so that a clone
        with any of ``layers`` as its ``layer`` reuses them.

        Parameters
        ----------
        X : sequence of image sources, or (n, H, W, 3) uint8 array
        layers : None or sequence of int, default=None
            Block indices (negative ones count from the end); ``None``: this cropper's
            ``layer``.

        Returns
        -------
        dict
            ``"blocks"`` (indices from 0), ``"map"`` (L, n, grid_h, grid_w) float32,
            ``"shares"`` (L, n, 3) float64 token shares and ``"image_size"`` (n, 2) int64 (see
            :func:`sk_a2.attention.layer_maps`).
        """
        check_is_fitted(self)
        self._validate()
        return layer_maps(self.map_source(), as_sources(X),
                          [self.layer] if layers is None else layers)

    @validated_call
    def attention_maps(self, X):
        """Aggregated CLS-to-patch attention, one map per image.

        Returns
        -------
        maps : ndarray of shape (n, grid_h, grid_w), float32
            Each map sums to 1.
        """
        check_is_fitted(self)
        self._validate()
        return self._compute_maps(as_sources(X))["map"]

    @validated_call
    def transform(self, X):
        """Choose the crops of each image.

        Parameters
        ----------
        X : sequence of image sources, or (n, H, W, 3) uint8 array

        Returns
        -------
        CropSet
            ``boxes`` (n, k, 4) in original-image pixels and ``scores`` (n, k), the fraction of
            the upsampled attention inside each box; with ``embed_full_image``, also
            ``full_embeddings`` (n, d).
        """
        check_is_fitted(self)
        sizes = self._validate()
        sources = as_sources(X)
        rows = run(self, sources, in_process=lambda s: self._rows(s, sizes),
                   columns=crop_columns, decode_size=self.image_size)
        return self._crop_set(sources, rows)

    def transform_batch(self, X):
        """Choose the crops of one batch of images in this process, whatever ``engine`` says.

        The unit of work of the Ray engine's actors (see ``docs/ray.md``): the same result as
        ``transform`` with ``engine=None``. ``X`` may also hold images decoded and resized to
        ``image_size`` ahead of the model (:class:`sk_a2.images.Decoded`).

        Returns
        -------
        CropSet
        """
        check_is_fitted(self)
        sizes = self._validate()
        sources = as_sources(X)
        return self._crop_set(sources, self._rows(sources, sizes))

    def _rows(self, sources, sizes):
        """The in-process per-image rows (boxes, scores, image_size, embedding) of
        ``sources``, and the images' content keys (``"image_keys"``)."""
        cache = self._cache_args()["cache"]
        embed = bool(self.embed_full_image)
        image_keys = [image_key(src) for src in sources]  # once per image; they travel on
        box_keys = None
        if cache is not None:  # boxes are kept per (map, crop sizes): refits only look them up
            box_keys = [digest("boxes", key, tuple(sizes), embed)
                        for key in self._map_keys(sources, image_keys)]

        def compute(todo):
            rows = self._compute_maps(take(sources, todo), embed,
                                      [image_keys[i] for i in todo])
            step = max(self.batch_size, 256)
            for i in range(0, len(todo), step):
                part = {name: v[i:i + step] for name, v in rows.items()}
                boxes, scores = self._select_boxes(part.pop("map"), part["image_size"], sizes)
                yield todo[i:i + step], {"boxes": boxes, "scores": scores, **part}

        vm = self._load()
        layout = box_entry(len(sizes), vm.embed_dim if embed else 0)
        rows = cached_rows(layout, len(sources), compute, cache, box_keys)
        return {**rows, "image_keys": image_keys}

    def _crop_set(self, sources, rows):
        """The :class:`CropSet` of the per-image ``rows`` (boxes, scores, image_size,
        embedding), carrying the images' content keys ``rows["image_keys"]`` where given."""
        source = None
        if self.embed_full_image:
            source = {"model_id": model_key(self.model, self.weights),
                      "image_size": self.image_size, "precision": self._precision("attention")}
        return CropSet(sources, rows["boxes"], rows["scores"], rows["image_size"],
                       rows.get("embedding"), source, rows.get("image_keys"))

    def _select_boxes(self, maps, hws, sizes):
        """Greedy boxes (original pixels, float32) and their attention mass for some maps."""
        up = upsample_maps(torch.as_tensor(maps, device=self._load().device), self.image_size)
        up = up / up.sum((-2, -1), keepdim=True).clamp_min(1e-30)
        boxes, scores = greedy_boxes(up, sizes, return_scores=True)
        return to_original(boxes.cpu().numpy(), hws, self.image_size), scores.cpu().numpy()


def box_entry(k, embed_dim=0) -> EntryLayout:
    """Cache entry of one image's crops: original (height, width), ``k`` boxes, ``k`` scores
    and, with ``embed_dim``, the full image's embedding."""
    extra = {"embedding": ((embed_dim,), np.float32)} if embed_dim else {}
    return EntryLayout(np.float64, image_size=((2,), np.int64), boxes=((k, 4), np.float32),
                       scores=((k,), np.float32), **extra)
