"""CLS-to-patch attention of a ViT block, and head aggregation.

For block ``layer`` of a loaded :class:`~sk_a2.models.VisionModel` and each head ``h``, the CLS
query's row of ``softmax(q_h · K_hᵀ / √d_k)`` over all tokens is computed from that block's own
``q`` and ``k``. Only the math lives here: the model's backend (:mod:`sk_a2.backends`) turns the
inputs of a block's attention module into its CLS query and keys (fused or separate projections,
q/k norms, rotary position embeddings: whatever its library does). The inputs are captured with
a forward pre-hook on each needed attention module -- this module is the only one that installs
forward hooks -- and the forward stops after the deepest block asked for: one pass gives any set
of blocks (:func:`layer_cls_attention`), and runs to the end only when the model's embedding of
the same input is asked for too. No model code is forked.

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

__all__ = [
    "HEAD_AGGREGATIONS",
    "aggregate_heads",
    "cls_attention",
    "cls_softmax",
    "layer_cls_attention",
    "patch_attention",
    "resolve_layer",
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


def _check_reached(vm, idx, rows):
    missing = sorted(set(idx) - set(rows))
    if missing:  # pragma: no cover - the forward never reached a block
        raise RuntimeError(f"blocks {missing} of {vm.name!r} were not reached by the forward pass")


@torch.no_grad()
def layer_cls_attention(vm, x, layers, *, return_embedding=False):
    """Per-head CLS softmax rows (B, H, N) of every block in ``layers``, from one forward pass.

    A forward pre-hook on each needed attention module computes that block's row from its own
    inputs (the backend gives the block's CLS query and keys, :meth:`VisionModel.cls_query_keys
    <sk_a2.backends.VisionModel.cls_query_keys>`); the forward stops after the deepest one, unless
    the model's embedding of ``x`` is asked for too (it then runs to the end and gives both).

    Parameters
    ----------
    vm : VisionModel
        A loaded model (:func:`sk_a2.models.load_model`).
    x : Tensor of shape (B, 3, S, S)
        Normalised images at the model's input size.
    layers : sequence of int
        Block indices (negative ones count from the end).
    return_embedding : bool, default=False
        Also return ``vm.embed(x)`` from the same forward pass.

    Returns
    -------
    list of Tensor
        In the order of ``layers``: each ``(B, H, N)`` float32, N counting the CLS, register and
        patch tokens.
    Tensor of shape (B, d), float32
        The embedding, only with ``return_embedding=True``.

    Examples
    --------
    >>> import torch
    >>> from sk_a2.localization import layer_cls_attention
    >>> from sk_a2.models import load_model
    >>> vm = load_model("imgfocus_vits14", image_size=56, device="cpu")
    >>> rows = layer_cls_attention(vm, torch.zeros(2, 3, 56, 56), [0, 11])
    >>> [tuple(r.shape) for r in rows]  # 6 heads, CLS + 16 patches
    [(2, 6, 17), (2, 6, 17)]
    >>> bool(torch.allclose(rows[1].sum(-1), torch.ones(2, 6)))
    True
    """
    idx = [resolve_layer(layer, vm.num_layers) for layer in layers]
    last = max(idx)
    rows, handles = {}, []

    def make_hook(i):
        def hook(module, args, kwargs):
            rows[i] = cls_softmax(*vm.cls_query_keys(module, args, kwargs))
            if i == last and not return_embedding:
                raise _StopForward

        return hook

    embedding = None
    try:
        for i in sorted(set(idx)):
            handles.append(
                vm.attn_modules[i].register_forward_pre_hook(make_hook(i), with_kwargs=True)
            )
        if return_embedding:
            embedding = vm.embed(x)
        else:
            vm.forward_tokens(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    _check_reached(vm, idx, rows)
    out = [rows[i] for i in idx]
    return (out, embedding.float()) if return_embedding else out


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
    out = layer_cls_attention(vm, x, [layer], return_embedding=return_embedding)
    return (out[0][0], out[1]) if return_embedding else out[0]


def cls_softmax(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The CLS query's softmax row of every head, (B, H, N) float32, from the CLS query
    (B, H, 1, d), the keys (B, H, N, d) and the logit scale."""
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
