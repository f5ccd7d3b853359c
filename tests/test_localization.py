"""Localization metrics against direct computations, and the one-pass per-layer report."""

import math
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import make_clip, make_dinov3, make_reg_vit, make_timm
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sk_a2 import AttentionCropper
from sk_a2.attention import cls_attention
from sk_a2.images import resize_rgb
from sk_a2.localization import (
    hits,
    layer_attention_maps,
    localization_report,
    mass_in_boxes,
    normalized_entropy,
    select_attention,
    summarize_report,
    top_mass,
)
from sk_a2.models import load_model

# --------------------------------------------------------------------------------------------
# Oracles: written pixel by pixel, with exact fractions for the box test
# --------------------------------------------------------------------------------------------


def oracle_upsample(grid, size):
    """Bilinear, align_corners=False, edge-clamped, as loops over output pixels (float64)."""
    h, w = grid.shape

    def taps(n_in, i):
        src = max((i + 0.5) * n_in / size - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    out = np.empty((size, size))
    for i in range(size):
        r0, r1, fr = taps(h, i)
        for j in range(size):
            c0, c1, fc = taps(w, j)
            top = grid[r0, c0] * (1 - fc) + grid[r0, c1] * fc
            bottom = grid[r1, c0] * (1 - fc) + grid[r1, c1] * fc
            out[i, j] = top * (1 - fr) + bottom * fr
    return out / out.sum()


def inside(i, j, boxes, hw, size):
    h, w = hw
    for x0, y0, x1, y1 in boxes:
        if (Fraction(x0) * size / w <= Fraction(2 * j + 1, 2) < Fraction(x1) * size / w
                and Fraction(y0) * size / h <= Fraction(2 * i + 1, 2) < Fraction(y1) * size / h):
            return True
    return False


def oracle_mass_hit(grid, boxes, hw, size):
    up = oracle_upsample(np.asarray(grid, dtype=np.float64) / np.sum(grid), size)
    mass = sum(up[i, j] for i in range(size) for j in range(size) if inside(i, j, boxes, hw, size))
    best = up.max()
    near = {inside(i, j, boxes, hw, size) for i in range(size) for j in range(size)
            if up[i, j] >= best - 1e-9 * best}
    return mass, near


@st.composite
def map_and_boxes(draw):
    n = draw(st.integers(1, 3))
    gh, gw = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    size = draw(st.integers(3, 12))
    maps = draw(arrays(np.float64, (n, gh, gw), elements=st.floats(0, 1, width=32)))
    maps[:, 0, 0] += 1e-3  # at least one positive value
    hws, boxes = [], []
    for _ in range(n):
        h, w = draw(st.integers(3, 40)), draw(st.integers(3, 40))  # non-square originals
        hws.append((h, w))
        k = draw(st.integers(1, 3))
        per = []
        for _ in range(k):  # integer boxes, touching the border as often as not
            x0 = draw(st.integers(0, w - 1))
            y0 = draw(st.integers(0, h - 1))
            per.append((x0, y0, draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h))))
        boxes.append(np.asarray(per, dtype=np.float64))
    return maps, boxes, np.asarray(hws), size


@settings(max_examples=60, deadline=None)
@given(map_and_boxes())
def test_mass_and_hit_match_pixel_oracle(case):
    maps, boxes, hws, size = case
    mass = mass_in_boxes(maps, boxes, hws, size)
    hit = hits(maps, boxes, hws, size)
    assert mass.shape == hit.shape == (len(maps),)
    for i in range(len(maps)):
        want_mass, near = oracle_mass_hit(maps[i], boxes[i], hws[i], size)
        assert mass[i] == pytest.approx(want_mass, abs=1e-9)
        if len(near) == 1:  # the argmax is not a near-tie between inside and outside pixels
            assert bool(hit[i]) == near.pop()


