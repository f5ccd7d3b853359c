"""MetaShift loaders: Cats vs. Dogs (Liang & Zou, 2022) and MetaShift Animals (A2 paper)."""

from __future__ import annotations

import numpy as np

from ._common import (
    DATASET_FOLDERS,
    hold_out_val,
    list_images,
    make_bunch,
    member_path,
    missing_file_error,
    parse_int,
    parse_split,
    read_csv_rows,
    resolve_root,
)

METASHIFT_CVD_SOURCE = (
    "MetaShift Cats vs. Dogs (Liang & Zou, 2022, 'MetaShift: A Dataset of Datasets for "
    "Evaluating Contextual Distribution Shifts and Training Conflicts', arXiv:2202.06523) is "
    "built by dataset/subpopulation_shift_cat_dog_indoor_outdoor.py of "
    "https://github.com/Weixin-Liang/MetaShift from the Visual Genome images of GQA "
    "(https://nlp.stanford.edu/data/gqa/images.zip), and also distributed by SubpopBench "
    "(https://github.com/YyzHarry/SubpopBench); pass the MetaShift-Cat-Dog-indoor-outdoor folder "
    "(holding train/ and test/), or its parent, as root."
)
METASHIFT_ANIMALS_SOURCE = (
    "MetaShift Animals is the 8-class MetaShift subset introduced by the A2 paper ('Attending "
    "on Attention', Appendix C), built from MetaShift (https://github.com/Weixin-Liang/MetaShift, "
    "Visual Genome images from https://nlp.stanford.edu/data/gqa/images.zip); "
    "examples/make_metashift_animals_csv.py of sk-a2 writes its metadata CSV (columns "
    "img_filename,label,context,split). Pass the folder holding it, or its parent, as root."
)
CVD_TARGET_NAMES = ("cat", "dog")
CVD_CONTEXT_NAMES = ("indoor", "outdoor")
CVD_GROUP_NAMES = tuple(
    f"{animal}({context})" for animal in CVD_TARGET_NAMES for context in CVD_CONTEXT_NAMES
)
_CVD_REQUIRED = (
    ("train", "cat", "indoor"),
    ("train", "dog", "outdoor"),
    ("test", "cat", "outdoor"),
    ("test", "dog", "indoor"),
)
ANIMAL_CLASSES = ("bear", "bird", "cow", "elephant", "giraffe", "horse", "sheep", "zebra")
ANIMALS_COLUMNS = ("img_filename", "label", "context", "split")

CVD_DESCR = """\
MetaShift Cats vs. Dogs, indoor/outdoor (Liang & Zou, 2022)
-----------------------------------------------------------

Visual Genome images of cats and dogs; the indoor/outdoor context is spurious. Expected
layout (the ``MetaShift-Cat-Dog-indoor-outdoor`` folder written by
``dataset/subpopulation_shift_cat_dog_indoor_outdoor.py`` of the MetaShift repository)::

    <root>/train/cat/cat(indoor)/*.jpg
    <root>/train/dog/dog(outdoor)/*.jpg
    <root>/test/cat/cat(outdoor)/*.jpg
    <root>/test/dog/dog(indoor)/*.jpg

These four folders are required; other ``<split>/<animal>/<animal>(<indoor|outdoor>)``
folders under ``train``/``test`` are read too when present. As in the A2 paper (Table 9),
training is 100 % spuriously correlated (cat = indoor, dog = outdoor) and the test set has
the flipped correlation.

* ``target`` -- 0 = cat, 1 = dog.
* ``spurious`` -- 0 = indoor, 1 = outdoor.
* ``groups`` -- ``2 * target + spurious``: 0 = cat(indoor), 1 = cat(outdoor),
  2 = dog(indoor), 3 = dog(outdoor).
* ``split`` -- the ``train``/``test`` folder. There is no official validation set; with
  ``val_size > 0`` a group-stratified fraction of train becomes ``val`` (the A2 paper holds out
  20 % of train for DFR tuning), otherwise ``val`` is empty.
* No boxes.

Source: https://github.com/Weixin-Liang/MetaShift
"""

