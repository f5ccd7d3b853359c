"""CropEmbedder: a ViT's CLS embedding of every crop, concatenated (A²'s *what*)."""

from __future__ import annotations

import functools

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

from ._base import (
    MODEL_CONSTRAINTS,
    ImageTransformerTagsMixin,
    ModelEstimatorMixin,
    check_finite,
)
from ._data import iter_image_batches, resolve_num_workers
from ._param_validation import PATH, FitTransformOnceMixin, Rule, StrOptions, validated_call
from .boxes import crop_resize
from .cache import EntryLayout, cached_rows, digest, image_key, model_key
from .cropset import CropSet
from .decode import DECODERS, check_decoder
from .device import resolve_device
from .images import as_sources, take
from .original_crops import (
    CROP_SOURCES,
    OriginalCrops,
    iter_original_crop_batches,
    original_boxes,
)
from .outputs import check_output_dir, open_output
from .precision import at_precision, precision_key
from .ray_engine import ENGINE_CONSTRAINTS, check_engine, run

__all__ = ["CropEmbedder"]


def embedding_boxes(X, size, include_full_image):
    """Boxes to embed per image in the ``size`` frame: (n, m, 4) float64, full image last.

    A :class:`CropSet` gives its boxes (plus the full image with ``include_full_image``); plain
    images give the full image only.
    """
    full = np.array([0.0, 0.0, size, size])
    if isinstance(X, CropSet):
        boxes = X.frame_boxes(size)
        if include_full_image:
            boxes = np.concatenate([boxes, np.broadcast_to(full, (len(X), 1, 4))], axis=1)
        return boxes
    return np.broadcast_to(full, (len(X), 1, 4)).copy()


def shared_full_embeddings(X, model_id, image_size, precision, resolved):
    """The full-image embeddings a :class:`CropSet` carries from its attention pass, when they
    are what the embedder would compute, else None.

    They are when they come from the same model (``model_id``) at the same ``image_size`` and
    the same ``resolved`` precision, or in float32 where ``precision="auto"`` would have used
    bf16 (the attention pass's result is then the more precise one).
    """
    if not isinstance(X, CropSet) or X.full_embeddings is None:
        return None
    source = X.full_embedding_source or {}
    if source.get("model_id") != model_id or source.get("image_size") != image_size:
        return None
    made = source.get("precision")
    if made == resolved or (precision == "auto" and made == "float32"):
        return X.full_embeddings
    return None


def embed_boxes(vm, sources, boxes, *, size, batch_size, num_workers=0, verbose=False,
                cache=None, model_id=None, desc="embedding", originals=None,
                precision="float32", image_keys=None, decoder="cpu"):
    """Embed every box of every image: (n, m, d) float32.

    Each box (in pixels of the image resized to ``size × size``) is cut and resized bilinearly to
    ``size`` in one batched operation per batch, normalised and embedded with ``vm.embed``. A
    full-image box takes the resized image itself. With a ``cache`` (and ``model_id``, the
    model's identity), embeddings already known for (image content, box, precision) are read
    back and only the missing boxes are computed. ``precision`` is a resolved precision,
    ``"float32"`` or ``"bfloat16"`` (see :mod:`sk_a2.precision`).

    With ``originals`` (from :func:`crop_inputs`), boxes are cut from the decoded originals
    instead, in the decoding threads (:mod:`sk_a2.original_crops`), and cached under other keys.

    ``image_keys`` are the images' content keys when known (a :class:`CropSet`'s
    ``image_keys``): they are then not computed again, and the resized pixels an earlier stage
    decoded are taken from the :mod:`~sk_a2.pixel_store`. ``decoder`` is the ``decoder``
    parameter (:mod:`sk_a2.decode`).
    """
    n, m = boxes.shape[:2]
    keys = None
    if cache is not None:
        if image_keys is None:
            image_keys = [image_key(src) for src in sources]  # once per image, not per box
        tag = () if originals is None else ("original",)
        keys = [digest("embedding", model_id, size, precision_key(precision), key,
                       tuple(round(v, 4) for v in b), *tag)
                for key, image_boxes in zip(image_keys, boxes) for b in image_boxes.tolist()]
    if originals is None:
        embed = functools.partial(_embed_missing, image_keys=image_keys, decoder=decoder)
    else:
        embed = _embed_missing_original

    def compute(todo):  # todo: flat (image, box) indices
        missing = np.zeros(n * m, dtype=bool)
        missing[todo] = True
        for rows, j_idx, emb in embed(vm, sources, boxes if originals is None else originals,
                                      missing.reshape(n, m), size, batch_size, num_workers,
                                      verbose, desc, precision):
            yield rows * m + j_idx, {"embedding": emb}

    out = cached_rows(embedding_entry(vm.embed_dim), n * m, compute, cache, keys)["embedding"]
    return out.reshape(n, m, vm.embed_dim)


