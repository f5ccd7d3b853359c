"""The paper's reported numbers, and matching them to measured configurations.

The values of Tables 1, 2, 6–15 and 24–30 ship as ``sk_a2/paper/paper_results.csv``, one value
per line::

    table,row,dataset,method,attention_model,embedding_model,head,image_size,crop_sizes,metric,
    value,std

``method`` is ``full`` (whole image), ``center``, ``random`` or ``a2`` for the rows this package
runs, and a short name (``ifam_k4``, ``ttr``, ``erm`` …) for prior work it does not; models are
:func:`sk_a2.list_models` names (``resnet50`` for the ResNet-50 rows); ``head`` is ``lr``,
``dfr`` or ``zs``; ``crop_sizes`` is space-separated and empty where the table does not fix it;
values are percentages; ``std`` is empty unless the paper reports one. Table 24's dataset is
``mean_5``, the mean over the five benchmarks.

``metric`` is what the number measures, named as :func:`sk_a2.metrics.accuracy_summary` names
the measured values, so a reported value is only ever set beside the same quantity:

* ``accuracy`` -- the plain test accuracy (every test image counts once). Tables 2, 6, 9–12 and
  the paper's own rows of Table 8, whose "Avg Acc" column holds the numbers Table 2 calls test
  accuracy;
* ``worst_group_accuracy`` -- Tables 1, 7, 8, 9, 13, 14 and 24–30;
* ``worst_class_accuracy`` -- MetaShift Animals (Tables 1, 10, 15, 25, 30);
* ``train_weighted_accuracy`` -- the group accuracies weighted by the train group shares: the
  prior-work ResNet-50 rows of Table 8 (ERM, CVaR DRO, LfF, JTT, Group DRO, DFR), copied from
  papers that report Waterbirds' average accuracy under group_DRO's convention.
"""


from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

__all__ = ["METRICS", "ReportedValue", "match_reported", "reported_values"]

#: The metrics of the ``metric`` column (the measured values carry the same names).
METRICS = ("accuracy", "worst_group_accuracy", "worst_class_accuracy",
           "train_weighted_accuracy")

_MODEL_INDEPENDENT = {"full": ("attention_model", "crop_sizes"),
                      "center": ("attention_model",), "random": ("attention_model",)}


@dataclass(frozen=True)
class ReportedValue:
    """One number of the paper: where it is, what configuration it is for, and its value (%)."""

    table: str
    row: str
    dataset: str
    method: str
    attention_model: str | None
    embedding_model: str | None
    head: str | None
    image_size: int
    crop_sizes: tuple | None
    metric: str
    value: float
    std: float | None

    def to_dict(self) -> dict:
        return {"table": self.table, "row": self.row, "value": self.value, "std": self.std}


def _parse(row: dict) -> ReportedValue:
    sizes = tuple(int(s) for s in row["crop_sizes"].split()) or None
    return ReportedValue(
        table=row["table"], row=row["row"], dataset=row["dataset"], method=row["method"],
        attention_model=row["attention_model"] or None,
        embedding_model=row["embedding_model"] or None, head=row["head"] or None,
        image_size=int(row["image_size"]), crop_sizes=sizes, metric=row["metric"],
        value=float(row["value"]), std=float(row["std"]) if row["std"] else None,
    )


@lru_cache(maxsize=1)
def reported_values() -> tuple:
    """Every reported value of the paper, as :class:`ReportedValue` tuples (file order)."""
    text = resources.files(__package__).joinpath("paper_results.csv").read_text("utf-8")
    return tuple(_parse(row) for row in csv.DictReader(io.StringIO(text)))


def _model_name(model):
    """``NAME`` of ``NAME=WEIGHTS_FILE``; None stays None."""
    return None if model is None else str(model).split("=", 1)[0]


def match_reported(*, dataset, method, head, embedding_model, attention_model=None,
                   crop_sizes=None, image_size=224, metrics=None) -> dict:
    """The reported values of a measured configuration, by metric.

    A reported row matches when dataset, method, head, embedding model and image size agree, and
    (for A²) the attention model; crop sizes must agree where both sides give them. Model names
    may carry ``=WEIGHTS_FILE``, which is ignored.

    Returns
    -------
    dict
        ``{metric: [ReportedValue, ...]}`` for each metric with at least one match (restricted
        to ``metrics`` when given), in table order.
    """
    wanted = {"dataset": dataset, "method": method, "head": head,
              "embedding_model": _model_name(embedding_model),
              "attention_model": _model_name(attention_model),
              "crop_sizes": None if crop_sizes is None else tuple(int(s) for s in crop_sizes),
              "image_size": int(image_size)}
    ignored = _MODEL_INDEPENDENT.get(method, ())
    out: dict = {}
    for rv in reported_values():
        if metrics is not None and rv.metric not in metrics:
            continue
        if all(_agrees(field, getattr(rv, field), value)
               for field, value in wanted.items() if field not in ignored):
            out.setdefault(rv.metric, []).append(rv)
    return out


def _agrees(field, reported, measured):
    if field == "crop_sizes" and (reported is None or measured is None):
        return True
    return reported == measured
