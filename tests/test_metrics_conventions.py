"""The four summaries of group accuracies, each named for what it is, against direct oracles.

Plain test accuracy, worst-group accuracy, the unweighted mean of the group accuracies
(SubpopBench's "adjusted accuracy") and the train-weighted average (Waterbirds' "average
accuracy" of group_DRO and DFR); the CLI's JSON carries all four with the per-group counts, and
the paper's reported numbers are compared with the same quantity.
"""

import csv
import json
from collections import Counter, defaultdict
from fractions import Fraction
from importlib import resources

import numpy as np
import pytest
from repro_layouts import write_waterbirds

from sk_a2.cli import main
from sk_a2.metrics import accuracy_summary, group_accuracy_report
from sk_a2.paper.reported import METRICS, match_reported, reported_values


def _oracle(y_true, y_pred, groups, train_groups=None):
    """The four summaries with exact fractions, by counting (no numpy)."""
    right, seen = defaultdict(int), Counter(groups)
    for t, p, g in zip(y_true, y_pred, groups):
        right[g] += t == p
    acc = {g: Fraction(right[g], n) for g, n in seen.items()}
    out = {"accuracy": Fraction(sum(right.values()), len(y_true)),
           "worst_group_accuracy": min(acc.values()),
           "mean_group_accuracy": sum(acc.values()) / len(acc)}
    if train_groups is not None:
        train = Counter(g for g in train_groups if g in acc)
        total = sum(train.values())
        out["train_weighted_accuracy"] = (sum(train[g] * acc[g] for g in train) / total
                                          if total else None)
    return out


def test_waterbirds_like_numbers_by_hand():
    # test groups: 0 (4 images, 3 right), 1 (2, 1), 2 (2, 2), 3 (4, 4); train 70/5/5/20 %
    groups = [0] * 4 + [1] * 2 + [2] * 2 + [3] * 4
    y = [0] * 6 + [1] * 6
    pred = [0, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    train = [0] * 70 + [1] * 5 + [2] * 5 + [3] * 20
    report = group_accuracy_report(y, pred, groups=groups, train_groups=train)
    assert report.accuracy == pytest.approx(10 / 12)
    assert report.worst_group_accuracy == 0.5 and report.worst_group == 1
    assert report.mean_group_accuracy == pytest.approx((0.75 + 0.5 + 1 + 1) / 4)
    assert report.train_weighted_accuracy == pytest.approx(0.70 * 0.75 + 0.05 * 0.5 + 0.05 + 0.20)
    assert report.train_sizes == (70, 5, 5, 20)
    # the earlier names still answer
    assert (report.mean, report.worst, report.balanced) == (
        report.accuracy, report.worst_group_accuracy, report.mean_group_accuracy)


@pytest.mark.parametrize("seed", range(6))
def test_summaries_match_the_counting_oracle(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    groups = rng.choice(["a", "b", "c", "d"], size=n).tolist()
    y = rng.integers(0, 3, size=n).tolist()
    pred = [t if rng.random() < 0.7 else int(rng.integers(0, 3)) for t in y]
    train = rng.choice(["a", "b", "c", "e"], size=int(rng.integers(0, 40))).tolist()
    expected = _oracle(y, pred, groups, train)
    got = accuracy_summary(y, pred, groups=groups, train_groups=train)
    for name, value in expected.items():
        assert got[name] == (None if value is None else pytest.approx(float(value))), name
    assert sum(c["n_test"] for c in got["per_group"].values()) == n
    for g, c in got["per_group"].items():
        assert c["n_test"] == groups.count(g) and c["n_train"] == train.count(g)


def test_train_weighted_needs_a_test_group_in_train():
    summary = accuracy_summary([0, 1], [0, 0], groups=["new", "other"], train_groups=["old"])
    assert summary["train_weighted_accuracy"] is None
    assert "train_weighted_accuracy" not in accuracy_summary([0, 1], [0, 0], groups=[0, 1])
    report = group_accuracy_report([0, 1], [0, 0], groups=["new", "other"],
                                   train_groups=["old"])
    assert "train-weighted" in str(report) and "n/a" in str(report)


def test_report_table_names_each_summary():
    text = str(group_accuracy_report([0, 0, 1, 1], [0, 1, 1, 1], groups=[0, 0, 1, 1],
                                     train_groups=[0, 0, 0, 1]))
    labels = [line.split("  ")[0].strip() for line in text.splitlines()[-4:]]
    assert labels == ["accuracy", "group mean", "train-weighted", "worst-group"]
    assert text.splitlines()[0].split() == ["group", "test", "train", "accuracy"]


# ------------------------------------------------------------------------------ the CLI


def test_cli_json_gives_the_four_summaries_with_group_counts(tmp_path, tiny_vit_file, capsys):
    root = write_waterbirds(tmp_path / "wb")
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(root), "--cropper", "none",
            "--embedding-model", "timm:test_vit", "--embedding-weights", str(tiny_vit_file),
            "--image-size", "64", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for title in ("test accuracy", "worst-group", "group mean", "train-weighted"):
        assert title in printed
    result = json.loads((out / "evaluate_waterbirds_lr.json").read_text())
    with open(root / "metadata.csv") as handle:
        rows = list(csv.DictReader(handle))
    counts = {s: Counter(str(2 * int(r["y"]) + int(r["place"])) for r in rows
                         if r["split"] == s) for s in ("0", "2")}
    per_group = result["per_group"]
    assert {g: c["n_test"] for g, c in per_group.items()} == dict(counts["2"])
    assert {g: c["n_train"] for g, c in per_group.items()} == dict(counts["0"])
    acc = {g: c["accuracy"] for g, c in per_group.items()}
    n_test = sum(counts["2"].values())
    assert result["accuracy"] == pytest.approx(
        sum(counts["2"][g] * a for g, a in acc.items()) / n_test)
    assert result["worst_group_accuracy"] == min(acc.values())
    assert result["mean_group_accuracy"] == pytest.approx(np.mean(list(acc.values())))
    assert result["train_weighted_accuracy"] == pytest.approx(
        sum(counts["0"][g] * a for g, a in acc.items()) / sum(counts["0"].values()))


# ------------------------------------------------------------------------------ the paper


def test_reported_metrics_are_measured_names():
    assert {r.metric for r in reported_values()} <= set(METRICS)
    text = resources.files("sk_a2.paper").joinpath("paper_results.csv").read_text("utf-8")
    assert {row["metric"] for row in csv.DictReader(text.splitlines())} == set(METRICS)


def test_table_8_prior_work_is_train_weighted_and_own_rows_plain():
    table8 = [r for r in reported_values() if r.table == "8" and r.dataset == "waterbirds"]
    weighted = {r.row for r in table8 if r.metric == "train_weighted_accuracy"}
    assert weighted == {"ERM ResNet-50", "CVaR DRO ResNet-50", "LfF ResNet-50",
                        "JTT ResNet-50", "Group DRO ResNet-50", "DFR ResNet-50"}
    # the paper's own rows: plain accuracy, the same numbers Table 2 calls test accuracy
    found = match_reported(dataset="waterbirds", method="full", head="lr",
                           embedding_model="dinov2_vits14")
    assert {r.table: r.value for r in found["accuracy"]} == {"2": 88.7, "8": 88.7}
    assert "train_weighted_accuracy" not in found
    dfr = match_reported(dataset="waterbirds", method="full", head="dfr",
                         embedding_model="resnet50")
    assert set(dfr) == {"train_weighted_accuracy", "worst_group_accuracy"}
