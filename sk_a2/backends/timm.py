"""timm vision transformers (DINO, DINOv2, DINOv3, MAE, iBOT, any ``"timm:<name>"``).

iBOT's checkpoints are on no model hub: a spec with ``pretrained="ibot"`` builds the timm ViT of
its ``arch`` and loads the *teacher backbone* of a released iBOT file given as ``weights=`` (see
:func:`ibot_backbone`), normalising inputs with the ImageNet mean and std that iBOT trained with.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from . import register_backend
from .base import Backend, ModelSpec, per_image, square_side, state_dict_mismatch
from .hub import WeightsUnavailableError, hf_reachable, host_reachable, unavailable

__all__ = ["IBOT", "IBOT_BACKBONES", "TimmBackend", "ibot_backbone"]

#: ``ModelSpec.pretrained`` of the iBOT short names.
IBOT = "ibot"
IBOT_REPO = "https://github.com/bytedance/ibot#pre-trained-models"
_IBOT_RELEASE = "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot"
#: The released ImageNet-1k teacher backbones (block-wise masking), by timm architecture.
IBOT_BACKBONES = {
    "vit_small_patch16_224": ("ViT-S/16", f"{_IBOT_RELEASE}/vits_16/checkpoint_teacher.pth"),
    "vit_base_patch16_224": ("ViT-B/16", f"{_IBOT_RELEASE}/vitb_16/checkpoint_teacher.pth"),
    "vit_large_patch16_224": ("ViT-L/16", f"{_IBOT_RELEASE}/vitl_16/checkpoint_teacher.pth"),
}


@functools.lru_cache(maxsize=None)
def _arch_patch_size(backend, name):
    """Patch size of timm architecture ``name``, from a model built once on the meta device.

    Building it costs ~0.2 s (timm initialises every weight, even on the meta device), and every
    ``load_model`` checks the image size against it, so the answer is kept per process.
    """
    import timm

    if not timm.is_model(name):
        return None
    try:  # on the meta device: no memory, no weights
        with torch.device("meta"):
            module = timm.create_model(name, pretrained=False, num_classes=0)
    except Exception:  # not buildable this way: the real load reports the problem
        return None
    return backend.module_patch_size(module)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@register_backend
class TimmBackend(Backend):
    name = "timm"
    name_hint = "any timm model as 'timm:<name>'"

    def parse(self, model, rest):
        return ModelSpec(model, self.name, rest) if rest else None

    def resolve_weights(self, spec, weights, image_size):
        if spec.pretrained == IBOT and weights is None:
            label, url = IBOT_BACKBONES.get(spec.arch, (spec.arch, None))
            where = f"download its teacher backbone, {url} (" if url else "download it ("
            raise WeightsUnavailableError(
                f"model {spec.name!r} (iBOT {label}) is on no model hub, so it needs a local "
                f"checkpoint: {where}listed at {IBOT_REPO}) and pass it as "
                f"weights='path/to/checkpoint_teacher.pth' (the full checkpoint.pth works too)"
            )
        return weights

    def load(self, spec, weights, image_size, device):
        if spec.pretrained == IBOT:
            module = create_ibot(spec, weights, image_size)
        else:
            module = create_timm(spec, weights, image_size)
        return self.finish(module, spec, image_size, device, *self.mean_std(module))

    def patch_size(self, spec):
        return _arch_patch_size(self, spec.arch.split(".")[0])

    def module_patch_size(self, module):
        return square_side(getattr(getattr(module, "patch_embed", None), "patch_size", None))

    def claims(self, module):
        return hasattr(module, "blocks") and hasattr(module, "patch_embed")

    def module_name(self, module):
        return getattr(module, "default_cfg", {}).get("architecture", type(module).__name__)

    def native_image_size(self, module):
        return module.patch_embed.img_size

    def set_image_size(self, module, image_size):
        if not hasattr(module, "set_input_size"):
            super().set_image_size(module, image_size)
        module.set_input_size(img_size=image_size)

    def mean_std(self, module, spec=None):
        cfg = getattr(module, "pretrained_cfg", None) or {}
        return cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)

    def is_vit(self, module):
        return (hasattr(module, "blocks") and hasattr(module, "patch_embed")
                and all(hasattr(b, "attn") for b in module.blocks))

    def anatomy(self, module):
        return dict(num_prefix_tokens=getattr(module, "num_prefix_tokens", 1),
                    grid_size=module.patch_embed.grid_size,
                    attn_modules=[blk.attn for blk in module.blocks],
                    embed_dim=module.num_features)

    def forward_tokens(self, vm, x):
        return vm.module.forward_features(x)

    def embed(self, vm, x):
        tokens = vm.module.forward_features(x)
        if vm.num_prefix_tokens == 0:
            raise ValueError(f"model {vm.name!r} has no CLS token to embed with")
        cls = tokens[:, 0]
        fc_norm = getattr(vm.module, "fc_norm", None)
        if isinstance(getattr(vm.module, "norm", None), nn.Identity) and fc_norm is not None:
            cls = fc_norm(cls)
        return cls

    def meta_module(self, spec):
        import timm

        if not timm.is_model(spec.arch.split(".")[0]):
            return None
        with torch.device("meta"):
            return timm.create_model(spec.arch, pretrained=False)

    def cls_query_keys(self, attn, args, kwargs):
        """timm's attention: a fused ``qkv`` (with separate q/k/v biases where the block has
        them) or ``q_proj`` / ``k_proj``, q/k norms, and DINOv3's rotary embeddings (``rope``)."""
        x = args[0] if args else kwargs["x"]
        B, N, _ = x.shape
        rope = kwargs.get("rope")
        # only the CLS query is needed (all queries when rotary embeddings rotate token 0 as well)
        xq = x if rope is not None and attn.num_prefix_tokens == 0 else x[:, :1]
        q, k = _project_qk(attn, x, xq)
        q = q.reshape(B, xq.shape[1], attn.num_heads, -1).transpose(1, 2)
        k = k.reshape(B, N, attn.num_heads, -1).transpose(1, 2)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        if q_norm is not None:
            q = q_norm(q)
        if k_norm is not None:
            k = k_norm(k)
        if rope is not None:
            from timm.layers import apply_rot_embed_cat

            npt = attn.num_prefix_tokens
            half = getattr(attn, "rotate_half", False)
            if npt == 0:
                q = apply_rot_embed_cat(q, rope, half=half)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2)
        scale = getattr(attn, "scale", None) or q.shape[-1] ** -0.5
        return q[:, :, :1], k, float(scale)


