"""CropEmbedder: a ViT's CLS embedding of every crop, concatenated (A²'s *what*)."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ._data import autocast, iter_image_batches
from .crops import crop_resize
from .cropper import CropSet, _check_positive_int, _check_workers
from .images import as_sources
from .models import load_model, resolve_device

__all__ = ["CropEmbedder"]


def iter_crop_batches(X: CropSet | object, size, *, include_full_image, batch_size, num_workers,
                      device, verbose=False, desc="embedding"):
    """Yield ``(start, inputs, n_per_image)``: crops of a batch of images, ready for a model.

    ``inputs`` is (B * n_per_image, 3, size, size) in [0, 1], image-major, crops in order and the
    full image last when ``include_full_image``. Plain images (not a :class:`CropSet`) give the
    full image only.
    """
    is_cropset = isinstance(X, CropSet)
    sources = X.images if is_cropset else as_sources(X)
    k = X.n_crops if is_cropset else 0
    per_image = k + (1 if include_full_image or not is_cropset else 0)
    images_per_batch = max(1, batch_size // per_image)
    frame = X.frame_boxes(size) if is_cropset else None
    for start, pixels, _ in iter_image_batches(
        sources, size, batch_size=images_per_batch, num_workers=num_workers, device=device,
        verbose=verbose, desc=desc,
    ):
        parts = []
        if k:
            boxes = torch.as_tensor(frame[start:start + len(pixels)], device=device)
            parts.append(crop_resize(pixels, boxes, size))
        if per_image > k:
            parts.append(pixels[:, None])
        inputs = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        yield start, inputs.flatten(0, 1), per_image


class CropEmbedder(TransformerMixin, BaseEstimator):
    """Embed each crop of a :class:`CropSet` with a ViT and concatenate the embeddings.

    Every box is cut from the image resized to ``image_size × image_size`` and resized bilinearly
    to ``image_size`` (``align_corners=False``, edge pixels clamped to the box), normalised with
    the model's own mean and std and embedded: the CLS token after the model's final norm (for an
    open_clip model, its image embedding). All boxes of a batch are cut and resized in one batched
    operation on the device. CUDA runs under bf16 autocast; CPU computes in float32.

    Given plain images instead of a ``CropSet``, it returns the full-image embedding, so the same
    class serves the full-image baseline.

    Parameters
    ----------
    model : str or torch.nn.Module, default="dinov2_vitg14"
        Embedding model (see :class:`AttentionCropper` for the accepted forms).
    weights : str or path-like, default=None
        Local state-dict file for ``model``.
    image_size : int, default=224
        Side of the square model input, and of every resized crop.
    include_full_image : bool, default=False
        Append the full-image embedding after the crop embeddings.
    batch_size : int, default=32
        Model inputs (crops) per forward pass.
    num_workers : int, default=0
        Worker processes decoding and resizing images while the model runs.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    verbose : bool, default=False
        Show a progress bar over images.

    Attributes
    ----------
    embed_dim_ : int
        Size ``d`` of one embedding.
    n_crops_ : int
        Crops per image seen in ``fit`` (0 for plain images).
    n_features_out_ : int
        ``(n_crops_ + include_full_image) * d``, or ``d`` for plain images.
    """

    def __init__(
        self,
        model="dinov2_vitg14",
        *,
        weights=None,
        image_size=224,
        include_full_image=False,
        batch_size=32,
        num_workers=0,
        device="auto",
        verbose=False,
    ):
        self.model = model
        self.weights = weights
        self.image_size = image_size
        self.include_full_image = include_full_image
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = False
        tags.transformer_tags.preserves_dtype = []
        return tags

    def _load(self):
        return load_model(self.model, weights=self.weights, image_size=self.image_size,
                          device=resolve_device(self.device))

    def _validate(self):
        _check_positive_int(self.batch_size, "batch_size")
        _check_workers(self.num_workers)
        if not isinstance(self.image_size, numbers.Integral) or isinstance(self.image_size, bool):
            raise ValueError(f"image_size must be an int, got {self.image_size!r}")

    def fit(self, X, y=None):
        """Load the embedding model and record the layout of ``X``.

        Parameters
        ----------
        X : CropSet, or image sources
        y : ignored

        Returns
        -------
        self
        """
        self._validate()
        vm = self._load()
        if not isinstance(X, CropSet):
            as_sources(X)
        self.embed_dim_ = vm.embed_dim
        self.n_crops_ = X.n_crops if isinstance(X, CropSet) else 0
        n_inputs = self.n_crops_ + (1 if self.include_full_image or not self.n_crops_ else 0)
        self.n_features_out_ = n_inputs * self.embed_dim_
        return self

    def transform(self, X):
        """Embed the crops (or the full images).

        Returns
        -------
        ndarray of shape (n, n_features_out_), float32
        """
        check_is_fitted(self)
        self._validate()
        k = X.n_crops if isinstance(X, CropSet) else 0
        if k != self.n_crops_:
            what = f"a CropSet with {k} crops per image" if k else "plain images"
            fitted = f"{self.n_crops_} crops per image" if self.n_crops_ else "plain images"
            raise ValueError(f"CropEmbedder was fitted on {fitted}; transform got {what}")
        vm = self._load()
        out = np.empty((len(X), self.n_features_out_), dtype=np.float32)
        for start, inputs, per_image in iter_crop_batches(
            X, self.image_size, include_full_image=self.include_full_image,
            batch_size=self.batch_size, num_workers=self.num_workers, device=vm.device,
            verbose=self.verbose,
        ):
            emb = self._embed(vm, inputs)
            n = len(inputs) // per_image
            out[start:start + n] = emb.reshape(n, per_image * emb.shape[-1]).cpu().numpy()
        return out

    @torch.no_grad()
    def _embed(self, vm, inputs):
        chunks = []
        for i in range(0, len(inputs), self.batch_size):
            with autocast(vm.device):
                chunks.append(vm.embed(vm.normalize(inputs[i:i + self.batch_size])).float())
        return torch.cat(chunks)

    def get_feature_names_out(self, input_features=None):
        """``crop{j}_{i}`` for embedding dimension ``i`` of crop ``j``; ``full_{i}`` for the image."""
        check_is_fitted(self)
        d = self.embed_dim_
        blocks = [f"crop{j}" for j in range(self.n_crops_)]
        if self.include_full_image or not self.n_crops_:
            blocks.append("full")
        return np.asarray([f"{b}_{i}" for b in blocks for i in range(d)], dtype=object)