def embedding_entry(embed_dim) -> EntryLayout:
    """Cache entry of one box's embedding."""
    return EntryLayout(np.float32, embedding=((embed_dim,), np.float32))


def _embed_missing(vm, sources, boxes, todo, size, batch_size, num_workers, verbose, desc,
                   precision, image_keys=None, decoder="cpu"):
    """Yield ``(image rows, box indices, embeddings)`` for the boxes where ``todo`` is set."""
    rows = np.flatnonzero(todo.any(1))
    full = np.array([0, 0, size, size], dtype=np.float64)
    batches = iter_image_batches(
        take(sources, rows), size, batch_size=max(1, batch_size // boxes.shape[1]),
        num_workers=num_workers, device=vm.device, verbose=verbose, desc=desc,
        keys=None if image_keys is None else [image_keys[r] for r in rows], decoder=decoder,
    )
    for start, pixels, _ in batches:
        batch_rows = rows[start:start + len(pixels)]
        b_idx, j_idx = np.nonzero(todo[batch_rows])
        b_boxes = boxes[batch_rows[b_idx], j_idx]
        is_full = np.all(b_boxes == full, axis=1)
        inputs = torch.empty((len(b_idx), *pixels.shape[1:]), device=pixels.device)
        if is_full.any():
            inputs[torch.as_tensor(is_full)] = pixels[torch.as_tensor(b_idx[is_full])]
        if (~is_full).any():
            sel = torch.as_tensor(b_idx[~is_full], device=pixels.device)
            crop_boxes = torch.as_tensor(b_boxes[~is_full], device=pixels.device)[:, None]
            inputs[torch.as_tensor(~is_full)] = crop_resize(pixels[sel], crop_boxes, size)[:, 0]
        emb = _forward_embed(vm, inputs, batch_size, precision).cpu().numpy()
        check_finite(emb, "embeddings", vm, sources, batch_rows[b_idx])
        yield batch_rows[b_idx], j_idx, emb


def crop_inputs(X, size, include_full_image, crop_source):
    """``(boxes, originals)`` for :func:`embed_boxes`: frame boxes, and for
    ``crop_source="original"`` and a :class:`CropSet` the boxes in original pixels, the
    full-image mask and the image sizes (``None`` otherwise: plain images embed the resized full
    image with either source)."""
    boxes = embedding_boxes(X, size, include_full_image)
    if crop_source != "original" or not isinstance(X, CropSet):
        return boxes, None
    return boxes, (*original_boxes(X, include_full_image), X.image_sizes)


def _embed_missing_original(vm, sources, originals, todo, size, batch_size, num_workers,
                            verbose, desc, precision):
    """:func:`_embed_missing` with every box cut from the decoded original, in the workers."""
    boxes, full, image_sizes = originals
    rows = np.flatnonzero(todo.any(1))
    per_batch = max(1, batch_size // boxes.shape[1])
    dataset = OriginalCrops(take(sources, rows), [boxes[r][todo[r]] for r in rows],
                            [full[r][todo[r]] for r in rows], image_sizes[rows], size,
                            indices=rows)
    workers = resolve_num_workers(num_workers, vm.device, len(rows), per_batch)
    for start, crops, counts in iter_original_crop_batches(
        dataset, batch_size=per_batch, num_workers=workers, device=vm.device, verbose=verbose,
        desc=desc,
    ):
        batch_rows = rows[start:start + len(counts)]
        b_idx, j_idx = np.nonzero(todo[batch_rows])
        emb = _forward_embed(vm, crops, batch_size, precision).cpu().numpy()
        check_finite(emb, "embeddings", vm, sources, batch_rows[b_idx])
        yield batch_rows[b_idx], j_idx, emb


@torch.no_grad()
def _forward_embed(vm, inputs, batch_size, precision):
    chunks = []
    with at_precision(vm, precision) as model:
        for i in range(0, len(inputs), batch_size):
            chunks.append(model.embed(model.normalize(inputs[i:i + batch_size])).float())
    return torch.cat(chunks)


#: Images per block written to an ``output_dir`` file by the in-process engine.
OUTPUT_BLOCK = 4096


def _rows(X, start, count):
    """Images ``start:start + count`` of a :class:`CropSet` or of image sources."""
    if isinstance(X, CropSet):
        return X[start:start + count]
    sources = as_sources(X)
    return take(sources, range(start, min(start + count, len(sources))))


class CropEmbedder(
    ModelEstimatorMixin, ImageTransformerTagsMixin, FitTransformOnceMixin, TransformerMixin,
    BaseEstimator
):
    """Embed each crop of a :class:`CropSet` with a ViT and concatenate the embeddings.

    Every box is cut from the image resized to ``image_size × image_size`` and resized bilinearly
    to ``image_size`` (``align_corners=False``, edge pixels clamped to the box), normalised with
    the model's own mean and std and embedded: the CLS token after the model's final norm (for an
    open_clip model, its image embedding). All boxes of a batch are cut and resized in one batched
    operation on the device, at the precision set by ``precision`` (see :mod:`sk_a2.precision`).

    With ``include_full_image``, a :class:`CropSet` whose attention pass already embedded the
    full images with this same model (``AttentionCropper(embed_full_image=True)``, same model,
    weights, image size and precision) gives those embeddings instead of a second forward.

    With ``crop_source="original"``, each box (kept by the ``CropSet`` in original-image pixels)
    is cut from the decoded original instead, rounded to whole pixels and clipped to the image,
    and resized once to ``image_size`` (bilinear, antialiased when shrinking), in the decoding
    workers; see :mod:`sk_a2.original_crops`.

    Given plain images instead of a ``CropSet``, it returns the full-image embedding (the same
    with either ``crop_source``), so the same class serves the full-image baseline.

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
    crop_source : {"resized", "original"}, default="resized"
        Cut crops from the image resized to ``image_size`` (the paper's way) or from the original
        pixels (more detail in each crop when originals are larger than ``image_size``).
    batch_size : int, default=32
        Model inputs (crops) per forward pass.
    num_workers : int or "auto", default="auto"
        Threads decoding and resizing images, up to two batches ahead of the model, started
        once per process and kept; ``"auto"``: ``min(8, CPU cores)`` on CUDA, 1 on CPU; 0
        decodes in the calling thread. With ``crop_source="original"`` the same threads cut
        the crops from the originals.
    decoder : {"auto", "cpu", "cuda"}, default="auto"
        Who decodes JPEG files: PIL on the CPU, or nvJPEG on the CUDA device (resized there to
        PIL's exact bytes); ``"auto"`` is ``"cuda"`` on a CUDA device with torchvision
        installed. See :mod:`sk_a2.decode`. (``crop_source="original"`` decodes on the CPU.)
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Numeric precision of the forwards. ``"auto"``: a bf16 copy of the model on CUDA and on
        a CPU with native bf16 (AVX-512 BF16, AMX), float32 on other CPUs; ``"float32"`` is
        IEEE float32 on CUDA too (no TF32). See :mod:`sk_a2.precision`.
    cache : None, "memory" or path, default=None
        Keep embeddings keyed by (image content, box, model, image size, crop source,
        precision): refits with more crops embed only the new boxes. See :mod:`sk_a2.cache`.
    engine : None or "ray", default=None
        ``"ray"``: the embedding forwards run on a Ray cluster (``docs/ray.md``).
    engine_options : dict, default=None
        Ray engine settings for the embedding forwards (see ``sk_a2.ray_engine``).
    output_dir : None or path, default=None
        Write the output of ``transform`` to a new ``embeddings-<hex>.npy`` file in this
        directory and return it as a :class:`numpy.memmap` (an ndarray, so scikit-learn heads
        take it), filled in blocks of images, so the output need not fit in memory. The file is
        written as ``embeddings-<hex>.npy.partial`` and renamed once complete (removed if
        ``transform`` fails). ``~`` is expanded; the folder is created if missing and must be
        writable (checked in ``fit`` and in ``transform``, before any model work).
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
    weights_digest_ : str or None
        Digest of the ``weights`` file's bytes at ``fit`` time (``None`` without a file). A
        fitted (or unpickled) estimator refuses to run once the file's content differs.

    Examples
    --------
    >>> from sk_a2 import AttentionCropper, CropEmbedder
    >>> from sk_a2.datasets import make_spurious_images
    >>> data = make_spurious_images(n_samples=10, image_size=56, random_state=0)
    >>> crops = AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56,
    ...                          device="cpu").fit_transform(data.images[:4])
    >>> embedder = CropEmbedder("imgfocus_vits14", image_size=56, device="cpu")
    >>> embedder.fit_transform(crops).shape  # one 384-d ViT-S CLS token per crop
    (4, 384)
    >>> CropEmbedder("imgfocus_vits14", image_size=56, include_full_image=True,
    ...              device="cpu").fit_transform(crops).shape
    (4, 768)
    """

    def __init__(
        self,
        model="dinov2_vitg14",
        *,
        weights=None,
        image_size=224,
        include_full_image=False,
        crop_source="resized",
        batch_size=32,
        num_workers="auto",
        device="auto",
        precision="auto",
        cache=None,
        verbose=False,
        engine=None,
        engine_options=None,
        output_dir=None,
        decoder="auto",
    ):
        super().__init__(model, weights=weights, image_size=image_size, batch_size=batch_size,
                         num_workers=num_workers, device=device, precision=precision, cache=cache,
                         verbose=verbose, engine=engine, engine_options=engine_options)
        self.decoder = decoder
        self.include_full_image = include_full_image
        self.crop_source = crop_source
        self.output_dir = output_dir

    _parameter_constraints = {
        **MODEL_CONSTRAINTS,
        **ENGINE_CONSTRAINTS,
        "include_full_image": ["boolean"],
        "crop_source": [StrOptions(CROP_SOURCES)],
        "output_dir": [None, Rule(lambda v: isinstance(v, PATH), "a directory path")],
        "decoder": [StrOptions(DECODERS)],
    }

    def _validate(self):
        """The rules across parameters (each parameter's own rule: ``_parameter_constraints``)."""
        self._check_precision()
        check_engine(self.engine, self.engine_options)
        check_decoder(self.decoder, resolve_device(self.device))
        if self.output_dir is not None:  # fit and each transform, before any model work
            check_output_dir(self.output_dir, "output_dir", otherwise=("None",))

    @_fit_context(prefer_skip_nested_validation=True)
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
        vm = self._fit_model()
        if not isinstance(X, CropSet):
            as_sources(X)
        self.embed_dim_ = vm.embed_dim
        self.n_crops_ = X.n_crops if isinstance(X, CropSet) else 0
        n_inputs = self.n_crops_ + (1 if self.include_full_image or not self.n_crops_ else 0)
        self.n_features_out_ = n_inputs * self.embed_dim_
        return self

    @validated_call
    def transform(self, X):
        """Embed the crops (or the full images).

        Returns
        -------
        ndarray of shape (n, n_features_out_), float32
        """
        self._check_input(X, "transform")
        if self.output_dir is None:
            return self._run(X)["out"]
        n = len(X) if isinstance(X, CropSet) else len(as_sources(X))
        # written as <name>.npy.partial, renamed to <name>.npy once complete, removed on failure
        with open_output(self.output_dir, (n, self.n_features_out_), np.float32) as file:
            self._run(X, file.array)
        return file.result

    def transform_batch(self, X):
        """Embed one batch in this process, whatever ``engine`` and ``output_dir`` say.

        The unit of work of the Ray engine's actors (see ``docs/ray.md``): the same result as
        ``transform`` with ``engine=None`` and ``output_dir=None``. With
        ``crop_source="resized"``, ``X`` may also hold images decoded and resized to
        ``image_size`` ahead of the model (:class:`sk_a2.images.Decoded`).

        Returns
        -------
        ndarray of shape (n, n_features_out_), float32
        """
        self._check_input(X, "transform_batch")
        return self._embed(X)

    def _check_input(self, X, method):
        check_is_fitted(self)
        self._validate()
        k = X.n_crops if isinstance(X, CropSet) else 0
        if k != self.n_crops_:
            what = f"a CropSet with {k} crops per image" if k else "plain images"
            fitted = f"{self.n_crops_} crops per image" if self.n_crops_ else "plain images"
            raise ValueError(f"CropEmbedder was fitted on {fitted}; {method} got {what}")

    def _decode_size(self):
        """Where the Ray engine may decode ahead of the model: at ``image_size`` when crops are
        cut from the resized image; None (the model actors read) for crops from the originals."""
        return self.image_size if self.crop_source == "resized" else None

    def _run(self, X, out=None):
        """The embeddings of ``X``, ``{"out": array}``, on the engine ``engine`` names. With
        ``out``, an output file's memory-mapped array, they are written there: by the Ray
        actors, or here in blocks of :data:`OUTPUT_BLOCK` images."""
        return run(self, X, in_process=lambda X: {"out": self._embed_into(X, out)},
                   outputs=None if out is None else {"out": out},
                   worker_params={"output_dir": None}, decode_size=self._decode_size())

    def _embed_into(self, X, out=None):
        """The in-process embeddings of ``X``: all at once, or written into ``out`` in blocks
        of :data:`OUTPUT_BLOCK` images (then ``out`` is returned)."""
        if out is None:
            return self._embed(X)
        for start in range(0, len(out), OUTPUT_BLOCK):
            out[start:start + OUTPUT_BLOCK] = self._embed(_rows(X, start, OUTPUT_BLOCK))
        return out

    def _embed(self, X):
        """The in-process embeddings of ``X``: (n, n_features_out_) float32."""
        vm = self._load()
        sources = X.images if isinstance(X, CropSet) else as_sources(X)
        resolved = self._precision("embedding")
        shared = None
        if self.include_full_image:
            shared = shared_full_embeddings(X, model_key(self.model, self.weights),
                                            self.image_size, self.precision, resolved)
        boxes, originals = crop_inputs(X, self.image_size,
                                       self.include_full_image and shared is None,
                                       self.crop_source)
        emb = embed_boxes(
            vm, sources, boxes, size=self.image_size, batch_size=self.batch_size,
            num_workers=self.num_workers, verbose=self.verbose, originals=originals,
            precision=resolved, image_keys=X.image_keys if isinstance(X, CropSet) else None,
            decoder=self.decoder, **self._cache_args(),
        )
        if shared is not None:
            emb = np.concatenate([emb, shared[:, None, :]], axis=1)
        return emb.reshape(len(sources), -1)

    def get_feature_names_out(self, input_features=None):
        """``crop{j}_{i}``: dimension ``i`` of crop ``j``'s embedding; ``full_{i}``: the image."""
        check_is_fitted(self)
        d = self.embed_dim_
        blocks = [f"crop{j}" for j in range(self.n_crops_)]
        if self.include_full_image or not self.n_crops_:
            blocks.append("full")
        return np.asarray([f"{b}_{i}" for b in blocks for i in range(d)], dtype=object)
