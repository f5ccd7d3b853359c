"""AttentionAdapter: learning where to look when attention prefers a distractor."""

import pickle
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import blob_images, make_timm
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from timm.models.vision_transformer import VisionTransformer

from sk_a2 import AttentionAdapter, AttentionCropper, CropEmbedder, CropSet, worst_group_accuracy
from sk_a2._param_validation import validate_params
from sk_a2.dps import candidate_bank

SIZE = 64


def brightness_vit(patch=8):
    """A one-block ViT whose CLS attention grows with patch brightness, by construction.

    Patch tokens carry the patch's mean (normalised) intensity in channel 0 and a constant in
    channel 1; the CLS token a marker in channel 2. The query of CLS reads the marker, the keys
    read channel 0, so after the block's LayerNorm the CLS logit of a patch is increasing in its
    brightness: the brightest object takes the attention.
    """
    D = 8
    m = VisionTransformer(img_size=SIZE, patch_size=patch, embed_dim=D, depth=1, num_heads=1,
                          num_classes=0)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.patch_embed.proj.weight[0] = 1.0 / (3 * patch * patch)
        m.patch_embed.proj.bias[1] = 1.0
        m.cls_token[0, 0, 2] = 1.0
        m.blocks[0].norm1.weight.fill_(1.0)
        m.blocks[0].attn.qkv.weight[0, 2] = 2.0
        m.blocks[0].attn.qkv.weight[D, 0] = 1.0
        m.norm.weight.fill_(1.0)
    return m.eval()


