"""The HTML evaluation report: its numbers, its images, its size, and one pass of the models."""

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from conftest import blob_images, random_images
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CenterCropper, CropEmbedder, CropSet
from sk_a2.images import resize_rgb
from sk_a2.models import load_model
from sk_a2.report import (
    CROP_THUMB_SIZE,
    THUMB_SIZE,
    crops_and_maps,
    report_from_estimators,
    write_report,
)

# --------------------------------------------------------------------------------------------
# A parsed report
# --------------------------------------------------------------------------------------------


class Page(HTMLParser):
    """Sections, tables (rows of cell texts), images and case figures of a report."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.tables, self.images, self.cases = [], {}, [], []
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("data-table"), [])
        elif tag == "tr" and self._table is not None:
            self._row = {"class": a.get("class", ""), "cells": []}
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a)
        elif tag == "figure" and "case" in a.get("class", ""):
            self.cases.append((a["class"].split()[1], int(a["data-index"])))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table):
        return [r["cells"] for r in self.tables[table][1:]]


def percent(text):
    return float(re.match(r"([\d.]+)%", text).group(1)) / 100


def decode(uri):
    assert uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "JPEG"
    return np.asarray(img.convert("RGB"))


def run_data(n=120, seed=0, size=48, k=2):
    """Test split of a four-group problem with images, boxes, maps and confidences."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    groups = 2 * y + rng.integers(0, 2, n)
    p1 = np.clip(np.where(y == 1, 0.7, 0.3) + rng.normal(0, 0.25, n), 0.01, 0.99)
    proba = np.column_stack([1 - p1, p1])
    boxes = np.zeros((n, k, 4), np.float32)
    for j in range(k):
        s = size // (2 + j)
        boxes[:, j] = [j * 4, j * 4, j * 4 + s, j * 4 + s]
    images = random_images(n, size, size + 8, seed=seed)
    crops = CropSet(images, boxes, np.full((n, k), 0.2), [[size, size + 8]] * n)
    return dict(y_true=y, y_pred=(p1 > 0.5).astype(int), groups=groups, proba=proba,
                crops=crops, attention_maps=rng.random((n, 4, 4)).astype(np.float32))


# --------------------------------------------------------------------------------------------
# Contents
# --------------------------------------------------------------------------------------------


def test_headline_and_groups_match_a_direct_computation(tmp_path):
    d = run_data()
    y, pred, g = d["y_true"], d["y_pred"], d["groups"]
    rng = np.random.default_rng(5)
    train = rng.choice(4, 500, p=[0.6, 0.05, 0.05, 0.3])
    val = rng.integers(0, 4, 90)
    page = Page(write_report(tmp_path / "r.html", split_groups={"train": train, "val": val},
                             reported={"worst_group_accuracy": 77.5}, **d).read_text())
    page.text = (tmp_path / "r.html").read_text()

    acc = {k: np.mean(pred[g == k] == y[g == k]) for k in range(4)}
    worst = min(acc, key=acc.get)
    weights = np.bincount(train, minlength=4)
    expected = {
        "Worst-group accuracy": min(acc.values()), "Test accuracy": np.mean(pred == y),
        "Average accuracy, weighted by train group sizes":
            sum(weights[k] * acc[k] for k in range(4)) / weights.sum(),
        "Mean of the group accuracies (unweighted)": np.mean(list(acc.values())),
    }
    headline = {r[0].split(" (group")[0]: r for r in page.rows("headline")}
    for label, value in expected.items():
        assert percent(headline[label][1]) == pytest.approx(value, abs=5e-4), label
    assert headline["Worst-group accuracy"][2] == "77.5%"
    assert headline["Test accuracy"][2] == "—"

    groups = page.rows("groups")
    assert [r[1:4] for r in groups] == [[str(np.sum(train == k)), str(np.sum(val == k)),
                                         str(np.sum(g == k))] for k in range(4)]
    marked = [i for i, r in enumerate(page.tables["groups"][1:]) if r["class"] == "worst"]
    assert marked == [worst]
    assert "worst" in groups[worst][0]
    chart = re.search(r'<svg[^>]*data-chart="group-accuracy".*?</svg>', page.text, re.S)
    bars = re.findall(r'<rect [^>]*width="([\d.]+)"[^>]*class="(bar(?: worst)?)"', chart.group(0))
    assert [c for _, c in bars] == ["bar worst" if k == worst else "bar" for k in range(4)]
    widths = np.array([float(w) for w, _ in bars])
    np.testing.assert_allclose(widths / widths.max(), [acc[k] / max(acc.values())
                                                       for k in range(4)], atol=1e-3)
    confusion = [[int(c) for c in r[1:]] for r in page.rows("confusion")]
    assert confusion == [[np.sum((y == t) & (pred == p)) for p in (0, 1)] for t in (0, 1)]


