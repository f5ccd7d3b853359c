"""What every estimator running a vision model on image sources shares."""

from __future__ import annotations

import numbers
import os

import torch

from ._param_validation import IMAGE_SIZE, PATH, Boolean, Interval, StrOptions, Text
from .cache import DiskCache, MemoryCache, model_key, resolve_cache
from .device import DEVICE, cpu_fallback, resolve_device
from .models import load_model

#: Parameter rules shared by the estimators that run a model (see ``_parameter_constraints``).
MODEL_CONSTRAINTS = {
    "model": [Text(lambda v: isinstance(v, (str, torch.nn.Module)),
                   "a model name (see sk_a2.list_models()) or a torch.nn.Module")],
    "weights": [None, Text(lambda v: isinstance(v, PATH), "a path to a state-dict file")],
    "image_size": [IMAGE_SIZE],
    "batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
    "num_workers": [StrOptions(["auto"]), Interval(numbers.Integral, 0, None, closed="left")],
    "device": [DEVICE],
    "cache": [None, StrOptions(["memory"]),
              Text(lambda v: isinstance(v, (str, os.PathLike, MemoryCache, DiskCache)),
                   "a directory path")],
    "verbose": [Boolean()],
}


def check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


class ImageModelMixin:
    """Model loading, cache arguments and input tags from the ``model``, ``weights``,
    ``image_size``, ``device`` and ``cache`` parameters."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def __setstate__(self, state):
        if "device" in state:  # pickled where CUDA was available: run on the CPU here
            state = {**state, "device": cpu_fallback(state["device"], type(self).__name__)}
        super().__setstate__(state)

    def _load(self):
        """The loaded model (shared per process, see :func:`sk_a2.models.load_model`)."""
        return load_model(self.model, weights=self.weights, image_size=self.image_size,
                          device=resolve_device(self.device))

    def _cache_args(self):
        """``cache`` and ``model_id`` keyword arguments for the cached computations."""
        cache = resolve_cache(self.cache)
        return {"cache": cache,
                "model_id": None if cache is None else model_key(self.model, self.weights)}
