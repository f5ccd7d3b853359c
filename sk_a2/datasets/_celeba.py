"""CelebA loader for the Blond_Hair x Male spurious-correlation task (Liu et al., 2015)."""

from __future__ import annotations

import numpy as np

from ._common import (
    DATASET_FOLDERS,
    SPLIT_NAMES,
    check_unique,
    decoding,
    make_bunch,
    member_path,
    read_csv_records,
    read_fields,
    resolve_root,
)

CELEBA_SOURCE = (
    "CelebA (Liu et al., 2015, 'Deep Learning Face Attributes in the Wild') can be downloaded "
    "from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped images and the "
    "Anno/Eval text files), through torchvision.datasets.CelebA, or from Kaggle "
    "(https://www.kaggle.com/jessicali9530/celeba-dataset, the copy group_DRO and WILDS point "
    "to); pass the folder holding list_attr_celeba.txt or .csv, list_eval_partition.txt or .csv "
    "and img_align_celeba/ (or the official Anno/, Eval/, Img/ sub-folders), or its parent, as "
    "root."
)
TARGET_ATTRIBUTE = "Blond_Hair"
SPURIOUS_ATTRIBUTE = "Male"
TARGET_NAMES = ("not_blond", "blond")
SPURIOUS_NAMES = ("female", "male")
GROUP_NAMES = tuple(f"{hair}_{sex}" for hair in TARGET_NAMES for sex in SPURIOUS_NAMES)

DESCR = """\
CelebA Blond_Hair x Male (Liu et al., 2015; Sagawa et al., 2020)
----------------------------------------------------------------

Three layouts are read, from the dataset folder or its parent (a folder named ``celeba`` --
any case, so ``CelebA`` too -- ``celebA_v1.0`` (WILDS) or ``data`` (group_DRO))::

    official release:            Anno/list_attr_celeba.txt
                                 Eval/list_eval_partition.txt
                                 Img/img_align_celeba/000001.jpg ...
    torchvision (root/celeba/):  list_attr_celeba.txt
                                 list_eval_partition.txt
                                 img_align_celeba/000001.jpg ...
    Kaggle (group_DRO, WILDS):   list_attr_celeba.csv
                                 list_eval_partition.csv
                                 img_align_celeba/img_align_celeba/000001.jpg ...
                                 (or img_align_celeba/000001.jpg ...)

Where several are present, the ``.txt`` files win over the ``.csv`` ones, and the top-level
files over ``Anno/`` and ``Eval/``. An image folder holding a second ``img_align_celeba/``
(the Kaggle archive) is read through it.

``list_attr_celeba.txt``: first line the number of images, second line the 40 attribute
names, then one line per image: the file name and 40 values in {-1, 1}.
``list_attr_celeba.csv``: comma-separated with a header ``image_id,<40 attribute names>``, one
row per image, values in {-1, 1}.
``list_eval_partition.txt``: one line per image, the file name and 0/1/2;
``list_eval_partition.csv``: header ``image_id,partition``, values 0/1/2. A repeated attribute
name or column, and a file name listed twice, are errors naming the file and line.

* ``target`` -- ``Blond_Hair``: 0 = not blond, 1 = blond.
* ``spurious`` -- ``Male``: 0 = female, 1 = male.
* ``groups`` -- ``2 * blond + male``: 0 = not_blond_female, 1 = not_blond_male,
  2 = blond_female, 3 = blond_male (the rare worst group).
* ``split`` -- partition 0/1/2 mapped to ``train``/``val``/``test``.
* No boxes.

Source: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html; Kaggle copy:
https://www.kaggle.com/jessicali9530/celeba-dataset
"""
_ATTRIBUTE_FILES = ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt", "list_attr_celeba.csv")
_PARTITION_FILES = ("list_eval_partition.txt", "Eval/list_eval_partition.txt",
                    "list_eval_partition.csv")
_IMAGE_FOLDERS = ("img_align_celeba", "Img/img_align_celeba")