def test_failures_are_the_worst_groups_most_confident_mistakes(tmp_path):
    d = run_data(n=300)
    y, pred, g, proba = d["y_true"], d["y_pred"], d["groups"], d["proba"]
    path = write_report(tmp_path / "r.html", n_failures=5, n_correct=3, **d)
    page = Page(path.read_text())

    acc = [np.mean(pred[g == k] == y[g == k]) for k in range(4)]
    worst = int(np.argmin(acc))
    wrong = np.flatnonzero((g == worst) & (pred != y))
    confidence = proba[np.arange(len(y)), pred]
    expected = wrong[np.argsort(-confidence[wrong], kind="stable")][:5]
    assert [i for kind, i in page.cases if kind == "wrong"] == expected.tolist()
    right = [i for kind, i in page.cases if kind == "right"]
    assert len(right) == 3 and all(g[i] == worst and y[i] == pred[i] for i in right)
    # each case: an overlay and one crop per box, all decodable JPEG thumbnails
    assert len(page.images) == 8 * 3
    for img in page.images:
        pixels = decode(img["src"])
        assert max(pixels.shape[:2]) == (THUMB_SIZE if img["class"] == "overlay"
                                         else CROP_THUMB_SIZE)
        assert (int(img["width"]), int(img["height"])) == pixels.shape[1::-1]