def _project_qk(attn, x, xq):
    """Queries of the rows ``xq`` and keys of all tokens ``x`` (B, ·, H·d), before the heads."""
    qkv_linear = getattr(attn, "qkv", None)
    if qkv_linear is not None:
        weight, bias = qkv_linear.weight, qkv_linear.bias
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is not None:
            extra = torch.cat((q_bias, attn.k_bias, attn.v_bias))
            separate = getattr(attn, "qkv_bias_separate", False) and bias is not None
            bias = bias + extra if separate else extra
        d = weight.shape[0] // 3
        q = per_image(lambda t: F.linear(t, weight[:d], None if bias is None else bias[:d]), xq)
        k = F.linear(x, weight[d:2 * d], None if bias is None else bias[d:2 * d])
        return q, k
    if getattr(attn, "q_proj", None) is not None and getattr(attn, "k_proj", None) is not None:
        return per_image(attn.q_proj, xq), attn.k_proj(x)
    raise TypeError(
        f"attention module {type(attn).__name__} is not supported: expected a timm attention "
        "with qkv or q_proj/k_proj, or torch.nn.MultiheadAttention"
    )


def create_timm(spec: ModelSpec, weights, image_size):
    """``timm.create_model`` of ``spec.arch`` with its checkpoint (or ``weights``), checked."""
    import timm

    arch = spec.arch
    if not timm.is_model(arch.split(".")[0]):
        raise ValueError(f"timm has no model {arch!r} (model={spec.name!r})")
    kwargs = dict(pretrained=True, num_classes=0, img_size=image_size)
    if weights is not None:
        kwargs["pretrained_cfg_overlay"] = dict(file=str(weights))
    else:
        ensure_timm_weights_reachable(spec)
    with CaptureLogs("timm.models._builder") as records:
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


