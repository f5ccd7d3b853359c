"""Worst-group and worst-class accuracy, a per-group report, and ready scorers.

The four summaries of a group report -- plain test accuracy, worst-group accuracy, the
unweighted mean of the group accuracies and the train-weighted average -- are named apart
(:class:`GroupAccuracyReport`): "average accuracy" means the last one on Waterbirds in the
group_DRO line of work, and the first one in most other places.

The scorers plug into ``GridSearchCV``, ``cross_validate`` and friends through ``scoring=``.
:data:`worst_group_scorer` needs the group label of every test row; scikit-learn hands it over
through metadata routing, which is off by default::

    import sklearn
    sklearn.set_config(enable_metadata_routing=True)
    GridSearchCV(est, grid, scoring=worst_group_scorer).fit(X, y, groups=groups)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.metrics import make_scorer

__all__ = [
    "GroupAccuracyReport",
    "accuracy_summary",
    "group_accuracy_report",
    "worst_class_accuracy",
    "worst_class_scorer",
    "worst_group_accuracy",
    "worst_group_scorer",
]

_NO_GROUPS_MESSAGE = (
    "worst_group_scorer needs the group label of every sample, but no `groups` reached it. "
    "Call sklearn.set_config(enable_metadata_routing=True) (or use "
    "sklearn.config_context(enable_metadata_routing=True)) and pass groups= to fit, e.g. "
    "GridSearchCV(estimator, grid, scoring=worst_group_scorer).fit(X, y, groups=groups), "
    "or cross_validate(estimator, X, y, scoring=worst_group_scorer, params={'groups': groups})."
)


def _as_1d(values, name):
    """Return ``values`` as a 1-D array, with a clear error otherwise."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.ravel()
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got an array of shape {array.shape}.")
    return array


def _check_inputs(func_name, **arrays):
    """Validate 1-D inputs of equal, non-zero length and return them in order."""
    checked = {name: _as_1d(values, name) for name, values in arrays.items()}
    lengths = {name: len(array) for name, array in checked.items()}
    if len(set(lengths.values())) > 1:
        described = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"{func_name}: inputs must have the same length; {described} samples.")
    if next(iter(lengths.values())) == 0:
        raise ValueError(f"{func_name}: empty input; at least one sample is needed.")
    return tuple(checked.values())


