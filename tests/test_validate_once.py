"""Parameters are validated once per call: once per ``fit``, once per ``transform``-like call.

The count is taken at scikit-learn's entry point, ``BaseEstimator._validate_params``, which
``_fit_context`` (on ``fit``) and ``sk_a2._param_validation.validated_call`` (on ``transform``,
``predict`` ...) call. A call after ``fit`` validates again, exactly once, since ``set_params``
may have changed the estimator; what runs inside a call (nested estimators, the estimator's own
decorated methods, ``load_model``) is not validated again.
"""

from collections import Counter

import numpy as np
import pytest
from conftest import blob_images, make_clip, make_timm, random_images
from sklearn.base import BaseEstimator

from sk_a2 import (
    AttentionAdapter,
    AttentionCropper,
    CenterCropper,
    CropEmbedder,
    DFRClassifier,
    RandomCropper,
    ZeroShotCLIPClassifier,
)


@pytest.fixture
def count(monkeypatch):
    """Counter of ``_validate_params`` calls by estimator class name."""
    calls = Counter()
    original = BaseEstimator._validate_params

    def counting(self):
        calls[type(self).__name__] += 1
        return original(self)

    monkeypatch.setattr(BaseEstimator, "_validate_params", counting)
    return calls


def _once(count, call, name):
    """Run ``call`` and check that it validated ``name``'s parameters exactly once, and nothing
    else's."""
    count.clear()
    out = call()
    assert count == Counter({name: 1}), dict(count)
    return out


@pytest.mark.parametrize("make", [lambda f: CenterCropper(crop_sizes=(32,), image_size=64),
                                  lambda f: RandomCropper(crop_sizes=(32,), image_size=64),
                                  lambda f: AttentionCropper("timm:test_vit", weights=f,
                                                             crop_sizes=(32,), image_size=64,
                                                             device="cpu")],
                         ids=["CenterCropper", "RandomCropper", "AttentionCropper"])
def test_croppers(make, count, tiny_vit_file):
    X = random_images(3, 64, 64)
    est = make(tiny_vit_file)
    name = type(est).__name__
    _once(count, lambda: est.fit(X), name)
    _once(count, lambda: est.transform(X), name)
    if isinstance(est, AttentionCropper):
        _once(count, lambda: est.attention_maps(X), name)


def test_embedder(count, tiny_vit_file):
    X = random_images(3, 64, 64)
    crops = CenterCropper(crop_sizes=(32,), image_size=64).fit_transform(X)
    est = CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu")
    _once(count, lambda: est.fit(crops), "CropEmbedder")
    _once(count, lambda: est.transform(crops), "CropEmbedder")


def test_dfr(count):
    rng = np.random.RandomState(0)
    X, y = rng.randn(40, 3), np.arange(40) % 2
    est = _once(count, lambda: DFRClassifier(n_retrains=2).fit(X, y), "DFRClassifier")
    count.clear()
    est.predict(X)  # reads the fitted model only: nothing to validate
    assert not count


def test_zero_shot(count):
    X, y = random_images(3, 64, 64), np.array([0, 1, 0])
    est = ZeroShotCLIPClassifier(make_clip(seed=0), classnames=["a", "b"], image_size=64,
                                 device="cpu")
    _once(count, lambda: est.fit(X, y), "ZeroShotCLIPClassifier")
    for method in (est.decision_function, est.predict_proba, est.predict_log_proba, est.predict):
        _once(count, lambda: method(X), "ZeroShotCLIPClassifier")


def test_adapter(count):
    X, y = blob_images(8, size=64, seed=0)
    est = AttentionAdapter(make_timm(img_size=64, seed=0), make_timm(img_size=64, seed=1),
                           n_crops=1, image_size=64, outer_epochs=1, outer_batch_size=2, device="cpu",
                           random_state=0)
    _once(count, lambda: est.fit(X, y), "AttentionAdapter")
    for method in (est.transform, est.attention_maps, est.adapted_maps):
        _once(count, lambda: method(X), "AttentionAdapter")


def test_set_params_after_fit_is_seen_by_the_next_call(count):
    X = random_images(2, 64, 64)
    est = CenterCropper(crop_sizes=(32,), image_size=64).fit(X)
    est.set_params(crop_sizes=0)
    with pytest.raises(ValueError, match="'crop_sizes' parameter of CenterCropper"):
        est.transform(X)


@pytest.mark.parametrize("make", [lambda w: CenterCropper(crop_sizes=(32,), image_size=64),
                                  lambda w: AttentionCropper("timm:test_vit", weights=w,
                                                             crop_sizes=(16,), image_size=64,
                                                             device="cpu")],
                         ids=["CenterCropper", "AttentionCropper"])
def test_fit_transform_validates_once(make, count, tiny_vit_file):
    X = random_images(3, 64, 64)
    est = make(tiny_vit_file)
    crops = _once(count, lambda: est.fit_transform(X), type(est).__name__)
    count.clear()
    emb = CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu")
    out = _once(count, lambda: emb.fit_transform(crops), "CropEmbedder")
    np.testing.assert_array_equal(out, emb.transform(crops))  # the same as fit, then transform
