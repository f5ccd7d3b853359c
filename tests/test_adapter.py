"""AttentionAdapter: learning where to look when attention prefers a distractor."""

import pickle
import re
import warnings

import numpy as np
import pytest
import sklearn
import torch
import torch.nn.functional as F
from conftest import blob_images, make_timm
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from timm.models.vision_transformer import VisionTransformer

from sk_a2 import AttentionAdapter, AttentionCropper, CropEmbedder, CropSet, worst_group_accuracy
from sk_a2._dps import candidate_bank
from sk_a2.adapter import DegenerateTrainingWarning
from sk_a2.datasets import make_two_object

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
        AttentionAdapter(att, emb, validation_fraction=0.01, early_stopping=True, **kw).fit(X, y)
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
    with pytest.raises(ValueError, match=rf"^The '{name}' parameter of AttentionAdapter must be "
                                         rf".+\. Got {re.escape(repr(value))} instead\.$"):
        est.set_params(**{name: value}).fit(X, y)


def test_every_parameter_has_a_rule_and_defaults_pass():
    assert set(AttentionAdapter._parameter_constraints) == set(AttentionAdapter().get_params())
    AttentionAdapter()._validate_params()


# ---------------------------------------------------------------- training mechanics


def patch_inputs(module):
    """Record the input shape of every forward of ``module``'s patch embedding (the first
    layer each forward runs); copies the package makes of the module keep the hook."""
    seen = []
    module.patch_embed.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    return seen


def test_bank_is_embedded_once_and_refits_run_no_model():
    att, emb = brightness_vit(), make_timm("test_vit", img_size=SIZE, seed=11)
    att_inputs, emb_inputs = patch_inputs(att), patch_inputs(emb)
    X, y, _, _ = distractor_images(40, 0.8, seed=11)
    kw = dict(image_size=SIZE, outer_epochs=2, outer_batch_size=4, device="cpu",
              random_state=0)
    AttentionAdapter(att, emb, **kw).fit(X, y)  # default cache="memory"
    assert sum(s[0] for s in emb_inputs) == 40 * 58  # every candidate of every image, once
    assert sum(s[0] for s in att_inputs) == 40
    att_inputs.clear(), emb_inputs.clear()
    AttentionAdapter(att, emb, n_crops=1, hidden_size=3, sigma=1.0, selection="perturbed",
                     early_stopping=True, validation_fraction=0.3, **kw).fit(X, y)
    assert emb_inputs == [] and att_inputs == []  # other hyper-parameters: no forward at all
    AttentionAdapter(att, emb, cache=None, **kw).fit(X, y)
    assert sum(s[0] for s in emb_inputs) == 40 * 58  # without a cache, embedded again


def test_embedding_size_is_separate_from_the_attention_frame():
    att, emb = brightness_vit(), make_timm("test_vit", img_size=SIZE, seed=12)
    att_inputs, emb_inputs = patch_inputs(att), patch_inputs(emb)
    X, y, _, _ = distractor_images(24, 0.8, seed=12)
    ad = AttentionAdapter(att, emb, image_size=SIZE, embedding_size=32, outer_epochs=1,
                          outer_batch_size=4, device="cpu", random_state=0).fit(X, y)
    assert {tuple(s[1:]) for s in att_inputs} == {(3, SIZE, SIZE)}
    assert {tuple(s[1:]) for s in emb_inputs} == {(3, 32, 32)}
    assert ad.grid_size_ == (8, 8) and ad.candidate_boxes_.max() == SIZE  # attention frame
    # the bank's embeddings are CropEmbedder's at embedding_size: the same cache entries
    pipe_emb = CropEmbedder(emb, image_size=32, device="cpu", cache="memory")
    emb_inputs.clear()
    pipe_emb.fit_transform(ad.transform(X))
    assert emb_inputs == []