def python_scalar(value):
    """A NumPy scalar as the matching Python scalar; anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _per_group(correct, groups):
    """Group labels, sizes and accuracies of a boolean ``correct`` vector."""
    labels, codes = np.unique(groups, return_inverse=True)
    sizes = np.bincount(codes, minlength=len(labels))
    hits = np.bincount(codes, weights=correct.astype(float), minlength=len(labels))
    return labels, sizes, hits / sizes


def worst_group_accuracy(y_true, y_pred, *, groups):
    """Lowest accuracy over the groups present in ``groups``.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels.
    y_pred : array-like of shape (n_samples,)
        Predicted labels.
    groups : array-like of shape (n_samples,)
        Group label of each sample (ints or strings).

    Returns
    -------
    float
        ``min_g mean(y_pred[groups == g] == y_true[groups == g])``.

    Raises
    ------
    ValueError
        If the inputs differ in length or are empty.

    Examples
    --------
    >>> worst_group_accuracy([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    0.5
    """
    y_true, y_pred, groups = _check_inputs(
        "worst_group_accuracy", y_true=y_true, y_pred=y_pred, groups=groups
    )
    _, _, accuracies = _per_group(y_true == y_pred, groups)
    return float(accuracies.min())


def worst_class_accuracy(y_true, y_pred):
    """Lowest per-class accuracy (recall) over the classes present in ``y_true``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted labels.

    Returns
    -------
    float
        ``min_c mean(y_pred[y_true == c] == c)``.

    Raises
    ------
    ValueError
        If the inputs differ in length or are empty.

    See Also
    --------
    worst_group_accuracy : the same with groups other than the classes.

    Examples
    --------
    >>> worst_class_accuracy([0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1])
    0.5
    """
    y_true, y_pred = _check_inputs("worst_class_accuracy", y_true=y_true, y_pred=y_pred)
    _, _, accuracies = _per_group(y_true == y_pred, y_true)
    return float(accuracies.min())


@dataclass(frozen=True)
class GroupAccuracyReport:
    """Per-group accuracy with the four summaries the literature reports; ``str()`` gives a table.

    Made by :func:`group_accuracy_report`. The summaries differ in how the group accuracies are
    weighted, and papers name them loosely ("average accuracy"), so each has its own field:

    * ``accuracy`` -- the plain test accuracy: every test sample counts once (the group
      accuracies weighted by the *test* group sizes);
    * ``worst_group_accuracy`` -- the lowest group accuracy;
    * ``mean_group_accuracy`` -- the unweighted mean of the group accuracies (SubpopBench's
      "adjusted accuracy");
    * ``train_weighted_accuracy`` -- the group accuracies weighted by each group's share of the
      *training* set, Waterbirds' "average accuracy" in the group_DRO / JTT / DFR line of work;
      only when the training groups are given.

    Parameters
    ----------
    groups : tuple
        Group labels, sorted.
    sizes : tuple of int
        Number of test samples in each group.
    accuracies : tuple of float
        Accuracy within each group.
    accuracy : float
        Accuracy over all samples.
    worst_group_accuracy : float
        Lowest group accuracy.
    mean_group_accuracy : float
        Unweighted mean of the group accuracies.
    worst_group : object
        Label of the group with the lowest accuracy (the first one on ties).
    train_sizes : tuple of int or None, default=None
        Number of training samples in each (test) group, when the training groups are given.
    train_weighted_accuracy : float or None, default=None
        ``sum_g n_train(g) * acc(g) / sum_g n_train(g)`` over the test groups; ``None`` when the
        training groups are not given or no test group occurs in training (groups of training
        absent from test carry no weight; test groups absent from training weigh 0).

    Examples
    --------
    >>> from sk_a2.metrics import group_accuracy_report
    >>> report = group_accuracy_report([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"],
    ...                                train_groups=["a", "a", "a", "b"])
    >>> report.groups, report.accuracies, report.worst_group
    (('a', 'b'), (0.5, 1.0), 'a')
    >>> print(report)
    group             test  train  accuracy
    ---------------------------------------
    a                    2      3    0.5000
    b                    2      1    1.0000
    ---------------------------------------
    accuracy             4           0.7500
    group mean                       0.7500
    train-weighted                   0.6250
    worst-group                      0.5000  (group a)
    """

    groups: tuple
    sizes: tuple
    accuracies: tuple
    accuracy: float
    worst_group_accuracy: float
    mean_group_accuracy: float
    worst_group: object
    train_sizes: tuple | None = None
    train_weighted_accuracy: float | None = None

    @property
    def mean(self):
        """Earlier name of :attr:`accuracy` (the plain test accuracy)."""
        return self.accuracy

    @property
    def worst(self):
        """Earlier name of :attr:`worst_group_accuracy`."""
        return self.worst_group_accuracy

    @property
    def balanced(self):
        """Earlier name of :attr:`mean_group_accuracy`."""
        return self.mean_group_accuracy

    def to_dict(self):
        """Return ``{group: {"size": n, "accuracy": a}}`` (and ``"train_size"`` when known)."""
        train = self.train_sizes or (None,) * len(self.groups)
        return {
            g: {"size": n, "accuracy": a, **({} if m is None else {"train_size": m})}
            for g, n, a, m in zip(self.groups, self.sizes, self.accuracies, train)
        }

    def summary(self):
        """The summaries by name (``train_weighted_accuracy`` only when training groups were
        given), as in the JSON files of ``sk-a2 evaluate``."""
        out = {"accuracy": self.accuracy, "worst_group_accuracy": self.worst_group_accuracy,
               "mean_group_accuracy": self.mean_group_accuracy}
        if self.train_sizes is not None:
            out["train_weighted_accuracy"] = self.train_weighted_accuracy
        return out

    def __str__(self):
        names = [str(g) for g in self.groups]
        summary = [("accuracy", self.accuracy), ("group mean", self.mean_group_accuracy)]
        if self.train_sizes is not None:
            summary.append(("train-weighted", self.train_weighted_accuracy))
        summary.append(("worst-group", self.worst_group_accuracy))
        width = max([len("group")] + [len(n) for n in names] + [len(s) for s, _ in summary])
        train = self.train_sizes is not None
        head = f"{'group':<{width}}  {'test':>6}" + (f"  {'train':>5}" if train else "")
        lines = [f"{head}  {'accuracy':>8}"]
        lines.append("-" * len(lines[0]))
        counts = self.train_sizes or (None,) * len(names)
        for name, size, m, acc in zip(names, self.sizes, counts, self.accuracies):
            lines.append(f"{name:<{width}}  {size:>6d}" + (f"  {m:>5d}" if train else "")
                         + f"  {acc:>8.4f}")
        lines.append("-" * len(lines[0]))
        blank = " " * (6 + (7 if train else 0))
        for label, value in summary:
            size = f"{sum(self.sizes):>6d}" + " " * (7 if train else 0)
            shown = "     n/a" if value is None else f"{value:>8.4f}"
            lines.append(f"{label:<{width}}  {size if label == 'accuracy' else blank}  {shown}")
        lines[-1] += f"  (group {self.worst_group})"
        return "\n".join(lines)


def _train_weighted(labels, accuracies, train_groups):
    """Train sizes of the test groups and the train-weighted accuracy (``None`` when no test
    group occurs in training)."""
    train_groups = _as_1d(train_groups, "train_groups")
    kept = {label: i for i, label in enumerate(labels.tolist())}
    counts = np.zeros(len(labels), dtype=np.int64)
    for label in train_groups.tolist():
        if label in kept:
            counts[kept[label]] += 1
    if counts.sum() == 0:
        return counts, None
    return counts, float(counts @ accuracies / counts.sum())


def group_accuracy_report(y_true, y_pred, *, groups, train_groups=None):
    """Size and accuracy of every group, plus plain, worst-group, group-mean and train-weighted
    accuracy.

    Parameters
    ----------
    y_true, y_pred, groups : array-like of shape (n_samples,)
        As in :func:`worst_group_accuracy`.
    train_groups : array-like of shape (n_train,), default=None
        The group of every *training* sample. When given, the report has the train size of each
        group and the train-weighted accuracy (see :class:`GroupAccuracyReport`).

    Returns
    -------
    GroupAccuracyReport
        Per-group ``sizes`` and ``accuracies`` and the ``accuracy``, ``worst_group_accuracy``,
        ``mean_group_accuracy`` (and ``train_weighted_accuracy``) summaries; ``print(report)``
        shows them as a table.

    Raises
    ------
    ValueError
        If ``y_true``, ``y_pred`` and ``groups`` differ in length or are empty.

    See Also
    --------
    worst_group_accuracy : the ``worst_group_accuracy`` summary alone.
    accuracy_summary : the summaries as a dict, with worst-class accuracy and group counts.

    Examples
    --------
    >>> report = group_accuracy_report([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    >>> report.worst_group_accuracy, report.mean_group_accuracy, report.worst_group
    (0.5, 0.75, 'a')
    """
    y_true, y_pred, groups = _check_inputs(
        "group_accuracy_report", y_true=y_true, y_pred=y_pred, groups=groups
    )
    correct = y_true == y_pred
    labels, sizes, accuracies = _per_group(correct, groups)
    worst_index = int(np.argmin(accuracies))
    train_sizes = weighted = None
    if train_groups is not None:
        counts, weighted = _train_weighted(labels, accuracies, train_groups)
        train_sizes = tuple(int(n) for n in counts)
    return GroupAccuracyReport(
        groups=tuple(python_scalar(label) for label in labels),
        sizes=tuple(int(n) for n in sizes),
        accuracies=tuple(float(a) for a in accuracies),
        accuracy=float(correct.mean()),
        worst_group_accuracy=float(accuracies[worst_index]),
        mean_group_accuracy=float(accuracies.mean()),
        worst_group=python_scalar(labels[worst_index]),
        train_sizes=train_sizes,
        train_weighted_accuracy=weighted,
    )


def accuracy_summary(y_true, y_pred, *, groups, train_groups=None):
    """Every accuracy ``sk-a2 evaluate`` reports, by name, with the per-group counts.

    Parameters
    ----------
    y_true, y_pred, groups : array-like of shape (n_samples,)
        Test labels, predictions and groups.
    train_groups : array-like, default=None
        The group of every training sample (for ``train_weighted_accuracy``).

    Returns
    -------
    dict
        ``accuracy`` (plain test accuracy), ``worst_group_accuracy``, ``mean_group_accuracy``
        (unweighted mean of the group accuracies), ``train_weighted_accuracy`` (only with
        ``train_groups``; ``None`` when no test group occurs in training),
        ``worst_class_accuracy``, and ``per_group``: ``{str(group): {"n_test": ..., "n_train":
        ... (with train_groups), "accuracy": ...}}``.

    Examples
    --------
    >>> from sk_a2.metrics import accuracy_summary
    >>> s = accuracy_summary([0, 0, 1, 1], [0, 1, 1, 1], groups=[0, 0, 1, 1],
    ...                      train_groups=[0, 0, 0, 1])
    >>> s["accuracy"], s["mean_group_accuracy"], s["train_weighted_accuracy"]
    (0.75, 0.75, 0.625)
    >>> s["per_group"]["0"]
    {'n_test': 2, 'n_train': 3, 'accuracy': 0.5}
    """
    report = group_accuracy_report(y_true, y_pred, groups=groups, train_groups=train_groups)
    train = report.train_sizes or (None,) * len(report.groups)
    per_group = {
        str(g): {"n_test": n, **({} if m is None else {"n_train": m}), "accuracy": a}
        for g, n, m, a in zip(report.groups, report.sizes, train, report.accuracies)
    }
    return {**report.summary(), "worst_class_accuracy": worst_class_accuracy(y_true, y_pred),
            "per_group": per_group}


def _worst_group_accuracy_or_raise(y_true, y_pred, groups=None):
    """:func:`worst_group_accuracy` for the scorer: a missing ``groups`` is an error."""
    if groups is None:
        raise ValueError(_NO_GROUPS_MESSAGE)
    return worst_group_accuracy(y_true, y_pred, groups=groups)


worst_class_scorer = make_scorer(worst_class_accuracy)
"""Scorer for :func:`worst_class_accuracy` (greater is better), for ``scoring=``."""


def _make_worst_group_scorer():
    """The worst-group scorer, requesting ``groups`` (``set_*_request`` needs routing on)."""
    with sklearn.config_context(enable_metadata_routing=True):
        return make_scorer(_worst_group_accuracy_or_raise).set_score_request(groups=True)


worst_group_scorer = _make_worst_group_scorer()
"""Scorer for :func:`worst_group_accuracy` (greater is better), for ``scoring=``.

It requests ``groups`` through metadata routing. With routing enabled
(``sklearn.set_config(enable_metadata_routing=True)``), ``groups=`` given to
``GridSearchCV.fit`` (or ``params={"groups": ...}`` given to ``cross_validate``) reaches it,
restricted to each test fold. Called without ``groups`` it raises a ``ValueError`` that says how
to enable routing. Note that ``GridSearchCV`` and ``cross_validate`` turn scoring errors into
``error_score`` (NaN by default) plus a ``UserWarning`` carrying that message; pass
``error_score="raise"`` to make the missing groups fatal.
"""
