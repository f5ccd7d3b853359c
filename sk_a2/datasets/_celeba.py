"""CelebA loader for the Blond_Hair x Male spurious-correlation task (Liu et al., 2015)."""

from __future__ import annotations

import numpy as np

from ._common import (
    SPLIT_NAMES,
    decoding,
    make_bunch,
    member_path,
    missing_file_error,
    read_fields,
    resolve_root,
)

CELEBA_SOURCE = (
    "CelebA (Liu et al., 2015, 'Deep Learning Face Attributes in the Wild') can be downloaded "
    "from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Align&Cropped images and the "
    "Anno/Eval text files); pass the folder holding list_attr_celeba.txt, "
    "list_eval_partition.txt and img_align_celeba/ as root."
)
TARGET_ATTRIBUTE = "Blond_Hair"
SPURIOUS_ATTRIBUTE = "Male"
TARGET_NAMES = ("not_blond", "blond")
SPURIOUS_NAMES = ("female", "male")
GROUP_NAMES = tuple(f"{hair}_{sex}" for hair in TARGET_NAMES for sex in SPURIOUS_NAMES)

DESCR = """\
CelebA Blond_Hair x Male (Liu et al., 2015; Sagawa et al., 2020)
----------------------------------------------------------------

Expected layout (as in the official release or torchvision's ``celeba`` folder)::

    <root>/list_attr_celeba.txt      (or <root>/Anno/list_attr_celeba.txt)
    <root>/list_eval_partition.txt   (or <root>/Eval/list_eval_partition.txt)
    <root>/img_align_celeba/000001.jpg ...   (or <root>/Img/img_align_celeba/)

``list_attr_celeba.txt``: first line the number of images, second line the 40 attribute
names, then one line per image: the file name and 40 values in {-1, 1}.
``list_eval_partition.txt``: one line per image, the file name and 0/1/2.

* ``target`` -- ``Blond_Hair``: 0 = not blond, 1 = blond.
* ``spurious`` -- ``Male``: 0 = female, 1 = male.
* ``groups`` -- ``2 * blond + male``: 0 = not_blond_female, 1 = not_blond_male,
  2 = blond_female, 3 = blond_male (the rare worst group).
* ``split`` -- partition 0/1/2 mapped to ``train``/``val``/``test``.
* No boxes.

Source: https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html
"""


def _find(root, candidates, what):
    for relative in candidates:
        path = root / relative
        if path.exists():
            return path
    raise missing_file_error(what, root / candidates[0], CELEBA_SOURCE)


def _read_attributes(path):
    """File names and the target and spurious columns (0/1) of ``list_attr_celeba.txt``."""
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
    for attribute in (TARGET_ATTRIBUTE, SPURIOUS_ATTRIBUTE):
        if attribute not in names:
            raise ValueError(
                f"CelebA attribute file {str(path)!r} is malformed: attribute {attribute!r} is "
                f"not in its header line. {CELEBA_SOURCE}"
            )
    target_col = names.index(TARGET_ATTRIBUTE) + 1
    spurious_col = names.index(SPURIOUS_ATTRIBUTE) + 1

    filenames, target, spurious = [], [], []
    for line_number, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise ValueError(
                f"CelebA attribute file {str(path)!r}, line {line_number}: expected a file name "
                f"and {len(names)} values, got {len(fields)} fields. {CELEBA_SOURCE}"
            )
        values = fields[target_col], fields[spurious_col]
        if any(value not in ("1", "-1") for value in values):
            raise ValueError(
                f"CelebA attribute file {str(path)!r}, line {line_number}: attribute values "
                f"must be 1 or -1, got {values}. {CELEBA_SOURCE}"
            )
        filenames.append(fields[0])
        target.append(values[0] == "1")
        spurious.append(values[1] == "1")
    if len(filenames) != declared:
        raise ValueError(
            f"CelebA attribute file {str(path)!r} declares {declared} images but lists "
            f"{len(filenames)}; the file may be truncated. {CELEBA_SOURCE}"
        )
    return filenames, np.asarray(target, dtype=np.int64), np.asarray(spurious, dtype=np.int64)


def _read_partition(path):
    partition = {}
    for line_number, fields, line in read_fields(path, "CelebA partition file"):
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(
                f"CelebA partition file {str(path)!r}, line {line_number}: expected "
                f"'<file name> <0|1|2>', got {line.strip()!r}. {CELEBA_SOURCE}"
            )
        partition[fields[0]] = SPLIT_NAMES[int(fields[1])]
    return partition


def load_celeba(root):
    """Load CelebA for blond-hair classification with sex as the spurious attribute.

    Parameters
    ----------
    root : path-like
        Folder holding ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and
        ``img_align_celeba/`` (the official ``Anno/``, ``Eval/``, ``Img/`` sub-folders and a
        ``celeba/`` sub-folder, as written by torchvision, are also searched).

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
        If ``root``, one of the two text files or the image folder is missing.
    ValueError
        If a text file is malformed or an image has no partition.

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
    root = resolve_root(root, ("list_attr_celeba.txt", "Anno"), ("celeba",),
                        "CelebA attribute file", CELEBA_SOURCE)
    attr_path = _find(
        root, ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt"), "CelebA attribute file"
    )
    partition_path = _find(
        root,
        ("list_eval_partition.txt", "Eval/list_eval_partition.txt"),
        "CelebA partition file",
    )
    image_dir = _find(root, ("img_align_celeba", "Img/img_align_celeba"), "CelebA image folder")
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
