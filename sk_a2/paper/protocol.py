"""The paper's evaluation protocol: seeds, tuning on validation, cross-model matrices, compare.

A :class:`Protocol` holds one dataset (images, labels, groups, splits) and the runtime settings;
it evaluates :class:`RowSpec` configurations (how the crops are chosen × which head)::

    proto = Protocol(EvalData.from_bunch("waterbirds", load_waterbirds(root)), cache="memory")
    rows = proto.run_rows(compare_specs(attention, embedding, crop_sizes=(64,)), seeds=range(5))
    matrix = proto.cross_model_matrix(attentions, embeddings, head="lr", crop_sizes=(64,))
    tuned = proto.tune(spec)                      # GridSearchCV on the validation split

Cost. The deterministic parts (attention maps, boxes, embeddings) are computed once per image
and box: every crop set and feature matrix is kept for the run, and with a content ``cache``
(``"memory"`` or a directory, :mod:`sk_a2.cache`) the tuning search, whose pipelines
``GridSearchCV`` clones, reads them back too: the maps of all its candidate layers are computed
beforehand from one forward pass per batch, so the search runs the attention model once per
image and the embedding model once per (image, box). Only the stochastic parts run once per
seed: DFR's group-balanced resampling and the random-crop baseline's boxes (new boxes are new
crops to embed). The logistic-regression head (lbfgs) is deterministic, so its seeds agree
(std 0), as in the paper.

Every row reports accuracy, worst-group and worst-class accuracy on the test split per seed,
with their mean and standard deviation over seeds (``ddof=0``), and the paper's reported values
for the same configuration (:func:`sk_a2.paper.reported.match_reported`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .reported import match_reported

__all__ = [
    "METRICS",
    "CrossModelMatrix",
    "EvalData",
    "ModelRef",
    "Protocol",
    "RowSpec",
    "TuneResult",
    "apply_tuned",
    "compare_specs",
    "default_tune_grid",
    "parse_model_list",
    "score_predictions",
]

METRICS = ("accuracy", "worst_group_accuracy", "worst_class_accuracy")
SPLITS = ("train", "val", "test")
METHODS = ("full", "center", "random", "a2")
_METHOD_LABELS = {"full": "full image", "center": "center crop", "random": "random crops",
                  "a2": "A²"}
_HEAD_LABELS = {"lr": "LR", "dfr": "DFR", "zs": "zero-shot"}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """A model name and, optionally, a local weights file for it."""

    name: str
    weights: str | None = None

    def __str__(self):
        return self.name if self.weights is None else f"{self.name}={self.weights}"

    @property
    def label(self) -> str:
        """The name, with the weights file's name when one is given."""
        return self.name if self.weights is None else f"{self.name} ({Path(self.weights).name})"


def parse_model_list(text, option="--models") -> list[ModelRef]:
    """``"a,b=FILE,..."`` → :class:`ModelRef` list, every name and file checked up front.

    Raises
    ------
    ValueError
        On an empty entry, an unknown model name (with the closest known names), a weights file
        that does not exist, or a repeated entry; the message names ``option`` and the entry.
    """
    from ..models import resolve_model_spec

    entries = [e.strip() for e in str(text).split(",")]
    if not entries or any(not e for e in entries):
        raise ValueError(f"{option} {text!r}: empty entry; give NAME or NAME=WEIGHTS_FILE "
                         "entries separated by commas")
    refs = []
    for entry in entries:
        name, _, weights = entry.partition("=")
        try:
            resolve_model_spec(name)
        except ValueError as exc:
            raise ValueError(f"{option}: entry {entry!r}: {exc}") from None
        if weights and not Path(weights).expanduser().is_file():
            raise ValueError(f"{option}: entry {entry!r}: weights file {weights!r} does not exist")
        refs.append(ModelRef(name, str(Path(weights).expanduser()) if weights else None))
    if len(set(refs)) != len(refs):
        raise ValueError(f"{option} {text!r} names a model twice")
    return refs