def test_one_box_per_image_array_equals_ragged_list():
    rng = np.random.default_rng(0)
    maps = rng.random((4, 3, 5))
    hws = np.array([[30, 50], [50, 30], [40, 40], [17, 23]])
    boxes = np.array([[0, 0, 50, 10], [3, 4, 30, 50], [10, 10, 20, 20], [0, 5, 23, 17]])
    assert np.array_equal(mass_in_boxes(maps, boxes, hws, 14),
                          mass_in_boxes(maps, [b[None] for b in boxes], hws, 14))
    assert np.array_equal(mass_in_boxes(maps, boxes[:, None], hws, 14),
                          mass_in_boxes(maps, list(boxes), hws, 14))
    # a box covering the whole image holds all the mass, and the argmax
    full = np.stack([np.zeros(4), np.zeros(4), hws[:, 1], hws[:, 0]], 1)
    np.testing.assert_allclose(mass_in_boxes(maps, full, hws, 14), 1.0)
    assert hits(maps, full, hws, 14).tolist() == [1, 1, 1, 1]


def test_uniform_map_mass_is_box_area_fraction():
    size = 20
    hws = np.array([[size, size]] * 3)
    boxes = [np.array([[0, 0, 5, 20]]), np.array([[2, 3, 7, 9], [5, 5, 12, 12]]),
             np.array([[15, 15, 20, 20], [0, 0, 1, 1]])]
    covered = []
    for b in boxes:
        cells = {(i, j) for x0, y0, x1, y1 in b.astype(int)
                 for i in range(y0, y1) for j in range(x0, x1)}
        covered.append(len(cells) / size**2)
    uniform = np.ones((3, 4, 4))
    np.testing.assert_allclose(mass_in_boxes(uniform, boxes, hws, size), covered, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 3), st.integers(2, 30)),
              elements=st.floats(0, 1, width=32)),
       st.sampled_from([0.1, 0.25, 0.5, 1.0, 0.01, 0.33]))
def test_entropy_and_top_mass_match_direct_sums(maps, q):
    maps[:, 0] += 1e-3
    ent, top = normalized_entropy(maps), top_mass(maps, q)
    for i, row in enumerate(maps):
        p = [v / sum(row) for v in row]
        P = len(p)
        want = -sum(v * math.log(v) for v in p if v > 0) / math.log(P)
        assert ent[i] == pytest.approx(want, abs=1e-9)
        k = next(k for k in range(1, P + 1) if k >= q * P - 1e-9)
        assert top[i] == pytest.approx(sum(sorted(p, reverse=True)[:k]), abs=1e-9)


def test_entropy_extremes_and_top_mass_counts():
    assert normalized_entropy(np.ones((1, 10)))[0] == pytest.approx(1.0)
    assert normalized_entropy(np.eye(10)[:1])[0] == 0.0
    m = np.arange(1, 251, dtype=np.float64)[None]
    # 10 % of 250 patches is 25 patches, not 26
    assert top_mass(m, 0.1)[0] == pytest.approx(m[0, -25:].sum() / m.sum())


@pytest.mark.parametrize("q", [0, -0.1, 1.01, float("nan"), True, "0.1"])
def test_top_mass_rejects_q_outside_unit_interval(q):
    with pytest.raises(ValueError, match="q must be"):
        top_mass(np.ones((1, 4)), q)


@pytest.mark.parametrize(
    "boxes,match",
    [
        (np.array([[0, 0, 0, 5]]), "x1 > x0"),
        (np.array([[3, 0, 2, 5]]), "x1 > x0"),
        (np.array([[0, 4, 5, 4]]), "y1 > y0"),
        (np.array([[0, 0, 21, 5]]), "outside the image"),
        (np.array([[-1, 0, 5, 5]]), "outside the image"),
        (np.array([[0, 0, 5, 5], [0, 0, 5, 5]]), "2 entries but X has 1"),
        ([np.zeros((0, 4))], "no box"),
        (np.zeros((1, 3)), "shape"),
    ],
)
def test_bad_boxes_are_named(boxes, match):
    with pytest.raises(ValueError, match=match):
        mass_in_boxes(np.ones((1, 2, 2)), boxes, [[10, 20]], 8)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reg_model():
    return make_reg_vit(img_size=56).eval()


