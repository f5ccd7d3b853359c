"""ZeroShotCLIPClassifier against open_clip's own zero-shot classifier, and the sklearn contract."""

import copy
import importlib.util
import pickle
from pathlib import Path

import joblib
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CLIP, blob_images, make_clip, make_timm, random_images
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from safetensors.torch import save_file
from scipy.special import log_softmax, softmax
from sklearn.base import clone, is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CropSet
from sk_a2.images import load_resized
from sk_a2.zeroshot import ZeroShotCLIPClassifier

S = 64  # the tiny CLIP's input size


@pytest.fixture(scope="module")
def clip():
    return make_clip(seed=3)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.safetensors"
    save_file(make_clip(seed=3).state_dict(), str(path))
    return path


def zs(model, **kw):
    return ZeroShotCLIPClassifier(model, image_size=S, device="cpu", **kw)


def reference_logits(model, X, frame_boxes, classnames, templates, dtype=torch.float32):
    """Per-input logits (n, k, C) by open_clip directly, crops cut with F.interpolate; with
    ``dtype``, by a copy of the model held in that dtype."""
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
    text = build_zero_shot_classifier(model, tokenizer, classnames, templates,
                                      num_classes_per_batch=2)
    cfg = model.visual.preprocess_cfg
    mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
    out = []
    for i in range(len(X)):
        pixels, _ = load_resized(X[i], S)
        img = torch.tensor(pixels).permute(2, 0, 1).float() / 255
        crops = [img] if frame_boxes is None else [
            F.interpolate(img[None, :, y0:y1, x0:x1], size=(S, S), mode="bilinear",
                          align_corners=False)[0]
            for x0, y0, x1, y1 in frame_boxes[i]
        ]
        with torch.no_grad():
            feats = model.encode_image(((torch.stack(crops) - mean) / std).to(dtype))
            feats = F.normalize(feats.float(), dim=-1)
            out.append((model.logit_scale.exp().float() * feats @ text.float()).numpy())
    return np.stack(out).astype(np.float64)


def aggregate(logits, how):
    if how == "logits_mean":
        return softmax(logits.mean(1), -1)
    p = softmax(logits, -1)
    if how == "mean":
        return p.mean(1)
    p = p.max(1)
    return p / p.sum(-1, keepdims=True)


def cropset_from_frame(X, frame_boxes):
    """A CropSet whose boxes are the integer ``frame_boxes`` in the S x S frame."""
    h, w = X.shape[1:3]
    boxes = np.asarray(frame_boxes, np.float64) * [w / S, h / S, w / S, h / S]
    n, k = boxes.shape[:2]
    return CropSet(X, boxes.astype(np.float32), np.full((n, k), np.nan), [[h, w]] * n)


