"""Attention maps, in one place: the CLS-attention forward, head aggregation and cached maps.

For block ``layer`` of a loaded :class:`~sk_a2.models.VisionModel` and each head ``h``, the CLS
query's row of ``softmax(q_h · K_hᵀ / √d_k)`` over all tokens is computed from that block's own
``q`` and ``k``. No library detail lives here: the model's backend (:mod:`sk_a2.backends`) turns the
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

**Maps, cached.** :func:`layer_maps` is the one path from images to aggregated maps: it batches
and decodes the images, runs the forward at the requested precision, drops the CLS and register
columns, aggregates the heads, computes the token shares and reads and writes the cache entries of
maps (:func:`attention_map_key`, :func:`map_entry`) through :func:`~sk_a2.cache.cached_rows`
(and :func:`~sk_a2.cache.store_rows` for the blocks a forward passes beside those asked).
:class:`~sk_a2.AttentionCropper`, :mod:`sk_a2.localization`, :class:`~sk_a2.AttentionAdapter` and
the protocol all call it, so maps computed for one are cache hits for the others. With the
memory cache, a forward that runs to block ``L`` stores the maps of blocks ``0 … L`` too (one
pass, and the rows of the earlier blocks cost little next to the blocks themselves; the store is
bounded and evicts the oldest entries): a search over ``layer`` runs the model once per image
when its deepest layer comes first. A disk cache stores only the blocks asked for, so that its
size does not grow with the model's depth (12 maps per image for ViT-S, 40 for ViT-g); ask for
several at once with :meth:`~sk_a2.AttentionCropper.layer_maps` (the protocol does).

**Layer numbering.** Parameters take a block index either way (``-1`` and ``num_layers - 1``
are the last block); results print it counted from the end (:func:`layer_label`: ``-1`` the
last block), the form the estimators' default ``layer=-1`` takes.

The paper's Appendix B names top-k and head-pruned aggregators without defining them; the two
above take the paper's concentration measure (normalised entropy) and its ``k = H / 4`` of
Appendix J.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._base import check_finite
from ._data import iter_image_batches
from .cache import EntryLayout, MemoryCache, cached_rows, digest, image_key, store_rows
from .images import take
from .precision import at_precision, precision_key

__all__ = [
    "HEAD_AGGREGATIONS",
    "MapSource",
    "aggregate_heads",
    "attention_map_key",
    "cls_attention",
    "cls_softmax",
    "embedding_entry",
    "layer_cls_attention",
    "layer_label",
    "layer_maps",
    "map_entry",
    "map_keys",
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


def layer_label(layer, num_layers: int) -> int:
    """The printed index of block ``layer``: counted from the end, ``-1`` the last block.

    >>> layer_label(11, 12), layer_label(-2, 12)
    (-1, -2)
    """
    return resolve_layer(layer, num_layers) - num_layers


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


# --------------------------------------------------------------------------------------------
# Maps of images, batched, at a precision, cached
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapSource:
    """Everything that determines a set of attention maps, and how to compute them.

    Parameters
    ----------
    vm : VisionModel
        The loaded attention model.
    image_size : int
        Side of the square model input.
    head_aggregation : str, default="mean"
        One of :data:`HEAD_AGGREGATIONS`.
    precision : {"float32", "bfloat16"}, default="float32"
        Resolved precision of the forward (:func:`sk_a2.precision.resolve_precision`).
    cache : cache object or None, default=None
        As returned by :func:`sk_a2.cache.resolve_cache`.
    model_id : str or None, default=None
        The cache identity of the model and its weights (:func:`sk_a2.cache.model_key`); needed
        with a cache.
    batch_size, num_workers, verbose, decoder
        Images per forward, decoding threads, a progress bar and the ``decoder`` parameter, as
        in :func:`sk_a2._data.iter_image_batches`.
    """

    vm: object
    image_size: int
    head_aggregation: str = "mean"
    precision: str = "float32"
    cache: object = None
    model_id: str | None = None
    batch_size: int = 32
    num_workers: object = 0
    verbose: bool = False
    decoder: str = "cpu"


def attention_map_key(model_id, image_size, layer, head_aggregation, precision,
                      image_id) -> str:
    """Cache key of one image's map at block ``layer`` (an index from 0)."""
    return digest("attention-map", model_id, image_size, layer, head_aggregation,
                  precision_key(precision), image_id)


