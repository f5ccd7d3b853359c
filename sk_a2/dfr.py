"""Deep Feature Reweighting (DFR): group-balanced last-layer retraining on fixed features."""

import math
import numbers
import warnings

import numpy as np
from scipy.special import expit, logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from sklearn_compat.base import _fit_context

from ._param_validation import Interval, SequenceOf, StrOptions
from .metrics import python_scalar, worst_group_accuracy

__all__ = ["DFRClassifier"]

_AUTO_CLASS_WEIGHTS = (1.0, 2.0, 3.0, 10.0, 100.0, 300.0, 1000.0)
_DEFAULT_TUNE_FRACTION = {"val": 0.5, "train": 0.2}

# scikit-learn 1.8 deprecated ``penalty`` in favour of ``l1_ratio``.
_L1 = (
    {"l1_ratio": 1.0}
    if LogisticRegression().get_params()["penalty"] == "deprecated"
    else {"penalty": "l1"}
)


def _positive_real(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value) and value > 0)


class DFRClassifier(ClassifierMixin, BaseEstimator):
    """Deep Feature Reweighting: L1 logistic regression retrained on group-balanced subsets.

    The last-layer retraining stage of DFR (Kirichenko et al., 2022, "Last layer re-training is
    sufficient for robustness to spurious correlations"), applied to fixed features such as
    frozen ViT embeddings, as in Appendix I of the A² paper. ``fit`` does:

    1. **Split.** The rows are split into a *tuning* part (a ``tune_fraction`` share) and a
       *fitting* part (the rest). The split is stratified by (group, class) cell, so every
       cell keeps at least one row in the fitting part; a cell too small for a share of its
       own (fewer than ``1 / tune_fraction`` rows) stays wholly in the fitting part.
    2. **Tune.** Features are standardised with a ``StandardScaler`` fitted on the fitting
       part. One group-balanced subset of the fitting part is drawn (every group subsampled
       to the size of the smallest group), and for every ``C`` in ``C_grid`` and every class
       weighting in the class-weight grid an L1-penalised logistic regression (liblinear) is
       fitted on it and scored by worst-group accuracy on the tuning part. The best pair
       wins; ties go to the earlier one in grid order (``C`` outer, class weight inner). A
       group absent from the tuning part is left out of the worst-group accuracy.
    3. **Retrain.** A new scaler, ``scaler_``, is fitted on the retraining pool; then
       ``n_retrains`` models with the chosen hyper-parameters are fitted on independently
       drawn group-balanced subsets of the pool, and their coefficients and intercepts are
       averaged into ``coef_`` and ``intercept_``.

    ``mode="val"`` is DFR(Val): the data given to ``fit`` is a held-out validation set. It is
    split 50/50 into tuning and fitting halves, and the final retraining pool is the whole set,
    as in the reference implementation (``dfr_evaluate_spurious.py``). ``mode="train"`` is
    DFR(Train): 20% of the data is held out as a pseudo-validation part for tuning, and the
    final retraining pool is the other 80% (the fitting part).

    Three details differ from the reference script, none of them in what is tuned or
    averaged: the split is stratified rather than a plain shuffle; the tuning scaler is fitted
    on the whole fitting part rather than on its balanced subset; and a balanced subset that
    misses a class (possible only when groups mix classes) gets one random row of each
    missing class added instead of being redrawn, so every model sees every class.

    Balanced subsets take ``m`` rows of every group, ``m`` being the size of the smallest group
    in the pool, so a tiny group makes tiny subsets.

    Without ``groups``, classes act as groups: retraining is class-balanced and tuning uses
    worst-class accuracy; ``fit`` warns once in that case.

    Parameters
    ----------
    mode : {"val", "train"}, default="val"
        ``"val"`` for DFR(Val), ``"train"`` for DFR(Train); see above.
    C_grid : sequence of float, default=(1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
        Inverse L1 regularisation strengths to try.
    class_weight_grid : "auto", None or sequence, default="auto"
        Class weightings to try along with ``C``. ``"auto"``: for binary tasks the reference
        grid ``{c0: 1, c1: w}`` and ``{c0: w, c1: 1}`` for ``w`` in (1, 2, 3, 10, 100, 300,
        1000), ``c0 < c1`` being the two classes; for multi-class tasks unweighted only.
        ``None``: unweighted only (tune ``C`` alone). A sequence: its entries, each ``None``,
        ``"balanced"`` or a dict ``{class_label: weight}``, as for ``LogisticRegression``; in
        multi-class tasks every sample is weighted by the weight of its own class.
    n_retrains : int, default=20
        Number of group-balanced subsets whose models are averaged.
    tune_fraction : float in (0, 1), default=None
        Share of the rows held out for tuning; ``None`` means 0.5 for ``mode="val"`` and 0.2
        for ``mode="train"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the split, the subsets and liblinear. An int gives the same model on every fit.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    coef_ : ndarray of shape (1, n_features) or (n_classes, n_features)
        Averaged weights on standardised features; one row for binary tasks (for
        ``classes_[1]``), otherwise one one-vs-rest row per class.
    intercept_ : ndarray of shape (1,) or (n_classes,)
        Averaged intercepts.
    scaler_ : StandardScaler
        Scaler fitted on the retraining pool and applied before ``coef_``.
    groups_ : ndarray
        Group labels seen in ``fit`` (the classes when no groups were given).
    best_params_ : dict
        Chosen ``{"C": ..., "class_weight": ...}``.
    best_score_ : float
        Worst-group accuracy of the chosen pair on the tuning part (NaN if that part was
        empty, in which case the first grid entry is chosen).
    best_index_ : int
        Index of the chosen pair in ``cv_results_``.
    cv_results_ : dict
        Tuning scores per candidate: ``params``, ``param_C``, ``param_class_weight``,
        ``worst_group_accuracy``, ``accuracy`` (both on the tuning part) and ``rank``.
        :meth:`tuning_table` prints them.
    n_tune_samples_ : int
        Rows in the tuning part.
    n_retrain_samples_ : int
        Rows in the final retraining pool.
    subset_size_ : int
        Rows in each final group-balanced subset.
    n_features_in_ : int
        Number of features seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Feature names seen in ``fit``, when ``X`` had string column names.

    Notes
    -----
    Multi-class models are one-vs-rest, as liblinear fits them: one binary L1 logistic
    regression per class, each row of ``coef_`` averaged over the retrains.
    ``decision_function`` is ``scaler_.transform(X) @ coef_.T + intercept_``.
    ``predict_proba`` is the sigmoid of the decision for binary tasks and, for multi-class
    tasks, the one-vs-rest sigmoids normalised to sum to one (not a softmax).

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.dfr import DFRClassifier
    >>> rng = np.random.RandomState(0)
    >>> y = rng.randint(2, size=400)
    >>> place = np.where(rng.rand(400) < 0.9, y, 1 - y)
    >>> X = np.c_[y + rng.randn(400), place + 0.1 * rng.randn(400)]
    >>> clf = DFRClassifier(random_state=0).fit(X, y, groups=2 * y + place)
    >>> clf.coef_.shape
    (1, 2)
    """

    _parameter_constraints = {
        "mode": [StrOptions(["val", "train"])],
        "C_grid": [SequenceOf(_positive_real, "a non-empty sequence of C > 0, each finite")],
        "class_weight_grid": [
            StrOptions(["auto"]), None,
            SequenceOf(lambda w: w is None or w == "balanced" or isinstance(w, dict),
                       "a non-empty sequence of class weightings (None, 'balanced' or dicts)"),
        ],
        "n_retrains": [Interval(numbers.Integral, 1, None, closed="left")],
        "tune_fraction": [Interval(numbers.Real, 0, 1, closed="neither"), None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        *,
        mode="val",
        C_grid=(1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01),
        class_weight_grid="auto",
        n_retrains=20,
        tune_fraction=None,
        random_state=None,
    ):
        self.mode = mode
        self.C_grid = C_grid
        self.class_weight_grid = class_weight_grid
        self.n_retrains = n_retrains
        self.tune_fraction = tune_fraction
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, groups=None):
        """Tune on a held-out part, then average L1 models fitted on group-balanced subsets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features (e.g. frozen embeddings).
        y : array-like of shape (n_samples,)
            Class labels.
        groups : array-like of shape (n_samples,), default=None
            Group label of each sample (ints or strings), e.g. (class, spurious attribute)
            pairs. Inside a ``Pipeline`` or ``GridSearchCV`` it arrives through metadata
            routing after ``set_fit_request(groups=True)``. ``None``: classes act as groups,
            with a warning.

        Returns
        -------
        self : DFRClassifier
            The fitted classifier.
        """
        C_grid, fraction = self._checked_params()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, y_codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "DFRClassifier needs samples of at least 2 classes; the data has 1 class: "
                f"{self.classes_[0]!r}."
            )
        group_codes = self._encode_groups(groups, len(y), y_codes)
        self._check_class_weights()
        rng = check_random_state(self.random_state)
        seed = rng.randint(np.iinfo(np.int32).max)

        cells = group_codes * len(self.classes_) + y_codes
        tune, pool = _stratified_split(cells, fraction, rng)
        self._tune(X, y_codes, group_codes, tune, pool, C_grid, rng, seed)

        if self.mode == "val":
            pool = np.arange(len(y))
        self.n_tune_samples_ = len(tune)
        self.n_retrain_samples_ = len(pool)
        self.scaler_ = StandardScaler().fit(X[pool])
        X_pool = self.scaler_.transform(X[pool])
        params = self.best_params_
        coefs, intercepts = [], []
        for _ in range(self.n_retrains):
            subset = _balanced_subset(group_codes[pool], y_codes[pool], rng)
            coef, intercept = self._fit_linear(
                X_pool[subset], y_codes[pool][subset], params["C"], params["class_weight"], seed
            )
            coefs.append(coef)
            intercepts.append(intercept)
        self.subset_size_ = len(subset)
        self.coef_ = np.mean(coefs, axis=0)
        self.intercept_ = np.mean(intercepts, axis=0)
        return self

    def decision_function(self, X):
        """Averaged linear scores on standardised features.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features, standardised with the scaler fitted on the retraining part.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
            For binary tasks the score of ``classes_[1]``; otherwise one score per class.
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        scores = self.scaler_.transform(X) @ self.coef_.T + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.

        Returns
        -------
        ndarray of shape (n_samples,)
            Predicted labels.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
        return self.classes_[np.argmax(scores, axis=1)]

    def predict_proba(self, X):
        """Class probabilities: sigmoid (binary) or normalised one-vs-rest sigmoids.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features; their :meth:`decision_function` scores go through the sigmoids.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Probabilities in the order of ``classes_``; rows sum to one.
        """
        scores = self.decision_function(X)
        if scores.ndim == 1:
            positive = expit(scores)
            return np.column_stack([1.0 - positive, positive])
        log_sigmoid = -np.logaddexp(0.0, -scores)
        return np.exp(log_sigmoid - logsumexp(log_sigmoid, axis=1, keepdims=True))

    def tuning_table(self):
        """Return the tuning scores as a text table, best row marked with ``*``.

        Returns
        -------
        str
            One row per (C, class weight) candidate with its worst-group accuracy, accuracy
            and rank on the tuning part.
        """
        check_is_fitted(self)
        results = self.cv_results_
        weights = [str(cw) for cw in results["param_class_weight"]]
        width = max(len("class_weight"), *(len(w) for w in weights))
        header = (
            f"  {'C':>8}  {'class_weight':<{width}}  {'worst_group':>11}  {'accuracy':>8}  rank"
        )
        lines = [header, "-" * len(header)]
        for i, (C, weight) in enumerate(zip(results["param_C"], weights)):
            mark = "*" if i == self.best_index_ else " "
            lines.append(
                f"{mark} {C:>8.4g}  {weight:<{width}}  {results['worst_group_accuracy'][i]:>11.4f}"
                f"  {results['accuracy'][i]:>8.4f}  {results['rank'][i]:>4d}"
            )
        return "\n".join(lines)

    def _checked_params(self):
        """The C grid and the tuning fraction (the parameters were checked by ``fit``)."""
        fraction = self.tune_fraction
        if fraction is None:
            fraction = _DEFAULT_TUNE_FRACTION[self.mode]
        return np.asarray(self.C_grid, dtype=float), float(fraction)

    def _encode_groups(self, groups, n_samples, y_codes):
        """Integer group codes; sets ``groups_``. Without groups, classes act as groups."""
        if groups is None:
            warnings.warn(
                "DFRClassifier.fit got no groups, so classes act as groups (class-balanced "
                "retraining, tuning by worst-class accuracy). Pass groups=... to fit; inside a "
                "Pipeline or GridSearchCV, enable metadata routing and call "
                "set_fit_request(groups=True).",
                UserWarning,
                stacklevel=4,
            )
            self.groups_ = self.classes_.copy()
            return y_codes
        labels = _checked_groups(groups, n_samples)
        self.groups_, codes = np.unique(labels, return_inverse=True)
        return codes

    def _check_class_weights(self):
        """Refuse a dict of ``class_weight_grid`` naming a class not in ``y``, or a weight that
        is not a finite number > 0, before any model is fitted."""
        grid = self.class_weight_grid
        if grid is None or isinstance(grid, str):
            return
        seen = [python_scalar(c) for c in self.classes_]
        for i, weights in enumerate(grid):
            if not isinstance(weights, dict):
                continue
            for label, weight in weights.items():
                if label not in seen:
                    raise ValueError(
                        f"class_weight_grid[{i}] = {weights!r} names class {label!r}, which is "
                        f"not in y; the classes seen are {seen!r}"
                    )
                if not _positive_real(weight):
                    raise ValueError(
                        f"class_weight_grid[{i}] = {weights!r} gives class {label!r} the weight "
                        f"{weight!r}: weights must be finite numbers > 0"
                    )

    def _class_weight_candidates(self):
        """The class weightings to try, in grid order."""
        grid = self.class_weight_grid
        if grid is None:
            return [None]
        if isinstance(grid, str):
            if len(self.classes_) != 2:
                return [None]
            c0, c1 = (python_scalar(c) for c in self.classes_)
            return [{c0: 1.0, c1: w} for w in _AUTO_CLASS_WEIGHTS] + [
                {c0: w, c1: 1.0} for w in _AUTO_CLASS_WEIGHTS[1:]
            ]
        return list(grid)

    def _tune(self, X, y_codes, group_codes, tune, pool, C_grid, rng, seed):
        """Score every candidate on the tuning part; set ``best_*_`` and ``cv_results_``."""
        scaler = StandardScaler().fit(X[pool])
        subset = pool[_balanced_subset(group_codes[pool], y_codes[pool], rng)]
        X_fit, y_fit = scaler.transform(X[subset]), y_codes[subset]
        X_tune = scaler.transform(X[tune]) if len(tune) else None
        params, wga, acc = [], [], []
        for C in C_grid:
            for class_weight in self._class_weight_candidates():
                params.append({"C": float(C), "class_weight": class_weight})
                if X_tune is None:
                    wga.append(np.nan)
                    acc.append(np.nan)
                    continue
                coef, intercept = self._fit_linear(X_fit, y_fit, C, class_weight, seed)
                pred = _predict_codes(X_tune @ coef.T + intercept)
                wga.append(worst_group_accuracy(y_codes[tune], pred, groups=group_codes[tune]))
                acc.append(float(np.mean(pred == y_codes[tune])))
        if X_tune is None:
            warnings.warn(
                "DFRClassifier: the tuning part is empty (every (group, class) cell is too "
                "small to share), so the first grid entry is used untuned.",
                UserWarning,
                stacklevel=4,
            )
        wga, acc = np.asarray(wga), np.asarray(acc)
        sortable = np.where(np.isnan(wga), -np.inf, wga)
        self.best_index_ = int(np.argmax(sortable))
        self.best_params_ = params[self.best_index_]
        self.best_score_ = float(wga[self.best_index_])
        self.cv_results_ = {
            "params": params,
            "param_C": np.array([p["C"] for p in params]),
            "param_class_weight": [p["class_weight"] for p in params],
            "worst_group_accuracy": wga,
            "accuracy": acc,
            "rank": 1 + np.array([np.sum(sortable > s) for s in sortable], dtype=int),
        }

    def _fit_linear(self, X, y_codes, C, class_weight, seed):
        """Fit L1 logistic regression(s) with liblinear; return (coef, intercept).

        Binary tasks get one model for ``classes_[1]``; multi-class tasks one binary model per
        class against the rest, stacked row-wise.
        """
        n_classes = len(self.classes_)
        weights = compute_class_weight(
            class_weight, classes=self.classes_, y=self.classes_[y_codes]
        )
        sample_weight = None if np.all(weights == 1.0) else weights[y_codes]
        targets = [y_codes] if n_classes == 2 else [y_codes == k for k in range(n_classes)]
        coefs, intercepts = [], []
        for target in targets:
            model = LogisticRegression(C=C, solver="liblinear", random_state=seed, **_L1)
            model.fit(X, target.astype(int), sample_weight=sample_weight)
            coefs.append(model.coef_[0])
            intercepts.append(model.intercept_[0])
        return np.array(coefs), np.array(intercepts)


def _group_kind(label, i):
    """``"str"`` or ``"number"``: the kind of the group label ``groups[i]``; anything else (None,
    NaN, other objects) is a ``ValueError``."""
    if label is None:
        raise ValueError(f"groups[{i}] is None: every sample needs a group label (an int or a "
                         "string); give the missing ones a group of their own or drop them")
    if isinstance(label, (str, np.str_)):
        return "str"
    if isinstance(label, (numbers.Real, np.bool_)):
        if isinstance(label, numbers.Real) and math.isnan(label):
            raise ValueError(f"groups[{i}] is nan: every sample needs a group label (an int or "
                             "a string); give the missing ones a group of their own or drop "
                             "them")
        return "number"
    raise ValueError(f"groups[{i}] is a {type(label).__name__}: group labels must be ints or "
                     f"strings, got {label!r}")


def _checked_groups(groups, n_samples):
    """``groups`` as a 1-D array of ``n_samples`` labels, all ints or all strings.

    Labels mixing strings and numbers, None, NaN or other objects are refused naming the
    entry; numeric and string arrays are checked without a Python loop.
    """
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"groups must be 1-D; got an array of shape {labels.shape}.")
    if len(labels) != n_samples:
        raise ValueError(f"groups has {len(labels)} samples but X and y have {n_samples}.")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        _group_kind(float("nan"), int(np.flatnonzero(np.isnan(labels))[0]))
    if labels.dtype.kind in "biuf" or (isinstance(groups, np.ndarray) and labels.dtype != object):
        return labels
    items = groups if isinstance(groups, (list, tuple)) else labels
    first = {}
    for i, label in enumerate(items):
        first.setdefault(_group_kind(label, i), i)
    if len(first) > 1:
        a, b = sorted(first.values())
        raise ValueError(
            f"groups mixes strings and numbers: groups[{a}] = {python_scalar(items[a])!r} and "
            f"groups[{b}] = {python_scalar(items[b])!r}; give every sample the same kind of group "
            "label"
        )
    return labels


def _predict_codes(scores):
    """Class codes from linear scores of shape (n, 1) or (n, n_classes)."""
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0).astype(int)
    return np.argmax(scores, axis=1)


def _stratified_split(cells, fraction, rng):
    """Split row indices into (tune, pool), taking ``floor(fraction * size)`` of every cell."""
    tune = []
    for cell in np.unique(cells):
        members = rng.permutation(np.flatnonzero(cells == cell))
        tune.append(members[: int(np.floor(fraction * len(members)))])
    tune = np.sort(np.concatenate(tune))
    pool = np.setdiff1d(np.arange(len(cells)), tune)
    return tune, pool


def _balanced_subset(group_codes, y_codes, rng):
    """Positions of a group-balanced subset: every group cut to the smallest group's size.

    A class missing from the subset (possible only when groups mix classes) gets one random
    row added, so that every class of ``y_codes`` is present.
    """
    members = [np.flatnonzero(group_codes == g) for g in np.unique(group_codes)]
    size = min(len(m) for m in members)
    subset = np.concatenate([rng.choice(m, size, replace=False) for m in members])
    for missing in np.setdiff1d(np.unique(y_codes), y_codes[subset]):
        subset = np.append(subset, rng.choice(np.flatnonzero(y_codes == missing)))
    return subset
