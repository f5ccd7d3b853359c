"""DFRClassifier: scikit-learn conformance, routing, splits, robustness on planted spurious data."""

import warnings

import numpy as np
import pytest
import sklearn
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from sk_a2.dfr import DFRClassifier
from sk_a2.metrics import worst_group_accuracy, worst_group_scorer

NO_GROUPS = "DFRClassifier.fit got no groups"
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)


def make_spurious(n, agree, rng, core_noise=0.7, spurious_noise=0.2, n_noise=8):
    """A noisy core feature, a clean spurious one agreeing with y in ``agree`` of rows, noise.

    Groups are ``2 * y + s`` with ``s`` the spurious attribute.
    """
    y = rng.randint(2, size=n)
    s = np.where(rng.rand(n) < agree, y, 1 - y)
    X = np.column_stack(
        [
            (2 * y - 1) + core_noise * rng.randn(n),
            (2 * s - 1) + spurious_noise * rng.randn(n),
            rng.randn(n, n_noise),
        ]
    )
    return X, y, 2 * y + s


@pytest.fixture(scope="module")
def spurious():
    rng = np.random.RandomState(0)
    return {
        "train": make_spurious(2000, 0.95, rng),
        "val": make_spurious(4000, 0.95, rng),
        "test": make_spurious(4000, 0.5, rng),
    }


@pytest.fixture
def small():
    rng = np.random.RandomState(1)
    return make_spurious(300, 0.8, rng, n_noise=2)


def reference_dfr_val(X, y, g, seed, n_retrains=20):
    """DFR(Val) as in the reference script, written out with plain loops.

    Tune C: shuffle, score on the first half, fit on a group-balanced subset of the second
    half (scaler fitted on that subset). Retrain: scaler on all rows, ``n_retrains`` models on
    group-balanced subsets of all rows, weights averaged.
    """
    rng = np.random.RandomState(seed)
    n_groups = g.max() + 1
    order = rng.permutation(len(X))
    half = len(X) // 2
    score_rows, fit_rows = order[:half], order[half:]

    by_group = [fit_rows[g[fit_rows] == k] for k in range(n_groups)]
    smallest = min(len(rows) for rows in by_group)
    keep = np.concatenate([rng.permutation(rows)[:smallest] for rows in by_group])
    scaler = StandardScaler().fit(X[keep])
    best_c, best_worst = None, -1.0
    for c in C_GRID:
        model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear")
        model.fit(scaler.transform(X[keep]), y[keep])
        pred = model.predict(scaler.transform(X[score_rows]))
        accuracies = []
        for k in range(n_groups):
            in_group = g[score_rows] == k
            accuracies.append(np.mean(pred[in_group] == y[score_rows][in_group]))
        if min(accuracies) > best_worst:
            best_c, best_worst = c, min(accuracies)

    scaler = StandardScaler().fit(X)
    coefs, intercepts = [], []
    for _ in range(n_retrains):
        by_group = [np.flatnonzero(g == k) for k in range(n_groups)]
        smallest = min(len(rows) for rows in by_group)
        keep = np.concatenate([rng.permutation(rows)[:smallest] for rows in by_group])
        model = LogisticRegression(C=best_c, l1_ratio=1.0, solver="liblinear")
        model.fit(scaler.transform(X[keep]), y[keep])
        coefs.append(model.coef_[0])
        intercepts.append(model.intercept_[0])
    w, b = np.mean(coefs, axis=0), np.mean(intercepts)
    return lambda X_new: (scaler.transform(X_new) @ w + b > 0).astype(int)


@pytest.mark.filterwarnings(f"ignore:{NO_GROUPS}")
@parametrize_with_checks([DFRClassifier()])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_beats_plain_logistic_regression_on_planted_spurious_feature(spurious):
    X_tr, y_tr, g_tr = spurious["train"]
    X_val, y_val, g_val = spurious["val"]
    X_te, y_te, g_te = spurious["test"]
    plain = worst_group_accuracy(
        y_te, LogisticRegression().fit(X_tr, y_tr).predict(X_te), groups=g_te
    )
    dfr_train = DFRClassifier(mode="train", random_state=0).fit(X_tr, y_tr, groups=g_tr)
    dfr_val = DFRClassifier(mode="val", random_state=0).fit(X_val, y_val, groups=g_val)
    for model in (dfr_train, dfr_val):
        assert worst_group_accuracy(y_te, model.predict(X_te), groups=g_te) > plain + 0.1
    # the spurious feature keeps little weight after group-balanced retraining
    assert abs(dfr_val.coef_[0, 1]) < 0.25 * abs(dfr_val.coef_[0, 0])


