"""Helpers shared by the dataset loaders."""

from __future__ import annotations

import contextlib
import csv
import math
import numbers
import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def make_rng(random_state):
    """Turn ``random_state`` into a :class:`numpy.random.Generator`.

    Parameters
    ----------
    random_state : None, int, numpy.random.Generator or numpy.random.RandomState
        Seed or generator. A ``RandomState`` is used to draw a seed, so passing the same
        ``RandomState`` twice gives different streams, as in scikit-learn.

    Returns
    -------
    numpy.random.Generator
    """
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    raise ValueError(
        f"random_state must be None, an int, a numpy Generator or RandomState; "
        f"got {random_state!r}."
    )


def missing_file_error(what, path, source):
    """Build the error raised when a dataset file or folder is missing.

    Parameters
    ----------
    what : str
        Short description of the expected file, e.g. ``"Waterbirds metadata file"``.
    path : path-like
        Where the file was expected.
    source : str
        Where the dataset comes from (URL, paper).

    Returns
    -------
    FileNotFoundError
    """
    return FileNotFoundError(f"{what} not found: expected {str(path)!r}. {source}")


def resolve_root(root, marker, candidates, what, source):
    """Find the dataset folder holding ``marker`` in ``root`` or one of its sub-folders.

    Parameters
    ----------
    root : path-like
        Folder passed by the user.
    marker : str or tuple of str
        Relative path of a file or folder that identifies the dataset folder (or several, any
        of which does; the first is named in errors).
    candidates : sequence of str
        Sub-folder names of ``root`` that are also searched (usual archive names).
    what, source : str
        Used in the error message, see :func:`missing_file_error`.

    Returns
    -------
    pathlib.Path
        Absolute path of the folder that contains ``marker``.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or no candidate folder contains ``marker``.
    """
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset root {str(root)!r} does not exist or is not a folder; expected it to "
            f"contain {markers[0]!r}. {source}"
        )
    for folder in (root, *(root / name for name in candidates)):
        if any((folder / m).exists() for m in markers):
            return folder.resolve()
    raise missing_file_error(what, root / markers[0], source)


def read_fields(path, what="text file"):
    """Yield ``(line_number, fields, line)`` for each non-blank line of a whitespace-separated
    text file (``fields`` from ``line.split()``); a file that is not UTF-8 is a ``ValueError``
    naming it as ``what``."""
    with open(path, encoding="utf-8") as handle, decoding(path, what):
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if fields:
                yield line_number, fields, line


def read_csv_rows(path, required_columns, what, source):
    """Read a comma-separated file with a header into a list of dicts.

    Parameters
    ----------
    path : pathlib.Path
        CSV file.
    required_columns : sequence of str
        Columns that must be present in the header.
    what, source : str
        Used in error messages.

    Returns
    -------
    list of dict
        One dict per data row, keyed by column name, values stripped of whitespace.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the header lacks a required column, the file has no data rows or is not UTF-8 text.
    """
    if not path.is_file():
        raise missing_file_error(what, path, source)
    with open(path, newline="", encoding="utf-8-sig") as handle, decoding(path, what):
        reader = csv.DictReader(handle)
        header = [name.strip() for name in (reader.fieldnames or [])]
        missing = [name for name in required_columns if name not in header]
        if missing:
            raise ValueError(
                f"{what} {str(path)!r} is malformed: missing column(s) {missing}; expected a "
                f"header with {list(required_columns)}, found {header}. {source}"
            )
        rows = [
            {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}
            for row in reader
        ]
    if not rows:
        raise ValueError(f"{what} {str(path)!r} has a header but no data rows. {source}")
    return rows


@contextlib.contextmanager
def decoding(path, what):
    """Turn a :class:`UnicodeDecodeError` raised inside into a ``ValueError`` naming ``path``.

    Parameters
    ----------
    path : path-like
        The text file being read.
    what : str
        Short description of the file, e.g. ``"Waterbirds metadata file"``.
    """
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{what} {str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
            "as UTF-8."
        ) from None


def parse_int(value, column, path, line):
    """Parse an integer cell of a metadata file, with a helpful error message.

    ``"3"``, ``" 3 "`` and an integer written as a float (``"3.0"``, ``"3e0"``) are accepted;
    anything else -- a fraction (``"1.7"``), ``inf``, ``nan``, text -- raises ``ValueError``
    naming the file, the data row and the value (a label is never rounded).
    """
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise ValueError(
        f"{str(path)!r}, data row {line}: column {column!r} should be an integer, got {value!r}."
    )