def test_crops_are_shown_as_the_embedding_model_saw_them(tmp_path):
    # vertical stripes 2 px wide: sharp in the original, gone in the 16 px frame
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, (np.arange(64) // 2) % 2 == 1] = 255
    box = np.array([[16, 16, 48, 48]], np.float32)
    crops = CropSet(rgb[None], box[None], [[1.0]], [[64, 64]])
    frame = resize_rgb(rgb, 16)[4:12, 4:12]
    expected = {source: np.asarray(Image.fromarray(np.ascontiguousarray(cut)).resize(
        (CROP_THUMB_SIZE, CROP_THUMB_SIZE), Image.BICUBIC), np.float64)
        for source, cut in (("resized", frame), ("original", rgb[16:48, 16:48]))}
    common = dict(y_true=[0], y_pred=[1], groups=[0], crops=crops, n_correct=0)
    for source, other in (("resized", "original"), ("original", "resized")):
        page = Page(write_report(tmp_path / f"{source}.html", image_size=16,
                                 crop_source=source, **common).read_text())
        crop = decode([i for i in page.images if i["class"] == "crop"][0]["src"])
        error = np.abs(crop - expected[source]).mean()
        assert error < 0.25 * np.abs(crop - expected[other]).mean(), source


def test_sections_follow_the_inputs(tmp_path):
    d = run_data(n=40)
    bare = Page(write_report(tmp_path / "a.html", y_true=d["y_true"], y_pred=d["y_pred"],
                             groups=d["groups"]).read_text())
    assert bare.sections == ["run", "headline", "groups", "confusion", "failures"]
    assert bare.images == [] and "failures" in bare.tables  # indices listed without images

    table = [{"params": {"crop__n_crops": k, "lr__C": 1.0}, "score": 0.5 + k / 10, "rank": 4 - k}
             for k in (1, 2, 3)]
    tuning = {"best_params": {"crop__n_crops": 3, "lr__C": 1.0}, "best_score": 0.8,
              "metric": "worst_group_accuracy", "validation_table": table}
    compare = [{"label": "full image", "mean": {"accuracy": 0.9, "worst_group_accuracy": 0.5},
                "std": {"accuracy": 0.0, "worst_group_accuracy": 0.0}, "seeds": [0],
                "reported": {"accuracy": [{"table": "1", "row": "r", "value": 91.0,
                                           "std": None}]}},
               {"label": "A²", "accuracy": 0.93, "worst_group_accuracy": 0.8}]
    full = Page(write_report(tmp_path / "b.html", tuning=tuning, compare=compare,
                             metadata={"dataset": "synthetic", "seeds": [0, 1]},
                             **d).read_text())
    assert full.sections == ["run", "headline", "groups", "confusion", "failures", "tuning",
                             "compare"]
    chosen = [r["cells"] for r in full.tables["tuning"][1:] if r["class"] == "chosen"]
    assert chosen == [["3", "1", "80.0%", "1"]]
    assert full.rows("compare")[0][1] == "90.0% [paper 91.0, Table 1]"
    assert full.rows("compare")[1][1:] == ["93.0%", "80.0%"]
    assert ["seeds", "0, 1"] in full.rows("run")


def test_seed_spread_and_localization(tmp_path):
    d = run_data(n=40)
    per_seed = [{"accuracy": 0.8, "worst_group_accuracy": 0.5},
                {"accuracy": 0.9, "worst_group_accuracy": 0.7}]
    rng = np.random.default_rng(0)
    mass = rng.random(30)
    loc = {"model": np.array(["m"] * 30, dtype=object), "head_aggregation": np.array(["mean"] * 30),
           "layer": np.repeat([3, 7, 11], 10), "image": np.tile(np.arange(10), 3),
           "mass_in_box": mass, "hit": (mass > 0.5).astype(float)}
    page = Page(write_report(tmp_path / "r.html", per_seed=per_seed, localization=loc,
                             **d).read_text())
    headline = {r[0].split(" (group")[0]: r for r in page.rows("headline")}
    assert headline["Worst-group accuracy"][3] == "60.0 ± 10.0% over 2 seeds (50.0–70.0)"
    rows = page.rows("localization")
    assert [r[2] for r in rows] == ["3", "7", "11"]
    for r, layer in zip(rows, (3, 7, 11)):
        v = mass[loc["layer"] == layer]
        assert r[3] == f"{v.mean():.3f} ± {v.std(ddof=1):.3f}"
    assert page.tables["localization"][-1]["class"] == "chosen"  # the last block
    text = (tmp_path / "r.html").read_text()
    assert text.count('data-chart="histogram"') == 1

    only = Page(write_report(tmp_path / "loc.html", localization=loc).read_text())
    assert only.sections == ["run", "localization"]


def test_self_contained(tmp_path):
    text = write_report(tmp_path / "r.html", **run_data(n=30)).read_text()
    assert not re.search(r"<link|@import|url\(|\bsrc=\"(?!data:)", text)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) == {"http://www.w3.org/2000/svg"}
    assert "@media print" in text


