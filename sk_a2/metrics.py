"""Worst-group and worst-class accuracy, a per-group report, and ready scorers.

The scorers plug into ``GridSearchCV``, ``cross_validate`` and friends through ``scoring=``.
:data:`worst_group_scorer` needs the group label of every test row; scikit-learn hands it over
through metadata routing, which is off by default::

    import sklearn
    sklearn.set_config(enable_metadata_routing=True)
    GridSearchCV(est, grid, scoring=worst_group_scorer).fit(X, y, groups=groups)
"""

from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.metrics import make_scorer

__all__ = [
    "GroupAccuracyReport",
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
    """Per-group accuracy with its summaries; ``str()`` gives a table.

    Made by :func:`group_accuracy_report`.

    Parameters
    ----------
    groups : tuple
        Group labels, sorted.
    sizes : tuple of int
        Number of samples in each group.
    accuracies : tuple of float
        Accuracy within each group.
    mean : float
        Accuracy over all samples (the size-weighted mean of the group accuracies).
    worst : float
        Lowest group accuracy.
    balanced : float
        Unweighted mean of the group accuracies.
    worst_group : object
        Label of the group with the lowest accuracy (the first one on ties).

    Examples
    --------
    >>> from sk_a2.metrics import group_accuracy_report
    >>> report = group_accuracy_report([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    >>> report.groups, report.accuracies, report.worst_group
    (('a', 'b'), (0.5, 1.0), 'a')
    >>> print(report)
    group         size  accuracy
    ----------------------------
    a                2    0.5000
    b                2    1.0000
    ----------------------------
    mean             4    0.7500
    balanced              0.7500
    worst                 0.5000  (group a)
    """

    groups: tuple
    sizes: tuple
    accuracies: tuple
    mean: float
    worst: float
    balanced: float
    worst_group: object

    def to_dict(self):
        """Return ``{group: {"size": n, "accuracy": a}}``."""
        return {
            g: {"size": n, "accuracy": a}
            for g, n, a in zip(self.groups, self.sizes, self.accuracies)
        }

    def __str__(self):
        names = [str(g) for g in self.groups]
        summary = [("mean", self.mean), ("balanced", self.balanced), ("worst", self.worst)]
        width = max([len("group")] + [len(n) for n in names] + [len(s) for s, _ in summary])
        lines = [f"{'group':<{width}}  {'size':>8}  {'accuracy':>8}"]
        lines.append("-" * len(lines[0]))
        for name, size, acc in zip(names, self.sizes, self.accuracies):
            lines.append(f"{name:<{width}}  {size:>8d}  {acc:>8.4f}")
        lines.append("-" * len(lines[0]))
        total = sum(self.sizes)
        for label, value in summary:
            size = f"{total:>8d}" if label == "mean" else " " * 8
            lines.append(f"{label:<{width}}  {size}  {value:>8.4f}")
        lines[-1] += f"  (group {self.worst_group})"
        return "\n".join(lines)


def group_accuracy_report(y_true, y_pred, *, groups):
    """Size and accuracy of every group, plus mean, worst and balanced accuracy.

    Parameters
    ----------
    y_true, y_pred, groups : array-like of shape (n_samples,)
        As in :func:`worst_group_accuracy`.

    Returns
    -------
    GroupAccuracyReport
        Per-group ``sizes`` and ``accuracies`` and the ``mean``, ``worst`` and ``balanced``
        summaries; ``print(report)`` shows them as a table.

    Raises
    ------
    ValueError
        If ``y_true``, ``y_pred`` and ``groups`` differ in length or are empty.

    See Also
    --------
    worst_group_accuracy : the ``worst`` summary alone.

    Examples
    --------
    >>> report = group_accuracy_report([0, 0, 1, 1], [0, 1, 1, 1], groups=["a", "a", "b", "b"])
    >>> report.worst, report.balanced, report.worst_group
    (0.5, 0.75, 'a')
    """
    y_true, y_pred, groups = _check_inputs(
        "group_accuracy_report", y_true=y_true, y_pred=y_pred, groups=groups
    )
    correct = y_true == y_pred
    labels, sizes, accuracies = _per_group(correct, groups)
    worst_index = int(np.argmin(accuracies))
    return GroupAccuracyReport(
        groups=tuple(python_scalar(label) for label in labels),
        sizes=tuple(int(n) for n in sizes),
        accuracies=tuple(float(a) for a in accuracies),
        mean=float(correct.mean()),
        worst=float(accuracies[worst_index]),
        balanced=float(accuracies.mean()),
        worst_group=python_scalar(labels[worst_index]),
    )


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