def _find(root, candidates, what):
    for relative in candidates:
        path = root / relative
        if path.exists():
            return path
    names = ", ".join(repr(c) for c in candidates[1:])
    raise FileNotFoundError(
        f"{what} not found: expected {str(root / candidates[0])!r} (or {names} in that "
        f"folder). {CELEBA_SOURCE}"
    )


def _attribute_columns(path, names, line):
    """The positions of the target and spurious attributes among ``names`` (a header)."""
    for name in names:
        if names.count(name) > 1:
            raise ValueError(
                f"CelebA attribute file {str(path)!r}, line {line} (attribute names): attribute "
                f"{name!r} appears twice, so its column would be ambiguous; rename or remove one "
                f"of the two. {CELEBA_SOURCE}"
            )
    for attribute in (TARGET_ATTRIBUTE, SPURIOUS_ATTRIBUTE):
        if attribute not in names:
            raise ValueError(
                f"CelebA attribute file {str(path)!r} is malformed: attribute {attribute!r} is "
                f"not in its header line. {CELEBA_SOURCE}"
            )
    return names.index(TARGET_ATTRIBUTE), names.index(SPURIOUS_ATTRIBUTE)


def _plus_minus(values, path, line):
    """``(1, -1)`` cells as booleans; anything else is an error naming the line."""
    if any(value not in ("1", "-1") for value in values):
        raise ValueError(
            f"CelebA attribute file {str(path)!r}, line {line}: attribute values must be 1 or "
            f"-1, got {tuple(values)}. {CELEBA_SOURCE}"
        )
    return [value == "1" for value in values]


def _read_attribute_csv(path):
    """File names and the target and spurious columns (0/1) of ``list_attr_celeba.csv``."""
    records = read_csv_records(path, ("image_id", TARGET_ATTRIBUTE, SPURIOUS_ATTRIBUTE),
                               "CelebA attribute file", CELEBA_SOURCE)
    filenames, target, spurious, seen = [], [], [], {}
    for line, row in records:
        check_unique(seen, row["image_id"], path, line, "image_id")
        blond, male = _plus_minus((row[TARGET_ATTRIBUTE], row[SPURIOUS_ATTRIBUTE]), path, line)
        filenames.append(row["image_id"])
        target.append(blond)
        spurious.append(male)
    return filenames, np.asarray(target, dtype=np.int64), np.asarray(spurious, dtype=np.int64)


def _read_attributes(path):
    """File names and the target and spurious columns (0/1) of ``list_attr_celeba.txt``."""
    if path.suffix.lower() == ".csv":
        return _read_attribute_csv(path)
    with open(path, encoding="utf-8") as handle, decoding(path, "CelebA attribute file"):
        lines = handle.read().splitlines()
    if len(lines) < 2:
        raise ValueError(
            f"CelebA attribute file {str(path)!r} is malformed: expected a count line and an "
            f"attribute-name line. {CELEBA_SOURCE}"
        )
    try:
        declared = int(lines[0].split()[0])
    except (IndexError, ValueError):
        raise ValueError(
            f"CelebA attribute file {str(path)!r} is malformed: the first line should be the "
            f"number of images, got {lines[0]!r}. {CELEBA_SOURCE}"
        ) from None
    names = lines[1].split()
    target_col, spurious_col = (i + 1 for i in _attribute_columns(path, names, 2))
    filenames, target, spurious, seen = [], [], [], {}
    for line_number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"CelebA attribute file {str(path)!r}, line {line_number}: expected a file name "
                f"and {len(names)} values, got {len(fields)} fields. {CELEBA_SOURCE}"
            )
        check_unique(seen, fields[0], path, line_number, "file name")
        blond, male = _plus_minus((fields[target_col], fields[spurious_col]), path, line_number)
        filenames.append(fields[0])
        target.append(blond)
        spurious.append(male)
    if len(filenames) != declared:
        raise ValueError(
            f"CelebA attribute file {str(path)!r} declares {declared} images but lists "
            f"{len(filenames)}; the file may be truncated. {CELEBA_SOURCE}"
        )
    return filenames, np.asarray(target, dtype=np.int64), np.asarray(spurious, dtype=np.int64)