def test_held_out_batches_rotate_and_groups_weigh_equally(models, monkeypatch):
    """Each epoch holds every training image out once, fits the head on others only, anneals
    sigma geometrically, and with groups weighs each (group, class) cell equally."""
    import sk_a2.adapter as adapter_module

    att, emb = models
    X, y, spur, _ = distractor_images(40, 0.8, seed=21)
    steps, fits = [], []
    real_step, real_fit = adapter_module._OuterLoop.step, adapter_module._inner_fit

    def step(self, fit_batch, out_batch, sigma):
        steps.append((np.asarray(fit_batch), np.asarray(out_batch), sigma))
        return real_step(self, fit_batch, out_batch, sigma)

    def inner_fit(z, onehot, weight, *args):
        fits.append(weight.detach().numpy().astype(np.float64))
        return real_fit(z, onehot, weight, *args)

    monkeypatch.setattr(adapter_module._OuterLoop, "step", step)
    monkeypatch.setattr(adapter_module, "_inner_fit", inner_fit)
    AttentionAdapter(att, emb, n_crops=1, image_size=SIZE, outer_epochs=3, outer_batch_size=8,
                     device="cpu", random_state=0).fit(X, y, groups=spur)
    assert len(steps) == 3 * 5  # 40 images, held out 8 at a time
    for epoch in range(3):
        batch = steps[5 * epoch:5 * epoch + 5]
        held = np.concatenate([out for _, out, _ in batch])
        np.testing.assert_array_equal(np.sort(held), np.arange(40))
        for fit, out, sigma in batch:
            assert len(fit) == 32 and not np.intersect1d(fit, out).size
            assert sigma == pytest.approx(4.0 * (0.5 / 4.0) ** (epoch / 2))
    cells = 2 * spur + y
    counts = np.bincount(cells, minlength=4)
    for (fit, _, _), weight in zip(steps, fits):
        expected = 1.0 / counts[cells[fit]]
        np.testing.assert_allclose(weight, expected / expected.sum(), rtol=1e-6)


def test_too_few_steps_per_epoch_warns():
    att, emb = brightness_vit(), make_timm("test_vit", img_size=SIZE, seed=0)
    X, y, _, _ = distractor_images(40, 0.8, seed=13)
    kw = dict(image_size=SIZE, outer_epochs=2, device="cpu", random_state=0)
    with pytest.warns(DegenerateTrainingWarning,
                      match=r"outer_batch_size=512 is more than half of the 40 training images: "
                            r"held-out batches are cut to 20 images, 2 outer steps per epoch "
                            r"\(4 Adam steps in all\)"):
        ad = AttentionAdapter(att, emb, outer_batch_size=512, **kw).fit(X, y)
    assert ad.n_steps_ == 2 * ad.n_iter_
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateTrainingWarning)
        ad = AttentionAdapter(att, emb, outer_batch_size=4, **kw).fit(X, y)
    assert ad.n_steps_ == 10 * ad.n_iter_  # 40 training images, held out 4 at a time


