"""The top-k and head-pruned head aggregators against loops over heads, and end to end."""

import math
from copy import deepcopy

import numpy as np
import pytest
import timm
import torch
from conftest import make_timm

from sk_a2 import AttentionCropper
from sk_a2.attention import HEAD_AGGREGATIONS, aggregate_heads

NEW = ("topk_mean", "head_pruned")


def _renormalised(m):
    return m / m.sum(-1, keepdims=True)


def loop_topk_mean(a):
    """Per patch, the mean of the ceil(H/4) largest head values, by sorting Python lists."""
    B, H, P = a.shape
    k = max(1, math.ceil(H / 4))
    out = np.zeros((B, P))
    for b in range(B):
        for p in range(P):
            values = sorted((float(a[b, h, p]) for h in range(H)), reverse=True)
            out[b, p] = sum(values[:k]) / k
    return _renormalised(out)


def loop_entropy(row):
    total = sum(row)
    return -sum((v / total) * math.log(v / total) for v in row) / math.log(len(row))


def loop_head_pruned(a):
    """Per image, drop the ceil(H/4) heads of highest normalised entropy (ties: the higher head
    index goes first), keep at least one, and average the rest."""
    B, H, P = a.shape
    pruned = min(math.ceil(H / 4), H - 1)
    out = np.zeros((B, P))
    for b in range(B):
        ranked = sorted(range(H), key=lambda h: (loop_entropy(list(a[b, h])), h))
        kept = ranked[:H - pruned]
        out[b] = sum(a[b, h] for h in kept) / len(kept)
    return _renormalised(out)


@pytest.mark.parametrize("heads", [1, 2, 3, 5, 6, 8, 12, 24])
def test_new_aggregators_equal_loops_over_heads(heads):
    rng = np.random.RandomState(heads)
    a = rng.dirichlet(np.full(20, 0.4), size=(3, heads))  # (B, H, P), rows sum to 1
    t = torch.tensor(a)
    np.testing.assert_allclose(aggregate_heads(t, "topk_mean").numpy(), loop_topk_mean(a),
                               rtol=1e-12)
    np.testing.assert_allclose(aggregate_heads(t, "head_pruned").numpy(), loop_head_pruned(a),
                               rtol=1e-12)


def test_new_aggregators_on_float32_rows_that_do_not_sum_to_one():
    rng = np.random.RandomState(7)
    a = rng.rand(2, 6, 9).astype(np.float32) + 0.01  # raw, unnormalised values
    for method, oracle in (("topk_mean", loop_topk_mean), ("head_pruned", loop_head_pruned)):
        got = aggregate_heads(torch.tensor(a), method)
        assert got.dtype == torch.float32
        np.testing.assert_allclose(got.numpy(), oracle(a.astype(np.float64)), rtol=2e-6)
        np.testing.assert_allclose(got.sum(-1).numpy(), 1.0, rtol=1e-6)


def test_head_pruned_drops_the_uniform_heads():
    rng = np.random.RandomState(0)
    P = 16
    peaked = rng.dirichlet(np.full(P, 0.2), size=6)
    a = np.concatenate([peaked, np.full((2, P), 1.0 / P)])[None]  # 8 heads, 2 of them uniform
    got = aggregate_heads(torch.tensor(a), "head_pruned").numpy()
    np.testing.assert_allclose(got[0], _renormalised(peaked.mean(0)), rtol=1e-12)
    # and the head order does not matter
    perm = rng.permutation(8)
    np.testing.assert_allclose(aggregate_heads(torch.tensor(a[:, perm]), "head_pruned").numpy(),
                               got, rtol=1e-12)


def test_topk_mean_sits_between_max_and_mean():
    rng = np.random.RandomState(1)
    few = torch.tensor(rng.dirichlet(np.ones(10), size=(2, 4)))  # 4 heads: k = 1, the max
    torch.testing.assert_close(aggregate_heads(few, "topk_mean"), aggregate_heads(few, "max"))
    one = torch.tensor(rng.dirichlet(np.ones(10), size=(2, 1)))  # 1 head: every method is it
    for method in HEAD_AGGREGATIONS:
        torch.testing.assert_close(aggregate_heads(one, method), one[:, 0])


def test_new_names_are_listed_and_validated():
    for method in NEW:
        assert method in HEAD_AGGREGATIONS
    with pytest.raises(ValueError, match="head_aggregation must be one of .*'topk_mean'"):
        aggregate_heads(torch.ones(1, 2, 3), "top_k")
    with pytest.raises(ValueError, match="head_aggregation"):
        AttentionCropper("timm:test_vit", head_aggregation="pruned", device="cpu").fit()


def _model_maps(module, images, mean, std):
    """Per-head CLS-to-patch attention of the last block from timm's own non-fused attention."""
    module = deepcopy(module).eval()
    attn = module.blocks[-1].attn
    attn.fused_attn = False
    seen = {}
    attn.attn_drop.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    x = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        module.forward_features(x)
    heads = seen["a"][:, :, 0, module.num_prefix_tokens:]
    return heads.double().numpy()


@pytest.mark.parametrize("method", NEW)
def test_cropper_uses_the_new_aggregations(method, tiny_vit_file):
    """The fixture's weights through ``weights=``, at its native 160 px (no resize)."""
    images = np.random.RandomState(3).randint(0, 256, size=(3, 160, 160, 3), dtype=np.uint8)
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=160,
                               crop_sizes=(64, 32), head_aggregation=method, device="cpu")
    maps = cropper.fit(images).attention_maps(images)
    module = timm.create_model("test_vit", pretrained=True, num_classes=0,
                               pretrained_cfg_overlay=dict(file=str(tiny_vit_file)))
    cfg = module.pretrained_cfg
    heads = _model_maps(module, images, cfg["mean"], cfg["std"])
    oracle = loop_topk_mean(heads) if method == "topk_mean" else loop_head_pruned(heads)
    np.testing.assert_allclose(maps.reshape(3, -1), oracle, atol=1e-5)
    crops = cropper.transform(images)
    assert crops.boxes.shape == (3, 2, 4)


def test_cropper_with_many_heads_ranks_them_per_image():
    """8 heads (k = 2, 2 pruned), a module passed in at its own 64 px."""
    module = make_timm("test_vit", 64, seed=5, num_heads=8).eval()
    images = np.random.RandomState(4).randint(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    heads = _model_maps(module, images, (0.5,) * 3, (0.5,) * 3)
    for method, oracle in (("topk_mean", loop_topk_mean), ("head_pruned", loop_head_pruned)):
        cropper = AttentionCropper(module, image_size=64, crop_sizes=(16,), batch_size=3,
                                   head_aggregation=method, device="cpu")
        maps = cropper.fit().attention_maps(images)
        np.testing.assert_allclose(maps.reshape(4, -1), oracle(heads), atol=1e-5)
    kept = [sorted(range(8), key=lambda h: loop_entropy(list(heads[b, h])))[:6]
            for b in range(4)]
    assert len({tuple(sorted(k)) for k in kept}) > 1  # images keep different heads
