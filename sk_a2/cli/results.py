"""Heads, scores, tables and JSON files shared by the ``sk-a2`` subcommands."""

from __future__ import annotations

import json

import numpy as np

from .common import CLIError

_COLUMN_TITLES = {
    "accuracy": "test accuracy",
    "worst_group_accuracy": "worst-group",
    "mean_group_accuracy": "group mean",
    "train_weighted_accuracy": "train-weighted",
    "worst_class_accuracy": "worst-class",
}
#: What each column is, printed under the tables.
COLUMN_NOTE = ("test accuracy: all test images alike; worst-group: the lowest group accuracy; "
               "group mean: unweighted mean of the group accuracies; train-weighted: group "
               "accuracies weighted by their share of train (Waterbirds' \"average accuracy\" "
               "of group_DRO and DFR; — when no test group is in train)")


def scores(y_true, y_pred, groups, train_groups=None):
    """Plain, worst-group, worst-class, group-mean and train-weighted accuracy as plain floats,
    and the per-group counts (:func:`sk_a2.metrics.accuracy_summary`)."""
    from ..paper.protocol import score_predictions

    return score_predictions(y_true, y_pred, groups, train_groups)


def score_columns(worst_class):
    """The columns of a results table: the four accuracies (and worst-class)."""
    columns = ["accuracy", "worst_group_accuracy", "mean_group_accuracy",
               "train_weighted_accuracy"]
    return columns + ["worst_class_accuracy"] if worst_class else columns


def format_groups(per_group):
    """The test and train images (and the accuracy) of each group, one line each."""
    train = all("n_train" in c for c in per_group.values())
    accuracy = all("accuracy" in c for c in per_group.values())
    lines = ["group  test images" + ("  train images" if train else "")
             + ("  accuracy" if accuracy else "")]
    for group, c in per_group.items():
        n_train = f"  {c['n_train']:>12d}" if train else ""
        acc = f"  {100 * c['accuracy']:>7.1f}%" if accuracy else ""
        lines.append(f"{group:>5}  {c['n_test']:>11d}{n_train}{acc}")
    return "\n".join(lines)


def format_table(rows, columns):
    """A plain-text table of ``[(label, {column: fraction})]`` in percent."""
    width = max(len("method"), *(len(label) for label, _ in rows))
    titles = [_COLUMN_TITLES.get(c, c) for c in columns]
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{t:>13}" for t in titles])]
    lines.append("-" * len(lines[0]))
    for label, values in rows:
        cells = [f"{'—':>13}" if values.get(c) is None else f"{100 * values[c]:>12.1f}%"
                 for c in columns]
        lines.append("  ".join([f"{label:<{width}}"] + cells))
    return "\n".join(lines)


def split_masks(split, needed):
    """One boolean mask per name of ``SPLIT_NAMES``; each split of ``needed`` must be non-empty."""
    from ..datasets import SPLIT_NAMES

    split = np.asarray(split)
    masks = {s: split == s for s in SPLIT_NAMES}
    for s in needed:
        if not masks[s].any():
            raise CLIError(f"the dataset has no {s!r} images")
    return masks


def fit_lr(X, y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000).fit(X, y)


def fit_dfr(X, y, groups, mode, seed):
    from ..dfr import DFRClassifier

    return DFRClassifier(mode=mode, random_state=seed).fit(X, y, groups=groups)


def write_json(path, payload):
    """Write ``payload`` as indented JSON, creating the folder; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path
