"""CLS attention against the models' own attention matrices."""

import math
from copy import deepcopy

import numpy as np
import pytest
import torch
from conftest import make_clip, make_dinov3, make_reg_vit, make_timm

from sk_a2.attention import aggregate_heads, cls_attention, patch_attention
from sk_a2.models import load_model


def reference_attention(module, x, layer):
    """The attention matrix a timm model itself computes on its non-fused path."""
    module = deepcopy(module).eval()
    attn = module.blocks[layer].attn
    attn.fused_attn = False
    seen = {}
    attn.attn_drop.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    with torch.no_grad():
        module.forward_features(x)
    return seen["a"][:, :, 0]  # CLS query row: (B, H, N)


def reference_clip_attention(model, x, layer):
    """torch's own MultiheadAttention weights on the block's normed input."""
    visual = model.visual
    block = visual.transformer.resblocks[layer]
    seen = {}

    def grab(module, args, kwargs):
        seen.setdefault("q", args[0] if args else kwargs["query"])

    handle = block.attn.register_forward_pre_hook(grab, with_kwargs=True)
    with torch.no_grad():
        visual(x)
        handle.remove()
        q = seen["q"]
        _, w = block.attn(q, q, q, need_weights=True, average_attn_weights=False)
    return w[:, :, 0]


@pytest.mark.parametrize(
    "factory,size",
    [(lambda: make_timm("test_vit", 64), 64), (make_reg_vit, 56), (make_dinov3, 64)],
    ids=["vit", "dinov2_reg4", "dinov3_rope"],
)
@pytest.mark.parametrize("layer", [-1, 0])
def test_timm_attention_matches_model(factory, size, layer):
    module = factory().eval()
    vm = load_model(module, image_size=size, device="cpu")
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    got = cls_attention(vm, x, layer)
    ref = reference_attention(module, x, layer)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:2]), atol=1e-5, rtol=0)
    patches = patch_attention(vm, x, layer)
    assert patches.shape[-1] == vm.grid_size[0] * vm.grid_size[1]
    torch.testing.assert_close(patches, ref[..., vm.num_prefix_tokens:].float(), atol=1e-5,
                               rtol=0)


def test_register_and_rope_models_drop_prefix_tokens():
    assert load_model(make_reg_vit().eval(), image_size=56, device="cpu").num_prefix_tokens == 5
    assert load_model(make_dinov3().eval(), image_size=64, device="cpu").num_prefix_tokens == 5


def test_direct_formula_on_block_q_k():
    """softmax(q·Kᵀ/√d) written out from the block's own weights (plain ViT)."""
    module = make_timm("test_vit", 64).eval()
    vm = load_model(module, image_size=64, device="cpu")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tokens = module.patch_embed(x)
        tokens = module._pos_embed(tokens)
        tokens = module.norm_pre(tokens)
        for blk in module.blocks[:-1]:
            tokens = blk(tokens)
        h = module.blocks[-1].norm1(tokens)
        attn = module.blocks[-1].attn
        B, N, C = h.shape
        qkv = attn.qkv(h).reshape(B, N, 3, attn.num_heads, C // attn.num_heads)
        q, k = qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)
        ref = torch.softmax(q[:, :, :1] @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1)
    torch.testing.assert_close(cls_attention(vm, x), ref[:, :, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("layer", [-1, 0])
def test_open_clip_attention_matches_torch(layer):
    model = make_clip()
    vm = load_model(model, image_size=64, device="cpu")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    got = cls_attention(vm, x, layer)
    ref = reference_clip_attention(model, x, layer)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)


def test_attention_stops_at_the_block():
    module = make_timm("test_vit", 64).eval()
    vm = load_model(module, image_size=64, device="cpu")
    ran = []
    for i, blk in enumerate(module.blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: ran.append(i))
    cls_attention(vm, torch.zeros(1, 3, 64, 64), layer=1)
    assert ran == [0]  # block 1's attention input is reached inside block 1, before it finishes


def test_layer_out_of_range():
    vm = load_model(make_timm("test_vit", 64).eval(), image_size=64, device="cpu")
    with pytest.raises(ValueError, match="out of range"):
        cls_attention(vm, torch.zeros(1, 3, 64, 64), layer=vm.num_layers)


def _np_entropy(a):
    p = a / a.sum(-1, keepdims=True)
    return -(p * np.log(p)).sum(-1) / np.log(a.shape[-1])


def test_aggregators_follow_their_definitions():
    rng = np.random.RandomState(0)
    a = rng.dirichlet(np.full(16, 0.3), size=(2, 8))  # (B, H, P)
    t = torch.tensor(a)
    mean = aggregate_heads(t, "mean").numpy()
    np.testing.assert_allclose(mean, a.mean(1) / a.mean(1).sum(-1, keepdims=True))
    mx = aggregate_heads(t, "max").numpy()
    np.testing.assert_allclose(mx, a.max(1) / a.max(1).sum(-1, keepdims=True))
    ent = _np_entropy(a)
    w = (1 / ent) / (1 / ent).sum(1, keepdims=True)
    ew = (a * w[..., None]).sum(1)
    np.testing.assert_allclose(aggregate_heads(t, "entropy_weighted").numpy(),
                               ew / ew.sum(-1, keepdims=True))
    k = 2  # ceil(8 / 4)
    low = np.stack([a[b, np.argsort(ent[b])[:k]].mean(0) for b in range(2)])
    np.testing.assert_allclose(aggregate_heads(t, "lowest_entropy_mean").numpy(),
                               low / low.sum(-1, keepdims=True))
    for m in ("mean", "max", "entropy_weighted", "lowest_entropy_mean"):
        np.testing.assert_allclose(aggregate_heads(t, m).sum(-1).numpy(), 1.0)
    with pytest.raises(ValueError, match="head_aggregation must be one of"):
        aggregate_heads(t, "median")