ANIMALS_DESCR = """\
MetaShift Animals (A2 paper, Appendix C)
----------------------------------------

Eight-class animal classification (bear, bird, cow, elephant, giraffe, horse, sheep,
zebra) on MetaShift / Visual Genome images. Every image carries a Visual Genome context tag
(e.g. tree, water, rope) that acts as the spurious feature; the context tags of train and
test are disjoint by construction.

Expected layout::

    <root>/metadata.csv
    <root>/<img_filename>

``metadata.csv`` is comma-separated with a header line starting
``img_filename,label,context,split`` (column order is free) and these columns:

* ``img_filename`` -- image path relative to ``root``, which must stay inside ``root`` (no
  ``..`` leading out); an absolute path is accepted (normalised), as the CSV is written by
  the user and may point into a shared Visual Genome image folder;
* ``label`` -- class name (one of the eight above) or its index 0-7 in that order;
* ``context`` -- the Visual Genome context tag of the image;
* ``split`` -- ``train``/``val``/``test`` (or 0/1/2).

Other columns (e.g. a Visual Genome ``image_id``) are ignored.

* ``target`` -- class index in ``bear, bird, cow, elephant, giraffe, horse, sheep, zebra``.
* ``spurious`` -- index of the context tag in ``spurious_names`` (sorted unique tags).
* ``groups`` -- index of the (class, context) pair in ``group_names`` (``<class>(<context>)``,
  sorted by class index, then tag). The paper reports worst-class accuracy because train and
  test groups are disjoint.
* ``split`` -- from the CSV; with ``val_size > 0`` a group-stratified fraction of train
  becomes ``val`` (the paper holds out 20 % of train for DFR tuning).
* No boxes.
"""


def load_metashift_cvd(root, *, val_size=0.0, random_state=0):
    """Load MetaShift Cats vs. Dogs with indoor/outdoor as the spurious context.

    Parameters
    ----------
    root : path-like
        The ``MetaShift-Cat-Dog-indoor-outdoor`` folder (holding ``train/`` and ``test/``), or
        its parent.
    val_size : float, default=0.0
        Fraction of each training group moved to a ``"val"`` split (no official validation
        set exists).
    random_state : int, Generator or RandomState, default=0
        Seed of the validation hold-out.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (0 = cat, 1 = dog), ``spurious``
        (0 = indoor, 1 = outdoor), ``groups`` (``2 * target + spurious``), ``split``,
        ``target_names``, ``spurious_names``, ``group_names``, ``DESCR`` and ``root``. No boxes.

    Raises
    ------
    FileNotFoundError
        If ``root`` or one of the four official image folders is missing.
    ValueError
        If an image folder holds no image.

    Examples
    --------
    >>> from sk_a2.datasets import load_metashift_cvd
    >>> import tempfile
    >>> load_metashift_cvd(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: MetaShift Cats vs. Dogs train folder not found: expected ...
    """
    base = resolve_root(
        root,
        "train",
        DATASET_FOLDERS["metashift_cvd"],
        "MetaShift Cats vs. Dogs train folder",
        METASHIFT_CVD_SOURCE,
    )
    for split_name, animal, context in _CVD_REQUIRED:
        directory = base / split_name / animal / f"{animal}({context})"
        if not directory.is_dir():
            raise missing_file_error(
                "MetaShift Cats vs. Dogs image folder", directory, METASHIFT_CVD_SOURCE
            )

    images, target, context_index, split = [], [], [], []
    for split_name in ("train", "test"):
        for label, animal in enumerate(CVD_TARGET_NAMES):
            for spurious, context in enumerate(CVD_CONTEXT_NAMES):
                directory = base / split_name / animal / f"{animal}({context})"
                if not directory.is_dir():
                    continue
                files = list_images(directory)
                if not files:
                    raise ValueError(
                        f"MetaShift Cats vs. Dogs image folder {str(directory)!r} holds no "
                        f".jpg/.png image. {METASHIFT_CVD_SOURCE}"
                    )
                images.extend(files)
                target.extend([label] * len(files))
                context_index.extend([spurious] * len(files))
                split.extend([split_name] * len(files))

    target = np.asarray(target, dtype=np.int64)
    context_index = np.asarray(context_index, dtype=np.int64)
    groups = 2 * target + context_index
    split = hold_out_val(np.asarray(split, dtype="<U5"), groups, val_size, random_state)
    return make_bunch(
        images, target, groups, split, context_index,
        target_names=CVD_TARGET_NAMES, group_names=CVD_GROUP_NAMES,
        spurious_names=CVD_CONTEXT_NAMES, descr=CVD_DESCR, root=base,
    )