@dataclass
class EvalData:
    """One dataset: image sources, labels, groups and the split of each image."""

    name: str
    images: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    split: np.ndarray
    target_names: tuple = ()

    @classmethod
    def from_bunch(cls, name, bunch):
        """From a :mod:`sk_a2.datasets` loader's result."""
        return cls(name, np.asarray(bunch.images, dtype=object), np.asarray(bunch.target),
                   np.asarray(bunch.groups), np.asarray(bunch.split).astype(str),
                   tuple(str(t) for t in bunch.target_names))

    def mask(self, split) -> np.ndarray:
        return self.split == split

    def require(self, split, purpose, hint=""):
        """Raise a ``ValueError`` naming ``split`` when the dataset has no such images."""
        if not self.mask(split).any():
            raise ValueError(f"{purpose} needs a {split!r} split, and {self.name} has no "
                             f"{split!r} images.{' ' + hint if hint else ''}")


def score_predictions(y_true, y_pred, groups, train_groups=None) -> dict:
    """Accuracy, worst-group and worst-class accuracy, the unweighted mean of the group
    accuracies and, given the training groups, the train-weighted accuracy, as floats, with the
    per-group counts (:func:`sk_a2.metrics.accuracy_summary`)."""
    from ..metrics import accuracy_summary

    return accuracy_summary(y_true, y_pred, groups=groups, train_groups=train_groups)


@dataclass(frozen=True)
class RowSpec:
    """One configuration: how crops are chosen, by which models, and which head.

    ``method`` is ``full`` (the whole image), ``center``, ``random`` or ``a2``; ``head`` is
    ``lr``, ``dfr`` or ``zs``. ``C`` is the logistic regression's inverse regularisation (DFR
    tunes its own). ``crop_source`` is where the crops are cut from: ``"resized"`` (the image
    resized to ``image_size``, the paper's way) or ``"original"`` (the original pixels,
    :class:`~sk_a2.CropEmbedder`'s ``crop_source``); the full image ignores it.
    """

    method: str
    head: str
    embedding: ModelRef
    attention: ModelRef | None = None
    crop_sizes: tuple | None = None
    n_crops: int | None = None
    layer: int = -1
    C: float = 1.0
    crop_source: str = "resized"

    @property
    def original(self) -> bool:
        """Whether crops are cut from the original pixels (never for the full image)."""
        return self.crop_source == "original" and self.method != "full"

    @property
    def key(self) -> str:
        return f"{self.method}_original_{self.head}" if self.original else \
            f"{self.method}_{self.head}"

    @property
    def label(self) -> str:
        what = _METHOD_LABELS[self.method]
        notes = [f"{self.attention.label} attention"] if self.method == "a2" else []
        notes += ["original pixels"] if self.original else []
        if notes:
            what += f" ({', '.join(notes)})"
        return f"{what} -> {self.embedding.label} + {_HEAD_LABELS[self.head]}"

    def config(self) -> dict:
        return {"method": self.method, "head": self.head,
                "attention_model": None if self.attention is None else str(self.attention),
                "embedding_model": str(self.embedding),
                "crop_sizes": None if self.crop_sizes is None else list(self.crop_sizes),
                "n_crops": self.n_crops, "layer": self.layer, "C": self.C,
                "crop_source": "original" if self.original else "resized"}


def compare_specs(attention, embedding, *, crop_sizes, center_crop_sizes=(128,),
                  random_crop_sizes=None, heads=("lr", "dfr"), crop_source="resized",
                  a2_original=True) -> list:
    """The rows of a paper table: full image, center crop, random crops and A², per head.

    ``crop_source`` is that of the center, random and A² rows; with ``a2_original`` (beyond the
    paper), A² rows with crops cut from the original pixels follow (keys ``a2_original_<head>``),
    unless ``crop_source`` is already ``"original"``.
    """
    sizes = {"full": None, "center": tuple(center_crop_sizes), "a2": tuple(crop_sizes),
             "random": tuple(random_crop_sizes or crop_sizes)}
    specs = [RowSpec(method, head, embedding, attention if method == "a2" else None,
                     sizes[method], crop_source="resized" if method == "full" else crop_source)
             for method in METHODS for head in heads]
    if a2_original and crop_source != "original":
        specs += [replace(s, crop_source="original") for s in specs if s.method == "a2"]
    return specs


