"""Worst-group / worst-class accuracy, the group report and the scorers."""

import pickle
import warnings

import numpy as np
import pytest
import sklearn
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, cross_validate

from sk_a2.metrics import (
    GroupAccuracyReport,
    group_accuracy_report,
    worst_class_accuracy,
    worst_class_scorer,
    worst_group_accuracy,
    worst_group_scorer,
)

# Hand-checked example: group "a" 3/4 right, group "b" 1/2 right, group "c" 2/2 right.
Y_TRUE = [0, 0, 1, 1, 1, 0, 0, 1]
Y_PRED = [0, 1, 1, 1, 0, 0, 0, 1]
GROUPS = ["a", "a", "a", "a", "b", "b", "c", "c"]

ROUTING_HINT = r"sklearn\.set_config\(enable_metadata_routing=True\).*groups="


@pytest.fixture
def spurious_data():
    rng = np.random.RandomState(0)
    n = 300
    y = rng.randint(2, size=n)
    place = np.where(rng.rand(n) < 0.8, y, 1 - y)
    X = np.column_stack([y + rng.randn(n), place + 0.3 * rng.randn(n), rng.randn(n, 2)])
    return X, y, 2 * y + place


def test_worst_group_accuracy_hand_computed():
    assert worst_group_accuracy(Y_TRUE, Y_PRED, groups=GROUPS) == 0.5


def test_worst_group_accuracy_int_groups_and_string_labels():
    y_true = np.array(["cat", "cat", "dog", "dog", "dog"])
    y_pred = np.array(["cat", "dog", "dog", "dog", "cat"])
    groups = np.array([7, 7, 3, 3, 3])
    assert worst_group_accuracy(y_true, y_pred, groups=groups) == 0.5
    assert worst_group_accuracy(y_true, y_pred, groups=[1, 1, 1, 1, 1]) == 0.6


def test_worst_class_accuracy_hand_computed():
    # class 0: 3/4 right, class 1: 3/4 right
    assert worst_class_accuracy(Y_TRUE, Y_PRED) == 0.75
    # class "x": 1/3 right, class "y": 2/2 right; "z" only predicted, never true
    assert worst_class_accuracy(["x", "x", "x", "y", "y"], ["x", "z", "y", "y", "y"]) == 1 / 3


def test_group_accuracy_report_fields():
    report = group_accuracy_report(Y_TRUE, Y_PRED, groups=GROUPS)
    assert isinstance(report, GroupAccuracyReport)
    assert report.groups == ("a", "b", "c")
    assert report.sizes == (4, 2, 2)
    assert report.accuracies == (0.75, 0.5, 1.0)
    assert report.mean == 6 / 8
    assert report.worst == 0.5
    assert report.worst_group == "b"
    assert report.balanced == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert report.to_dict()["b"] == {"size": 2, "accuracy": 0.5}
    assert type(report.groups[0]) is str


def test_group_accuracy_report_int_groups_are_python_ints():
    report = group_accuracy_report([1, 0, 1], [1, 1, 1], groups=np.array([5, 2, 5]))
    assert report.groups == (2, 5)
    assert all(type(g) is int for g in report.groups)
    assert report.worst_group == 2


def test_group_accuracy_report_prints_a_table():
    text = str(group_accuracy_report(Y_TRUE, Y_PRED, groups=GROUPS))
    lines = text.splitlines()
    assert lines[0].split() == ["group", "test", "accuracy"]
    assert lines[2].split() == ["a", "4", "0.7500"]
    assert lines[3].split() == ["b", "2", "0.5000"]
    assert lines[6].split() == ["accuracy", "8", "0.7500"]
    assert lines[7].split() == ["group", "mean", "0.7500"]
    assert lines[8].split() == ["worst-group", "0.5000", "(group", "b)"]


@pytest.mark.parametrize(
    "func, kwargs",
    [
        (worst_group_accuracy, {"groups": [0, 0, 1]}),
        (group_accuracy_report, {"groups": [0, 0, 1]}),
        (worst_class_accuracy, {}),
    ],
)
def test_length_mismatch_is_a_clear_error(func, kwargs):
    with pytest.raises(ValueError, match="same length.*y_true has 4.*y_pred has 3"):
        func([0, 1, 1, 0], [0, 1, 1], **kwargs)


def test_groups_length_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same length.*groups has 2"):
        worst_group_accuracy([0, 1, 1], [0, 1, 1], groups=["a", "b"])


@pytest.mark.parametrize(
    "call",
    [
        lambda: worst_group_accuracy([], [], groups=[]),
        lambda: group_accuracy_report([], [], groups=[]),
        lambda: worst_class_accuracy([], []),
    ],
)
def test_empty_input_is_a_clear_error(call):
    with pytest.raises(ValueError, match="empty input"):
        call()


def test_two_dimensional_labels_are_rejected():
    with pytest.raises(ValueError, match="y_true must be 1-D"):
        worst_class_accuracy(np.zeros((3, 2)), [0, 0, 0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2), st.sampled_from(["p", "q", "r"])),
        min_size=1,
        max_size=40,
    )
)
def test_report_matches_brute_force(rows):
    y_true, y_pred, groups = (list(column) for column in zip(*rows))
    report = group_accuracy_report(y_true, y_pred, groups=groups)
    by_group = {}
    for t, p, g in rows:
        by_group.setdefault(g, []).append(t == p)
    expected = {g: float(np.mean(hits)) for g, hits in by_group.items()}
    assert dict(zip(report.groups, report.accuracies)) == pytest.approx(expected)
    assert report.worst == worst_group_accuracy(y_true, y_pred, groups=groups)
    assert report.worst == min(expected.values())
    assert report.worst <= report.balanced <= max(expected.values())
    assert report.worst <= report.mean <= max(expected.values())