def test_matches_reference_algorithm_within_one_point(spurious):
    X_val, y_val, g_val = spurious["val"]
    X_te, y_te, g_te = spurious["test"]
    ours, reference = [], []
    for seed in range(5):
        model = DFRClassifier(class_weight_grid=None, random_state=seed)
        model.fit(X_val, y_val, groups=g_val)
        ours.append(worst_group_accuracy(y_te, model.predict(X_te), groups=g_te))
        predict = reference_dfr_val(X_val, y_val, g_val, seed)
        reference.append(worst_group_accuracy(y_te, predict(X_te), groups=g_te))
    assert np.mean(ours) > 0.85
    assert abs(np.mean(ours) - np.mean(reference)) < 0.01


def test_groups_routed_through_pipeline(small):
    X, y, g = small
    direct = DFRClassifier(n_retrains=5, random_state=0).fit(X, y, groups=g)
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(
            FunctionTransformer(),
            DFRClassifier(n_retrains=5, random_state=0).set_fit_request(groups=True),
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=NO_GROUPS)
            pipe.fit(X, y, groups=g)
    routed = pipe[-1]
    np.testing.assert_array_equal(routed.groups_, [0, 1, 2, 3])
    np.testing.assert_array_equal(routed.coef_, direct.coef_)
    np.testing.assert_array_equal(pipe.predict(X), direct.predict(X))


def test_groups_routed_through_grid_search_to_fit_and_scorer(small):
    X, y, g = small
    cv = KFold(3, shuffle=True, random_state=0)
    params = {"n_retrains": 3, "class_weight_grid": None, "random_state": 0}
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            DFRClassifier(**params).set_fit_request(groups=True),
            {"mode": ["val", "train"]},
            scoring=worst_group_scorer,
            cv=cv,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=NO_GROUPS)
            search.fit(X, y, groups=g)
    for i, mode in enumerate(["val", "train"]):
        expected = []
        for train, test in cv.split(X):
            model = DFRClassifier(mode=mode, **params).fit(X[train], y[train], groups=g[train])
            expected.append(worst_group_accuracy(y[test], model.predict(X[test]), groups=g[test]))
        assert search.cv_results_["mean_test_score"][i] == pytest.approx(np.mean(expected))
    np.testing.assert_array_equal(search.best_estimator_.groups_, [0, 1, 2, 3])


def test_same_random_state_same_model(small):
    X, y, g = small
    first = DFRClassifier(random_state=3).fit(X, y, groups=g)
    second = DFRClassifier(random_state=3).fit(X, y, groups=g)
    other = DFRClassifier(random_state=4).fit(X, y, groups=g)
    np.testing.assert_array_equal(first.coef_, second.coef_)
    np.testing.assert_array_equal(first.intercept_, second.intercept_)
    np.testing.assert_array_equal(
        first.cv_results_["worst_group_accuracy"], second.cv_results_["worst_group_accuracy"]
    )
    assert first.best_params_ == second.best_params_
    assert not np.array_equal(first.coef_, other.coef_)


def _nested_groups():
    """240 rows; groups (y, s) of sizes 100, 20, 20, 100, so every share is a whole number."""
    rng = np.random.RandomState(0)
    sizes = {0: 100, 1: 20, 2: 20, 3: 100}
    g = np.repeat(list(sizes), list(sizes.values()))
    y = g // 2
    X = np.column_stack([y + rng.randn(len(g)), g % 2 + 0.3 * rng.randn(len(g))])
    return X, y, g


@pytest.mark.parametrize(
    "mode, tune_fraction, n_tune, n_retrain, subset",
    [
        ("val", None, 120, 240, 4 * 20),  # 50/50 tuning; final retraining on all rows
        ("train", None, 48, 192, 4 * 16),  # 20% held out; retraining on the other 80%
        ("train", 0.25, 60, 180, 4 * 15),
        ("val", 0.3, 72, 240, 4 * 20),
    ],
)
def test_split_sizes(mode, tune_fraction, n_tune, n_retrain, subset):
    X, y, g = _nested_groups()
    model = DFRClassifier(mode=mode, tune_fraction=tune_fraction, n_retrains=2, random_state=0)
    model.fit(X, y, groups=g)
    assert model.n_tune_samples_ == n_tune
    assert model.n_retrain_samples_ == n_retrain
    assert model.subset_size_ == subset
    assert model.scaler_.n_samples_seen_ == n_retrain


