"""Spawrious loader (Lynch et al., 2023): dog breeds with spurious backgrounds."""

from __future__ import annotations

import numpy as np

from ._common import (
    DATASET_FOLDERS,
    hold_out_val,
    list_images,
    make_bunch,
    missing_file_error,
    resolve_root,
)

SPAWRIOUS_SOURCE = (
    "Spawrious (Lynch et al., 2023, 'Spawrious: A Benchmark for Fine Control of Spurious "
    "Correlation Biases', arXiv:2303.05470) is distributed by https://github.com/aengusl/spawrious "
    "(its package's get_spawrious_dataset(root_dir, name) downloads and extracts "
    "spawrious224__o2o_{easy,medium,hard}.tar.gz for O2O, spawrious224__entire_dataset.tar.gz "
    "for M2M, e.g. https://www.dropbox.com/s/p1ry121m2gjj158/spawrious224__o2o_hard.tar.gz?dl=1); "
    "pass the folder holding spawrious224/ (or spawrious224/ itself) as root."
)
CLASS_NAMES = ("bulldog", "corgi", "dachshund", "labrador")
LOCATION_NAMES = ("desert", "jungle", "dirt", "mountain", "snow", "beach")
GROUP_NAMES = tuple(f"{dog}_{place}" for dog in CLASS_NAMES for place in LOCATION_NAMES)
BENCHMARKS = ("o2o_easy", "o2o_medium", "o2o_hard", "m2m_easy", "m2m_medium", "m2m_hard")

# For each benchmark: training location of bulldog, dachshund, labrador, corgi; their test
# locations; and, for O2O, the location of the filler images shared by every class.
_COMBINATIONS = {
    name: (tuple(train.split()), tuple(test.split()), filler)
    for name, train, test, filler in (
        ("o2o_easy", "desert jungle dirt snow", "dirt snow desert jungle", "beach"),
        ("o2o_medium", "mountain beach dirt jungle", "jungle dirt beach snow", "desert"),
        ("o2o_hard", "jungle mountain snow desert", "mountain snow desert jungle", "beach"),
        ("m2m_easy", "desert mountain dirt jungle", "dirt jungle mountain desert", None),
        ("m2m_medium", "beach snow mountain desert", "desert mountain beach snow", None),
        ("m2m_hard", "dirt jungle snow beach", "snow beach dirt jungle", None),
    )
}
_ORDER = ("bulldog", "dachshund", "labrador", "corgi")
_IMAGES_PER_ENVIRONMENT = 3168

DESCR = """\
Spawrious (Lynch et al., 2023)
------------------------------

Four dog breeds photographed (generated) on six backgrounds; the background is spurious.
Expected layout (the released tarballs)::

    <root>/spawrious224/<folder>/<location>/<breed>/*.png

with ``folder`` in ``0``/``1``, ``location`` in desert, jungle, dirt, mountain, snow, beach and
``breed`` in bulldog, corgi, dachshund, labrador.

Train and test sets follow the official ``spawrious`` package (``_get_combinations`` and
``build_combination``), with T = 3168 images per training environment:

* **O2O** (one-to-one): each breed ``b_i`` (order bulldog, dachshund, labrador, corgi) is trained
  on one location ``L_i``: environment 0 takes the first ``int(0.97 T)`` images of
  ``0/L_i/b_i`` and ``T - int(0.97 T)`` images of every breed on the filler location from
  ``0/<filler>/``; environment 1 the same with ``int(0.87 T)`` from folder ``1``. Test: all
  images of ``0/M_i/b_i`` and ``1/M_i/b_i`` for a different location ``M_i``.
  easy: L = desert, jungle, dirt, snow; M = dirt, snow, desert, jungle; filler beach.
  medium: L = mountain, beach, dirt, jungle; M = jungle, dirt, beach, snow; filler desert.
  hard: L = jungle, mountain, snow, desert; M = mountain, snow, desert, jungle; filler beach.
* **M2M** (many-to-many), all from folder ``0``, with locations ``G`` and ``H``: train
  bulldog on G1 and G2, dachshund on G2 and G1, labrador on G3 and G4, corgi on G4 and G3
  (up to T images each); test bulldog on H1 and H2, dachshund on H2 and H1, labrador on H3 and
  H4, corgi on H4 and H3.
  easy: G = desert, mountain, dirt, jungle; H = dirt, jungle, mountain, desert.
  medium: G = beach, snow, mountain, desert; H = desert, mountain, beach, snow.
  hard: G = dirt, jungle, snow, beach; H = snow, beach, dirt, jungle.

"First n images" means the first n file names in sorted order (the official code takes them
in ``os.listdir`` order, which is not defined).

* ``target`` -- breed index in ``bulldog, corgi, dachshund, labrador`` (the official order).
* ``spurious`` -- location index in ``desert, jungle, dirt, mountain, snow, beach``.
* ``groups`` -- ``6 * target + spurious`` (24 possible (breed, location) pairs, named
  ``<breed>_<location>``; only some occur in a benchmark).
* ``environment`` -- 0 or 1: the training environment, or the first/second test location.
* ``split`` -- ``train`` and ``test``. Spawrious has no official validation set; with
  ``val_size > 0`` a group-stratified fraction of the training images becomes ``val`` (the
  A2 paper holds out 20 % of train for DFR tuning), otherwise ``val`` is empty.
* No boxes.

Source: https://github.com/aengusl/spawrious
"""