def test_validation_score_is_a_head_on_the_hard_crops(models):
    """validation_scores_[0] (the raw attention) equals an independent pipeline's score."""
    att, emb = models
    X, y, _, _ = distractor_images(48, 0.8, seed=14)
    Xv, yv, _, _ = distractor_images(20, 0.5, seed=15)
    ad = AttentionAdapter(att, emb, n_crops=1, image_size=SIZE, outer_epochs=0, device="cpu",
                          random_state=0).fit(X, y, X_val=Xv, y_val=yv)
    assert len(ad.validation_scores_) == 1 and ad.best_epoch_ == 0
    # oracle: embed the whole bank, whiten on the training images' candidates (sklearn's PCA),
    # fit a logistic regression on the training crops, score the worst class
    bank = candidate_bank(SIZE)
    all_boxes = CropSet(X, np.broadcast_to(bank, (48, 58, 4)), np.zeros((48, 58)),
                        np.full((48, 2), SIZE))
    full = CropEmbedder(emb, image_size=SIZE, device="cpu").fit(all_boxes).transform(all_boxes)
    d = full.shape[1] // 58
    pca = PCA(n_components=min(64, d), whiten=True, svd_solver="full")
    pca.fit(full.reshape(-1, d))
    embedder = CropEmbedder(emb, image_size=SIZE, device="cpu")

    def features(images):
        crops = ad.transform(images)
        return pca.transform(embedder.fit(crops).transform(crops)) / np.sqrt(pca.n_components_)

    head = LogisticRegression(max_iter=300).fit(features(X), y)
    pred = head.predict(features(Xv))
    expected = min(np.mean(pred[yv == c] == c) for c in (0, 1))
    assert ad.validation_scores_[0] == pytest.approx(expected)
    # with groups_val, the worst (group, class) cell
    gv = np.arange(20) % 3
    grouped = clone(ad).fit(X, y, X_val=Xv, y_val=yv, groups_val=gv)
    cells = [(g, c) for g in range(3) for c in (0, 1) if np.any((gv == g) & (yv == c))]
    worst = min(np.mean(pred[(gv == g) & (yv == c)] == c) for g, c in cells)
    assert grouped.validation_scores_[0] == pytest.approx(worst) and worst <= expected


def test_early_stopping_keeps_the_best_epoch(models):
    att, emb = models
    X, y, _, _ = distractor_images(48, 0.8, seed=16)
    Xv, yv, _, _ = distractor_images(24, 0.5, seed=17)
    kw = dict(n_crops=1, image_size=SIZE, outer_batch_size=8, sigma_final=None, device="cpu",
              random_state=0)
    ad = AttentionAdapter(att, emb, outer_epochs=12, n_iter_no_change=3, **kw)
    ad.fit(X, y, X_val=Xv, y_val=yv)
    scores = ad.validation_scores_
    assert len(scores) == ad.n_iter_ + 1 and ad.loss_curve_ == ad.loss_curve_[:ad.n_iter_]
    assert ad.best_validation_score_ == max(scores) == scores[ad.best_epoch_]
    assert ad.n_iter_ == 12 or ad.n_iter_ - max(ad.best_epoch_, 0) >= 3
    # the MLP kept is the one training stopped at best_epoch_ would have had
    again = AttentionAdapter(att, emb, outer_epochs=ad.best_epoch_, early_stopping=False, **kw)
    again.fit(X, y, X_val=Xv, y_val=yv)
    for p, q in zip(ad.coefs_ + ad.intercepts_, again.coefs_ + again.intercepts_):
        np.testing.assert_array_equal(p, q)
    assert again.validation_scores_ == scores[:ad.best_epoch_ + 1]
    assert again.best_validation_score_ is None


def test_groups_reach_fit_through_metadata_routing(models):
    att, emb = models
    X, y, spur, _ = distractor_images(48, 0.8, seed=18)
    groups = 2 * y + spur
    kw = dict(n_crops=1, image_size=SIZE, outer_epochs=2, outer_batch_size=8, device="cpu",
              random_state=0)
    direct = AttentionAdapter(att, emb, **kw).fit(X, y, groups=groups)
    plain = AttentionAdapter(att, emb, **kw).fit(X, y)
    assert not np.array_equal(direct.coefs_[1], plain.coefs_[1])  # the groups change training
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = Pipeline([
            ("crop", AttentionAdapter(att, emb, **kw).set_fit_request(groups=True)),
            ("emb", CropEmbedder(emb, image_size=SIZE, device="cpu", cache="memory")),
            ("lr", LogisticRegression(max_iter=500)),
        ]).fit(X, y, groups=groups)
    routed = pipe.named_steps["crop"]
    for p, q in zip(direct.coefs_ + direct.intercepts_, routed.coefs_ + routed.intercepts_):
        np.testing.assert_array_equal(p, q)


