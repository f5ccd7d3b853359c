"""CLS-to-patch attention of a ViT block, and head aggregation.

For block ``layer`` of a loaded :class:`~sk_a2.models.VisionModel` and each head ``h``, the CLS
query's row of ``softmax(q_h · K_hᵀ / √d_k)`` over all tokens is computed from that block's own
``q`` and ``k``: the attention module's input (the block's normed tokens), its qkv projection
(fused or separate, with its biases), its q/k norms and, where the block has one, its rotary
position embedding (DINOv3). The input is captured with a forward pre-hook on the block's attention
module, and the forward stops there: the model runs only as far as the block it needs (unless the
model's embedding of the same input is asked for too: then the pass runs to the end and gives
both). No model code is forked; timm ViTs (DINO, DINOv2 with or without registers, DINOv3, MAE)
and open_clip ViTs are supported.

The CLS and register columns are dropped, the remaining patch attention is aggregated over heads
and renormalised to sum to 1 over patches.

Head aggregators (``a_h`` the per-head patch attention, ``H`` heads, ``P`` patches,
``E_h = -Σ_p a_h[p] log a_h[p] / log P`` the normalised entropy of head ``h`` after renormalising
``a_h`` over patches):

``"mean"``
    ``a = (1/H) Σ_h a_h`` (the paper's default).
``"max"``
    ``a[p] = max_h a_h[p]``, then renormalised.
``"entropy_weighted"``
    ``a = Σ_h w_h a_h`` with ``w_h ∝ 1 / E_h``: concentrated heads weigh more.
``"lowest_entropy_mean"``
    the mean of the ``k = ceil(H / 4)`` heads with the lowest ``E_h`` (6 of ViT-G's 24 heads, as
    in the paper's Appendix J).
``"topk_mean"``
    per patch, the mean of its ``k = ceil(H / 4)`` largest head values,
    ``a[p] = (1/k) Σ_{h ∈ top_k(p)} a_h[p]``, then renormalised: between ``"max"`` (``k = 1``)
    and ``"mean"`` (``k = H``), and a patch counts only where several heads attend to it.
``"head_pruned"``
    the ``m = min(ceil(H / 4), H - 1)`` heads with the highest ``E_h`` (attention closest to
    uniform, ``E_h = 1``) are dropped, per image, and the other ``H - m`` heads averaged (18 of
    ViT-G's 24 heads, 4 of ViT-S's 6); of heads with equal ``E_h``, the higher index is dropped
    first.

The paper's Appendix B names top-k and head-pruned aggregators without defining them; the two
above take the paper's concentration measure (normalised entropy) and its ``k = H / 4`` of
Appendix J.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "HEAD_AGGREGATIONS",
    "aggregate_heads",
    "cls_attention",
    "cls_query_keys",
    "cls_softmax",
    "patch_attention",
]

HEAD_AGGREGATIONS = (
    "mean", "max", "entropy_weighted", "lowest_entropy_mean", "topk_mean", "head_pruned"
)


class _StopForward(Exception):
    pass


def resolve_layer(layer, num_layers: int) -> int:
    """Index of the block ``layer`` (negative counts from the end)."""
    if isinstance(layer, bool) or (not isinstance(layer, int) and not hasattr(layer, "__index__")):
        raise ValueError(f"layer must be an int, got {layer!r}")
    layer = int(layer)
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer={layer} is out of range for a model with {num_layers} blocks")
    return layer % num_layers


def _capture_attn_input(vm, x, layer, run_to_end=False):
    """The attention module of block ``layer``, its call arguments and, with ``run_to_end``, the
    model's embedding of ``x`` (the forward then runs to the end instead of stopping there)."""
    attn = vm.attn_modules[layer]
    captured = {}

    def hook(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        if not run_to_end:
            raise _StopForward

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    embedding = None
    try:
        if run_to_end:
            embedding = vm.embed(x)
        else:
            vm.forward_tokens(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "args" not in captured:  # pragma: no cover - the forward never reached the block
        raise RuntimeError(f"block {layer} of {vm.name!r} was not reached by the forward pass")
    return attn, captured["args"], captured["kwargs"], embedding


def _per_image(project, xq):
    """``project(xq)``; a lone CLS row is projected image by image, so that its value does not
    depend on the batch size (a matrix product over few rows may take another kernel)."""
    if xq.shape[1] != 1:
        return project(xq)
    return torch.cat([project(xq[i:i + 1].clone()) for i in range(xq.shape[0])])


def cls_query_keys(attn: nn.Module, args, kwargs):
    """The CLS query and all keys, as (B, H, 1, d) and (B, H, N, d), and the logit scale.

    ``args`` and ``kwargs`` are the inputs of the attention module ``attn`` (as a forward
    pre-hook registered ``with_kwargs=True`` receives them).
    """
    if isinstance(attn, nn.MultiheadAttention):
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

    x = args[0] if args else kwargs["x"]
    B, N, _ = x.shape
    heads = attn.num_heads
    rope = kwargs.get("rope")
    # only the CLS query is needed (all queries when rotary embeddings rotate token 0 as well)
    xq = x if rope is not None and attn.num_prefix_tokens == 0 else x[:, :1]
    qkv_linear = getattr(attn, "qkv", None)
    if qkv_linear is not None:
        weight, bias = qkv_linear.weight, qkv_linear.bias
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is not None:
            extra = torch.cat((q_bias, attn.k_bias, attn.v_bias))
            separate = getattr(attn, "qkv_bias_separate", False) and bias is not None
            bias = bias + extra if separate else extra
        d = weight.shape[0] // 3
        q = _per_image(lambda t: F.linear(t, weight[:d], None if bias is None else bias[:d]), xq)
        k = F.linear(x, weight[d:2 * d], None if bias is None else bias[d:2 * d])
    elif getattr(attn, "q_proj", None) is not None and getattr(attn, "k_proj", None) is not None:
        q, k = _per_image(attn.q_proj, xq), attn.k_proj(x)
    else:
        raise TypeError(
            f"attention module {type(attn).__name__} is not supported: expected a timm attention "
            "with qkv or q_proj/k_proj, or torch.nn.MultiheadAttention"
        )
    q = q.reshape(B, xq.shape[1], heads, -1).transpose(1, 2)
    k = k.reshape(B, N, heads, -1).transpose(1, 2)
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


@torch.no_grad()
def cls_attention(vm, x: torch.Tensor, layer: int = -1, *, return_embedding=False):
    """Per-head CLS attention over all tokens at block ``layer``.

    Parameters
    ----------
    vm : sk_a2.models.VisionModel
    x : Tensor of shape (B, 3, S, S)
        Normalised model input.
    layer : int, default=-1
    return_embedding : bool, default=False
        Also return ``vm.embed(x)`` from the same forward pass, which then runs to the end
        instead of stopping at block ``layer``.

    Returns
    -------
    Tensor of shape (B, H, N), float32
        Row ``softmax(q_cls · Kᵀ · scale)`` of every head, over all N tokens (prefix tokens first).
    Tensor of shape (B, d), float32
        The embedding, only with ``return_embedding=True``.
    """
    layer = resolve_layer(layer, vm.num_layers)
    attn, args, kwargs, embedding = _capture_attn_input(vm, x, layer, return_embedding)
    rows = cls_softmax(attn, args, kwargs)
    return (rows, embedding.float()) if return_embedding else rows


def cls_softmax(attn: nn.Module, args, kwargs) -> torch.Tensor:
    """The CLS query's softmax row of every head, (B, H, N) float32, from the module's inputs."""
    q, k, scale = cls_query_keys(attn, args, kwargs)
    # an elementwise product and a reduction over d (not a batched matmul): each image's row is
    # then computed the same way whatever else is in the batch, so cached and fresh maps agree
    logits = (q.float() * k.float()).sum(-1) * scale
    return logits.softmax(dim=-1)


def patch_attention(vm, x: torch.Tensor, layer: int = -1, *, return_embedding=False):
    """Per-head CLS-to-patch attention, prefix (CLS, register) columns dropped: (B, H, P).

    With ``return_embedding``, also ``vm.embed(x)`` from the same forward pass (B, d).
    """
    out = cls_attention(vm, x, layer, return_embedding=return_embedding)
    if return_embedding:
        return out[0][..., vm.num_prefix_tokens:], out[1]
    return out[..., vm.num_prefix_tokens:]


def _normalized_entropy(a: torch.Tensor) -> torch.Tensor:
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    ent = -(p * p.clamp_min(1e-30).log()).sum(-1)
    return ent / math.log(max(a.shape[-1], 2))


def aggregate_heads(attn: torch.Tensor, method: str = "mean") -> torch.Tensor:
    """Aggregate per-head patch attention (B, H, P) into one map per image, summing to 1.

    See the module docstring for the definition of each method.
    """
    if method == "mean":
        out = attn.mean(1)
    elif method == "max":
        out = attn.amax(1)
    elif method == "entropy_weighted":
        w = 1.0 / _normalized_entropy(attn).clamp_min(1e-6)
        out = (attn * (w / w.sum(1, keepdim=True)).unsqueeze(-1)).sum(1)
    elif method == "lowest_entropy_mean":
        heads = attn.shape[1]
        k = max(1, math.ceil(heads / 4))
        idx = _normalized_entropy(attn).topk(k, dim=1, largest=False).indices
        out = attn.gather(1, idx.unsqueeze(-1).expand(-1, -1, attn.shape[-1])).mean(1)
    elif method == "topk_mean":
        k = max(1, math.ceil(attn.shape[1] / 4))
        out = attn.topk(k, dim=1).values.mean(1)
    elif method == "head_pruned":
        heads = attn.shape[1]
        kept = heads - min(math.ceil(heads / 4), heads - 1)
        order = torch.sort(_normalized_entropy(attn), dim=1, stable=True).indices
        idx = order[:, :kept]
        out = attn.gather(1, idx.unsqueeze(-1).expand(-1, -1, attn.shape[-1])).mean(1)
    else:
        raise ValueError(
            f"head_aggregation must be one of {', '.join(map(repr, HEAD_AGGREGATIONS))}, "
            f"got {method!r}"
        )
    return out / out.sum(-1, keepdim=True).clamp_min(1e-30)
