"""The model input side (``image_size``) checked against the model, before any model work.

A ViT cuts its square input into ``patch × patch`` pixel patches, so ``image_size`` must be

* a multiple of the model's patch size (timm and open_clip refuse anything else, deep inside);
* at least one patch (``image_size >= patch``: the attention map needs one cell);
* at most :data:`MAX_GRID` patches per side, ``image_size <= MAX_GRID * patch`` -- 2048 px for a
  patch-16 model, 1792 px for a patch-14 model. The reason: the work of a ViT forward pass grows
  with the square of its token count, that is with the fourth power of ``image_size``; at the
  limit an image is 16,384 tokens, whose attention matrix in one head alone is 1 GiB of float32
  and which takes minutes per image on a CPU. Larger inputs are not a sensible use of A² (the
  paper's models run at 224 px); resize the images instead.

The patch size of a named model is read by its backend without building its weights
(:meth:`sk_a2.backends.base.Backend.patch_size`): from the open_clip model config, or from the
timm model built on PyTorch's ``meta`` device (no memory, no download).
"""

from __future__ import annotations

import numbers

__all__ = ["MAX_GRID", "check_input_size"]

#: Largest number of patches per side of the model input.
MAX_GRID = 128


def check_input_size(image_size, patch_size, model_name) -> int:
    """Check ``image_size`` against a model's patch size and return it as an ``int``.

    Parameters
    ----------
    image_size : int
        Side of the square model input.
    patch_size : int or None
        The model's patch side (``None``: only the type is checked).
    model_name : str
        The model, for the message.

    Raises
    ------
    ValueError
        If ``image_size`` is not an int, not a multiple of the patch size, smaller than one patch
        or larger than :data:`MAX_GRID` patches.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    image_size = int(image_size)
    if patch_size is None:
        return image_size
    where = f"image_size={image_size} for model {model_name!r} (patch size {patch_size})"
    if image_size < patch_size:
        raise ValueError(f"{where}: the input must hold at least one patch, use >= {patch_size}")
    if image_size % patch_size:
        below = image_size // patch_size * patch_size
        raise ValueError(
            f"{where}: must be a multiple of the patch size, e.g. {below} or {below + patch_size}"
        )
    if image_size > MAX_GRID * patch_size:
        raise ValueError(
            f"{where}: at most {MAX_GRID * patch_size} ({MAX_GRID} patches per side); the work "
            "of a ViT grows with the fourth power of image_size, so larger inputs would run for "
            "minutes to hours per image and exhaust memory (see sk_a2.input_size)"
        )
    return image_size
