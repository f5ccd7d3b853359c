"""Helpers shared by the dataset loaders."""

from __future__ import annotations

import contextlib
import csv
import math
import numbers
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from sklearn.utils import Bunch

from ..images import swaps_axes

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


#: The folder names each dataset's loader also looks for inside ``root`` (compared without
#: regard to case): ``root`` is the dataset folder itself, or its parent holding a folder of one
#: of these names. The table in docs/datasets.md is this one.
DATASET_FOLDERS = {
    "waterbirds": ("waterbird_complete95_forest2water2", "waterbirds"),
    "cub": ("CUB_200_2011",),
    "celeba": ("celeba", "celebA_v1.0", "data"),
    "spawrious": ("spawrious224",),
    "metashift_cvd": ("MetaShift-Cat-Dog-indoor-outdoor",),
    "metashift_animals": ("metashift_animals",),
}


def _named_subfolders(root, candidates):
    """Sub-folders of ``root`` whose name is one of ``candidates`` (any case), in the order of
    ``candidates``, exact-case matches first."""
    wanted = [name.lower() for name in candidates]
    try:
        children = [p for p in root.iterdir() if p.name.lower() in wanted and p.is_dir()]
    except OSError:
        return []
    return sorted(children, key=lambda p: (wanted.index(p.name.lower()),
                                           p.name not in candidates, p.name))


def resolve_root(root, marker, candidates, what, source):
    """Find the dataset folder: ``root`` itself, or its sub-folder of a usual name.

    The one rule of every loader: ``root`` is the dataset folder (it holds ``marker``) or its
    parent, holding a folder named as one of ``candidates`` (compared without regard to case,
    so ``CelebA/`` and ``celeba/`` both count) that holds ``marker``.

    Parameters
    ----------
    root : path-like
        Folder passed by the user.
    marker : str or tuple of str
        Relative path of a file or folder that identifies the dataset folder (or several, any
        of which does; the first is named in errors).
    candidates : sequence of str
        Sub-folder names of ``root`` that are also searched (usual archive names, see
        :data:`DATASET_FOLDERS`).
    what, source : str
        Used in the error message, see :func:`missing_file_error`.

    Returns
    -------
    pathlib.Path
        Absolute path of the folder that contains ``marker``.

    Raises
    ------
    FileNotFoundError
        If ``root`` does not exist or neither it nor a candidate folder contains ``marker``.
    ValueError
        If two different candidate folders contain ``marker`` (which one is meant is unclear).
    """
    markers = (marker,) if isinstance(marker, str) else tuple(marker)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset root {str(root)!r} does not exist or is not a folder; expected it to "
            f"contain {markers[0]!r}. {source}"
        )
    if any((root / m).exists() for m in markers):
        return root.resolve()
    found = []
    for folder in _named_subfolders(root, candidates):
        if any((folder / m).exists() for m in markers) and folder.resolve() not in found:
            found.append(folder.resolve())
    if len(found) > 1:
        raise ValueError(
            f"Dataset root {str(root)!r} holds {len(found)} folders with {markers[0]!r}: "
            f"{', '.join(repr(str(f)) for f in found)}; which one is meant is unclear, so pass "
            f"that folder itself as root."
        )
    if found:
        return found[0]
    where = ""
    if candidates:
        where = (f" (root may be the dataset folder itself or its parent holding a folder named "
                 f"{' or '.join(repr(c) for c in candidates)}, in any case)")
    raise FileNotFoundError(
        f"{what} not found: expected {str(root / markers[0])!r}{where}. {source}")


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
        If the header lacks a required column or repeats one, the file has no data rows or is
        not UTF-8 text.
    """
    return [row for _, row in read_csv_records(path, required_columns, what, source)]


def read_csv_records(path, required_columns, what, source):
    """:func:`read_csv_rows` with the file line of each row: a list of ``(line, row)``.

    ``line`` is the 1-based line of the file where the row ends (the header is line 1), so a
    message naming it points at the row even when a quoted cell spans several lines. Blank
    lines are skipped.
    """
    if not path.is_file():
        raise missing_file_error(what, path, source)
    with open(path, newline="", encoding="utf-8-sig") as handle, decoding(path, what):
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        for name in header:
            if header.count(name) > 1:
                raise ValueError(
                    f"{what} {str(path)!r}, line 1 (header): column {name!r} appears twice, so "
                    f"its value would be ambiguous; rename or remove one of the two columns. "
                    f"{source}"
                )
        missing = [name for name in required_columns if name not in header]
        if missing:
            raise ValueError(
                f"{what} {str(path)!r} is malformed: missing column(s) {missing}; expected a "
                f"header with {list(required_columns)}, found {header}. {source}"
            )
        records = []
        for cells in reader:
            if not cells:
                continue
            cells = cells + [""] * (len(header) - len(cells))
            records.append((reader.line_num,
                            {key: value.strip() for key, value in zip(header, cells)}))
    if not records:
        raise ValueError(f"{what} {str(path)!r} has a header but no data rows. {source}")
    return records


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
    anything else -- a fraction (``"1.7"``), ``inf``, ``nan``, text, an integer outside the
    64-bit range (``"1e30"``) -- raises ``ValueError`` naming the file, the data row, the column
    and the value (a label is never rounded).
    """
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        try:
            real = float(text)
        except ValueError:
            real = math.nan
        number = int(real) if math.isfinite(real) and real.is_integer() else None
    if number is None:
        raise ValueError(
            f"{str(path)!r}, data row {line}: column {column!r} should be an integer, got "
            f"{value!r}."
        )
    if not -(2**63) <= number < 2**63:
        raise ValueError(
            f"{str(path)!r}, data row {line}: column {column!r} is {value!r}, outside the 64-bit "
            f"integer range (-2**63 to 2**63 - 1); write the integer the column stands for."
        )
    return number