def _images(n=3, seed=0):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, size=(40 + 8 * i, 56 - 4 * i, 3), dtype=np.uint8)
            for i in range(n)]


def _boxes(X):
    return [np.array([[2, 3, x.shape[1] - 5, x.shape[0] // 2], [0, 0, 4, 4]]) for x in X]


@pytest.mark.parametrize("aggregation", ["mean", "lowest_entropy_mean"])
def test_all_layers_report_equals_one_cropper_per_layer(aggregation):
    model = make_timm("test_vit", img_size=48).eval()
    X, boxes = _images(), None
    boxes = _boxes(X)
    base = AttentionCropper(model, image_size=48, crop_sizes=(16,), batch_size=2,
                            head_aggregation=aggregation).fit()
    report = localization_report(base, X, boxes, layers="all")
    layers = sorted(set(report["layer"]))
    assert layers == list(range(-len(model.blocks), 0))  # printed counted from the end
    hws = np.array([x.shape[:2] for x in X])
    for layer in layers:
        # Same batches as the report: with several threads, float sums may differ by ~1e-8
        # between batch sizes, enough to flip an argmax tie on this tiny 3 x 3 grid.
        maps = AttentionCropper(model, image_size=48, crop_sizes=(16,), layer=layer,
                                batch_size=2,
                                head_aggregation=aggregation).fit().attention_maps(X)
        rows = report[report["layer"] == layer].sort_values("image")
        want = {"mass_in_box": mass_in_boxes(maps, boxes, hws, 48),
                "hit": hits(maps, boxes, hws, 48), "entropy": normalized_entropy(maps),
                "top10_mass": top_mass(maps, 0.1), "top25_mass": top_mass(maps, 0.25)}
        for name, values in want.items():
            np.testing.assert_allclose(rows[name].to_numpy(dtype=float), values, atol=1e-6,
                                       err_msg=f"{name}, layer {layer}")


def test_layer_attention_maps_fill_the_croppers_cache(tmp_path, monkeypatch):
    from sk_a2 import attention

    model = make_timm("test_vit", img_size=48).eval()
    X = _images(3, seed=4)
    common = dict(image_size=48, crop_sizes=(16,), batch_size=2)
    want = [AttentionCropper(model, layer=layer, **common).fit().attention_maps(X)
            for layer in (-1, 0)]  # one cropper per layer, no cache
    cache = str(tmp_path / "cache")
    base = AttentionCropper(model, cache=cache, **common).fit()
    batches, real = [], attention.layer_cls_attention

    def counting(vm, x, layers, **kwargs):
        batches.append((len(x), list(layers)))
        return real(vm, x, layers, **kwargs)

    monkeypatch.setattr(attention, "layer_cls_attention", counting)
    maps, hws = layer_attention_maps(base, X, [-1, 0, len(model.blocks) - 1])
    last = len(model.blocks) - 1
    # one forward per batch, the blocks asked (a disk cache stores no others)
    assert batches == [(2, [0, last]), (1, [0, last])]
    assert maps.shape == (2, 3, 3, 3) and hws.tolist() == [list(x.shape[:2]) for x in X]
    for got, expected in zip(maps, want):
        np.testing.assert_allclose(got, expected, atol=1e-6)

    def fail(*args, **kwargs):
        raise AssertionError("the model ran although the maps were cached")

    monkeypatch.setattr(attention, "layer_cls_attention", fail)
    for i, layer in enumerate((-1, 0)):  # the croppers read the maps back under their own keys
        cropper = AttentionCropper(model, layer=layer, cache=cache, **common).fit()
        np.testing.assert_array_equal(cropper.attention_maps(X), maps[i])
        assert cropper.transform(X).boxes.shape == (3, 1, 4)
    again, _ = layer_attention_maps(base, X, [0])
    assert len(batches) == 2 and np.array_equal(again[0], maps[1])


@pytest.mark.parametrize("factory,size", [(make_clip, 64), (make_dinov3, 64)],
                         ids=["open_clip", "dinov3_rope"])
def test_one_pass_report_for_clip_and_rope_models(factory, size):
    model = factory().eval()
    X = _images(2, seed=7)
    boxes = _boxes(X)
    hws = np.array([x.shape[:2] for x in X])
    report = localization_report(AttentionCropper(model, image_size=size, crop_sizes=(16,)).fit(),
                                 X, boxes, layers="all")
    for layer in sorted(set(report["layer"])):
        maps = AttentionCropper(model, image_size=size, crop_sizes=(16,),
                                layer=int(layer)).fit().attention_maps(X)
        rows = report[report["layer"] == layer]
        np.testing.assert_allclose(rows["mass_in_box"], mass_in_boxes(maps, boxes, hws, size),
                                   atol=1e-6)
        np.testing.assert_allclose(rows["entropy"], normalized_entropy(maps), atol=1e-6)


def test_token_shares_equal_cls_attention_split(reg_model):
    X = _images()
    cropper = AttentionCropper(reg_model, image_size=56, crop_sizes=(14,)).fit()
    report = localization_report(cropper, X, _boxes(X), layers=[0, -1])
    vm = load_model(reg_model, image_size=56, device="cpu")
    assert vm.num_prefix_tokens == 5
    pixels = torch.stack([torch.tensor(resize_rgb(x, 56)).permute(2, 0, 1) for x in X])
    x = vm.normalize(pixels.float() / 255)
    for layer in (0, len(reg_model.blocks) - 1):
        row = cls_attention(vm, x, layer).double().mean(1)
        got = report[report["layer"] == layer - len(reg_model.blocks)].sort_values("image")
        np.testing.assert_allclose(got["cls_share"], row[:, 0], atol=1e-6)
        np.testing.assert_allclose(got["register_share"], row[:, 1:5].sum(1), atol=1e-6)
        np.testing.assert_allclose(got["patch_share"], row[:, 5:].sum(1), atol=1e-6)
        np.testing.assert_allclose(
            got[["cls_share", "register_share", "patch_share"]].sum(axis=1), 1.0, atol=1e-6)


def test_report_layers_and_errors(reg_model):
    X = _images(2)
    cropper = AttentionCropper(reg_model, image_size=56, crop_sizes=(14,), layer=0).fit()
    report = localization_report(cropper, X, _boxes(X))
    assert report["layer"].tolist() == [-2, -2] and report["image"].tolist() == [0, 1]
    assert list(report.columns[:5]) == ["model", "head_aggregation", "n_params", "layer", "image"]
    with pytest.raises(ValueError, match="layers: layer=7 is out of range"):
        localization_report(cropper, X, _boxes(X), layers=[0, 7])
    with pytest.raises(ValueError, match="layers must be"):
        localization_report(cropper, X, _boxes(X), layers="last")
    with pytest.raises(ValueError, match="boxes has 1 entries but X has 2"):
        localization_report(cropper, X, _boxes(X)[:1])
    too_wide = [np.array([0, 0, x.shape[1] + 1, 5]) for x in X]
    with pytest.raises(ValueError, match=r"boxes\[0\] .* outside the image"):
        localization_report(cropper, X, too_wide)
    with pytest.raises(ValueError, match=r"X\[1\]: image file .* does not exist"):
        localization_report(cropper, [X[0], "/nonexistent/image.png"], _boxes(X))
    with pytest.raises(Exception, match="not fitted"):
        localization_report(AttentionCropper(reg_model), X, _boxes(X))


def test_report_reads_back_from_cache_and_falls_back_to_bunch(reg_model, monkeypatch):
    from sk_a2 import attention

    X = _images(2, seed=3)
    cropper = AttentionCropper(reg_model, image_size=56, crop_sizes=(14,), cache="memory").fit()
    first = localization_report(cropper, X, _boxes(X), layers="all")

    def fail(*args, **kwargs):
        raise AssertionError("the model ran although everything was cached")

    monkeypatch.setattr(attention, "layer_cls_attention", fail)
    second = localization_report(cropper, X, _boxes(X), layers="all")
    assert first.equals(second)
    # the cropper finds the same maps under its own keys: it does not run the model either
    maps = cropper.attention_maps(X)
    np.testing.assert_allclose(
        mass_in_boxes(maps, _boxes(X), [x.shape[:2] for x in X], 56),
        first[first["layer"] == -1]["mass_in_box"], atol=1e-9)
    monkeypatch.setitem(sys.modules, "pandas", None)
    bunch = localization_report(cropper, X, _boxes(X), layers=[0])
    assert not hasattr(bunch, "columns")
    np.testing.assert_array_equal(bunch["mass_in_box"],
                                  first[first["layer"] == -len(reg_model.blocks)]["mass_in_box"])
    summary = summarize_report([bunch, bunch])
    assert summary["n_images"].tolist() == [4]


def test_summary_is_mean_and_std_per_model_and_layer(reg_model):
    X = _images(3)
    cropper = AttentionCropper(reg_model, image_size=56, crop_sizes=(14,)).fit()
    report = localization_report(cropper, X, _boxes(X), layers=[0, 1])
    other = report.copy()
    other["model"] = "other"
    summary = summarize_report([report, other])
    assert len(summary) == 4 and summary["n_images"].tolist() == [3] * 4
    for _, row in summary.iterrows():
        sel = report[report["layer"] == row["layer"]]
        assert row["mass_in_box_mean"] == pytest.approx(sel["mass_in_box"].mean())
        assert row["top10_mass_std"] == pytest.approx(sel["top10_mass"].std(ddof=1))


def test_select_attention_ranks_by_mass(reg_model):
    X = _images(3, seed=5)
    boxes = _boxes(X)
    base = AttentionCropper(reg_model, image_size=56, crop_sizes=(14,))
    candidates = [{"layer": 0}, {"layer": 1}, {"layer": 1, "head_aggregation": "max"}]
    best, ranking = select_attention(candidates, X, boxes, base=base, return_ranking=True)
    masses = []
    for cand in candidates:
        c = AttentionCropper(reg_model, image_size=56, crop_sizes=(14,), **cand).fit()
        masses.append(localization_report(c, X, boxes)["mass_in_box"].mean())
    assert ranking["candidate"].iloc[0] == int(np.argmax(masses))
    np.testing.assert_allclose(ranking.sort_values("candidate")["mass_in_box"], masses,
                               atol=1e-9)
    want = candidates[int(np.argmax(masses))]
    assert best.layer == want["layer"]
    assert best.head_aggregation == want.get("head_aggregation", "mean")
    assert hasattr(best, "grid_size_")
    with pytest.raises(ValueError, match="unknown AttentionCropper parameters"):
        select_attention([{"layr": 0}], X, boxes, base=base)
    with pytest.raises(ValueError, match="empty"):
        select_attention([], X, boxes, base=base)


def test_offline_vit_s_localizes_the_synthetic_objects():
    from sk_a2.datasets import make_spurious_images

    data = make_spurious_images(16, image_size=112, random_state=0)
    cropper = AttentionCropper("imgfocus_vits14", image_size=112, crop_sizes=(56,)).fit()
    report = localization_report(cropper, data.images, data.boxes)
    hws = np.full((16, 2), 112)
    area = np.prod(data.boxes[:, 2:] - data.boxes[:, :2], axis=1) / 112**2
    uniform = np.ones((16, 8, 8))
    np.testing.assert_allclose(mass_in_boxes(uniform, data.boxes, hws, 112), area, atol=1e-12)
    # last block at 112 px: about 3.5 times the uniform map's mass (0.26 vs 0.07 on 64 images)
    assert report["mass_in_box"].mean() > 2.5 * area.mean()
    # a constant map's argmax is its first pixel, the corner, outside every object
    assert report["hit"].mean() >= 0.8 > hits(uniform, data.boxes, hws, 112).mean()