def _manual_cv_worst_group(X, y, groups, C, cv):
    scores = []
    for train, test in cv.split(X, y):
        model = LogisticRegression(C=C).fit(X[train], y[train])
        scores.append(worst_group_accuracy(y[test], model.predict(X[test]), groups=groups[test]))
    return np.mean(scores)


def test_worst_group_scorer_in_grid_search_with_routing(spurious_data):
    X, y, groups = spurious_data
    cv = KFold(3, shuffle=True, random_state=0)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            LogisticRegression(), {"C": [0.01, 1.0]}, scoring=worst_group_scorer, cv=cv
        ).fit(X, y, groups=groups)
    expected = [_manual_cv_worst_group(X, y, groups, C, cv) for C in (0.01, 1.0)]
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    assert search.cv_results_["mean_test_score"] == pytest.approx(expected)
    assert not sklearn.get_config()["enable_metadata_routing"]


def test_scorers_in_cross_validate_with_routing(spurious_data):
    X, y, groups = spurious_data
    cv = KFold(4, shuffle=True, random_state=1)
    with sklearn.config_context(enable_metadata_routing=True):
        result = cross_validate(
            LogisticRegression(),
            X,
            y,
            cv=cv,
            scoring={"worst_group": worst_group_scorer, "worst_class": worst_class_scorer},
            params={"groups": groups},
        )
    for k, (train, test) in enumerate(cv.split(X)):
        pred = LogisticRegression().fit(X[train], y[train]).predict(X[test])
        assert result["test_worst_group"][k] == pytest.approx(
            worst_group_accuracy(y[test], pred, groups=groups[test])
        )
        assert result["test_worst_class"][k] == pytest.approx(worst_class_accuracy(y[test], pred))


def test_worst_class_scorer_needs_no_routing(spurious_data):
    X, y, _ = spurious_data
    cv = KFold(3, shuffle=True, random_state=0)
    result = cross_validate(LogisticRegression(), X, y, cv=cv, scoring=worst_class_scorer)
    expected = [
        worst_class_accuracy(y[test], LogisticRegression().fit(X[train], y[train]).predict(X[test]))
        for train, test in cv.split(X)
    ]
    assert result["test_score"] == pytest.approx(expected)


def test_worst_group_scorer_requests_groups():
    with sklearn.config_context(enable_metadata_routing=True):
        requests = worst_group_scorer.get_metadata_routing().score.requests
    assert requests["groups"] is True
    assert not sklearn.get_config()["enable_metadata_routing"]


def test_worst_group_scorer_called_without_groups_says_how_to_fix(spurious_data):
    X, y, _ = spurious_data
    model = LogisticRegression().fit(X, y)
    with pytest.raises(ValueError, match=ROUTING_HINT):
        worst_group_scorer(model, X, y)


def test_worst_group_scorer_called_with_groups_under_routing(spurious_data):
    X, y, groups = spurious_data
    model = LogisticRegression().fit(X, y)
    with sklearn.config_context(enable_metadata_routing=True):
        score = worst_group_scorer(model, X, y, groups=groups)
    assert score == worst_group_accuracy(y, model.predict(X), groups=groups)


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored")
def test_grid_search_with_routing_off_is_not_silent(spurious_data):
    """With routing off no groups reach the scorer: its error is raised or loudly warned.

    ``GridSearchCV`` catches scoring errors and, with its default ``error_score=np.nan``,
    records NaN with a ``UserWarning`` that carries the scorer's message; with
    ``error_score="raise"`` the message is raised.
    """
    X, y, groups = spurious_data
    assert not sklearn.get_config()["enable_metadata_routing"]
    grid = {"C": [0.1, 1.0]}
    with pytest.raises(ValueError, match=ROUTING_HINT):
        GridSearchCV(
            LogisticRegression(), grid, scoring=worst_group_scorer, error_score="raise"
        ).fit(X, y, groups=groups)

    search = GridSearchCV(LogisticRegression(), grid, scoring=worst_group_scorer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.warns(UserWarning, match=ROUTING_HINT):
            search.fit(X, y, groups=groups)
    assert np.all(np.isnan(search.cv_results_["mean_test_score"]))


def test_routing_on_but_no_groups_passed_says_how_to_fix(spurious_data):
    X, y, _ = spurious_data
    search = GridSearchCV(
        LogisticRegression(), {"C": [1.0]}, scoring=worst_group_scorer, error_score="raise"
    )
    with (
        sklearn.config_context(enable_metadata_routing=True),
        pytest.raises(ValueError, match=ROUTING_HINT),
    ):
        search.fit(X, y)


def test_scorers_pickle(spurious_data):
    X, y, groups = spurious_data
    model = LogisticRegression().fit(X, y)
    group_scorer = pickle.loads(pickle.dumps(worst_group_scorer))
    class_scorer = pickle.loads(pickle.dumps(worst_class_scorer))
    with sklearn.config_context(enable_metadata_routing=True):
        assert group_scorer(model, X, y, groups=groups) == worst_group_scorer(
            model, X, y, groups=groups
        )
    assert class_scorer(model, X, y) == worst_class_accuracy(y, model.predict(X))