def test_validation_inputs_are_checked(models):
    att, emb = models
    X, y, _, _ = distractor_images(24, 0.8, seed=20)
    kw = dict(image_size=SIZE, outer_epochs=1, device="cpu")
    ad = AttentionAdapter(att, emb, **kw)
    with pytest.raises(ValueError, match="X_val needs y_val"):
        ad.fit(X, y, X_val=X[:4])
    with pytest.raises(ValueError, match="y_val and groups_val need X_val"):
        ad.fit(X, y, y_val=y[:4])
    with pytest.raises(ValueError, match=r"y_val must be 1-D with one label per image of X_val "
                                         r"\(4\), got shape \(3,\)"):
        ad.fit(X, y, X_val=X[:4], y_val=y[:3])
    with pytest.raises(ValueError, match=r"y_val holds labels absent from y: \[7\]"):
        ad.fit(X, y, X_val=X[:2], y_val=[0, 7])
    with pytest.raises(ValueError, match=r"groups must be 1-D with one group label per image "
                                         r"\(24\), got shape \(5,\)"):
        ad.fit(X, y, groups=np.zeros(5))
    with pytest.raises(ValueError, match=r"X_val\[0\] is 16x16 pixels, smaller than the "
                                         r"18-pixel"):
        ad.fit(X, y, X_val=X[:2, :16, :16], y_val=y[:2])


# ---------------------------------------------------------------- the two-object benchmark


def test_make_two_object_layout_and_correlation():
    data = make_two_object(40, correlation=0.9, image_size=112, random_state=3)
    assert data.images.shape == (40, 112, 112, 3) and data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.groups, 2 * data.target + data.spurious)
    for label in (0, 1):  # 20 per class, 2 of them (10 %) with the other photo
        members = data.target == label
        assert members.sum() == 20 and (data.spurious[members] != label).sum() == 2
    d, p = data.boxes, data.distractor_boxes
    assert np.all(d[:, 2] - d[:, 0] == 24) and np.all(d[:, 3] - d[:, 1] == 24)  # 48/224 of 112
    assert np.all(d[:, 1] >= 0.62 * 112) and np.all(d[:, 2:] <= 112) and np.all(d[:, :2] >= 0)
    assert np.all(p[:, 3] <= 0.55 * 112) and np.all(p[:, 2] - p[:, 0] >= 0.4 * 112 - 1)
    for i in range(40):  # the digit's full-ink pixels: white (250) or, on light texture, dark
        x0, y0, x1, y1 = d[i]
        box = data.images[i, y0:y1, x0:x1].astype(int)
        assert max(np.all(box == 250, -1).sum(), np.all(box == 15, -1).sum()) >= 20
    again = make_two_object(40, correlation=0.9, image_size=112, random_state=3)
    np.testing.assert_array_equal(again.images, data.images)
    other = make_two_object(40, correlation=0.9, image_size=112, random_state=4)
    assert not np.array_equal(other.images, data.images)
    independent = make_two_object(40, correlation=0.5, image_size=112, random_state=3)
    assert (independent.target == independent.spurious).sum() == 20


@pytest.mark.parametrize("kwargs, message", [
    ({"n_samples": 1}, "n_samples must be an int >= 2, got 1"),
    ({"correlation": 1.5}, r"correlation must be a number in \[0, 1\], got 1.5"),
    ({"image_size": 40}, "image_size must be an int >= 56, got 40"),
])
def test_make_two_object_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_two_object(**{"n_samples": 10, **kwargs})


# ---------------------------------------------------------------- the real DINOv2 ViT-S/14


REAL = dict(image_size=112, device="cpu", cache="memory")
EMBED = 42  # the embedding model sees every candidate at 42 px: 3 x 3 patches of 14


def first_crop_hits(cropset, boxes):
    """Share of images whose first crop covers at least half of the label object's box."""
    b = cropset.boxes[:, 0]
    ix = np.minimum(b[:, 2], boxes[:, 2]) - np.maximum(b[:, 0], boxes[:, 0])
    iy = np.minimum(b[:, 3], boxes[:, 3]) - np.maximum(b[:, 1], boxes[:, 1])
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    return float(np.mean(inter >= 0.5 * np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)))