def _parse_animal(value, path, line):
    text = value.strip()
    if text.lower() in ANIMAL_CLASSES:
        return ANIMAL_CLASSES.index(text.lower())
    if text.isdigit() and int(text) < len(ANIMAL_CLASSES):
        return parse_int(text, "label", path, line)
    raise ValueError(
        f"{str(path)!r}, data row {line}: label should be one of {list(ANIMAL_CLASSES)} or an "
        f"index 0-7, got {value!r}."
    )


def load_metashift_animals(root, *, metadata="metadata.csv", val_size=0.0, random_state=0):
    """Load MetaShift Animals (8 classes, disjoint train/test contexts) from its metadata CSV.

    Parameters
    ----------
    root : path-like
        Folder holding the metadata CSV; image paths in the CSV are relative to it.
    metadata : str, default="metadata.csv"
        File name of the metadata CSV inside ``root``; see ``DESCR`` for its columns.
    val_size : float, default=0.0
        Fraction of each training group moved to ``"val"`` (on top of any ``val`` rows of the
        CSV).
    random_state : int, Generator or RandomState, default=0
        Seed of the validation hold-out.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (class index), ``spurious`` (context index),
        ``groups`` (class-context pair index), ``split``, ``context`` (tag of each image),
        ``target_names``, ``spurious_names`` (sorted context tags), ``group_names``
        (``<class>(<context>)``), ``DESCR`` and ``root``. No boxes.

    Raises
    ------
    FileNotFoundError
        If ``root`` or the metadata CSV is missing.
    ValueError
        If the CSV lacks a column or holds an unknown class, an empty context or a bad split.

    Examples
    --------
    >>> import tempfile
    >>> from sk_a2.datasets import load_metashift_animals
    >>> root = tempfile.mkdtemp()
    >>> load_metashift_animals(root)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: MetaShift Animals metadata file not found: expected ...
    """
    folder = resolve_root(
        root, metadata, DATASET_FOLDERS["metashift_animals"], "MetaShift Animals metadata file",
        METASHIFT_ANIMALS_SOURCE,
    )
    path = folder / metadata
    rows = read_csv_rows(
        path, ANIMALS_COLUMNS, "MetaShift Animals metadata file", METASHIFT_ANIMALS_SOURCE
    )
    images, target, contexts, split = [], [], [], []
    for line, row in enumerate(rows, start=1):
        if not row["context"]:
            raise ValueError(f"{str(path)!r}, data row {line}: the context column is empty.")
        target.append(_parse_animal(row["label"], path, line))
        contexts.append(row["context"])
        split.append(parse_split(row["split"], path, line))
        images.append(member_path(folder, row["img_filename"], path, line, allow_absolute=True))

    target = np.asarray(target, dtype=np.int64)
    context_names = sorted(set(contexts))
    context_lookup = {context: index for index, context in enumerate(context_names)}
    context_index = np.asarray([context_lookup[c] for c in contexts], dtype=np.int64)
    pairs = sorted(set(zip(target.tolist(), contexts)))
    pair_index = {pair: index for index, pair in enumerate(pairs)}
    groups = np.asarray([pair_index[pair] for pair in zip(target.tolist(), contexts)])
    split = hold_out_val(np.asarray(split, dtype="<U5"), groups, val_size, random_state)
    return make_bunch(
        images, target, groups, split, context_index,
        target_names=ANIMAL_CLASSES,
        group_names=[f"{ANIMAL_CLASSES[label]}({context})" for label, context in pairs],
        spurious_names=context_names, descr=ANIMALS_DESCR, root=folder,
        context=np.asarray(contexts, dtype=object),
    )