def ibot_backbone(checkpoint, where: str) -> dict:
    """The teacher backbone of an iBOT checkpoint, with timm's key names.

    iBOT's ViTs have timm's (DINO's) parameter names (``cls_token``, ``pos_embed``,
    ``patch_embed.proj.*``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
    ``norm.*``). Released files hold them in two layouts: the backbone files
    (``checkpoint_teacher.pth``) as ``{"state_dict": backbone}``, and the full training checkpoint
    (``checkpoint.pth``, saved by ``main_ibot.py``) as ``{"teacher": ..., "student": ...}``
    around a ``MultiCropWrapper`` (``backbone.*`` and the projection head ``head.*``; the
    student under DDP's ``module.`` prefix). The teacher is taken, ``module.`` and ``backbone.``
    are stripped, and the projection head and the student's mask token ``masked_embed`` dropped.
    """
    state = checkpoint
    if isinstance(state, Mapping) and isinstance(state.get("teacher"), Mapping):
        state = state["teacher"]
    elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or isinstance(state.get("student"), Mapping):
        raise ValueError(
            f"{where} holds no iBOT teacher backbone (no 'teacher' entry nor 'state_dict'); "
            "pass the released checkpoint_teacher.pth or the full checkpoint.pth"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        state = {k.removeprefix("backbone."): v for k, v in state.items()
                 if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith("head.") and k != "masked_embed"}


def _uninitialised_timm(arch, **kwargs):
    """``timm.create_model(arch)`` without its random initialisation where timm allows (built on
    the meta device, then allocated), for a model whose every tensor is loaded next."""
    import timm

    try:
        with torch.device("meta"):
            module = timm.create_model(arch, pretrained=False, **kwargs)
    except (RuntimeError, NotImplementedError):  # a model that reads tensor values as it is built
        return timm.create_model(arch, pretrained=False, **kwargs)
    if {n for n, _ in module.named_buffers()} <= set(module.state_dict()):
        return module.to_empty(device="cpu")
    return timm.create_model(arch, pretrained=False, **kwargs)  # a buffer no checkpoint holds


def create_ibot(spec: ModelSpec, weights, image_size):
    """The timm ViT ``spec.arch`` with the iBOT teacher backbone of the file ``weights``."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from ..weights import read_weights_file

    where = f"weights file {str(weights)!r}"
    state = ibot_backbone(read_weights_file(weights), where)
    module = _uninitialised_timm(spec.arch, num_classes=0, img_size=image_size,
                                 pretrained_cfg_overlay=dict(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    state = checkpoint_filter_fn(state, module)  # resamples pos_embed to the model's grid
    own = module.state_dict()
    label = IBOT_BACKBONES.get(spec.arch, (spec.arch,))[0]
    problems = state_dict_mismatch(state, own)
    if problems:
        raise ValueError(
            f"{where} does not fit model {spec.name!r} (iBOT {label}, timm {spec.arch}): "
            f"{problems}. Pass the iBOT checkpoint of that architecture."
        )
    module.load_state_dict(state)
    return module


class CaptureLogs:
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


def ensure_timm_weights_reachable(spec: ModelSpec) -> None:
    """Return if the pretrained checkpoint is cached or downloadable, else raise."""
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
        return hf_reachable(spec.name, hf_hub_id)
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if cached.is_file() or host_reachable(url):
            return
        raise unavailable(spec.name, url, str(cached.parent))
    raise WeightsUnavailableError(
        f"timm has no download location for {spec.arch!r} (model {spec.name!r}); "
        "pass weights='path/to/state_dict.safetensors'"
    )