def two_object_pipeline(cropper):
    return Pipeline([("crop", cropper),
                     ("emb", CropEmbedder("imgfocus_vits14", image_size=EMBED, device="cpu",
                                          cache="memory")),
                     ("lr", LogisticRegression(max_iter=3000))])


@pytest.fixture(scope="module")
def two_object_test():
    return make_two_object(200, correlation=0.5, image_size=112, random_state=2)


@pytest.fixture(scope="module")
def two_object_pool():
    """320 training images, photo independent of the digit: both training sets are drawn from it,
    so the bank embeddings of the images they share are computed once (memory cache)."""
    return make_two_object(320, correlation=0.5, image_size=112, random_state=0)


def draw(pool, n_agree, n_disagree):
    """Per class, the first ``n_agree`` images whose photo agrees with the digit and the first
    ``n_disagree`` whose photo disagrees: a training set of correlation n_agree/(n_agree+n_disagree)."""
    agree = pool.target == pool.spurious
    idx = np.concatenate([np.flatnonzero((pool.target == c) & (agree == a))[:n]
                          for c in (0, 1) for a, n in ((True, n_agree), (False, n_disagree))])
    assert len(idx) == 2 * (n_agree + n_disagree)
    return pool.images[idx], pool.target[idx], pool.groups[idx]


def test_adapter_finds_the_digit_the_attention_ignores(two_object_pool, two_object_test):
    """Photo independent of the label: the adapter's crop moves from the photo to the digit."""
    X, y, _ = draw(two_object_pool, 40, 40)
    test = two_object_test
    a2 = AttentionCropper("imgfocus_vits14", crop_sizes=(32,), n_crops=1, **REAL).fit()
    adapter = AttentionAdapter("imgfocus_vits14", "imgfocus_vits14", n_crops=1,
                               embedding_size=EMBED, random_state=0, **REAL)
    adapter.fit(X, y)
    before = first_crop_hits(a2.transform(test.images), test.boxes)
    after = first_crop_hits(adapter.transform(test.images), test.boxes)
    assert before <= 0.14 and after >= 0.7, (before, after)


def test_adapter_beats_a2_when_the_photo_is_a_shortcut(two_object_pool, two_object_test):
    """Photo 90 % correlated with the label in training, independent in test; groups routed."""
    X, y, groups = draw(two_object_pool, 72, 8)
    test = two_object_test
    a2 = two_object_pipeline(
        AttentionCropper("imgfocus_vits14", crop_sizes=(32,), n_crops=1, **REAL))
    a2_wga = worst_group_accuracy(test.target, a2.fit(X, y).predict(test.images),
                                  groups=test.groups)
    adapter = AttentionAdapter("imgfocus_vits14", "imgfocus_vits14", n_crops=1,
                               embedding_size=EMBED, random_state=0, **REAL)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = two_object_pipeline(adapter.set_fit_request(groups=True))
        pipe.fit(X, y, groups=groups)
    wga = worst_group_accuracy(test.target, pipe.predict(test.images), groups=test.groups)
    assert wga >= 0.5 and wga >= a2_wga + 0.3, (a2_wga, wga)


def test_adapter_composes_models_instead_of_inheriting_their_loading():
    """The adapter builds a cropper and an embedder from its parameters: it takes only the
    image-input mixin (tags, unpickling), none of a one-model estimator's loading methods."""
    from sk_a2._base import ImageInputMixin, ModelEstimatorMixin

    assert issubclass(AttentionAdapter, ImageInputMixin)
    assert not issubclass(AttentionAdapter, ModelEstimatorMixin)
    for name in ("_load", "_fit_model", "_cache_args", "_precision"):
        assert not hasattr(AttentionAdapter, name), name
    tags = AttentionAdapter("a", "b").__sklearn_tags__()
    assert tags.input_tags.string and not tags.input_tags.two_d_array
    assert tags.target_tags.required
