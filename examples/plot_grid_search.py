"""
Tuning A² by worst-group accuracy with GridSearchCV
===================================================

A² is a scikit-learn :class:`~sklearn.pipeline.Pipeline` (:class:`~sk_a2.AttentionCropper` →
:class:`~sk_a2.CropEmbedder` → :class:`~sklearn.linear_model.LogisticRegression`), so
:class:`~sklearn.model_selection.GridSearchCV` tunes it. The search below is the one of the
script ``examples/grid_search.py`` at a small size: the number of crops, the attention block and
the head's ``C``, scored by :data:`sk_a2.metrics.worst_group_scorer` (groups reach the scorer
through metadata routing), on 160 images of 112 px (96 to train) of the synthetic benchmark
with the offline ``imgfocus_vits14`` weights for both models. A shared disk cache computes each
attention map and each crop embedding once over all candidates and folds.

Run time: 20 s to about a minute on two CPU cores (more when they are shared).
"""

import sys
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

# sphinx-gallery runs each example in its folder, without ``__file__``
sys.path.insert(0, str(Path(globals().get("__file__", "grid_search.py")).resolve().parent))
import grid_search  # noqa: E402

search, report = grid_search.run(n_samples=160, image_size=112, crop_sizes=(56, 28), cv=2,
                                 device="cpu")
print(grid_search.results_table(search))
print("\nbest:", search.best_params_)
print("\ntest split, per group:\n", report, sep="")

# %%
# Cross-validated worst-group accuracy of each candidate.
results = search.cv_results_
order = np.argsort(results["rank_test_score"], kind="stable")
labels = [f"layer {p['crop__layer']}, {p['crop__n_crops']} crop(s), C={p['lr__C']:g}"
          for p in np.asarray(results["params"])[order]]
scores_figure = Figure(figsize=(6, 0.35 * len(labels) + 1))
ax = scores_figure.subplots()
ax.barh(labels[::-1], results["mean_test_score"][order][::-1],
        xerr=results["std_test_score"][order][::-1], color="tab:blue")
ax.set_xlabel("cross-validated worst-group accuracy")
ax.set_xlim(0, 1)