def _embedding_key(model_id, image_size, precision, image_id) -> str:
    return digest("full-image-embedding", model_id, image_size, precision_key(precision),
                  image_id)


def map_entry(grid_size) -> EntryLayout:
    """Cache entry of one map: original (height, width), the patch map and the CLS, register
    and patch token shares of the block's head-mean CLS row."""
    return EntryLayout(np.float64, image_size=((2,), np.int64),
                       map=(tuple(grid_size), np.float32), shares=((3,), np.float64))


def embedding_entry(embed_dim) -> EntryLayout:
    """Cache entry of one full image's embedding from the attention forward."""
    return EntryLayout(np.float32, image_size=((2,), np.int64),
                       embedding=((embed_dim,), np.float32))


def map_keys(source: MapSource, sources, blocks, image_keys=None) -> dict:
    """Per block (an index from 0): the cache keys of the maps of ``sources``; ``image_keys``:
    their content keys (:func:`sk_a2.cache.image_key`), computed here when not given."""
    ids = [image_key(src) for src in sources] if image_keys is None else image_keys
    return {b: [attention_map_key(source.model_id, source.image_size, b,
                                  source.head_aggregation, source.precision, i) for i in ids]
            for b in blocks}


def _token_shares(rows, num_prefix):
    """CLS, register and patch shares (B, 3) of per-head softmax rows (B, H, N)."""
    mean = rows.float().mean(1).double()
    cls = mean[:, 0]
    reg = mean[:, 1:num_prefix].sum(1)
    patch = mean[:, num_prefix:].sum(1)
    return torch.stack([cls, reg, patch], 1).cpu().numpy()


def _forward(source, sources, todo, blocks, embed, checked, image_keys):
    """Yield ``(rows, {block: map values}, embedding or None)`` per batch of ``todo``; maps of
    the ``checked`` blocks holding NaN or inf are an error. ``image_keys`` (content keys of
    ``sources``) let decoded pixels be shared through the pixel store."""
    vm, npt = source.vm, source.vm.num_prefix_tokens
    batches = iter_image_batches(
        take(sources, todo), source.image_size, batch_size=source.batch_size,
        num_workers=source.num_workers, device=vm.device, verbose=source.verbose,
        desc="attention", keys=[image_keys[i] for i in todo.tolist()], decoder=source.decoder,
    )
    for start, pixels, hw in batches:
        rows = todo[start:start + len(hw)]
        with at_precision(vm, source.precision) as model:
            out = layer_cls_attention(model, model.normalize(pixels), blocks,
                                      return_embedding=embed)
        per_block, emb = out if embed else (out, None)
        values = {}
        for b, a in zip(blocks, per_block):
            m = aggregate_heads(a[..., npt:].float(), source.head_aggregation)
            m = m.reshape(-1, *vm.grid_size).cpu().numpy()
            if b in checked:
                check_finite(m, "attention maps", vm, sources, rows)
            values[b] = {"image_size": hw, "map": m, "shares": _token_shares(a, npt)}
        yield rows, values, None if emb is None else emb.cpu().numpy()