def _read_partition(path):
    """``{file name: split}`` of ``list_eval_partition.txt`` or ``.csv``."""
    if path.suffix.lower() == ".csv":
        records = read_csv_records(path, ("image_id", "partition"), "CelebA partition file",
                                   CELEBA_SOURCE)
        rows = [(line, (row["image_id"], row["partition"]), f"{row['image_id']},"
                 f"{row['partition']}") for line, row in records]
        expected = "'<file name>,<0|1|2>'"
    else:
        rows = [(n, fields, line) for n, fields, line in
                read_fields(path, "CelebA partition file")]
        expected = "'<file name> <0|1|2>'"
    partition, seen = {}, {}
    for line_number, fields, line in rows:
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"CelebA partition file {str(path)!r}, line {line_number}: expected "
                f"{expected}, got {line.strip()!r}. {CELEBA_SOURCE}"
            )
        check_unique(seen, fields[0], path, line_number, "file name")
        partition[fields[0]] = SPLIT_NAMES[int(fields[1])]
    return partition


def load_celeba(root):
    """Load CelebA for blond-hair classification with sex as the spurious attribute.

    Parameters
    ----------
    root : path-like
        The CelebA folder or its parent (a folder named ``celeba`` in any case, ``celebA_v1.0``
        or ``data``), in one of three layouts (see ``DESCR``): the official release
        (``Anno/list_attr_celeba.txt``, ``Eval/list_eval_partition.txt``,
        ``Img/img_align_celeba/``), torchvision's ``celeba`` folder (the two ``.txt`` files and
        ``img_align_celeba/`` side by side) and the Kaggle copy that group_DRO and WILDS use
        (``list_attr_celeba.csv``, ``list_eval_partition.csv`` and
        ``img_align_celeba/img_align_celeba/``).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (``Blond_Hair``), ``spurious`` (``Male``),
        ``groups`` (``2 * blond + male``), ``split`` (``"train"``/``"val"``/``"test"``),
        ``target_names``, ``spurious_names``, ``group_names``, ``DESCR`` and ``root``.
        CelebA has no object boxes, so there is no ``boxes`` field.

    Raises
    ------
    FileNotFoundError
        If ``root``, the attribute file, the partition file or the image folder is missing.
    ValueError
        If a file is malformed, repeats a column or file name, or an image has no partition.

    Examples
    --------
    >>> from sk_a2.datasets import load_celeba
    >>> import tempfile
    >>> empty = tempfile.mkdtemp()
    >>> load_celeba(empty)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: CelebA attribute file not found: expected ...
    """
    root = resolve_root(root, _ATTRIBUTE_FILES, DATASET_FOLDERS["celeba"],
                        "CelebA attribute file", CELEBA_SOURCE)
    attr_path = _find(root, _ATTRIBUTE_FILES, "CelebA attribute file")
    partition_path = _find(root, _PARTITION_FILES, "CelebA partition file")
    image_dir = _find(root, _IMAGE_FOLDERS, "CelebA image folder")
    if (image_dir / "img_align_celeba").is_dir():
        image_dir = image_dir / "img_align_celeba"

    filenames, target, spurious = _read_attributes(attr_path)
    partition = _read_partition(partition_path)
    splits = [partition.get(name) for name in filenames]
    if None in splits:
        missing = [name for name, split in zip(filenames, splits) if split is None]
        raise ValueError(
            f"CelebA partition file {str(partition_path)!r} has no split for {len(missing)} "
            f"image(s), e.g. {missing[0]!r}. {CELEBA_SOURCE}"
        )
    images = [
        member_path(image_dir, name, attr_path, row, column="file name")
        for row, name in enumerate(filenames, start=1)
    ]
    return make_bunch(
        images, target, 2 * target + spurious, splits, spurious,
        target_names=TARGET_NAMES, group_names=GROUP_NAMES, spurious_names=SPURIOUS_NAMES,
        descr=DESCR, root=root,
    )