def distractor_images(n, agreement, seed):
    """Label: colour of a dull square near the top (red 1 / blue 0). A bright square in the lower
    half (yellowish or cyan, the spurious attribute, agreeing with the label at rate
    ``agreement``) takes the attention. Returns X, y, spurious, label-object boxes."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n)
    spur = np.where(rng.rand(n) < agreement, y, 1 - y)
    X = rng.randint(90, 120, size=(n, SIZE, SIZE, 3)).astype(np.uint8)
    obj = np.zeros((n, 4), dtype=np.int64)
    s, d = SIZE // 4, SIZE // 4 + 2
    for i in range(n):
        x0, y0 = SIZE // 2 - s // 2 + rng.randint(-4, 5), 4 + rng.randint(0, 4)
        X[i, y0:y0 + s, x0:x0 + s] = (200, 40, 40) if y[i] else (40, 40, 200)
        obj[i] = (x0, y0, x0 + s, y0 + s)
        dx, dy = rng.randint(0, SIZE - d), rng.randint(SIZE // 2, SIZE - d)
        X[i, dy:dy + d, dx:dx + d] = (255, 255, 150) if spur[i] else (150, 255, 255)
    return X, y, spur, obj


def hit_rate(cropset, obj):
    """Fraction of images where some crop covers at least half of the label object."""
    b = cropset.boxes
    ix = np.minimum(b[..., 2], obj[:, None, 2]) - np.maximum(b[..., 0], obj[:, None, 0])
    iy = np.minimum(b[..., 3], obj[:, None, 3]) - np.maximum(b[..., 1], obj[:, None, 1])
    inter = (np.clip(ix, 0, None) * np.clip(iy, 0, None)).max(1)
    return float(np.mean(inter >= 0.5 * (obj[:, 2] - obj[:, 0]) * (obj[:, 3] - obj[:, 1])))


@pytest.fixture(scope="module")
def models():
    return brightness_vit(), make_timm("test_vit", img_size=SIZE, seed=0)


@pytest.fixture(scope="module")
def fitted(models):
    att, emb = models
    X, y, _, _ = distractor_images(120, 0.8, seed=0)
    ad = AttentionAdapter(att, emb, n_crops=2, image_size=SIZE, outer_epochs=30, device="cpu",
                          cache="memory", random_state=0)
    return ad.fit(X, y), X, y


def _a2_worst_group(cropper, emb, train, test):
    (Xtr, ytr, _, _), (Xte, yte, ste, _) = train, test
    pipe = Pipeline([("crop", cropper),
                     ("emb", CropEmbedder(emb, image_size=SIZE, device="cpu", cache="memory")),
                     ("lr", LogisticRegression(max_iter=2000))])
    pred = pipe.fit(Xtr, ytr).predict(Xte)
    return worst_group_accuracy(yte, pred, groups=2 * yte + ste)


def test_adapter_moves_crops_onto_label_object(models, fitted):
    att, emb = models
    ad, Xtr, ytr = fitted
    train = (Xtr, ytr, None, None)
    test = distractor_images(160, 0.5, seed=1)
    default = AttentionCropper(att, crop_sizes=(18,), n_crops=2, image_size=SIZE, device="cpu",
                               cache="memory")
    hit_default = hit_rate(default.fit().transform(test[0]), test[3])
    hit_adapter = hit_rate(ad.transform(test[0]), test[3])
    assert hit_default <= 0.2 and hit_adapter >= 0.8, (hit_default, hit_adapter)
    wga_default = _a2_worst_group(default, emb, train, test)
    wga_adapter = _a2_worst_group(clone(ad), emb, train, test)
    assert wga_adapter >= wga_default + 0.4, (wga_default, wga_adapter)
    assert ad.loss_curve_[-1] < 0.5 * ad.loss_curve_[0]


def test_transform_is_hard_topk_of_adapted_mass(fitted):
    ad, X, _ = fitted
    cs = ad.transform(X[:10])
    assert isinstance(cs, CropSet) and cs.boxes.shape == (10, 2, 4)
    adapted = ad.adapted_maps(X[:10])
    np.testing.assert_allclose(adapted.sum((1, 2)), 1.0, rtol=1e-5)
    up = F.interpolate(torch.tensor(adapted, dtype=torch.float64)[:, None], size=(SIZE, SIZE),
                       mode="bilinear", align_corners=False)[:, 0].numpy()
    bank = candidate_bank(SIZE).astype(int)
    for i in range(10):
        mass = np.array([up[i, y0:y1, x0:x1].sum() for x0, y0, x1, y1 in bank])
        best = sorted(np.argsort(-mass, kind="stable")[:2])
        np.testing.assert_array_equal(cs.boxes[i], bank[best])  # 64x64 images: frame = pixels
        np.testing.assert_allclose(cs.scores[i], mass[best] / up[i].sum(), rtol=1e-4)


def test_untrained_adapter_is_the_attention(models):
    att, emb = models
    X, y = blob_images(12, size=SIZE, seed=3)
    ad = AttentionAdapter(att, emb, image_size=SIZE, outer_epochs=0, device="cpu",
                          random_state=0).fit(X, y)
    np.testing.assert_allclose(ad.adapted_maps(X), ad.attention_maps(X), atol=1e-6)
    assert ad.loss_curve_ == []


def test_same_random_state_same_model(models, capsys):
    att, emb = models
    X, y, _, _ = distractor_images(40, 0.8, seed=2)
    kw = dict(image_size=SIZE, outer_epochs=3, device="cpu", cache="memory")
    a = AttentionAdapter(att, emb, random_state=7, verbose=True, **kw).fit(X, y)
    assert "epoch 3/3: held-out loss" in capsys.readouterr().out
    b = AttentionAdapter(att, emb, random_state=7, **kw).fit(X, y)
    c = AttentionAdapter(att, emb, random_state=8, **kw).fit(X, y)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(a.coefs_[1], c.coefs_[1])
    assert a.loss_curve_ == b.loss_curve_


def test_pickle_holds_numpy_weights_only(tiny_vit_file, tiny_vit_file2):
    X, y = blob_images(16, size=SIZE, seed=4)
    ad = AttentionAdapter("timm:test_vit", "timm:test_vit", attention_weights=tiny_vit_file,
                          embedding_weights=tiny_vit_file2, image_size=SIZE, outer_epochs=2,
                          device="cpu", random_state=0).fit(X, y)
    assert all(isinstance(a, np.ndarray) for a in ad.coefs_ + ad.intercepts_)
    n_params = sum(a.size for a in ad.coefs_ + ad.intercepts_)
    assert n_params == 16 * 6 + 6 + 6 * 16 + 16  # 4x4 grid, 6 hidden units
    blob = pickle.dumps(ad)
    assert len(blob) < 20_000 and b"torch" not in blob
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.transform(X).boxes, ad.transform(X).boxes)


def test_grid_search_over_n_crops_and_inner_steps(models):
    att, emb = models
    X, y, _, _ = distractor_images(48, 0.8, seed=5)
    pipe = Pipeline([
        ("crop", AttentionAdapter(att, emb, image_size=SIZE, outer_epochs=2, device="cpu",
                                  cache="memory", random_state=0)),
        ("emb", CropEmbedder(emb, image_size=SIZE, device="cpu", cache="memory")),
        ("lr", LogisticRegression(max_iter=500)),
    ])
    grid = GridSearchCV(pipe, {"crop__n_crops": [1, 3], "crop__inner_steps": [1, 4]}, cv=2)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()
    best = grid.best_estimator_
    assert best.named_steps["crop"].transform(X[:3]).n_crops == grid.best_params_["crop__n_crops"]
    assert grid.predict(X[:5]).shape == (5,)


def test_bad_input(models):
    att, emb = models
    X, y = blob_images(20, size=SIZE, seed=6)
    kw = dict(image_size=SIZE, device="cpu", outer_epochs=1)
    with pytest.raises(ValueError, match="n_crops=59 is larger than the candidate bank"):
        AttentionAdapter(att, emb, n_crops=59, **kw).fit(X, y)
    with pytest.raises(ValueError, match="single class"):
        AttentionAdapter(att, emb, **kw).fit(X, np.zeros(20, int))
    with pytest.raises(ValueError, match="too few samples for the held-out part"):
        AttentionAdapter(att, emb, **kw).fit(X[:3], [0, 1, 1])
    with pytest.raises(ValueError, match="too few samples for the held-out part"):
        AttentionAdapter(att, emb, validation_fraction=0.01, **kw).fit(X, y)
    with pytest.raises(ValueError, match=r"X\[0\] is 16x16 pixels, smaller than the 18-pixel"):
        AttentionAdapter(att, emb, **kw).fit(X[:, :16, :16], y)
    small = [x for x in X]
    small[4] = small[4][:10, :12]
    with pytest.raises(ValueError, match=r"X\[4\] is 10x12 pixels"):
        AttentionAdapter(att, emb, **kw).fit(small, y)
    with pytest.raises(ValueError, match="sigma"):
        AttentionAdapter(att, emb, sigma=0, **kw).fit(X, y)
    with pytest.raises(ValueError, match="one label per image"):
        AttentionAdapter(att, emb, **kw).fit(X, y[:5])
    y_before = y.copy()
    ad = AttentionAdapter(att, emb, **kw).fit(X, y)
    np.testing.assert_array_equal(y, y_before)
    with pytest.raises(ValueError, match="smaller than the 18-pixel"):
        ad.transform(X[:2, :8, :8])


@pytest.mark.filterwarnings("ignore::sk_a2.precision.SlowPrecisionWarning")
def test_precision_reaches_both_models(models, monkeypatch):
    import sk_a2.adapter

    embedded_at = []

    class RecordingEmbedder(CropEmbedder):
        def transform(self, X):
            embedded_at.append(self.precision)
            return super().transform(X)

    monkeypatch.setattr(sk_a2.adapter, "CropEmbedder", RecordingEmbedder)
    att, emb = models
    X, y = blob_images(20, size=SIZE, seed=4)
    maps = {}
    for p in ("float32", "bfloat16"):
        ad = AttentionAdapter(att, emb, precision=p, image_size=SIZE, device="cpu",
                              outer_epochs=1, random_state=0)
        assert clone(ad).get_params()["precision"] == p
        ad.fit(X, y)
        assert embedded_at == [p]  # the candidate bank was embedded at this precision
        embedded_at.clear()
        maps[p] = ad.attention_maps(X)
        # the oracle: the public cropper's maps at the same precision (crop sizes do not matter)
        direct = AttentionCropper(att, crop_sizes=(16,), image_size=SIZE, device="cpu",
                                  precision=p).fit().attention_maps(X)
        np.testing.assert_array_equal(maps[p], direct)
    assert not np.array_equal(maps["float32"], maps["bfloat16"])


BAD_PARAMS = {
    "attention_model": [3, None], "embedding_model": [["timm:test_vit"]],
    "attention_weights": [3], "embedding_weights": [["w.safetensors"]],
    "n_crops": [0, 1.5, "2", None], "image_size": [0, 64.0], "head_aggregation": ["median"],
    "hidden_size": [0], "inner_steps": [0, 2.5], "inner_lr": [0, -1.0],
    "inner_alpha": [-0.1], "outer_epochs": [-1, 1.5], "outer_lr": [0.0],
    "outer_batch_size": [0], "sigma": [0, -1.0, "big"], "n_samples": [0],
    "validation_fraction": [0, 1, 1.5], "batch_size": [0], "device": ["meta", None],
    "precision": ["half", None],
    "cache": [3], "random_state": ["0", 1.5], "verbose": ["yes"],
}
PARAM_CASES = [(n, v) for n, values in BAD_PARAMS.items() for v in values]


@pytest.mark.parametrize("name, value", PARAM_CASES, ids=[f"{n}-{v!r}" for n, v in PARAM_CASES])
def test_bad_parameter_named_before_any_work(name, value):
    X, y = blob_images(4, size=SIZE, seed=0)
    est = AttentionAdapter("no-such-model", "no-such-model", image_size=SIZE, device="cpu")
    with pytest.raises(ValueError, match=rf"^{name} must be .+, got {re.escape(repr(value))}$"):
        est.set_params(**{name: value}).fit(X, y)


def test_every_parameter_has_a_rule_and_defaults_pass():
    assert set(AttentionAdapter._parameter_constraints) == set(AttentionAdapter().get_params())
    validate_params(AttentionAdapter())
