"""Hugging Face ``transformers`` ViTs: DINOv2, DINOv2 with registers, DINOv3 (``"hf:<repo>"``).

A model is named ``"hf:<owner>/<name>"`` (``"hf:facebook/dinov2-small"``), by a short name
(``hf_dinov2_vits14`` ...), or given as a saved model folder (``config.json`` beside
``model.safetensors``, as ``save_pretrained`` writes it) through ``weights=``. Weights are read
offline only: from the local Hugging Face cache (``huggingface-cli download <repo>`` on a machine
with network access fills it) or from that folder; nothing is downloaded, and a checkpoint that
is in neither raises :class:`~sk_a2.backends.hub.WeightsUnavailableError`.

The model runs as ``transformers`` defines it (``AutoModel``): the embedding is the CLS token of
``last_hidden_state`` (after the final layernorm, the model's ``pooler_output`` for DINOv2 and
DINOv3), and the position embeddings are interpolated by the model itself for inputs other than
its configured size. A block's CLS query and keys come from its attention module's own ``q_proj``
and ``k_proj`` (or ``query`` / ``key``), with DINOv3's rotary embeddings applied by the library's
own ``apply_rotary_pos_emb``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import torch

from ..input_size import check_input_size
from . import register_backend
from .base import Backend, ModelSpec, per_image, square_side, state_dict_mismatch
from .hub import WeightsUnavailableError, hf_cache_dir

__all__ = ["KNOWN_CONFIGS", "TransformersBackend", "model_type_available"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _dinov2(hidden, layers, heads, registers=False, **extra):
    model_type = "dinov2_with_registers" if registers else "dinov2"
    cfg = dict(model_type=model_type, hidden_size=hidden, num_hidden_layers=layers,
               num_attention_heads=heads, patch_size=14, image_size=518, **extra)
    if registers:
        cfg["num_register_tokens"] = 4
    return cfg


def _dinov3(hidden, layers, heads):
    return dict(model_type="dinov3_vit", hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=4 * hidden, patch_size=16,
                image_size=224, num_register_tokens=4)


_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
          "giant": (1536, 40, 24)}
#: The architecture (``config.json`` fields) of the released checkpoints with short names, so
#: that their patch size and shapes are known without the hub.
KNOWN_CONFIGS = {
    **{f"facebook/dinov2-{size}": _dinov2(*dims, use_swiglu_ffn=size == "giant")
       for size, dims in _SIZES.items()},
    **{f"facebook/dinov2-with-registers-{size}": _dinov2(*dims, True,
                                                         use_swiglu_ffn=size == "giant")
       for size, dims in _SIZES.items()},
    **{f"facebook/dinov3-vit{s}16-pretrain-lvd1689m": _dinov3(*_SIZES[size])
       for s, size in (("s", "small"), ("b", "base"), ("l", "large"))},
}


def model_type_available(model_type: str) -> bool:
    """Whether the installed ``transformers`` has the model family ``model_type`` (looked up
    without importing it)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(Path(loc, "models", model_type).is_dir() for loc in spec.submodule_search_locations)


