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
    """One benchmark of the A² paper: its loader and the paper's settings for it.

    Parameters
    ----------
    name : str
        The benchmark's name (``"waterbirds"``, ``"spawrious_o2o_hard"`` ...).
    loader : callable
        ``loader(root)`` returns the dataset's :class:`~sklearn.utils.Bunch`.
    crop_sizes : tuple of int
        The paper's crop sides for this benchmark (pixels of a 224 px frame).
    report_worst_class : bool, default=False
        Whether the paper reports worst-class accuracy for it (MetaShift Animals).
    splits : tuple of str, default=("train", "val", "test")
        The split names its ``split`` column may hold (some may be empty).

    Examples
    --------
    >>> from sk_a2.datasets import get_benchmark
    >>> benchmark = get_benchmark("spawrious_m2m_hard")
    >>> benchmark.crop_sizes, benchmark.report_worst_class
    ((64, 32), False)
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

    Examples
    --------
    >>> from sk_a2.datasets import list_benchmarks
    >>> list_benchmarks()[:4]
    ['waterbirds', 'celeba', 'metashift_cvd', 'metashift_animals']
    """
    return list(_BENCHMARKS)


def get_benchmark(name) -> Benchmark:
    """The :class:`Benchmark` called ``name``.

    Parameters
    ----------
    name : str
        One of :func:`list_benchmarks`.

    Returns
    -------
    Benchmark

    Raises
    ------
    ValueError
        If ``name`` is not one of :func:`list_benchmarks`.

    Examples
    --------
    >>> from sk_a2.datasets import get_benchmark
    >>> get_benchmark("waterbirds").crop_sizes
    (64,)
    """
    if name not in _BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(_BENCHMARKS)}")
    return _BENCHMARKS[name]
