"""What every estimator running a vision model on image sources shares."""

from __future__ import annotations

import numbers

from .cache import model_key, resolve_cache
from .models import load_model, resolve_device
from .precision import check_precision, resolve_precision, warn_if_slow


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def check_workers(value):
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"num_workers must be 'auto' or an int >= 0, got {value!r}")
    return int(value)


class ImageModelMixin:
    """Model loading, precision, cache arguments and input tags from the ``model``, ``weights``,
    ``image_size``, ``device``, ``precision`` and ``cache`` parameters."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def _load(self):
        """The loaded model (shared per process, see :func:`sk_a2.models.load_model`)."""
        return load_model(self.model, weights=self.weights, image_size=self.image_size,
                          device=resolve_device(self.device))

    def _cache_args(self):
        """``cache`` and ``model_id`` keyword arguments for the cached computations."""
        cache = resolve_cache(self.cache)
        return {"cache": cache,
                "model_id": None if cache is None else model_key(self.model, self.weights)}

    def _check_precision(self):
        """Validate ``precision``; warn when bf16 would be emulated (slow) on this CPU."""
        check_precision(self.precision)
        warn_if_slow(self.precision, resolve_device(self.device))

    def _precision(self, role="embedding"):
        """The precision (``"float32"`` or ``"bfloat16"``) of this estimator's ``role`` forwards
        (see :func:`sk_a2.precision.resolve_precision`)."""
        return resolve_precision(self.precision, resolve_device(self.device), role)