class _Pass:
    """One forward per image at most, whichever entries miss: the maps of the requested blocks
    are kept for the calls of :func:`~sk_a2.cache.cached_rows` still to come, those of the other
    blocks the forward passed are stored at once."""

    def __init__(self, source, sources, wanted, blocks, keys, embed, image_keys):
        self.source, self.sources, self.wanted, self.blocks = source, sources, wanted, blocks
        self.keys, self.embed, self.image_keys = keys, embed, image_keys
        self.kept, self.embeddings = {}, {}

    def run(self, images):
        """Forward the images not run yet; yield the rows of each batch."""
        known = [i for i in images if i in self.kept]
        if known:
            yield np.asarray(known, dtype=np.int64)
        todo = np.asarray([i for i in images if i not in self.kept], dtype=np.int64)
        if not len(todo):
            return
        for rows, values, emb in _forward(self.source, self.sources, todo, self.blocks,
                                          self.embed, self.wanted, self.image_keys):
            for j, r in enumerate(rows.tolist()):
                self.kept[r] = {b: {k: v[j] for k, v in values[b].items()} for b in self.wanted}
                if emb is not None:
                    self.embeddings[r] = emb[j]
            self._store_others(rows, values)
            yield rows

    def _store_others(self, rows, values):
        others = [b for b in self.blocks if b not in self.wanted]
        if self.source.cache is None or not others:
            return
        finite = [(b, j) for b in others for j in range(len(rows))
                  if np.isfinite(values[b]["map"][j]).all()]  # never store a non-finite map
        if not finite:
            return
        keys = [self.keys[b][rows[j]] for b, j in finite]
        stacked = {k: np.stack([values[b][k][j] for b, j in finite])
                   for k in ("image_size", "map", "shares")}
        store_rows(map_entry(self.source.vm.grid_size), self.source.cache, keys, stacked)

    def map_rows(self, n):
        """``compute`` of the (block, image) rows ``li * n + i`` of the wanted blocks."""
        def compute(todo):
            images = list(dict.fromkeys((todo % n).tolist()))
            pairs = {}
            for r in todo.tolist():
                pairs.setdefault(r % n, []).append(r)
            for rows in self.run(images):
                flat = np.asarray([r for i in rows.tolist() for r in pairs[i]], dtype=np.int64)
                parts = [self.kept[r % n][self.wanted[r // n]] for r in flat.tolist()]
                yield flat, {k: np.stack([p[k] for p in parts]) for k in parts[0]}

        return compute

    def embedding_rows(self, todo):
        """``compute`` of the full-image embeddings."""
        for rows in self.run(todo.tolist()):
            yield rows, {"image_size": np.stack([self.kept[r][self.wanted[0]]["image_size"]
                                                 for r in rows.tolist()]),
                         "embedding": np.stack([self.embeddings[r] for r in rows.tolist()])}


def layer_maps(source: MapSource, sources, layers, *, embed=False, image_keys=None) -> dict:
    """Maps, token shares and original sizes of ``sources`` at several blocks, one forward.

    Entries already in ``source.cache`` are read back; each image missing any of them is run
    through the model once, up to the deepest block asked (to the end with ``embed``); with a
    :class:`~sk_a2.cache.MemoryCache`, the maps of every block that forward passed are stored
    too (a disk cache keeps the blocks asked for only).

    Parameters
    ----------
    source : MapSource
    sources : sequence of image sources (:func:`sk_a2.images.as_sources`)
    layers : sequence of int
        Block indices, negative ones counting from the end; repeats are computed once.
    embed : bool, default=False
        Also return each full image's embedding by the model, from the same forward.
    image_keys : None or list of str, default=None
        The content keys of ``sources`` (:func:`sk_a2.cache.image_key`), when the caller has
        them; computed here (once per image) otherwise.

    Returns
    -------
    dict
        ``"blocks"`` the distinct blocks (indices from 0) in the given order, ``"map"`` (L, n,
        grid_h, grid_w) float32 (each map sums to 1), ``"shares"`` (L, n, 3) float64 (the CLS,
        register and patch shares of :mod:`sk_a2.localization`), ``"image_size"`` (n, 2)
        int64 and, with ``embed``, ``"embedding"`` (n, d) float32.
    """
    vm, cache, n = source.vm, source.cache, len(sources)
    wanted = list(dict.fromkeys(resolve_layer(layer, vm.num_layers) for layer in layers))
    deepest = vm.num_layers - 1 if embed else max(wanted)
    blocks = list(range(deepest + 1)) if isinstance(cache, MemoryCache) else sorted(wanted)
    if image_keys is None:
        image_keys = [image_key(src) for src in sources]
    keys = map_keys(source, sources, blocks, image_keys) if cache is not None else None
    run = _Pass(source, sources, wanted, blocks, keys, embed, image_keys)
    out = {"blocks": wanted}
    if embed:
        ids = None if cache is None else [
            _embedding_key(source.model_id, source.image_size, source.precision, k)
            for k in image_keys]
        out.update(cached_rows(embedding_entry(vm.embed_dim), n, run.embedding_rows, cache, ids))
    flat = None if cache is None else [k for b in wanted for k in keys[b]]
    rows = cached_rows(map_entry(vm.grid_size), len(wanted) * n, run.map_rows(n), cache, flat)
    out["map"] = rows["map"].reshape(len(wanted), n, *vm.grid_size)
    out["shares"] = rows["shares"].reshape(len(wanted), n, 3)
    out["image_size"] = rows["image_size"][:n]
    return out