def test_multiclass_shapes_and_probabilities():
    rng = np.random.RandomState(0)
    n = 600
    y = rng.randint(3, size=n)
    s = np.where(rng.rand(n) < 0.85, y, rng.randint(3, size=n))
    X = np.column_stack(
        [np.eye(3)[y] + 0.6 * rng.randn(n, 3), np.eye(3)[s] + 0.2 * rng.randn(n, 3)]
    )
    labels = np.array(["bird", "cat", "dog"])[y]
    model = DFRClassifier(random_state=0, n_retrains=5).fit(X, labels, groups=3 * y + s)
    assert model.coef_.shape == (3, 6)
    assert model.intercept_.shape == (3,)
    assert len(model.cv_results_["params"]) == len(C_GRID)  # "auto": C alone for multi-class
    scores = model.decision_function(X)
    np.testing.assert_allclose(
        scores, model.scaler_.transform(X) @ model.coef_.T + model.intercept_
    )
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    ovr = expit(scores)
    np.testing.assert_allclose(proba, ovr / ovr.sum(axis=1, keepdims=True))
    np.testing.assert_array_equal(model.predict(X), model.classes_[scores.argmax(axis=1)])
    np.testing.assert_array_equal(model.predict(X), model.classes_[proba.argmax(axis=1)])
    assert np.mean(model.predict(X) == labels) > 0.8


def test_multiclass_coef_is_one_vs_rest_liblinear():
    """With equal class sizes and classes as groups, every balanced subset is the whole set.

    The averaged model is then one L1 liblinear logistic regression per class against the
    rest, on standardised features.
    """
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 60)
    X = np.eye(3)[y] @ rng.randn(3, 4) + rng.randn(180, 4)
    model = DFRClassifier(C_grid=(0.5,), class_weight_grid=None, n_retrains=3, random_state=0)
    model.fit(X, y, groups=y)
    X_std = StandardScaler().fit_transform(X)
    # scikit-learn 1.8 deprecated ``penalty`` for ``l1_ratio``; before it, l1_ratio alone is L2
    l1 = ({"l1_ratio": 1.0} if LogisticRegression().get_params()["penalty"] == "deprecated"
          else {"penalty": "l1"})
    rows = [LogisticRegression(C=0.5, solver="liblinear", **l1).fit(X_std, y == k)
            for k in range(3)]
    np.testing.assert_allclose(model.coef_, [m.coef_[0] for m in rows], atol=5e-3)
    np.testing.assert_allclose(model.intercept_, [m.intercept_[0] for m in rows], atol=5e-3)


def test_binary_decision_and_probabilities(small):
    X, y, g = small
    model = DFRClassifier(random_state=0, n_retrains=5).fit(X, y, groups=g)
    assert model.coef_.shape == (1, X.shape[1])
    assert model.intercept_.shape == (1,)
    scores = model.decision_function(X)
    assert scores.shape == (len(X),)
    np.testing.assert_allclose(
        scores, (model.scaler_.transform(X) @ model.coef_.T + model.intercept_).ravel()
    )
    np.testing.assert_allclose(model.predict_proba(X)[:, 1], expit(scores))
    np.testing.assert_array_equal(model.predict(X), model.classes_[(scores > 0).astype(int)])


def test_without_groups_classes_act_as_groups_with_one_warning(small):
    X, y, _ = small
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = DFRClassifier(random_state=0, n_retrains=5).fit(X, y)
    assert [str(w.message).startswith(NO_GROUPS) for w in caught] == [True]
    np.testing.assert_array_equal(model.groups_, model.classes_)
    same = DFRClassifier(random_state=0, n_retrains=5).fit(X, y, groups=y)
    np.testing.assert_array_equal(model.coef_, same.coef_)


def test_string_groups_and_labels(small):
    X, y, g = small
    labels = np.array(["landbird", "waterbird"])[y]
    names = np.array(["land_on_land", "land_on_water", "water_on_land", "water_on_water"])[g]
    model = DFRClassifier(random_state=0, n_retrains=5).fit(X, labels, groups=names)
    numeric = DFRClassifier(random_state=0, n_retrains=5).fit(X, y, groups=g)
    np.testing.assert_array_equal(model.groups_, sorted(set(names)))
    np.testing.assert_allclose(model.coef_, numeric.coef_)
    assert set(model.predict(X)) <= {"landbird", "waterbird"}


def test_tiny_group_missing_from_tuning_part():
    rng = np.random.RandomState(0)
    X, y, g = make_spurious(200, 0.9, rng, n_noise=2)
    groups = np.array(["a", "b", "c", "d"], dtype=object)[g]
    groups[0] = "tiny"  # a group of one row: it stays in the retraining part
    for mode in ("val", "train"):
        model = DFRClassifier(mode=mode, random_state=0, n_retrains=3).fit(X, y, groups=groups)
        assert "tiny" in model.groups_
        assert model.subset_size_ == 5  # every group cut to the smallest group's size
        assert np.all(np.isfinite(model.cv_results_["worst_group_accuracy"]))
        assert np.isfinite(model.coef_).all()


def test_groups_mixing_classes_still_show_every_class():
    y = np.array([0] * 50 + [1] + [0, 0])
    groups = np.array(["big"] * 51 + ["small"] * 2)
    X = np.column_stack([y + 0.1 * np.random.RandomState(0).randn(len(y)), np.arange(len(y))])
    model = DFRClassifier(random_state=0, n_retrains=3).fit(X, y, groups=groups)
    assert model.coef_.shape == (1, 2)
    assert np.isfinite(model.coef_).all()


