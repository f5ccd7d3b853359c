"""The paper's evaluation harness: benchmark settings, presets, reported values and protocol.

* :mod:`sk_a2.paper.benchmarks` -- the one table of per-benchmark settings (crop sizes,
  metric, tables), read by :mod:`sk_a2.datasets`, the presets and the CLI;
* :mod:`sk_a2.paper.presets` -- :func:`paper_preset`, the settings of a (dataset, head) run;
* :mod:`sk_a2.paper.reported` -- the paper's numbers (``paper_results.csv``) and matching them;
* :mod:`sk_a2.paper.protocol` -- :class:`Protocol`: seeds, tuning, cross-model matrices.
"""

from .benchmarks import BENCHMARK_SETTINGS, BenchmarkSettings
from .presets import PAPER_DATASETS, Preset, PresetError, paper_preset
from .protocol import EvalData, Protocol, RowSpec, compare_specs, default_tune_grid
from .reported import ReportedValue, match_reported, reported_values

__all__ = [
    "BENCHMARK_SETTINGS",
    "BenchmarkSettings",
    "EvalData",
    "PAPER_DATASETS",
    "Preset",
    "PresetError",
    "Protocol",
    "ReportedValue",
    "RowSpec",
    "compare_specs",
    "default_tune_grid",
    "match_reported",
    "paper_preset",
    "reported_values",
]