def check_unique(seen, key, path, line, what, unit="line"):
    """Record that ``key`` (an id of a metadata file) was read at ``line``; a ``ValueError``
    naming both lines if it was read before (a repeated id is never resolved silently).

    Parameters
    ----------
    seen : dict
        ``{key: line}`` of the keys read so far; updated.
    key : hashable
        The id read at ``line``.
    path : path-like
        The metadata file.
    line : int
        1-based line (or data row) number.
    what : str
        What the key is, e.g. ``"image id"``.
    unit : str, default="line"
        ``"line"`` or ``"data row"``.
    """
    if key in seen:
        raise ValueError(
            f"{str(path)!r}, {unit} {line}: {what} {key!r} appears twice (first at {unit} "
            f"{seen[key]}), so which one applies would be ambiguous; remove or correct one of "
            f"the two lines."
        )
    seen[key] = line


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


def hold_out_val(split, groups, val_size, random_state, *, to="val"):
    """Move a group-stratified fraction of the training rows to a ``"val"`` split.

    Parameters
    ----------
    split : ndarray of str
        Split of each row; modified copy is returned.
    groups : ndarray of int
        Group of each row; the fraction is taken within each group.
    val_size : float
        Fraction of each training group moved to validation, in ``[0, 1)``; within a group of
        ``n`` training rows, ``round(val_size * n)`` rows move.
    random_state : int, Generator or RandomState
        Seed of the selection.
    to : str, default="val"
        The split the rows move to (``"test"`` for a dataset without any split).

    Returns
    -------
    ndarray of str
        New split array.
    """
    if not 0.0 <= val_size < 1.0:
        raise ValueError(f"{'val' if to == 'val' else to}_size must be in [0, 1), got "
                         f"{val_size!r}.")
    split = split.copy()
    if val_size == 0.0:
        return split
    rng = make_rng(random_state)
    train_idx = np.flatnonzero(split == "train")
    for group in np.unique(groups[train_idx]):
        members = train_idx[groups[train_idx] == group]
        n_val = round(val_size * members.size)
        if n_val:
            split[rng.choice(members, size=n_val, replace=False)] = to
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


def image_frame(path, where):
    """``(width, height)`` of an image file as it is loaded (EXIF orientation applied), read
    from its header (no pixels decoded); the frame its boxes are clipped to.

    ``where`` names the metadata line that needs the image, for the error messages.
    """
    try:
        with Image.open(path) as img:
            width, height = img.size
            swapped = swaps_axes(img)  # an unreadable EXIF block: the pixels load unrotated
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{where}: image file {str(path)!r} does not exist; its boxes are clipped to its "
            "size, so the image must be there."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ValueError(
            f"{where}: cannot read image file {str(path)!r} ({type(exc).__name__}: {exc}); its "
            "boxes are clipped to its size, so it must be a readable image."
        ) from None
    return (height, width) if swapped else (width, height)


def clip_box(box, frame, where):
    """Clip one ``(x0, y0, x1, y1)`` box to the image frame ``(width, height)``.

    Returns the clipped box (a tuple of floats) and whether clipping changed it. A box with a
    non-finite coordinate, an empty box (``x1 <= x0`` or ``y1 <= y0``) and a box that is empty
    once clipped (it lies outside the image) raise ``ValueError`` naming ``where`` (file and
    line).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    width, height = (float(v) for v in frame)
    shown = [float(f"{v:.6g}") for v in (x0, y0, x1, y1)]
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"{where}: box {shown} has a non-finite coordinate; write the box's "
                         "pixel coordinates.")
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{where}: box {shown} is empty: boxes are (x0, y0, x1, y1) with "
                         "x1 > x0 and y1 > y0; correct or remove it.")
    clipped = (max(x0, 0.0), max(y0, 0.0), min(x1, width), min(y1, height))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise ValueError(
            f"{where}: box {shown} lies outside its image ({width:g} wide, {height:g} high): "
            "nothing of it is left once clipped to the image; boxes are in the image's pixels, "
            "correct or remove it."
        )
    return clipped, clipped != (x0, y0, x1, y1)


class ClipTally:
    """Clips the boxes of a loader's images to their frames and counts the clipped ones.

    One rule for every box source: a box extending past its image is clipped to it (and
    counted); one outside it or empty is an error (see :func:`clip_box`).
    """

    def __init__(self):
        self.clipped = []
        self.total = 0
        self.first = None

    def clip(self, boxes, frame, wheres):
        """The ``(k, 4)`` float32 boxes of one image, clipped to ``frame``; ``wheres`` names
        the metadata line of each box."""
        out, n = [], 0
        for box, where in zip(boxes, wheres):
            box, changed = clip_box(box, frame, where)
            out.append(box)
            if changed:
                n += 1
                self.first = self.first or where
        self.clipped.append(n)
        self.total += len(out)
        return np.asarray(out, dtype=np.float32).reshape(-1, 4)

    def finish(self, bunch, what):
        """Set ``bunch.clipped_boxes`` (per image) and ``bunch.n_clipped_boxes``; warn once
        when a box was clipped, naming ``what`` (the loader) and the first such line."""
        bunch.clipped_boxes = np.asarray(self.clipped, dtype=np.int64)
        bunch.n_clipped_boxes = int(bunch.clipped_boxes.sum())
        if bunch.n_clipped_boxes:
            warnings.warn(
                f"{what}: {bunch.n_clipped_boxes} of {self.total} boxes extended past their image "
                f"and were clipped to it (first: {self.first}); the count is the dataset's "
                "n_clipped_boxes.",
                UserWarning,
                stacklevel=3,
            )
        return bunch
