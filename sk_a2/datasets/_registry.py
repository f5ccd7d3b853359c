"""The benchmarks of the A2 paper by name: loader, splits and the paper's crop sizes.

The settings come from the paper's one table, :data:`sk_a2.paper.benchmarks.BENCHMARK_SETTINGS`;
this module adds the loader of each benchmark.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from ..paper.benchmarks import BENCHMARK_SETTINGS
from ._celeba import load_celeba
from ._common import SPLIT_NAMES
from ._csv import csv_loader
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
    loaders = {
        "waterbirds": load_waterbirds,
        "celeba": load_celeba,
        "metashift_cvd": load_metashift_cvd,
        "metashift_animals": load_metashift_animals,
    }
    loaders.update({f"spawrious_{b}": partial(load_spawrious, benchmark=b)
                    for b in SPAWRIOUS_BENCHMARKS})
    return {name: Benchmark(name, loaders[name], settings.crop_sizes, settings.report_worst_class)
            for name, settings in BENCHMARK_SETTINGS.items()}


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


#: ``--dataset csv:FILE``: a user's own CSV file (:func:`sk_a2.datasets.load_csv`).
CSV_PREFIX = "csv:"
#: The crop size of a CSV dataset (one 64 px crop, as the paper uses on Waterbirds and CelebA).
CSV_CROP_SIZES = (64,)


def csv_benchmark(path, *, image_column, target_column, group_column=None, split_column=None,
                  random_state=0) -> Benchmark:
    """A :class:`Benchmark` for your own images listed in a CSV file.

    Its loader is ``loader(root=None, *, val_size=0.0, random_state=...)``, which calls
    :func:`sk_a2.datasets.load_csv` on ``path`` with these columns (``root``: where relative
    image paths start, default the CSV's folder). Crop sizes: one 64 px crop.

    Parameters
    ----------
    path : path-like
        The CSV file.
    image_column, target_column : str
        Columns of the image paths and of the classes.
    group_column, split_column : str, default=None
        Columns of the spurious attribute and of the split (see :func:`load_csv`).
    random_state : int, default=0
        Seed of the drawn test split (without ``split_column``) and of ``val_size``.

    Returns
    -------
    Benchmark

    Examples
    --------
    >>> from sk_a2.datasets import csv_benchmark
    >>> b = csv_benchmark("pets.csv", image_column="file", target_column="animal")
    >>> b.name, b.crop_sizes, b.report_worst_class
    ('csv:pets.csv', (64,), False)
    """
    loader = partial(csv_loader, str(path), image_column=image_column,
                     target_column=target_column, group_column=group_column,
                     split_column=split_column, random_state=random_state)
    return Benchmark(f"{CSV_PREFIX}{path}", loader, CSV_CROP_SIZES)


def get_benchmark(name, **csv_options) -> Benchmark:
    """The :class:`Benchmark` called ``name``, or the one of ``"csv:<file>"``.

    Parameters
    ----------
    name : str
        One of :func:`list_benchmarks`, or ``"csv:<path of a CSV file>"`` for your own images
        (see :func:`csv_benchmark`).
    **csv_options
        With ``csv:``, the keyword arguments of :func:`csv_benchmark` (``image_column`` and
        ``target_column`` are required).

    Returns
    -------
    Benchmark

    Raises
    ------
    ValueError
        If ``name`` is not one of :func:`list_benchmarks` nor ``csv:<file>``, or column options
        are given for a named benchmark.

    Examples
    --------
    >>> from sk_a2.datasets import get_benchmark
    >>> get_benchmark("waterbirds").crop_sizes
    (64,)
    """
    name = str(name)
    if name.startswith(CSV_PREFIX) and len(name) > len(CSV_PREFIX):
        return csv_benchmark(name[len(CSV_PREFIX):], **csv_options)
    if name not in _BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(_BENCHMARKS)}, or "
                         f"{CSV_PREFIX}<file> for your own CSV file")
    if csv_options:
        raise ValueError(f"{', '.join(sorted(csv_options))} would be ignored: they apply to "
                         f"{CSV_PREFIX}<file> datasets, and {name!r} is a benchmark of the paper")
    return _BENCHMARKS[name]