def _cached_file(repo: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - installed with transformers
        return None
    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _config_dict(spec: ModelSpec, weights=None) -> dict | None:
    """The ``config.json`` fields of ``spec`` (from a weights folder, the local cache or
    :data:`KNOWN_CONFIGS`), or None."""
    if weights is not None and Path(weights).is_dir():
        return _read_json(Path(weights) / "config.json")
    cached = _cached_file(spec.arch, "config.json")
    if cached is not None:
        return _read_json(cached)
    known = KNOWN_CONFIGS.get(spec.arch)
    return None if known is None else dict(known)


def _auto_config(fields: dict, where: str):
    from transformers import AutoConfig

    fields = dict(fields)
    model_type = fields.pop("model_type", None)
    try:
        return AutoConfig.for_model(model_type, **fields)
    except (ValueError, KeyError) as exc:
        raise ValueError(
            f"{where}: transformers {_version()} has no model type {model_type!r} ({exc})"
        ) from None


def _require_transformers(model_name: str) -> None:
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(
            f"model {model_name!r} is a Hugging Face transformers model and needs the "
            'transformers extra: pip install "sk-a2[transformers]"'
        )


def _version() -> str:
    import transformers

    return transformers.__version__


def _layers(module):
    """The transformer blocks of a transformers ViT (None if it has none in a known place)."""
    for owner in (getattr(module, "encoder", None), getattr(module, "model", None), module):
        layers = getattr(owner, "layer", None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return layers
    return None


def _attention(layer):
    """The module of ``layer`` whose input is the block's normed tokens and that holds the q and
    k projections: ``attention`` (``q_proj`` / ``k_proj``) or ``attention.attention`` (``query``
    / ``key``, older releases)."""
    attn = getattr(layer, "attention", None)
    inner = getattr(attn, "attention", None)
    if inner is not None and hasattr(inner, "query") and hasattr(inner, "key"):
        return inner
    if attn is not None and hasattr(attn, "q_proj") and hasattr(attn, "k_proj"):
        return attn
    return None


def _projections(attn):
    """``(q projection, k projection, heads, scale)`` of an attention module of :func:`_attention`."""
    if hasattr(attn, "q_proj"):
        heads = getattr(attn, "num_attention_heads", None) or attn.num_heads
        return attn.q_proj, attn.k_proj, heads, attn.scaling
    heads = attn.num_attention_heads
    return attn.query, attn.key, heads, attn.attention_head_size ** -0.5


@register_backend
class TransformersBackend(Backend):
    name = "hf"
    name_hint = "any transformers DINOv2 / DINOv3 model as 'hf:<owner>/<name>'"
    extra = "transformers"
    weights_folders = True

    def parse(self, model, rest):
        owner, sep, name = rest.partition("/")
        if sep and owner and name and "/" not in name and not any(c.isspace() for c in rest):
            return ModelSpec(model, self.name, rest)
        raise ValueError(
            f"transformers model names look like 'hf:<owner>/<name>' (a Hugging Face "
            f"repository, e.g. 'hf:facebook/dinov2-small'), got {model!r}"
        )

    # -- loading -------------------------------------------------------------------------------
    def load(self, spec, weights, image_size, device):
        _require_transformers(spec.name)
        if weights is not None and Path(weights).is_dir():
            module = self._from_pretrained(str(weights), spec, f"weights folder {str(weights)!r}")
        elif weights is not None:
            module = self._from_state_dict(spec, weights)
        else:
            self._check_cached(spec)
            module = self._from_pretrained(spec.arch, spec, f"checkpoint {spec.arch!r}")
        self.check_vit(module, spec.name)
        check_input_size(image_size, self.module_patch_size(module), spec.name)
        self.set_image_size(module, image_size)
        return self.finish(module, spec, image_size, device, *self.mean_std(module, spec))

    def _check_cached(self, spec):
        if _cached_file(spec.arch, "config.json") and any(
            _cached_file(spec.arch, f) for f in _WEIGHT_FILES
        ):
            return
        raise WeightsUnavailableError(
            f"Pretrained weights for model {spec.name!r} (Hugging Face repository {spec.arch}) "
            f"are not in the local Hugging Face cache ({hf_cache_dir()}), and 'hf:' models are "
            "loaded offline only. Download them on a machine with network access "
            f"(huggingface-cli download {spec.arch}) and copy the cache over, or pass a saved "
            "model folder (config.json and model.safetensors) as weights='path/to/folder'."
        )

    def _from_pretrained(self, source, spec, where):
        from transformers import AutoModel

        try:
            return AutoModel.from_pretrained(source, local_files_only=True)
        except OSError as exc:
            raise WeightsUnavailableError(
                f"{where} of model {spec.name!r} cannot be loaded offline: {exc}"
            ) from exc
        except (ValueError, KeyError) as exc:
            raise ValueError(f"{where} of model {spec.name!r} is not a transformers model "
                             f"that this version ({_version()}) can build: {exc}") from exc

    def _from_state_dict(self, spec, weights):
        """The architecture of ``spec`` (cached config or :data:`KNOWN_CONFIGS`) with the
        tensors of a state-dict file, every key checked."""
        from transformers import AutoModel

        from ..weights import read_weights_file

        fields = _config_dict(spec)
        if fields is None:
            raise WeightsUnavailableError(
                f"the architecture of model {spec.name!r} ({spec.arch}) is unknown offline: its "
                "config.json is not in the local Hugging Face cache. Pass a saved model folder "
                "(config.json and model.safetensors) as weights= instead of a state-dict file."
            )
        module = AutoModel.from_config(_auto_config(fields, f"model {spec.name!r}"))
        state = read_weights_file(weights)
        problems = state_dict_mismatch(state, module.state_dict())
        if problems:
            raise ValueError(f"weights file {str(weights)!r} does not fit model {spec.name!r} "
                             f"({spec.arch}): {problems}")
        module.load_state_dict(state)
        return module

    def patch_size(self, spec):
        fields = _config_dict(spec)
        return None if fields is None else square_side(fields.get("patch_size"))

    def meta_module(self, spec):
        from transformers import AutoModel

        fields = _config_dict(spec)
        if fields is None:
            return None
        with torch.device("meta"):
            return AutoModel.from_config(_auto_config(fields, f"model {spec.name!r}"))

    # -- a module passed in ----------------------------------------------------------------------
    def claims(self, module):
        if "transformers" not in sys.modules:  # never imported: the module is not one of its
            return False
        from transformers import PreTrainedModel

        return isinstance(module, PreTrainedModel)

    def module_name(self, module):
        return getattr(module.config, "name_or_path", "") or type(module).__name__

    def native_image_size(self, module):
        return square_side(module.config.image_size)

    def module_patch_size(self, module):
        return square_side(getattr(module.config, "patch_size", None))

    def set_image_size(self, module, image_size):
        """The model takes any multiple of its patch size as it is (DINOv2 interpolates its
        position embeddings, DINOv3 computes rotary ones); the size is recorded in its config."""
        module.config.image_size = int(image_size)

    def mean_std(self, module, spec=None):
        return IMAGENET_MEAN, IMAGENET_STD

    # -- anatomy and forward passes --------------------------------------------------------------
    def is_vit(self, module):
        layers = _layers(module)
        return (layers is not None and hasattr(getattr(module, "config", None), "patch_size")
                and all(_attention(layer) is not None for layer in layers))

    def anatomy(self, module):
        config = module.config
        side = square_side(config.image_size) // square_side(config.patch_size)
        return dict(num_prefix_tokens=1 + int(getattr(config, "num_register_tokens", 0) or 0),
                    grid_size=(side, side),
                    attn_modules=[_attention(layer) for layer in _layers(module)],
                    embed_dim=config.hidden_size)

    def forward_tokens(self, vm, x):
        return vm.module(pixel_values=x).last_hidden_state

    def embed(self, vm, x):
        return vm.module(pixel_values=x).last_hidden_state[:, 0]

    def cls_query_keys(self, attn, args, kwargs):
        """``q_proj`` / ``k_proj`` (or ``query`` / ``key``); DINOv3's rotary embeddings, passed
        to the attention module as ``position_embeddings``, rotate the patch keys."""
        x = args[0] if args else kwargs["hidden_states"]
        B, N, _ = x.shape
        q_proj, k_proj, heads, scale = _projections(attn)
        q = per_image(q_proj, x[:, :1]).reshape(B, 1, heads, -1).transpose(1, 2)
        k = k_proj(x).reshape(B, N, heads, -1).transpose(1, 2)
        rotary = kwargs.get("position_embeddings")
        if rotary is not None:  # the library's own rotation (prefix tokens stay as they are)
            apply = sys.modules[type(attn).__module__].apply_rotary_pos_emb
            _, k = apply(k, k, *rotary)
        return q, k, float(scale)
