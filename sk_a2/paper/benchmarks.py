"""The paper's settings per benchmark: one table, read by the loaders' registry and the presets.

:data:`BENCHMARK_SETTINGS` maps each benchmark name of :func:`sk_a2.datasets.list_benchmarks`
to the crop sizes the paper uses on it, the metric its tables rank by and the tables reporting
it (empty for the benchmarks the paper loads but does not tabulate against A²'s headline rows:
CelebA and the other Spawrious splits). :mod:`sk_a2.datasets` takes the crop sizes and metric
from here for its :class:`~sk_a2.datasets.Benchmark` entries; :func:`sk_a2.paper.paper_preset`
takes the crop sizes, metric and tables. This module imports nothing of the package, so any
layer may read it.

Examples
--------
>>> from sk_a2.paper.benchmarks import BENCHMARK_SETTINGS
>>> BENCHMARK_SETTINGS["metashift_animals"].crop_sizes
(64, 32)
>>> BENCHMARK_SETTINGS["metashift_animals"].metric
'worst_class_accuracy'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BENCHMARK_SETTINGS", "PAPER_BENCHMARKS", "BenchmarkSettings"]


@dataclass(frozen=True)
class BenchmarkSettings:
    """The paper's settings for one benchmark.

    Parameters
    ----------
    crop_sizes : tuple of int
        A² crop sides in pixels of the 224 px frame, largest first (Tables 6, 8–10).
    metric : str, default="worst_group_accuracy"
        The metric the benchmark's tables rank by (``worst_class_accuracy`` for MetaShift
        Animals).
    tables : tuple of str, default=()
        The paper's tables reporting the benchmark; empty for the benchmarks outside
        :data:`PAPER_BENCHMARKS`.
    """

    crop_sizes: tuple
    metric: str = "worst_group_accuracy"
    tables: tuple = ()

    @property
    def report_worst_class(self) -> bool:
        """Whether the paper reports worst-class accuracy for the benchmark."""
        return self.metric == "worst_class_accuracy"


_SPAWRIOUS = ("o2o_easy", "o2o_medium", "o2o_hard", "m2m_easy", "m2m_medium", "m2m_hard")
_SPAWRIOUS_TABLES = {
    "o2o_hard": ("1", "2", "6", "7", "11", "27", "30"),
    "m2m_hard": ("1", "2", "6", "7", "12", "28", "30"),
}

#: The paper's settings by benchmark name, in the paper's order.
BENCHMARK_SETTINGS = {
    "waterbirds": BenchmarkSettings((64,), tables=("1", "2", "8", "13", "29", "30")),
    "celeba": BenchmarkSettings((64,)),
    "metashift_cvd": BenchmarkSettings((64, 32), tables=("1", "2", "9", "14", "26", "30")),
    "metashift_animals": BenchmarkSettings((64, 32), "worst_class_accuracy",
                                           ("1", "2", "10", "15", "25", "30")),
    **{f"spawrious_{name}": BenchmarkSettings((64, 32), tables=_SPAWRIOUS_TABLES.get(name, ()))
       for name in _SPAWRIOUS},
}

#: The benchmarks of the paper's tables (those with tables and a preset), in Table 1's order.
PAPER_BENCHMARKS = ("waterbirds", "spawrious_o2o_hard", "spawrious_m2m_hard", "metashift_cvd",
                    "metashift_animals")