def default_tune_grid(crop_sizes, image_size, *, max_crops=3, layers=(-1, -2),
                      C=(0.1, 1.0, 10.0)) -> list:
    """The search of ``tune`` (Appendix D): crop count 1..``max_crops``, the sizes and twice
    them (when they fit ``image_size``), the last two attention layers, and C.

    A list of grids, one per crop-size candidate, each with only the crop counts that fit the
    frame side by side (three 64 px crops fit a 224 px image, two 128 px crops do not).
    """
    candidates = [tuple(crop_sizes)]
    doubled = tuple(2 * s for s in crop_sizes)
    if doubled[0] <= image_size and doubled not in candidates:
        candidates.append(doubled)
    grids = []
    for sizes in candidates:
        fit = (image_size // sizes[0]) * (image_size // sizes[-1])
        grids.append({"crop__crop_sizes": [sizes],
                      "crop__n_crops": list(range(1, max(1, min(max_crops, fit)) + 1)),
                      "crop__layer": list(layers), "lr__C": list(C)})
    return grids


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def _summary(spec, seeds, per_seed, dataset, image_size):
    names = [m for m in per_seed[0] if m != "per_group"]  # METRICS and the group summaries
    table = {m: [s[m] for s in per_seed] for m in names}
    sizes = spec.crop_sizes
    if sizes is not None and spec.n_crops is not None:
        sizes = (list(sizes) + [sizes[-1]] * spec.n_crops)[:spec.n_crops]
    reported = {} if spec.original else match_reported(  # the paper cuts from the resized image
        dataset=dataset, method=spec.method, head=spec.head, embedding_model=spec.embedding.name,
        attention_model=None if spec.attention is None else spec.attention.name,
        crop_sizes=sizes, image_size=image_size)
    return {
        "key": spec.key, "label": spec.label, **spec.config(), "seeds": list(seeds),
        "per_seed": per_seed,
        "mean": {m: None if None in v else float(np.mean(v)) for m, v in table.items()},
        "std": {m: None if None in v else float(np.std(v)) for m, v in table.items()},
        "reported": {m: [r.to_dict() for r in rs] for m, rs in reported.items()},
        "per_group": {g: {**{k: v for k, v in c.items() if k != "accuracy"},
                          "accuracy": float(np.mean([s["per_group"][g]["accuracy"]
                                                     for s in per_seed]))}
                      for g, c in per_seed[0].get("per_group", {}).items()},
    }


@dataclass
class TuneResult:
    """The chosen setting of a validation search, its table, and the fitted search."""

    best_params: dict
    best_score: float
    metric: str
    table: list
    search: object = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {"best_params": _plain(self.best_params), "best_score": self.best_score,
                "metric": self.metric, "validation_table": _plain(self.table)}


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class CrossModelMatrix:
    """Rows = attention models, columns = embedding models; ``cells[(i, j)]`` a row summary."""

    attentions: list
    embeddings: list
    cells: dict

    def values(self, metric, stat="mean") -> np.ndarray:
        out = np.empty((len(self.attentions), len(self.embeddings)))
        for (i, j), cell in self.cells.items():
            out[i, j] = cell[stat][metric]
        return out

    def format(self, metric) -> str:
        """The matrix as text, in percent: mean ± std over seeds, and ``[T<n>: value]``, the
        paper's value, where a reported row matches the cell."""
        texts = {}
        for (i, j), cell in self.cells.items():
            text = f"{100 * cell['mean'][metric]:.1f} ± {100 * cell['std'][metric]:.1f}"
            reported = cell["reported"].get(metric)
            if reported:
                text += f" [T{reported[0]['table']}: {reported[0]['value']:.1f}]"
            texts[(i, j)] = text
        width = max(12, *(len(r.label) for r in self.attentions))
        cols = [r.label for r in self.embeddings]
        cw = max(*(len(c) for c in cols), *(len(t) for t in texts.values()))
        corner = "attn \\ emb"
        lines = [f"{corner:<{width}}  " + "  ".join(f"{c:>{cw}}" for c in cols)]
        for i, a in enumerate(self.attentions):
            cells = [f"{texts[(i, j)]:>{cw}}" for j in range(len(cols))]
            lines.append(f"{a.label:<{width}}  " + "  ".join(cells))
        return "\n".join(lines)

    def to_csv(self, path, metrics=METRICS) -> Path:
        """One line per cell: attention, embedding, then the mean, std and the paper's value
        (empty when no reported row matches) of each metric, as fractions."""
        import csv

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["attention_model", "embedding_model",
                             *[f"{m}_{s}" for m in metrics for s in ("mean", "std", "paper")]])
            for (i, j), cell in sorted(self.cells.items()):
                paper = {m: r[0]["value"] / 100 for m, r in cell["reported"].items()}
                writer.writerow([str(self.attentions[i]), str(self.embeddings[j]),
                                 *[cell[s][m] if s != "paper" else paper.get(m, "")
                                   for m in metrics for s in ("mean", "std", "paper")]])
        return path

    def plot(self, metric, title=""):
        """A heat map of ``metric`` (means over seeds), see :func:`sk_a2.plot.plot_matrix`."""
        from ..plot import plot_matrix

        return plot_matrix(self.values(metric), [a.label for a in self.attentions],
                           [e.label for e in self.embeddings], title=title)

    def to_dict(self) -> dict:
        return {"attention_models": [str(a) for a in self.attentions],
                "embedding_models": [str(e) for e in self.embeddings],
                "cells": [self.cells[k] for k in sorted(self.cells)]}


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


