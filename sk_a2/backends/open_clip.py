"""open_clip CLIP models (image tower for crops, text tower for zero-shot classification)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from . import register_backend
from .base import Backend, ModelSpec, square_side
from .hub import WeightsUnavailableError, hf_reachable, host_reachable, unavailable

__all__ = ["OpenClipBackend"]


@register_backend
class OpenClipBackend(Backend):
    name = "open_clip"
    name_hint = "any open_clip model as 'open_clip:<arch>:<pretrained>'"
    has_text_tower = True

    def parse(self, model, rest):
        arch, sep, pretrained = rest.partition(":")
        if sep and arch and ":" not in pretrained:
            return ModelSpec(model, self.name, arch, pretrained or None)
        raise ValueError(
            f"open_clip model names look like 'open_clip:<arch>:<pretrained>' "
            f"(e.g. 'open_clip:ViT-L-14:laion2b_s32b_b82k'), got {model!r}"
        )

    def load(self, spec, weights, image_size, device):
        import open_clip

        if spec.arch not in open_clip.list_models():
            raise ValueError(f"open_clip has no architecture {spec.arch!r} (model={spec.name!r})")
        if weights is not None:
            pretrained = str(weights)
        elif spec.pretrained:
            ensure_open_clip_weights_reachable(spec)
            pretrained = spec.pretrained
        else:
            raise ValueError(
                f"model {spec.name!r} names no pretrained tag: use "
                f"'open_clip:{spec.arch}:<pretrained>' or pass weights=<local file>"
            )
        module = open_clip.create_model(spec.arch, pretrained=pretrained,
                                        force_image_size=image_size)
        return self.finish(module, spec, image_size, device, *self.mean_std(module, spec))

    def patch_size(self, spec):
        import open_clip

        vision = (open_clip.get_model_config(spec.arch) or {}).get("vision_cfg", {})
        return square_side(vision.get("patch_size"))

    def module_patch_size(self, module):
        return square_side(getattr(getattr(module, "visual", None), "patch_size", None))

    def claims(self, module):
        return hasattr(module, "visual") and hasattr(module, "encode_image")

    def native_image_size(self, module):
        return module.visual.image_size

    def set_image_size(self, module, image_size):
        native = self.native_image_size(module)
        raise ValueError(
            f"the open_clip model passed in takes {native}px input; set "
            f"image_size={native} or build the model with force_image_size={image_size}"
        )

    def mean_std(self, module, spec=None):
        cfg = getattr(module.visual, "preprocess_cfg", None) or {}
        if "mean" not in cfg and spec is not None and spec.pretrained:
            import open_clip

            cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        return cfg.get("mean", OPENAI_DATASET_MEAN), cfg.get("std", OPENAI_DATASET_STD)

    def is_vit(self, module):
        visual = getattr(module, "visual", None)
        return visual is not None and hasattr(getattr(visual, "transformer", None), "resblocks")

    def anatomy(self, module):
        visual = module.visual
        return dict(num_prefix_tokens=1, grid_size=visual.grid_size,
                    attn_modules=[blk.attn for blk in visual.transformer.resblocks],
                    embed_dim=visual.output_dim)

    def forward_tokens(self, vm, x):
        return vm.module.visual(x)

    def embed(self, vm, x):
        return vm.module.encode_image(x)

    def image_tower(self, module):
        return module.visual

    def meta_module(self, spec):
        import open_clip

        if spec.arch not in open_clip.list_models():
            return None
        logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted
        try:
            return open_clip.create_model(spec.arch, pretrained=None, device="meta")
        finally:
            logging.disable(logging.NOTSET)

    def cls_query_keys(self, attn, args, kwargs):
        """A ``torch.nn.MultiheadAttention`` block: its packed input projection."""
        if not isinstance(attn, nn.MultiheadAttention):
            return super().cls_query_keys(attn, args, kwargs)
        query = args[0] if args else kwargs["query"]
        key = args[1] if len(args) > 1 else kwargs.get("key", query)
        if not attn.batch_first:
            query, key = query.transpose(0, 1), key.transpose(0, 1)
        d = attn.embed_dim
        w, b = attn.in_proj_weight, attn.in_proj_bias
        bq = None if b is None else b[:d]
        bk = None if b is None else b[d:2 * d]
        q = F.linear(query[:, :1], w[:d], bq)
        k = F.linear(key, w[d:2 * d], bk)
        heads = attn.num_heads
        B, N = k.shape[:2]
        q = q.reshape(B, 1, heads, -1).transpose(1, 2)
        k = k.reshape(B, N, heads, -1).transpose(1, 2)
        return q, k, (d // heads) ** -0.5

    def encodes_text(self, module):
        return all(hasattr(module, a) for a in ("encode_text", "encode_image", "logit_scale"))

    def text_encoder(self, vm):
        tokenizer = self.tokenizer(vm)

        def encode(texts):
            return vm.module.encode_text(tokenizer(texts).to(vm.device))

        return encode

    def similarity_scale(self, vm) -> torch.Tensor:
        return vm.module.logit_scale.exp()

    def tokenizer(self, vm):
        """The text tokenizer of a loaded CLIP model."""
        import open_clip

        if vm.arch is None:
            context_length = getattr(vm.module, "context_length", None)
            return open_clip.get_tokenizer(context_length=context_length)
        try:
            return open_clip.get_tokenizer(vm.arch)
        except OSError as exc:
            raise WeightsUnavailableError(
                f"the tokenizer of model {vm.name!r} ({vm.arch}) is not available offline: {exc}"
            ) from exc


def ensure_open_clip_weights_reachable(spec: ModelSpec) -> None:
    """Return if the pretrained checkpoint is cached or downloadable, else raise."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg:
        raise ValueError(
            f"open_clip has no pretrained tag {spec.pretrained!r} for {spec.arch!r} "
            f"(model {spec.name!r}); see open_clip.list_pretrained()"
        )
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        return hf_reachable(spec.name, "/".join(hf_hub.rstrip("/").split("/")[:2]))
    url = cfg.get("url", "")
    cache = Path(os.path.expanduser("~/.cache/clip"))
    if url and ((cache / os.path.basename(urlparse(url).path)).is_file() or host_reachable(url)):
        return
    raise unavailable(spec.name, url or spec.pretrained, str(cache))
