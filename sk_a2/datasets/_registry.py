"""The benchmarks of the A2 paper by name: loader, splits and the paper's crop sizes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from ._celeba import load_celeba
from ._common import SPLIT_NAMES
from ._metashift import load_metashift_animals, load_metashift_cvd
from ._spawrious import BENCHMARKS as SPAWRIOUS_BENCHMARKS
from ._spawrious import load_spawrious
from ._waterbirds import load_waterbirds


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of the A2 paper.

    Attributes
    ----------
    name : str
        The benchmark's name (``"waterbirds"``, ``"spawrious_o2o_hard"`` ...).
    loader : callable
        ``loader(root)`` returns the dataset's :class:`~sklearn.utils.Bunch`.
    crop_sizes : tuple of int
        The paper's crop sides for this benchmark (pixels of a 224 px frame).
    report_worst_class : bool
        Whether the paper reports worst-class accuracy for it (MetaShift Animals).
    splits : tuple of str
        The split names its ``split`` column may hold (some may be empty).
    """

    name: str
    loader: Callable
    crop_sizes: tuple
    report_worst_class: bool = False
    splits: tuple = SPLIT_NAMES


def _registry():
    entries = [
        Benchmark("waterbirds", load_waterbirds, (64,)),
        Benchmark("celeba", load_celeba, (64,)),
        Benchmark("metashift_cvd", load_metashift_cvd, (64, 32)),
        Benchmark("metashift_animals", load_metashift_animals, (64, 32), True),
    ]
    entries += [
        Benchmark(f"spawrious_{b}", partial(load_spawrious, benchmark=b), (64, 32))
        for b in SPAWRIOUS_BENCHMARKS
    ]
    return {entry.name: entry for entry in entries}


_BENCHMARKS = _registry()


def list_benchmarks() -> list[str]:
    """Names of the paper's benchmarks that :func:`get_benchmark` knows, in the paper's order.

    Returns
    -------
    names : list of str
    """
    return list(_BENCHMARKS)


def get_benchmark(name) -> Benchmark:
    """The :class:`Benchmark` called ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not one of :func:`list_benchmarks`.
    """
    if name not in _BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(_BENCHMARKS)}")
    return _BENCHMARKS[name]
