"""The paper's evaluation settings, per dataset and head.

:func:`paper_preset` returns the settings under which the paper reports a dataset with a given
head (Appendix E and I of the paper):

* crop sizes: one 64 × 64 crop on Waterbirds (Table 8), two crops of 64 and 32 on Spawrious and
  MetaShift (Tables 6, 9, 10), one 128 × 128 crop for zero-shot CLIP (Tables 8–10, 30);
* the center-crop baseline: one 128 × 128 crop (Appendix H); random crops take the A² sizes;
* the head's fitting split: DFR(Val) on Waterbirds (its official val split, 50/50 for tuning
  and retraining), DFR(Train) elsewhere (20 % of train for tuning, 80 % for retraining);
  logistic regression (lbfgs) on the train split;
* the models named in the tables' headline rows (Table 1): A²_LR is ViT-S attention × ViT-G
  embeddings (the cross-model row), DFR + A² is ViT-S × ViT-S, A²_ZS is ViT-S × OpenCLIP
  ViT-L-14; all DINOv2, at 224 × 224;
* 5 seeds for the stochastic parts (DFR's resampling, random crops).

The values are plain data (:class:`Preset`, a frozen dataclass); :meth:`Preset.to_dict` gives
them for printing and for results files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .benchmarks import BENCHMARK_SETTINGS, PAPER_BENCHMARKS

__all__ = [
    "BACKBONES",
    "PAPER_DATASETS",
    "PAPER_HEADS",
    "Preset",
    "PresetError",
    "paper_preset",
]

#: The paper's DINOv2 backbones by the labels its tables use.
BACKBONES = {
    "ViT-S": "dinov2_vits14",
    "ViT-B": "dinov2_vitb14",
    "ViT-L": "dinov2_vitl14",
    "ViT-G": "dinov2_vitg14",
    "OpenCLIP ViT-L-14": "openclip_vitl14",
}

#: Datasets the paper evaluates, with the tables reporting them (from
#: :data:`~sk_a2.paper.benchmarks.BENCHMARK_SETTINGS`).
PAPER_DATASETS = {name: BENCHMARK_SETTINGS[name].tables for name in PAPER_BENCHMARKS}

PAPER_HEADS = ("lr", "dfr", "zs")

_EMBEDDING = {"lr": "dinov2_vitg14", "dfr": "dinov2_vits14", "zs": "openclip_vitl14"}


class PresetError(ValueError):
    """A preset was asked for a dataset or head it does not cover."""


@dataclass(frozen=True)
class Preset:
    """The settings of one (dataset, head) evaluation.

    Attributes
    ----------
    name : str
        ``"paper"``.
    dataset, head : str
        The dataset key (as in ``sk-a2 evaluate --dataset``) and head (``lr``, ``dfr``, ``zs``).
    attention_model, embedding_model : str
        Model short names (:func:`sk_a2.list_models`).
    crop_sizes : tuple of int
        A² crop sides in pixels of the ``image_size`` frame, largest first.
    center_crop_sizes : tuple of int
        The center-crop baseline's crops (one 128 crop).
    random_crop_sizes : tuple of int
        The random-crop baseline's crops (the A² sizes).
    image_size : int
        Side of the models' square input.
    fit_split : {"train", "val"}
        The split the head is fitted on.
    dfr_mode : {"val", "train"} or None
        DFR's mode (None for other heads).
    dfr_tune_fraction : float or None
        Share of the fitting split DFR holds out to tune C and class weights.
    seeds : int
        Repetitions of the stochastic parts.
    metric : str
        The metric the dataset's tables rank by (``worst_group_accuracy`` or, for MetaShift
        Animals, ``worst_class_accuracy``).
    tables : tuple of str
        The paper's tables reporting this dataset.
    """

    name: str
    dataset: str
    head: str
    attention_model: str
    embedding_model: str
    crop_sizes: tuple
    center_crop_sizes: tuple
    random_crop_sizes: tuple
    image_size: int
    fit_split: str
    dfr_mode: str | None
    dfr_tune_fraction: float | None
    seeds: int
    metric: str
    tables: tuple

    def to_dict(self) -> dict:
        """The settings as JSON-ready plain values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def replace(self, **changes) -> Preset:
        """A copy with some settings changed (an explicit option overriding the preset)."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise PresetError(f"unknown preset setting(s) {unknown}; known: {sorted(asdict(self))}")
        return replace(self, **changes)


def paper_preset(dataset: str, head: str = "lr") -> Preset:
    """The paper's settings for ``dataset`` evaluated with ``head``.

    Parameters
    ----------
    dataset : str
        One of :data:`PAPER_DATASETS`.
    head : {"lr", "dfr", "zs"}, default="lr"

    Raises
    ------
    PresetError
        For a dataset or head the paper does not report, naming the ones it does.

    Examples
    --------
    >>> p = paper_preset("waterbirds", "dfr")
    >>> p.crop_sizes, p.fit_split, p.attention_model, p.embedding_model
    ((64,), 'val', 'dinov2_vits14', 'dinov2_vits14')
    """
    key = str(dataset).lower()
    if key not in PAPER_DATASETS:
        raise PresetError(
            f"the paper preset has no settings for dataset {dataset!r}; the paper evaluates "
            f"{', '.join(PAPER_DATASETS)}. Give the settings explicitly instead (crop sizes, "
            "models, head)."
        )
    if head not in PAPER_HEADS:
        raise PresetError(f"head must be one of {', '.join(PAPER_HEADS)}, got {head!r}")
    settings = BENCHMARK_SETTINGS[key]
    dfr_mode = None
    if head == "dfr":
        dfr_mode = "val" if key == "waterbirds" else "train"
    return Preset(
        name="paper",
        dataset=key,
        head=head,
        attention_model=BACKBONES["ViT-S"],
        embedding_model=_EMBEDDING[head],
        crop_sizes=(128,) if head == "zs" else settings.crop_sizes,
        center_crop_sizes=(128,),
        random_crop_sizes=settings.crop_sizes,
        image_size=224,
        fit_split="val" if dfr_mode == "val" else "train",
        dfr_mode=dfr_mode,
        dfr_tune_fraction={"val": 0.5, "train": 0.2, None: None}[dfr_mode],
        seeds=5,
        metric=settings.metric,
        tables=settings.tables,
    )
