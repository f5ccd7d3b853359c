"""Your own dataset: a spreadsheet (CSV) of image paths with labels, groups and splits."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ._common import (
    check_unique,
    hold_out_val,
    make_bunch,
    make_rng,
    member_path,
    parse_split,
    read_csv_records,
)

CSV_SOURCE = "See sk_a2.datasets.load_csv for the expected columns."
#: The test fraction of a CSV without a split column.
DEFAULT_TEST_SIZE = 0.2
_INTEGER = re.compile(r"^[+-]?\d+$")

DESCR = """\
Your own images, from a CSV file (``load_csv``)
-----------------------------------------------

One row per image, comma-separated, with a header line naming the columns (their order is
free; other columns are ignored)::

    image,label,background,split
    birds/001.jpg,waterbird,land,train
    birds/002.jpg,landbird,land,test

* ``image_column`` -- the image path: relative to ``root`` (default: the CSV's own folder),
  where it must stay (no ``..`` leading out), or absolute. Every image must exist; a row
  naming one that does not is an error naming the file, line and column. An image listed
  twice is an error naming both lines.
* ``target_column`` -- the class: any text (``cat``) or integer. ``target`` indexes
  ``target_names``: the classes sorted (numerically when every value is an integer).
* ``group_column`` (optional) -- the spurious attribute (e.g. the background). ``spurious``
  indexes ``spurious_names`` (sorted values), and ``groups`` indexes ``group_names``, the
  (class, attribute) pairs that occur, written ``<class>(<attribute>)`` and sorted by class,
  then attribute. A column that already numbers the groups gives the same groups. Without
  it, each class is its own group (worst-group accuracy is then worst-class accuracy) and
  ``spurious`` is 0 (``spurious_names`` is ``["none"]``).
* ``split_column`` (optional) -- ``train``, ``val`` or ``test`` (also ``0/1/2``, ``valid``,
  ``validation``). Without it, a seeded split is drawn: within each group, ``test_size`` of
  the rows (rounded; 0.2 by default) become ``test``, the others ``train``, from
  ``random_state``.
* ``val_size > 0`` moves that group-stratified fraction of ``train`` to ``val``, on top of
  any ``val`` rows of the CSV.

Empty cells in these columns, a repeated column name in the header and a file that is not
UTF-8 text are errors naming the file and line.
"""


def _sorted_values(values):
    """Unique values, sorted numerically when every one is an integer, else as text; and the
    index of each value in that order."""
    unique = set(values)
    if all(_INTEGER.match(v) for v in unique):
        order = sorted(unique, key=int)
    else:
        order = sorted(unique)
    lookup = {v: i for i, v in enumerate(order)}
    return order, np.asarray([lookup[v] for v in values], dtype=np.int64)


def _check_columns(image_column, target_column, group_column, split_column):
    named = {"image_column": image_column, "target_column": target_column,
             "group_column": group_column, "split_column": split_column}
    for name in ("image_column", "target_column"):
        if not isinstance(named[name], str) or not named[name].strip():
            raise ValueError(f"{name} must be the name of a column of the CSV file, got "
                             f"{named[name]!r}.")
    given = {k: v for k, v in named.items() if v is not None}
    for name, column in given.items():
        if not isinstance(column, str) or not column.strip():
            raise ValueError(f"{name} must be the name of a column of the CSV file or None, "
                             f"got {column!r}.")
        others = [k for k, v in given.items() if v == column and k != name]
        if others:
            raise ValueError(f"{name} and {others[0]} both name the column {column!r}; each "
                             "role needs its own column.")
    return list(given.values())


def _cell(row, column, path, line):
    value = row[column]
    if not value:
        raise ValueError(f"{str(path)!r}, line {line}: column {column!r} is empty; every row "
                         "needs a value there.")
    return value


def _image_paths(records, column, base, path):
    """The absolute path of each row's image: inside ``base`` or absolute, listed once, and
    existing."""
    images, seen, missing = [], {}, []
    for line, row in records:
        image = member_path(base, _cell(row, column, path, line), path, line, column,
                            allow_absolute=True)
        check_unique(seen, os.path.normcase(image), path, line, "image")
        if not os.path.isfile(image):
            missing.append((line, row[column], image))
        images.append(image)
    if missing:
        line, written, image = missing[0]
        more = f" ({len(missing)} rows name a missing image)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"{str(path)!r}, line {line}: column {column!r} names {written!r}, and the image "
            f"file {image!r} does not exist{more}. Relative paths start at root (default: the "
            f"CSV's own folder {str(path.parent)!r}); pass root= (--root) to start them "
            "elsewhere."
        )
    return images


def _split(records, split_column, groups, path, test_size, random_state):
    """The split of each row: from the split column, or a seeded group-stratified draw."""
    if split_column is not None:
        if test_size is not None:
            raise ValueError(f"test_size={test_size!r} would be ignored: the split comes from "
                             f"the column {split_column!r}; remove test_size.")
        return np.asarray([parse_split(_cell(row, split_column, path, line), path, line)
                           for line, row in records], dtype="<U5")
    test_size = DEFAULT_TEST_SIZE if test_size is None else test_size
    if not 0.0 < float(test_size) < 1.0:
        raise ValueError(f"test_size must be in (0, 1), got {test_size!r}.")
    split = np.full(len(records), "train", dtype="<U5")
    return hold_out_val(split, groups, float(test_size), random_state, to="test")


def load_csv(path, *, image_column, target_column, group_column=None, split_column=None,
             root=None, test_size=None, val_size=0.0, random_state=0):
    """Load your own images, labels, spurious attribute and splits from a CSV file.

    Parameters
    ----------
    path : path-like
        The CSV file: comma-separated, a header line naming the columns (see ``DESCR``).
    image_column : str
        Column of the image paths (relative to ``root``, or absolute).
    target_column : str
        Column of the class of each image (text or integer).
    group_column : str, default=None
        Column of the spurious attribute; the groups are the (class, attribute) pairs. Without
        it, each class is a group.
    split_column : str, default=None
        Column of the split (``train``/``val``/``test``). Without it, ``test_size`` of each
        group becomes ``test`` at random (seeded by ``random_state``), the rest ``train``.
    root : path-like, default=None
        Folder the relative image paths start at; default: the folder holding the CSV file.
    test_size : float, default=None
        Without ``split_column``: the fraction of each group drawn into ``test``, in (0, 1)
        (``None`` means 0.2). With ``split_column`` it must stay ``None``.
    val_size : float, default=0.0
        Fraction of each group's ``train`` rows moved to ``val`` (seeded by ``random_state``).
    random_state : int, Generator or RandomState, default=0
        Seed of the drawn test split and of the ``val_size`` hold-out.

    Returns
    -------
    data : sklearn.utils.Bunch
        The same fields as the benchmark loaders: ``images`` (absolute paths), ``target``,
        ``spurious``, ``groups``, ``split``, ``target_names``, ``spurious_names``,
        ``group_names``, ``DESCR``, ``root``; and ``csv`` (the file's absolute path). No boxes.

    Raises
    ------
    FileNotFoundError
        If the CSV file or an image it names does not exist (naming the line and column).
    ValueError
        If a column is missing or repeated in the header, a cell is empty, an image is listed
        twice or outside ``root``, a split value is unknown, or a parameter is out of range.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sk_a2.datasets import load_csv
    >>> folder = Path(tempfile.mkdtemp())
    >>> rows = ["file,animal,place,part"]
    >>> for i in range(8):
    ...     Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    ...     rows.append(f"{i}.png,{('cat', 'dog')[i % 2]},{('in', 'out')[i // 4]},"
    ...                 f"{('train', 'test')[i // 6]}")
    >>> _ = (folder / "pets.csv").write_text(chr(10).join(rows) + chr(10))
    >>> data = load_csv(folder / "pets.csv", image_column="file", target_column="animal",
    ...                 group_column="place", split_column="part")
    >>> data.target_names.tolist(), data.target.tolist()
    (['cat', 'dog'], [0, 1, 0, 1, 0, 1, 0, 1])
    >>> data.group_names.tolist()
    ['cat(in)', 'cat(out)', 'dog(in)', 'dog(out)']
    >>> data.split.tolist().count("test")
    2
    """
    columns = _check_columns(image_column, target_column, group_column, split_column)
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; pass the CSV file itself.")
    if not path.is_file():
        raise FileNotFoundError(f"CSV file {str(path)!r} does not exist. {CSV_SOURCE}")
    path = path.resolve()
    base = path.parent if root is None else Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"root {str(base)!r} does not exist or is not a folder; it is "
                                "where the CSV's relative image paths start.")
    base = base.resolve()
    records = read_csv_records(path, columns, "CSV file", CSV_SOURCE)
    images = _image_paths(records, image_column, base, path)
    target_names, target = _sorted_values([_cell(r, target_column, path, n)
                                           for n, r in records])
    if group_column is None:
        spurious_names, spurious = ["none"], np.zeros(len(records), dtype=np.int64)
    else:
        spurious_names, spurious = _sorted_values([_cell(r, group_column, path, n)
                                                   for n, r in records])
    pairs = sorted(set(zip(target.tolist(), spurious.tolist())))
    pair_index = {pair: i for i, pair in enumerate(pairs)}
    groups = np.asarray([pair_index[p] for p in zip(target.tolist(), spurious.tolist())])
    group_names = [target_names[t] if group_column is None
                   else f"{target_names[t]}({spurious_names[s]})" for t, s in pairs]
    rng = make_rng(random_state)
    split = _split(records, split_column, groups, path, test_size, rng)
    split = hold_out_val(split, groups, val_size, rng)
    return make_bunch(
        images, target, groups, split, spurious, target_names=target_names,
        group_names=group_names, spurious_names=spurious_names, descr=DESCR, root=base,
        csv=str(path),
    )


def csv_loader(path, root=None, *, val_size=0.0, random_state=0, **columns):
    """``load_csv(path, root=root, ...)`` in the ``loader(root, val_size=, random_state=)``
    form of the benchmark registry (see :func:`sk_a2.datasets.get_benchmark`)."""
    return load_csv(path, root=root, val_size=val_size, random_state=random_state, **columns)
