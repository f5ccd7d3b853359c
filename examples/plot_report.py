"""
An evaluation report in one HTML file
=====================================

:func:`~sk_a2.report_from_estimators` runs a fitted A² pipeline on a test split and writes
``report.html``: the run's settings, worst-group accuracy with the averages, a table and a bar
chart per group, the confusion matrix, and the worst group's misclassified test images with the
attention heat map, the boxes, the crops as the embedding model saw them, the true and predicted
labels and the head's confidence. The file holds everything (JPEG thumbnails, inline SVG, inline
style): it opens from disk in any browser and prints to PDF.

Here the pipeline is A² with a logistic-regression head on the embedded synthetic benchmark
(:func:`~sk_a2.datasets.make_spurious_images`: a disk or a square on a land or water background,
the background 95% correlated with the label in train) with the offline DINOv2 ViT-S/14 weights
(``imgfocus_vits14``), one crop of 42 px in the 84 px frame and a strongly regularised head: a
crop that size still takes in background, so the report has failures to show. The cropper runs
once over the test images: the boxes and the heat maps come from the same attention pass
(:func:`sk_a2.report.crops_and_maps`).

Run time: about half a minute on two CPU cores.
"""

import tempfile
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CropEmbedder, report_from_estimators
from sk_a2.datasets import make_spurious_images
from sk_a2.plot import plot_crop_grid

data = make_spurious_images(n_samples=200, image_size=84, random_state=0)
train, val, test = (data.split == s for s in ("train", "val", "test"))

pipe = Pipeline([
    ("crop", AttentionCropper("imgfocus_vits14", crop_sizes=(42,), image_size=84,
                              device="cpu")),
    ("emb", CropEmbedder("imgfocus_vits14", image_size=84, device="cpu")),
    ("lr", LogisticRegression(C=0.01, max_iter=2000)),
]).fit(data.images[train], data.target[train])

# %%
# The report. ``split_groups`` gives the group counts of the other splits (and, from the train
# groups, the average accuracy weighted by their sizes); ``metadata`` adds to the settings read
# from the estimators.
out = report_from_estimators(
    Path(tempfile.mkdtemp()) / "report.html", pipe,
    X_test=data.images[test], y_test=data.target[test], groups_test=data.groups[test],
    split_groups={"train": data.groups[train], "val": data.groups[val]},
    target_names=data.target_names, group_names=data.group_names,
    metadata={"dataset": "make_spurious_images(n_samples=200, image_size=84)"},
)
print(f"{out.path.name}: {out.path.stat().st_size / 1e3:.0f} kB, "
      f"{out.path.read_text().count('<img ')} embedded images")

# %%
# What its failure panel shows, drawn here with :func:`~sk_a2.plot.plot_crop_grid`: the
# misclassified test images of the worst group (the most confident mistakes first), with the
# attention heat map and the boxes.
y, groups, confidence = data.target[test], data.groups[test], out.proba.max(axis=1)
accuracy = {g: np.mean(out.y_pred[groups == g] == y[groups == g]) for g in np.unique(groups)}
worst = min(accuracy, key=accuracy.get)
wrong = np.flatnonzero((groups == worst) & (out.y_pred != y))
wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:8]
print(f"worst group: {data.group_names[worst]}, accuracy {accuracy[worst]:.1%}")
titles = [f"{data.target_names[out.y_pred[i]]} ({confidence[i]:.2f})" for i in wrong]
if len(wrong):
    failures = plot_crop_grid(None, out.crops[wrong], out.attention_maps[wrong], ncols=4,
                              titles=titles)
else:  # no mistake in the worst group: its first images
    first = np.flatnonzero(groups == worst)[:4]
    failures = plot_crop_grid(None, out.crops[first], out.attention_maps[first], ncols=4)