def member_path(root, relative, path, line, column="img_filename", *, allow_absolute=False):
    """The absolute path of a file named by a metadata row, confined to the dataset ``root``.

    Parameters
    ----------
    root : pathlib.Path
        Resolved dataset folder.
    relative : str
        The path written in the metadata, relative to ``root``.
    path : path-like
        The metadata file (for error messages).
    line : int
        Data row (or line) number of the metadata file.
    column : str, default="img_filename"
        Column (or field) holding the path.
    allow_absolute : bool, default=False
        Accept an absolute path (normalised), for layouts documented to use them.

    Returns
    -------
    str
        ``root / relative`` normalised (no ``..`` or ``.`` parts).

    Raises
    ------
    ValueError
        If ``relative`` is blank, absolute (unless ``allow_absolute``), or leads outside ``root``
        through ``..`` parts (symbolic links are not followed: only the written path counts).
    """
    if not relative.strip():
        raise ValueError(f"{str(path)!r}, data row {line}: column {column!r} is empty.")
    absolute = os.path.isabs(relative) or bool(os.path.splitdrive(relative)[0])
    if absolute and allow_absolute:
        return os.path.normpath(relative)
    if absolute:
        raise ValueError(
            f"{str(path)!r}, data row {line}: column {column!r} is an absolute path "
            f"({relative!r}); image paths must be relative to the dataset folder {str(root)!r}."
        )
    base = os.path.normpath(str(root))
    full = os.path.normpath(os.path.join(base, relative))
    if os.path.commonpath([base, full]) != base or full == base:
        raise ValueError(
            f"{str(path)!r}, data row {line}: column {column!r} ({relative!r}) does not name a "
            f"file inside the dataset folder {str(root)!r}."
        )
    return full


def parse_split(value, path, line):
    """Map a split cell (``0/1/2`` or ``train/val/test``) to its name."""
    text = value.strip().lower()
    aliases = {"0": "train", "1": "val", "2": "test", "valid": "val", "validation": "val"}
    text = aliases.get(text, text)
    if text not in SPLIT_NAMES:
        raise ValueError(
            f"{str(path)!r}, data row {line}: split should be 0/1/2 or train/val/test, got "
            f"{value!r}."
        )
    return text


def list_images(folder):
    """Sorted absolute paths of the image files directly inside ``folder``."""
    return sorted(
        str(path.resolve())
        for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    )


def hold_out_val(split, groups, val_size, random_state):
    """Move a group-stratified fraction of the training rows to a ``"val"`` split.

    Parameters
    ----------
    split : ndarray of str
        Split of each row; modified copy is returned.
    groups : ndarray of int
        Group of each row; the fraction is taken within each group.
    val_size : float
        Fraction of each training group moved to validation, in ``[0, 1)``.
    random_state : int, Generator or RandomState
        Seed of the selection.

    Returns
    -------
    ndarray of str
        New split array.
    """
    if not 0.0 <= val_size < 1.0:
        raise ValueError(f"val_size must be in [0, 1), got {val_size!r}.")
    split = split.copy()
    if val_size == 0.0:
        return split
    rng = make_rng(random_state)
    train_idx = np.flatnonzero(split == "train")
    for group in np.unique(groups[train_idx]):
        members = train_idx[groups[train_idx] == group]
        n_val = round(val_size * members.size)
        if n_val:
            split[rng.choice(members, size=n_val, replace=False)] = "val"
    return split


def make_bunch(images, target, groups, split, spurious, *, target_names, group_names,
               spurious_names, descr, root, boxes=None, **extra):
    """Assemble the :class:`~sklearn.utils.Bunch` returned by every loader.

    The five per-image fields (``images``, ``target``, ``groups``, ``split``, ``spurious``) may
    be passed by position, in that order.
    """
    bunch = Bunch(
        images=np.asarray(images, dtype=object),
        target=np.asarray(target, dtype=np.int64),
        groups=np.asarray(groups, dtype=np.int64),
        split=np.asarray(split, dtype="<U5"),
        spurious=np.asarray(spurious, dtype=np.int64),
        target_names=np.asarray(target_names),
        group_names=np.asarray(group_names),
        spurious_names=np.asarray(spurious_names),
        DESCR=descr,
        root=str(root),
        **extra,
    )
    if boxes is not None:
        bunch.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return bunch
