"""A² + DFR in one Pipeline: groups reach DFRClassifier through metadata routing."""

import warnings

import numpy as np
import pytest
import sklearn
from conftest import blob_images
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from sk_a2 import (
    AttentionCropper,
    CropEmbedder,
    DFRClassifier,
    worst_group_accuracy,
    worst_group_scorer,
)

DFR_PARAMS = {"C_grid": (1.0, 0.1), "class_weight_grid": None, "n_retrains": 3, "random_state": 0}


@pytest.fixture(scope="module")
def data():
    """Blob images with a random spurious attribute: group = 2 * class + attribute."""
    X, y = blob_images(48, size=64, seed=3)
    attribute = np.random.RandomState(4).randint(0, 2, size=len(y))
    return X, y, 2 * y + attribute


def make_pipe(tiny_vit_file, tiny_vit_file2):
    """crop -> emb -> dfr, DFR requesting ``groups`` (which needs routing to be enabled)."""
    crop = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                            crop_sizes=(32, 16), device="cpu")
    emb = CropEmbedder("timm:test_vit", weights=tiny_vit_file2, image_size=64, device="cpu")
    with sklearn.config_context(enable_metadata_routing=True):
        dfr = DFRClassifier(**DFR_PARAMS).set_fit_request(groups=True)
    return Pipeline([("crop", crop), ("emb", emb), ("dfr", dfr)])


def test_groups_routed_to_dfr(data, tiny_vit_file, tiny_vit_file2):
    X, y, groups = data
    pipe = make_pipe(tiny_vit_file, tiny_vit_file2)
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.filterwarnings("error", message="DFRClassifier.fit got no groups")
        pipe.fit(X, y, groups=groups)
    pred = pipe.predict(X)
    assert pred.shape == y.shape and set(pred) <= {0, 1}
    assert pipe.predict_proba(X).shape == (len(y), 2)

    dfr = pipe.named_steps["dfr"]
    np.testing.assert_array_equal(dfr.groups_, [0, 1, 2, 3])
    embeddings = pipe[:-1].transform(X)
    assert embeddings.shape == (len(y), 2 * 64)
    direct = DFRClassifier(**DFR_PARAMS).fit(embeddings, y, groups=groups)
    np.testing.assert_array_equal(dfr.coef_, direct.coef_)
    np.testing.assert_array_equal(dfr.intercept_, direct.intercept_)
    assert dfr.best_params_ == direct.best_params_

    with pytest.warns(UserWarning, match="no groups"):
        classes_as_groups = DFRClassifier(**DFR_PARAMS).fit(embeddings, y)
    assert not np.array_equal(dfr.coef_, classes_as_groups.coef_)


def test_groups_without_routing_is_a_clear_error(data, tiny_vit_file, tiny_vit_file2):
    X, y, groups = data
    pipe = make_pipe(tiny_vit_file, tiny_vit_file2)
    assert not sklearn.get_config()["enable_metadata_routing"]
    with pytest.raises(ValueError, match="Pipeline.fit does not accept the groups parameter"):
        pipe.fit(X, y, groups=groups)


def test_groups_unrequested_is_a_clear_error(data, tiny_vit_file, tiny_vit_file2):
    X, y, groups = data
    pipe = make_pipe(tiny_vit_file, tiny_vit_file2)
    pipe.steps[-1] = ("dfr", DFRClassifier(**DFR_PARAMS))
    with (sklearn.config_context(enable_metadata_routing=True),
          pytest.raises(ValueError, match=r"set_fit_request")):
        pipe.fit(X, y, groups=groups)


def test_grid_search_worst_group_routed_to_fit_and_scorer(data, tiny_vit_file, tiny_vit_file2):
    X, y, groups = data
    pipe = make_pipe(tiny_vit_file, tiny_vit_file2)
    folds = list(StratifiedKFold(n_splits=2, shuffle=True, random_state=0).split(X, groups))
    search = GridSearchCV(pipe, {"crop__n_crops": [1, 3]}, scoring=worst_group_scorer,
                          cv=folds, refit=False, error_score="raise")
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.filterwarnings("error", message="DFRClassifier.fit got no groups")
        search.fit(X, y, groups=groups)

    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))

    candidate = search.cv_results_["params"].index({"crop__n_crops": 3})
    with sklearn.config_context(enable_metadata_routing=True):
        for i, (train, test) in enumerate(folds):
            model = clone(pipe).set_params(crop__n_crops=3)
            model.fit(X[train], y[train], groups=groups[train])
            expected = worst_group_accuracy(y[test], model.predict(X[test]), groups=groups[test])
            assert search.cv_results_[f"split{i}_test_score"][candidate] == expected