class Protocol:
    """Evaluate configurations on one dataset with shared, computed-once crops and features.

    Parameters
    ----------
    data : EvalData
    cache : None, "memory" or path, default="memory"
        Content cache of the croppers and embedders (:mod:`sk_a2.cache`).
    image_size, batch_size, device, num_workers, verbose
        Passed to the croppers and embedders.
    dfr_mode : {"val", "train"} or None, default=None
        DFR's mode; None: ``"val"`` when the dataset has a val split, else ``"train"``.
    dfr_tune_fraction : float or None, default=None
        DFR's ``tune_fraction`` (None: its default for the mode).
    metric : str, default="worst_group_accuracy"
        What tuning maximises (``worst_group_accuracy`` or ``worst_class_accuracy``).
    classnames : sequence of str or None, default=None
        Class names for the zero-shot head, one per class of the train split in label order
        (None: the dataset's target names).
    log : callable or None
        Called with progress messages.
    """

    def __init__(self, data, *, cache="memory", image_size=224, batch_size=32, device="auto",
                 num_workers=0, dfr_mode=None, dfr_tune_fraction=None,
                 metric="worst_group_accuracy", classnames=None, verbose=False, log=None):
        self.data = data
        self.cache = cache
        self.image_size = image_size
        self.batch_size = batch_size
        self.device = device
        self.num_workers = num_workers
        self.dfr_mode = dfr_mode or ("val" if data.mask("val").any() else "train")
        self.dfr_tune_fraction = dfr_tune_fraction
        self.metric = metric
        self.classnames = classnames
        self.verbose = verbose
        self.log = log or (lambda message: None)
        self._crops: dict = {}
        self._features: dict = {}
        #: ``{RowSpec: (seed, head, test predictions)}``: the head of each row fitted for its
        #: last seed, kept so that a report of the run needs no second fit.
        self.last_fits: dict = {}

    # ---- building blocks

    def _runtime(self):
        return dict(image_size=self.image_size, batch_size=self.batch_size, device=self.device,
                    num_workers=self.num_workers, cache=self.cache, verbose=self.verbose)

    def fit_split(self, head) -> str:
        """The split a head is fitted on."""
        return "val" if head == "dfr" and self.dfr_mode == "val" else "train"

    def cropper(self, spec, seed=0):
        """The unfitted cropper of ``spec`` (None for the full image)."""
        from ..baselines import CenterCropper, RandomCropper
        from ..cropper import AttentionCropper

        common = dict(crop_sizes=spec.crop_sizes, n_crops=spec.n_crops,
                      image_size=self.image_size)
        if spec.method == "a2":
            rt = self._runtime()
            del rt["image_size"]
            return AttentionCropper(spec.attention.name, weights=spec.attention.weights,
                                    layer=spec.layer, **common, **rt)
        if spec.method == "center":
            return CenterCropper(**common)
        if spec.method == "random":
            return RandomCropper(**common, random_state=seed)
        return None

    def crops(self, spec, seed=0):
        """The crops of every image (a CropSet), or the image sources for ``full``; memoised."""
        key = (spec.method, spec.attention, spec.crop_sizes, spec.n_crops, spec.layer,
               seed if spec.method == "random" else None)
        if key not in self._crops:
            cropper = self.cropper(spec, seed)
            if cropper is None:
                self._crops[key] = self.data.images.tolist()
            else:
                self.log(f"choosing {_METHOD_LABELS[spec.method]} {list(spec.crop_sizes)}"
                         + (f" with {spec.attention.name}" if spec.attention else ""))
                self._crops[key] = cropper.fit().transform(self.data.images.tolist())
        return key, self._crops[key]

    def features(self, spec, seed=0) -> np.ndarray:
        """Embeddings (n_images, k·d) of the crops of ``spec``; memoised."""
        from ..embedder import CropEmbedder

        crop_key, inputs = self.crops(spec, seed)
        key = (crop_key, spec.embedding, spec.original)
        if key not in self._features:
            self.log(f"embedding {_METHOD_LABELS[spec.method]} with {spec.embedding.name}"
                     + (" from the original pixels" if spec.original else ""))
            embedder = CropEmbedder(spec.embedding.name, weights=spec.embedding.weights,
                                    crop_source=spec.crop_source, **self._runtime())
            self._features[key] = embedder.fit_transform(inputs)
        return self._features[key]

    def fit_predict(self, spec, seed=0) -> np.ndarray:
        """Fit the head of ``spec`` on its split; predictions on the test split."""
        d = self.data
        fit, test = d.mask(self.fit_split(spec.head)), d.mask("test")
        if spec.head == "zs":
            return self._zero_shot(spec, test, seed)
        F = self.features(spec, seed)
        if len(np.unique(d.y[fit])) < 2:
            raise ValueError(f"the {self.fit_split(spec.head)!r} split of {d.name} has a single "
                             "class; the head cannot be fitted")
        if spec.head == "lr":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=spec.C, max_iter=5000).fit(F[fit], d.y[fit])
        else:
            from ..dfr import DFRClassifier

            model = DFRClassifier(mode=self.dfr_mode, tune_fraction=self.dfr_tune_fraction,
                                  random_state=seed)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*tuning part is empty.*")
                model.fit(F[fit], d.y[fit], groups=d.groups[fit])
        pred = model.predict(F[test])
        self.last_fits[spec] = (seed, model, pred)
        return pred

    def _zero_shot(self, spec, test, seed=0):
        from ..zeroshot import ZeroShotCLIPClassifier

        d, train = self.data, self.data.mask("train")
        _, inputs = self.crops(spec)
        names = self.classnames or [d.target_names[c] if d.target_names else str(c)
                                    for c in np.unique(d.y[train])]
        model = ZeroShotCLIPClassifier(spec.embedding.name, weights=spec.embedding.weights,
                                       classnames=names, crop_source=spec.crop_source,
                                       **self._runtime())
        model.fit(d.images[train].tolist(), d.y[train])
        test_inputs = inputs[test] if not isinstance(inputs, list) else d.images[test].tolist()
        pred = model.predict(test_inputs)
        self.last_fits[spec] = (seed, model, pred)
        return pred

    # ---- protocol

    def run_row(self, spec, seeds=(0,)) -> dict:
        """Evaluate ``spec`` once per seed; per-seed scores, mean, std and reported values."""
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds is empty: at least one seed is needed")
        d, test = self.data, self.data.mask("test")
        per_seed = []
        for seed in seeds:
            pred = self.fit_predict(spec, seed)
            per_seed.append(score_predictions(d.y[test], pred, d.groups[test],
                                              d.groups[d.mask("train")]))
        return _summary(spec, seeds, per_seed, d.name, self.image_size)

    def run_rows(self, specs, seeds=(0,)) -> list:
        """:meth:`run_row` for each spec, same splits and seeds."""
        return [self.run_row(spec, seeds) for spec in specs]

    def cross_model_matrix(self, attentions, embeddings, *, head="lr", crop_sizes,
                           n_crops=None, layer=-1, C=1.0, seeds=(0,),
                           crop_source="resized") -> CrossModelMatrix:
        """A² with every attention model × every embedding model (Tables 11–15, 24–30).

        Each attention model's crops are chosen once and each embedding model embeds each
        (image, box) once.
        """
        cells = {}
        for i, a in enumerate(attentions):
            for j, e in enumerate(embeddings):
                spec = RowSpec("a2", head, e, a, tuple(crop_sizes), n_crops, layer, C,
                               crop_source)
                cells[(i, j)] = self.run_row(spec, seeds)
        return CrossModelMatrix(list(attentions), list(embeddings), cells)

    def tune(self, spec, grid=None) -> TuneResult:
        """Choose A²'s crops, attention layer and C on the validation split.

        A ``GridSearchCV`` over the pipeline AttentionCropper → CropEmbedder →
        LogisticRegression, fitted on the train split and scored on the val split (one
        ``PredefinedSplit`` fold) by the worst-group (or worst-class) scorer, groups routed
        through scikit-learn's metadata routing.

        With a ``cache``, the attention maps of every candidate layer are computed first, all
        from one forward pass per batch (:meth:`AttentionCropper.layer_maps
        <sk_a2.AttentionCropper.layer_maps>`, through :func:`sk_a2.attention.layer_maps` like
        every map), and stored under the cropper's keys
        (whatever the grid's layer order): the search then runs no attention forward, and each
        (image, box) is embedded once, so the whole search costs one pass of each model over
        the train and val images.
        """
        import sklearn
        from sklearn.model_selection import GridSearchCV

        if spec.attention is None or not spec.crop_sizes:
            raise ValueError("tune searches A²'s crops: the spec needs an attention model and "
                             "crop sizes")
        self.data.require("val", "tuning", _VAL_HINT)
        grid = grid or default_tune_grid(spec.crop_sizes, self.image_size)
        X, y, fit_params, cv = self._search_inputs()
        self._prefill_maps(spec, grid, X)
        with sklearn.config_context(enable_metadata_routing=True):
            search = GridSearchCV(self.tune_pipeline(spec), grid, scoring=self.scorer(), cv=cv,
                                  refit=False, error_score="raise")
            search.fit(X, y, **fit_params)
        res = search.cv_results_
        table = [{"params": res["params"][i], "score": float(res["mean_test_score"][i]),
                  "rank": int(res["rank_test_score"][i])} for i in range(len(res["params"]))]
        return TuneResult(dict(search.best_params_), float(search.best_score_), self.metric,
                          table, search)

    def _prefill_maps(self, spec, grid, X):
        """Cache the maps of every layer ``grid`` searches, in one forward pass per batch."""
        if self.cache is None:
            return
        grids = [grid] if isinstance(grid, dict) else list(grid)
        layers = list(dict.fromkeys(layer for g in grids
                                    for layer in g.get("crop__layer", [spec.layer])))
        self.log(f"attention maps of layers {layers} with {spec.attention.name}, one pass")
        self.cropper(replace(spec, method="a2")).fit().layer_maps(X, layers)

    def tune_pipeline(self, spec):
        """The pipeline ``tune`` searches (A² with a logistic-regression head)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        from ..embedder import CropEmbedder

        spec = replace(spec, method="a2")
        emb = CropEmbedder(spec.embedding.name, weights=spec.embedding.weights,
                           crop_source=spec.crop_source, **self._runtime())
        return Pipeline([("crop", self.cropper(spec)), ("emb", emb),
                         ("lr", LogisticRegression(C=spec.C, max_iter=5000))])

    def scorer(self):
        """The package's scorer for ``metric``."""
        from ..metrics import worst_class_scorer, worst_group_scorer

        return worst_class_scorer if self.metric == "worst_class_accuracy" else worst_group_scorer

    def _search_inputs(self):
        from sklearn.model_selection import PredefinedSplit

        d = self.data
        rows = np.flatnonzero(d.mask("train") | d.mask("val"))
        test_fold = np.where(d.split[rows] == "val", 0, -1)
        fit_params = {} if self.metric == "worst_class_accuracy" else {"groups": d.groups[rows]}
        return d.images[rows].tolist(), d.y[rows], fit_params, PredefinedSplit(test_fold)


_VAL_HINT = ("Datasets without an official validation split (Spawrious, MetaShift) hold one out "
             "of train with the loader's val_size, e.g. load_spawrious(root, val_size=0.2).")


def apply_tuned(spec, best_params) -> RowSpec:
    """``spec`` with the crop sizes, crop count, layer and C a search chose."""
    changes = {"crop__crop_sizes": "crop_sizes", "crop__n_crops": "n_crops",
               "crop__layer": "layer", "lr__C": "C"}
    values = {changes[k]: v for k, v in best_params.items() if k in changes}
    if "crop_sizes" in values:
        values["crop_sizes"] = tuple(values["crop_sizes"])
    if spec.head != "lr":
        values.pop("C", None)
    return replace(spec, **values)