def test_empty_tuning_part_uses_first_candidate():
    X = np.arange(12.0).reshape(6, 2)
    y = np.array([0, 1, 0, 1, 0, 1])
    with pytest.warns(UserWarning, match="tuning part is empty"):
        model = DFRClassifier(random_state=0, n_retrains=2).fit(X, y, groups=np.arange(6))
    assert model.best_index_ == 0
    assert np.isnan(model.best_score_)
    assert model.predict(X).shape == (6,)


def test_class_weight_grids(small):
    X, y, g = small
    labels = np.array(["cat", "dog"])[y]
    auto = DFRClassifier(n_retrains=2, random_state=0).fit(X, labels, groups=g)
    weights = auto.cv_results_["param_class_weight"]
    assert len(weights) == len(C_GRID) * 13
    assert weights[:2] == [{"cat": 1.0, "dog": 1.0}, {"cat": 1.0, "dog": 2.0}]
    assert {"cat": 1000.0, "dog": 1.0} in weights
    assert auto.best_params_ == auto.cv_results_["params"][auto.best_index_]
    assert auto.cv_results_["rank"][auto.best_index_] == 1

    c_only = DFRClassifier(class_weight_grid=None, n_retrains=2, random_state=0)
    assert c_only.fit(X, y, groups=g).cv_results_["param_class_weight"] == [None] * 7

    grid = [None, "balanced", {0: 1.0, 1: 5.0}]
    explicit = DFRClassifier(C_grid=(1.0, 0.1), class_weight_grid=grid, n_retrains=2).fit(
        X, y, groups=g
    )
    assert explicit.cv_results_["param_class_weight"] == grid * 2
    np.testing.assert_array_equal(explicit.cv_results_["param_C"], [1.0] * 3 + [0.1] * 3)


def test_tuning_table(small):
    X, y, g = small
    model = DFRClassifier(class_weight_grid=None, n_retrains=2, random_state=0)
    table = model.fit(X, y, groups=g).tuning_table()
    lines = table.splitlines()
    assert lines[0].split() == ["C", "class_weight", "worst_group", "accuracy", "rank"]
    assert len(lines) == 2 + len(C_GRID)
    best = [line for line in lines if line.startswith("*")]
    assert len(best) == 1
    assert best[0].split()[1] == f"{model.best_params_['C']:.4g}"
    assert best[0].split()[3] == f"{model.best_score_:.4f}"


def test_inputs_are_not_modified(small):
    X, y, g = small
    X_copy, y_copy, g_copy = X.copy(), y.copy(), g.copy()
    DFRClassifier(n_retrains=2, random_state=0).fit(X, y, groups=g).predict(X)
    np.testing.assert_array_equal(X, X_copy)
    np.testing.assert_array_equal(y, y_copy)
    np.testing.assert_array_equal(g, g_copy)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"mode": "test"}, r"'mode' parameter of DFRClassifier must be a str among "
                           r"\{'val', 'train'\}"),
        ({"C_grid": ()}, "'C_grid' parameter of DFRClassifier must be a non-empty sequence"),
        ({"C_grid": (1.0, -0.1)},
         "'C_grid' parameter of DFRClassifier must be a non-empty sequence of C > 0"),
        ({"class_weight_grid": "balanced"},
         "'class_weight_grid' parameter of DFRClassifier must be a str among \\{'auto'\\}, None"),
        ({"class_weight_grid": []},
         "'class_weight_grid' parameter of DFRClassifier must be a str among \\{'auto'\\}, None"),
        ({"n_retrains": 0},
         r"'n_retrains' parameter of DFRClassifier must be an int in the range \[1, inf\)"),
        ({"tune_fraction": 1.0}, r"'tune_fraction' parameter of DFRClassifier must be a float "
                                 r"in the range \(0\.0, 1\.0\)"),
    ],
)
def test_bad_parameters_fail_in_fit(small, params, match):
    X, y, g = small
    model = DFRClassifier(**params)  # constructing never fails
    with pytest.raises(ValueError, match=match):
        model.fit(X, y, groups=g)


def test_bad_groups(small):
    X, y, g = small
    with pytest.raises(ValueError, match="groups has 299 samples but X and y have 300"):
        DFRClassifier().fit(X, y, groups=g[1:])
    with pytest.raises(ValueError, match="groups must be 1-D"):
        DFRClassifier().fit(X, y, groups=np.c_[g, g])


def test_one_class_is_a_clear_error(small):
    X, _, g = small
    with pytest.raises(ValueError, match="at least 2 classes"):
        DFRClassifier().fit(X, np.zeros(len(X)), groups=g)
