"""What every estimator running a vision model on image sources shares."""

from __future__ import annotations

import numbers
import os

import numpy as np
import torch

from ._param_validation import IMAGE_SIZE, PATH, Interval, Rule, StrOptions
from .cache import DiskCache, MemoryCache, model_key, resolve_cache
from .device import DEVICE, cpu_fallback, resolve_device
from .images import position
from .models import load_model
from .precision import PRECISIONS, resolve_precision, warn_if_slow
from .weights import check_fingerprint, weights_fingerprint

#: Parameter rules shared by the estimators that run a model (see ``_parameter_constraints``).
MODEL_CONSTRAINTS = {
    "model": [Rule(lambda v: isinstance(v, (str, torch.nn.Module)),
                   "a model name (see sk_a2.list_models()) or a torch.nn.Module")],
    "weights": [None, Rule(lambda v: isinstance(v, PATH), "a path to a state-dict file")],
    "image_size": [IMAGE_SIZE],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "num_workers": [StrOptions(["auto"]), Interval(numbers.Integral, 0, None, closed="left")],
    "device": [DEVICE],
    "precision": [StrOptions(list(PRECISIONS))],
    "cache": [None, StrOptions(["memory"]),
              Rule(lambda v: isinstance(v, (str, os.PathLike, MemoryCache, DiskCache)),
                   "a directory path")],
    "verbose": ["boolean"],
}


def _path_of(source):
    return f" ({os.fspath(source)!r})" if isinstance(source, (str, os.PathLike)) else ""


def check_finite(values, what, vm, sources, rows):
    """Refuse model outputs holding NaN or inf, naming the images and the model.

    Parameters
    ----------
    values : ndarray
        One leading entry per element of ``rows``.
    what : str
        What the values are, e.g. ``"attention maps"``.
    vm : VisionModel
        The model that computed them.
    sources : sequence
        The image sources ``rows`` index (a :class:`~sk_a2.images.Subset` knows their positions
        in ``X``).
    rows : ndarray of int
        Row of ``sources`` of each entry of ``values``.
    """
    finite = np.isfinite(np.asarray(values).reshape(len(values), -1)).all(axis=1)
    if finite.all():
        return
    bad = sorted({(position(sources, r), r) for r in np.asarray(rows)[~finite].tolist()})
    names = ", ".join(f"X[{i}]{_path_of(sources[r])}" for i, r in bad[:8])
    names += f" and {len(bad) - 8} more" if len(bad) > 8 else ""
    raise ValueError(
        f"model {vm.name!r} gave non-finite (NaN or inf) {what} for {names}: its weights hold "
        "non-finite values or its activations overflow; check the weights (or the model passed "
        "in) and the precision used"
    )


class ImageInputMixin:
    """What every estimator taking images shares: input tags (image sources, not a 2-D array)
    and unpickling where the ``device`` it was pickled with is missing."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def __setstate__(self, state):
        if "device" in state:  # pickled where CUDA was available: run on the CPU here
            state = {**state, "device": cpu_fallback(state["device"], type(self).__name__)}
        super().__setstate__(state)


class ModelEstimatorMixin(ImageInputMixin):
    """The one base of the estimators that run one named model: its parameters, stored as given,
    and model loading, precision and cache arguments from them.

    :class:`~sk_a2.AttentionCropper`, :class:`~sk_a2.CropEmbedder` and
    :class:`~sk_a2.ZeroShotCLIPClassifier` list the parameters in their own signatures (which is
    what scikit-learn's ``get_params`` reads) and pass them here, as scikit-learn's own ensembles
    pass shared parameters to their base class; rules are in ``MODEL_CONSTRAINTS`` and
    ``ENGINE_CONSTRAINTS``.
    """

    def __init__(self, model, *, weights, image_size, batch_size, num_workers, device,
                 precision, cache, verbose, engine, engine_options):
        self.model = model
        self.weights = weights
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.precision = precision
        self.cache = cache
        self.verbose = verbose
        self.engine = engine
        self.engine_options = engine_options

    def _load(self):
        """The loaded model (shared per process, see :func:`sk_a2.models.load_model`).

        A fitted estimator refuses a weights file whose content changed since ``fit``.
        """
        check_fingerprint(self.weights, getattr(self, "weights_digest_", None),
                          type(self).__name__)
        return load_model(self.model, weights=self.weights, image_size=self.image_size,
                          device=resolve_device(self.device))

    def _fit_model(self):
        """For ``fit``: check the cache location, load the model and set ``weights_digest_``, the
        fingerprint of the weights file (``None`` without one)."""
        resolve_cache(self.cache)
        self.weights_digest_ = None
        vm = self._load()
        self.weights_digest_ = weights_fingerprint(self.weights)
        return vm

    def _cache_args(self):
        """``cache`` and ``model_id`` keyword arguments for the cached computations."""
        cache = resolve_cache(self.cache)
        return {"cache": cache,
                "model_id": None if cache is None else model_key(self.model, self.weights)}

    def _check_precision(self):
        """Warn when bf16 would be emulated (slow) on this CPU (``precision`` itself is checked
        by the parameter constraints)."""
        warn_if_slow(self.precision, resolve_device(self.device))

    def _precision(self, role="embedding"):
        """The precision (``"float32"`` or ``"bfloat16"``) of this estimator's ``role`` forwards
        (see :func:`sk_a2.precision.resolve_precision`)."""
        return resolve_precision(self.precision, resolve_device(self.device), role)


class ImageTransformerTagsMixin:
    """Tags of an image transformer whose output is float features or boxes, not ``X``'s dtype;
    ``fit`` needs ``y`` when the class sets ``_fit_requires_y = True``."""

    _fit_requires_y = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self._fit_requires_y
        tags.transformer_tags.preserves_dtype = []
        return tags