def test_one_attention_crop_matches_open_clip(clip):
    X = random_images(4, h=70, w=50, seed=5)
    y = np.array([0, 1, 0, 1])
    cs = AttentionCropper(clip, crop_sizes=(32,), image_size=S, device="cpu").fit_transform(X)
    est = zs(clip, classnames=["cat", "dog"]).fit(cs, y)
    frame = np.round(cs.frame_boxes(S)).astype(int)
    ref = softmax(reference_logits(clip, X, frame, ["cat", "dog"], ("a photo of a {}.",))[:, 0],
                  -1)
    proba = est.predict_proba(cs)
    assert proba.shape == (4, 2)
    np.testing.assert_allclose(proba, ref, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(est.predict(cs), ref.argmax(1))
    decision = est.decision_function(cs)
    assert decision.shape == (4,)
    np.testing.assert_allclose(decision, np.log(ref[:, 1]) - np.log(ref[:, 0]), atol=1e-4)


@pytest.mark.parametrize("how", ["mean", "max", "logits_mean"])
def test_several_crops_each_aggregation(clip, how):
    X = random_images(3, h=80, w=96, seed=7)
    frame = [[[0, 0, 32, 32], [40, 8, 56, 24], [10, 30, 50, 62]],
             [[32, 32, 64, 64], [0, 40, 24, 64], [5, 5, 13, 13]],
             [[16, 16, 48, 48], [0, 0, 16, 16], [48, 0, 64, 16]]]
    cs = cropset_from_frame(X, frame)
    names, templates = ["red thing", "blue thing", "tree"], ("a photo of a {}.", "{}", "art: {}")
    y = np.array(["b", "c", "a"])
    est = zs(clip, classnames=names, templates=templates, crop_aggregation=how, batch_size=4)
    est.fit(cs, y)
    logits = reference_logits(clip, X, frame, names, templates)
    ref = aggregate(logits, how)
    proba = est.predict_proba(cs)
    np.testing.assert_allclose(proba, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-12)
    np.testing.assert_array_equal(est.predict(cs), np.array(["a", "b", "c"])[ref.argmax(1)])
    decision = est.decision_function(cs)
    assert decision.shape == (3, 3)
    expected = logits.mean(1) if how == "logits_mean" else np.log(ref)
    np.testing.assert_allclose(decision, expected, atol=1e-4)
    np.testing.assert_allclose(softmax(decision, -1), proba, atol=1e-6)
    np.testing.assert_allclose(est.predict_log_proba(cs), log_softmax(decision, -1), atol=1e-9)


def test_bfloat16_runs_a_bf16_copy_of_both_towers(clip):
    X = random_images(3, h=80, w=96, seed=7)
    frame = [[[0, 0, 32, 32], [40, 8, 56, 24]], [[32, 32, 64, 64], [0, 40, 24, 64]],
             [[16, 16, 48, 48], [0, 0, 16, 16]]]
    cs = cropset_from_frame(X, frame)
    names, templates = ["red thing", "blue thing", "tree"], ("a photo of a {}.", "art: {}")
    est = zs(clip, classnames=names, templates=templates, precision="bfloat16", batch_size=4,
             crop_aggregation="logits_mean")
    with pytest.warns(UserWarning, match="slower than float32"):  # this CPU emulates bf16
        est.fit(cs, ["a", "b", "c"])
        got = est.predict_proba(cs)
    ref16 = softmax(reference_logits(clip, X, frame, names, templates, torch.bfloat16).mean(1), -1)
    ref32 = softmax(reference_logits(clip, X, frame, names, templates).mean(1), -1)
    np.testing.assert_allclose(got, ref16, atol=2e-3, rtol=0)
    assert np.abs(got - ref16).max() < np.abs(got - ref32).max()  # bf16 numbers, not float32's
    assert all(p.dtype == torch.float32 for p in clip.parameters())  # the model passed in


def test_plain_images_are_classified_whole(clip):
    X = random_images(3, h=40, w=60, seed=2)
    y = [0, 1, 2]
    templates = ("a photo of a {}.", "a drawing of a {}.")
    est = zs(clip, templates=templates).fit(X, y)
    assert est.classnames_ == ["0", "1", "2"]
    ref = softmax(reference_logits(clip, X, None, ["0", "1", "2"], templates)[:, 0], -1)
    np.testing.assert_allclose(est.predict_proba(X), ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(est.predict_proba(list(X)), ref, atol=1e-5, rtol=0)


def test_named_model_with_weights_file(clip, clip_file):
    X = random_images(3, 64, 64, seed=4)
    y = [0, 1, 1]
    named = zs(f"open_clip:{TINY_CLIP}:", weights=clip_file, classnames=["a", "b"]).fit(X, y)
    module = zs(clip, classnames=["a", "b"]).fit(X, y)
    np.testing.assert_allclose(named.predict_proba(X), module.predict_proba(X), atol=1e-6)


def test_text_classifier_built_once_in_fit(clip, monkeypatch):
    X = random_images(2, 64, 64)
    est = zs(clip).fit(X, [0, 1])
    calls = []
    monkeypatch.setattr(ZeroShotCLIPClassifier, "_class_embeddings",
                        lambda *args: calls.append(1))
    est.predict(X)
    est.predict_proba(X)
    assert calls == []


def test_pickle_is_small_and_predicts_identically(tiny_vit_file, clip_file, tmp_path):
    X, y = blob_images(8, seed=4)
    pipe = Pipeline([
        ("crop", AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=S,
                                  crop_sizes=(32, 16), device="cpu")),
        ("zs", zs(f"open_clip:{TINY_CLIP}:", weights=clip_file, classnames=["blue", "red"],
                  crop_aggregation="max")),
    ]).fit(X, y)
    path = tmp_path / "zs.joblib"
    joblib.dump(pipe, path)
    assert path.stat().st_size < 100_000
    raw = pickle.dumps(pipe)
    assert b"torch" not in raw
    loaded = joblib.load(path)
    assert not hasattr(loaded.named_steps["zs"], "_text_cache")
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    assert b"torch" not in pickle.dumps(loaded)


def test_pipeline_grid_search_and_cross_val(clip):
    X, y = blob_images(12, seed=1)
    pipe = Pipeline([
        ("crop", AttentionCropper(clip, crop_sizes=(32, 16), image_size=S, device="cpu")),
        ("zs", zs(clip, classnames=["blue square", "red square"])),
    ])
    search = GridSearchCV(pipe, {"crop__n_crops": [1, 2]}, cv=2, n_jobs=1, error_score="raise")
    search.fit(X, y)
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.predict(X).shape == (12,)
    scores = cross_val_score(pipe, X, y, cv=2, n_jobs=1, error_score="raise")
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


def test_sklearn_contract(clip):
    est = zs(clip, classnames=("x", "y"))
    assert is_classifier(est)
    tags = est.__sklearn_tags__()
    assert tags.input_tags.two_d_array is False
    params = est.get_params()
    assert params["classnames"] == ("x", "y") and params["model"] is clip
    assert params["templates"] == ("a photo of a {}.",)
    with pytest.raises(NotFittedError):
        est.predict(random_images(1))
    cloned = clone(est)
    assert cloned.get_params()["crop_aggregation"] == "mean"
    est.fit(random_images(2), ["u", "v"])
    assert list(est.classes_) == ["u", "v"] and est.classnames_ == ["x", "y"]
    assert est.templates_ == ("a photo of a {}.",) and not hasattr(clone(est), "classes_")
    assert est.score(random_images(2), ["u", "v"]) in (0.0, 0.5, 1.0)


def test_one_class_is_fine(clip):
    X = random_images(3)
    est = zs(clip, classnames=["bird"]).fit(X, [7, 7, 7])
    np.testing.assert_allclose(est.predict_proba(X), np.ones((3, 1)))
    np.testing.assert_array_equal(est.predict(X), [7, 7, 7])


def test_bad_inputs(clip):
    X = random_images(2)
    with pytest.raises(ValueError, match="classnames has 3 names but y has 2 classes"):
        zs(clip, classnames=["a", "b", "c"]).fit(X, [0, 1])
    with pytest.raises(ValueError, match='"{}"'):
        zs(clip, templates=("a photo of a cat",)).fit(X, [0, 1])
    with pytest.raises(ValueError, match="templates is empty"):
        zs(clip, templates=()).fit(X, [0, 1])
    with pytest.raises(ValueError, match="crop_aggregation"):
        zs(clip, crop_aggregation="median").fit(X, [0, 1])
    with pytest.raises(ValueError, match="2 images but y has 3"):
        zs(clip).fit(X, [0, 1, 1])
    with pytest.raises(TypeError, match="'classnames' parameter of ZeroShotCLIPClassifier must be a "
                                        "sequence"):
        zs(clip, classnames="ab").fit(X, [0, 1])
    with pytest.raises(ValueError, match="needs y"):
        zs(clip).fit(X, None)
    assert zs(clip, templates="a {}").fit(X, [0, 1]).templates_ == ("a {}",)


def test_vision_only_models_are_rejected(tiny_vit_file):
    X = random_images(2)
    with pytest.raises(ValueError, match="open_clip CLIP model"):
        ZeroShotCLIPClassifier("timm:test_vit", weights=tiny_vit_file, image_size=S,
                               device="cpu").fit(X, [0, 1])
    with pytest.raises(ValueError, match="open_clip CLIP model"):
        ZeroShotCLIPClassifier(make_timm(), image_size=S, device="cpu").fit(X, [0, 1])


# ------------------------------------------------------------------ the example script


def _load_example():
    path = Path(__file__).resolve().parents[1] / "examples" / "zero_shot.py"
    spec = importlib.util.spec_from_file_location("zero_shot_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_runs_with_tiny_models(clip):
    example = _load_example()
    results = example.run(clip_model=clip, attention_model=clip, n_samples=20, image_size=S,
                          crop_size=32, device="cpu")
    assert set(results) == {"full image", "A2 crop"}
    assert all(0 <= v <= 1 for pair in results.values() for v in pair)


def test_example_explains_missing_weights(monkeypatch, capsys):
    import sk_a2.backends.hub

    monkeypatch.setattr(sk_a2.backends.hub, "hf_cached", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _load_example().main(["--clip-model", "openclip_vitl14", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--clip-weights" in err and err.count("\n") == 1