def spawrious_plan(benchmark, total=_IMAGES_PER_ENVIRONMENT):
    """List the image folders that make up a Spawrious benchmark.

    Parameters
    ----------
    benchmark : str
        One of ``o2o_easy``, ``o2o_medium``, ``o2o_hard``, ``m2m_easy``, ``m2m_medium``,
        ``m2m_hard``.
    total : int, default=3168
        Images per training environment (the official value is 3168).

    Returns
    -------
    list of tuple
        ``(split, environment, folder, location, breed, limit)`` entries; ``folder`` is the
        sub-folder of ``spawrious224`` (``"0"`` or ``"1"``) and ``limit`` the number of images
        taken (``None`` for all).

    Examples
    --------
    >>> from sk_a2.datasets import spawrious_plan
    >>> plan = spawrious_plan("o2o_easy")
    >>> plan[0]
    ('train', 0, '0', 'desert', 'bulldog', 3072)
    >>> sorted({entry[0] for entry in plan})
    ['test', 'train']
    """
    key = str(benchmark).lower()
    if key not in _COMBINATIONS:
        raise ValueError(f"benchmark must be one of {list(BENCHMARKS)}, got {benchmark!r}.")
    train_locations, test_locations, filler = _COMBINATIONS[key]
    plan = []
    if key.startswith("o2o"):
        for environment, fraction in enumerate((0.97, 0.87)):
            main = int(fraction * total)
            for breed, location in zip(_ORDER, train_locations):
                plan.append(("train", environment, str(environment), location, breed, main))
            for breed in _ORDER:
                plan.append(("train", environment, str(environment), filler, breed, total - main))
        for environment in (0, 1):
            for breed, location in zip(_ORDER, test_locations):
                plan.append(("test", environment, str(environment), location, breed, None))
    else:
        first, second, third, fourth = train_locations
        train_pairs = ((first, second), (second, first), (third, fourth), (fourth, third))
        first, second, third, fourth = test_locations
        test_pairs = ((first, second), (second, first), (third, fourth), (fourth, third))
        for split, pairs, limit in (("train", train_pairs, total), ("test", test_pairs, None)):
            for environment in (0, 1):
                for breed, locations in zip(_ORDER, pairs):
                    plan.append((split, environment, "0", locations[environment], breed, limit))
    return plan


def _spawrious_base(root):
    """The ``spawrious224`` folder: ``root`` itself or its sub-folder of that name."""
    return resolve_root(root, "0", DATASET_FOLDERS["spawrious"], "Spawrious image folder",
                        SPAWRIOUS_SOURCE)


def load_spawrious(root, benchmark="o2o_hard", *, val_size=0.0, random_state=0):
    """Load one Spawrious benchmark as image paths, breeds, locations and splits.

    Parameters
    ----------
    root : path-like
        Folder holding ``spawrious224/`` (or the ``spawrious224`` folder itself).
    benchmark : {"o2o_easy", "o2o_medium", "o2o_hard", "m2m_easy", "m2m_medium", \
"m2m_hard"}, default="o2o_hard"
        Which official train/test combination to build (see ``DESCR``).
    val_size : float, default=0.0
        Fraction of each training group moved to a ``"val"`` split. Spawrious has no official
        validation set; 0 keeps the full official training set.
    random_state : int, Generator or RandomState, default=0
        Seed of the validation hold-out.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (breed), ``spurious`` (location), ``groups``
        (``6 * target + spurious``), ``split``, ``environment``, ``target_names``,
        ``spurious_names``, ``group_names``, ``DESCR``, ``benchmark`` and ``root``. No boxes.

    Raises
    ------
    FileNotFoundError
        If ``root`` or a folder the benchmark needs is missing.
    ValueError
        If ``benchmark`` is unknown or a needed folder holds no image.

    Examples
    --------
    >>> import tempfile
    >>> from sk_a2 import datasets
    >>> datasets.load_spawrious(root=tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: Spawrious image folder not found: expected ...
    """
    plan = spawrious_plan(benchmark)
    base = _spawrious_base(root)
    images, target, location_index, split, environment = [], [], [], [], []
    for split_name, env, folder, location, breed, limit in plan:
        directory = base / folder / location / breed
        if not directory.is_dir():
            raise missing_file_error(
                f"Spawrious image folder for {benchmark}", directory, SPAWRIOUS_SOURCE
            )
        files = list_images(directory)
        if not files:
            raise ValueError(
                f"Spawrious image folder {str(directory)!r} holds no .png/.jpg image. "
                f"{SPAWRIOUS_SOURCE}"
            )
        files = files[:limit]
        images.extend(files)
        target.extend([CLASS_NAMES.index(breed)] * len(files))
        location_index.extend([LOCATION_NAMES.index(location)] * len(files))
        split.extend([split_name] * len(files))
        environment.extend([env] * len(files))

    target = np.asarray(target, dtype=np.int64)
    location_index = np.asarray(location_index, dtype=np.int64)
    groups = len(LOCATION_NAMES) * target + location_index
    split = hold_out_val(np.asarray(split, dtype="<U5"), groups, val_size, random_state)
    return make_bunch(
        images, target, groups, split, location_index,
        target_names=CLASS_NAMES, group_names=GROUP_NAMES, spurious_names=LOCATION_NAMES,
        descr=DESCR, root=base, environment=np.asarray(environment, dtype=np.int64),
        benchmark=str(benchmark).lower(),
    )
