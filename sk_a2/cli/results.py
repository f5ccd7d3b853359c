"""Heads, scores, tables and JSON files shared by the ``sk-a2`` subcommands."""

from __future__ import annotations

import json

import numpy as np

from ..datasets import SPLIT_NAMES
from .common import CLIError

_COLUMN_TITLES = {
    "accuracy": "test accuracy",
    "worst_group_accuracy": "worst-group",
    "worst_class_accuracy": "worst-class",
}


def scores(y_true, y_pred, groups):
    """Accuracy, worst-group and worst-class accuracy as plain floats."""
    from ..protocol import score_predictions

    return score_predictions(y_true, y_pred, groups)


def format_table(rows, columns):
    """A plain-text table of ``[(label, {column: fraction})]`` in percent."""
    width = max(len("method"), *(len(label) for label, _ in rows))
    titles = [_COLUMN_TITLES.get(c, c) for c in columns]
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{t:>13}" for t in titles])]
    lines.append("-" * len(lines[0]))
    for label, values in rows:
        cells = [f"{100 * values[c]:>12.1f}%" for c in columns]
        lines.append("  ".join([f"{label:<{width}}"] + cells))
    return "\n".join(lines)


def split_masks(split, needed):
    """One boolean mask per name of ``SPLIT_NAMES``; each split of ``needed`` must be non-empty."""
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