def test_size_of_a_10000_image_report_stays_small(tmp_path):
    # random pixels and random maps compress worst; only the shown images are embedded
    n, k = 10_000, 3
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    groups = 2 * y + rng.integers(0, 2, n)
    pred = np.where(rng.random(n) < 0.3, 1 - y, y)
    images = rng.integers(0, 256, (n, 64, 64, 3), np.uint8)
    boxes = np.tile(np.array([[0, 0, 32, 32], [32, 32, 48, 48], [0, 48, 16, 64]], np.float32),
                    (n, 1, 1))
    crops = CropSet(images, boxes, np.zeros((n, k)), [[64, 64]] * n)
    path = write_report(tmp_path / "r.html", y_true=y, y_pred=pred, groups=groups,
                        proba=rng.dirichlet([1, 1], n), crops=crops,
                        attention_maps=rng.random((n, 16, 16)), image_size=64,
                        split_groups={"train": rng.integers(0, 4, 4 * n)})
    assert path.stat().st_size < 15e6
    assert path.read_text().count("<img ") == (24 + 4) * (1 + k)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    (dict(y_pred=[0, 1]), "y_pred has 2 entries and y_true has 40"),
    (dict(groups=None), "y_true, y_pred and groups go together"),
    (dict(proba=np.ones((40, 3)) / 3), "proba has 3 columns but there are 2 classes"),
    (dict(attention_maps=np.ones((39, 4, 4))), "attention_maps must have shape (40,"),
    (dict(reported={"auc": 90.0}), "reported has the key 'auc'"),
    (dict(reported={"accuracy": 0.9 + 100}), "percentages in [0, 100]"),
    (dict(images=np.zeros((3, 8, 8, 3), np.uint8), crops=None), "images has 3 entries"),
    (dict(tuning={"table": []}), "tuning must be a Protocol.tune result"),
    (dict(n_failures=-1), "n_failures must be a non-negative int"),
])
def test_bad_inputs_are_named_before_any_work(tmp_path, change, message):
    d = {**run_data(n=40), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        write_report(tmp_path / "r.html", **d)
    assert not (tmp_path / "r.html").exists()


def test_a_file_it_did_not_write_is_never_replaced(tmp_path):
    other = tmp_path / "notes.html"
    other.write_text("<html>mine</html>")
    with pytest.raises(ValueError, match="exists and is not a report written by sk_a2"):
        write_report(other, **run_data(n=20))
    assert other.read_text() == "<html>mine</html>"
    ours = write_report(tmp_path / "r.html", **run_data(n=20))
    assert write_report(ours, **run_data(n=10)) == ours  # its own report is replaced
    assert "10 test images" in ours.read_text()
    with pytest.raises(ValueError, match="is a folder"):
        write_report(tmp_path, **run_data(n=10))


def test_inputs_are_not_mutated(tmp_path):
    d = run_data(n=40)
    copies = {k: v.copy() for k, v in d.items() if isinstance(v, np.ndarray)}
    boxes = d["crops"].boxes.copy()
    write_report(tmp_path / "r.html", **d)
    for k, v in copies.items():
        np.testing.assert_array_equal(d[k], v)
    np.testing.assert_array_equal(d["crops"].boxes, boxes)


# --------------------------------------------------------------------------------------------
# From estimators: one pass
# --------------------------------------------------------------------------------------------


class Counter:
    """Images entering a loaded test model, counted at its patch embedding."""

    def __init__(self, weights):
        vm = load_model("timm:test_vit", weights=weights, image_size=64, device="cpu")
        self.count = 0
        self.handle = vm.module.patch_embed.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.count += args[0].shape[0]

    def take(self):
        count, self.count = self.count, 0
        return count


def pipeline(attention_weights, embedding_weights):
    return Pipeline([
        ("crop", AttentionCropper("timm:test_vit", weights=attention_weights, image_size=64,
                                  crop_sizes=(32, 16), device="cpu")),
        ("emb", CropEmbedder("timm:test_vit", weights=embedding_weights, image_size=64,
                             device="cpu")),
        ("lr", LogisticRegression(max_iter=300)),
    ])


def test_report_from_estimators_runs_each_model_as_predict_does(tiny_vit_file, tiny_vit_file2,
                                                                tmp_path):
    X, y = blob_images(30, seed=1)
    groups = 2 * y + np.arange(30) % 2
    pipe = pipeline(tiny_vit_file, tiny_vit_file2).fit(X[:18], y[:18])
    attention, embedding = Counter(tiny_vit_file), Counter(tiny_vit_file2)
    try:
        expected = pipe.predict(X[18:])
        expected_proba = pipe.predict_proba(X[18:])
        attention.take(), embedding.take()
        pipe.predict(X[18:])
        predict_counts = attention.take(), embedding.take()
        out = report_from_estimators(tmp_path / "r.html", pipe, X_test=X[18:], y_test=y[18:],
                                     groups_test=groups[18:],
                                     split_groups={"train": groups[:18]})
        report_counts = attention.take(), embedding.take()
    finally:
        attention.handle.remove()
        embedding.handle.remove()
    assert predict_counts == (12, 24)  # 12 images, 2 crops each
    assert report_counts == predict_counts
    np.testing.assert_array_equal(out.y_pred, expected)
    np.testing.assert_allclose(out.proba, expected_proba)
    reference = pipe.named_steps["crop"].transform(X[18:])
    np.testing.assert_array_equal(out.crops.boxes, reference.boxes)
    np.testing.assert_array_equal(out.crops.scores, reference.scores)
    np.testing.assert_array_equal(out.attention_maps,
                                  pipe.named_steps["crop"].attention_maps(X[18:]))
    page = Page(out.path.read_text())
    run = dict(r for r in page.rows("run"))
    assert run["crop sizes"] == "32, 16" and run["head"] == "LogisticRegression(max_iter=300)"
    assert "timm:test_vit" in run["cropper"]


def test_report_from_separate_estimators_and_their_errors(tiny_vit_file, tiny_vit_file2,
                                                          tmp_path):
    X, y = blob_images(16, seed=2)
    pipe = pipeline(tiny_vit_file, tiny_vit_file2).fit(X, y)
    crop, emb, head = (pipe.named_steps[k] for k in ("crop", "emb", "lr"))
    out = report_from_estimators(tmp_path / "a.html", cropper=crop, embedder=emb, head=head,
                                 X_test=X, y_test=y, groups_test=y)
    np.testing.assert_array_equal(out.y_pred, pipe.predict(X))
    with pytest.raises(ValueError, match="y_test has 3 entries and X_test has 16"):
        report_from_estimators(tmp_path / "b.html", pipe, X_test=X, y_test=y[:3],
                               groups_test=y)
    with pytest.raises(ValueError, match=r"got \['y_pred'\]"):
        report_from_estimators(tmp_path / "b.html", pipe, X_test=X, y_test=y, groups_test=y,
                               y_pred=y)
    with pytest.raises(ValueError, match="reported has the key 'auc'"):
        report_from_estimators(tmp_path / "b.html", pipe, X_test=X, y_test=y, groups_test=y,
                               reported={"auc": 1.0})
    with pytest.raises(ValueError, match="either estimator"):
        report_from_estimators(tmp_path / "b.html", pipe, cropper=crop, X_test=X, y_test=y,
                               groups_test=y)
    attention = Counter(tiny_vit_file)
    try:
        with pytest.raises(ValueError, match="n_failures must be a non-negative int"):
            report_from_estimators(tmp_path / "b.html", pipe, X_test=X, y_test=y,
                                   groups_test=y, n_failures=-1)
    finally:
        attention.handle.remove()
    assert attention.count == 0  # refused before any model ran
    assert not (tmp_path / "b.html").exists()


def test_report_of_a_pipeline_without_a_cropper(tiny_vit_file2, tmp_path):
    X, y = blob_images(16, seed=4)
    pipe = Pipeline([("emb", CropEmbedder("timm:test_vit", weights=tiny_vit_file2,
                                          image_size=64, device="cpu")),
                     ("lr", LogisticRegression(max_iter=300))]).fit(X, y)
    out = report_from_estimators(tmp_path / "r.html", pipe, X_test=X, y_test=y,
                                 groups_test=y, n_correct=16)
    np.testing.assert_array_equal(out.y_pred, pipe.predict(X))
    assert out.crops is None and out.attention_maps is None
    page = Page(out.path.read_text())
    assert page.images and all(img["class"] == "overlay" for img in page.images)


def test_crops_and_maps(tiny_vit_file):
    X = random_images(5, 50, 70, seed=3)
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                               crop_sizes=(32, 16), n_crops=3, device="cpu").fit()
    crops, maps = crops_and_maps(cropper, X)
    reference = cropper.transform(X)
    np.testing.assert_array_equal(crops.boxes, reference.boxes)
    np.testing.assert_array_equal(crops.scores, reference.scores)
    np.testing.assert_array_equal(crops.image_sizes, reference.image_sizes)
    assert maps.shape == (5, *cropper.grid_size_)
    center = CenterCropper(crop_sizes=(32,), image_size=64).fit()
    crops, maps = crops_and_maps(center, X)
    assert maps is None
    np.testing.assert_array_equal(crops.boxes, center.transform(X).boxes)
