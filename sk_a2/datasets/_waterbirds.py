"""Waterbirds loader (Sagawa et al., 2020)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._common import (
    decoding,
    make_bunch,
    member_path,
    parse_int,
    parse_split,
    read_csv_rows,
    read_fields,
    resolve_root,
)

WATERBIRDS_SOURCE = (
    "Waterbirds (Sagawa et al., 2020, 'Distributionally Robust Neural Networks', "
    "https://github.com/kohpangwei/group_DRO) can be downloaded from "
    "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz; pass the "
    "extracted folder (the one holding metadata.csv) as root."
)
CUB_SOURCE = (
    "Bird boxes come from CUB-200-2011 (https://www.vision.caltech.edu/datasets/cub_200_2011/); "
    "pass the extracted CUB_200_2011 folder (holding bounding_boxes.txt and images.txt) as "
    "cub_root."
)
TARGET_NAMES = ("landbird", "waterbird")
PLACE_NAMES = ("land", "water")
GROUP_NAMES = tuple(f"{bird}_on_{place}" for bird in TARGET_NAMES for place in PLACE_NAMES)

DESCR = """\
Waterbirds (Sagawa et al., 2020)
--------------------------------

CUB-200-2011 birds pasted onto Places backgrounds. Expected layout (the released
``waterbird_complete95_forest2water2`` folder)::

    <root>/metadata.csv
    <root>/<img_filename>     e.g. 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg

``metadata.csv`` has the columns ``img_id,img_filename,y,split,place,place_filename``.
``img_filename`` must be a relative path inside ``<root>`` (absolute paths, ``..`` leading
outside and blank names are errors); ``y``, ``place`` and ``img_id`` must be integers
(``1`` or ``1.0``; ``1.7``, ``inf`` or text are errors naming the row).

* ``target`` -- ``y``: 0 = landbird, 1 = waterbird.
* ``spurious`` -- ``place``: 0 = land background, 1 = water background.
* ``groups`` -- ``2 * y + place``: 0 = landbird_on_land, 1 = landbird_on_water,
  2 = waterbird_on_land, 3 = waterbird_on_water.
* ``split`` -- metadata ``split`` 0/1/2 mapped to ``train``/``val``/``test``. The official
  train split is 95 % correlated; val and test are group-balanced in background.
* ``boxes`` -- only when ``cub_root`` is given: the CUB ``bounding_boxes.txt`` box of each
  bird as ``(x0, y0, x1, y1)`` pixels (``x1 = x + width``). Waterbirds images keep the size of
  their CUB source image, so CUB boxes apply unchanged.

Source: https://github.com/kohpangwei/group_DRO,
https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz
"""


def _is_box(fields):
    try:
        int(fields[0])
        values = [float(value) for value in fields[1:]]
    except ValueError:
        return False
    return all(math.isfinite(value) for value in values)


def _read_cub_boxes(cub_root):
    """Map CUB image file names (and ids) to ``(x0, y0, x1, y1)`` boxes."""
    folder = resolve_root(
        cub_root, "bounding_boxes.txt", ("CUB_200_2011",), "CUB bounding-box file", CUB_SOURCE
    )
    boxes_path = folder / "bounding_boxes.txt"
    by_id = {}
    for line_number, fields, line in read_fields(boxes_path, "CUB box file"):
        if len(fields) != 5 or not _is_box(fields):
            raise ValueError(
                f"{str(boxes_path)!r}, line {line_number}: expected '<image_id> <x> <y> "
                f"<width> <height>', got {line.strip()!r}. {CUB_SOURCE}"
            )
        x, y, width, height = (float(value) for value in fields[1:])
        by_id[int(fields[0])] = (x, y, x + width, y + height)
    by_name = {}
    images_path = folder / "images.txt"
    if images_path.is_file():
        with open(images_path, encoding="utf-8") as handle, decoding(images_path, "CUB image list"):
            for line in handle:
                fields = line.split()
                if len(fields) == 2 and int(fields[0]) in by_id:
                    by_name[fields[1]] = by_id[int(fields[0])]
    return by_id, by_name


def load_waterbirds(root, *, cub_root=None):
    """Load the Waterbirds metadata: image paths, labels, groups and splits.

    Parameters
    ----------
    root : path-like
        The extracted ``waterbird_complete95_forest2water2`` folder (holding ``metadata.csv``),
        or its parent.
    cub_root : path-like, default=None
        The CUB-200-2011 folder holding ``bounding_boxes.txt`` (and ``images.txt``). When given,
        the result has the bird ``boxes``; otherwise it has no ``boxes`` field.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (0 = landbird, 1 = waterbird), ``spurious``
        (0 = land, 1 = water), ``groups`` (``2 * target + spurious``), ``split``
        (``"train"``/``"val"``/``"test"``), ``img_id``, optionally ``boxes`` (float32
        ``(x0, y0, x1, y1)``), ``target_names``, ``spurious_names``, ``group_names``,
        ``DESCR`` and ``root``.

    Raises
    ------
    FileNotFoundError
        If ``root`` or ``metadata.csv`` (or, with ``cub_root``, ``bounding_boxes.txt``) is
        missing.
    ValueError
        If ``metadata.csv`` lacks a column, has an invalid value, or a bird has no CUB box.

    Examples
    --------
    A four-image folder in the Waterbirds layout:

    >>> import csv, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sk_a2.datasets import load_waterbirds
    >>> root = Path(tempfile.mkdtemp())
    >>> rows = [(i, f"birds/{i}.png", i % 2, i // 2, i % 2, "") for i in range(4)]
    >>> for row in rows:
    ...     (root / "birds").mkdir(exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(root / row[1])
    >>> with open(root / "metadata.csv", "w", newline="") as f:
    ...     writer = csv.writer(f)
    ...     _ = writer.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
    ...     writer.writerows(rows)
    >>> data = load_waterbirds(root)
    >>> data.target.tolist(), data.split.tolist()
    ([0, 1, 0, 1], ['train', 'train', 'val', 'val'])
    >>> data.group_names[data.groups[:2]].tolist()
    ['landbird_on_land', 'waterbird_on_water']
    """
    folder = resolve_root(
        root,
        "metadata.csv",
        ("waterbird_complete95_forest2water2", "waterbirds"),
        "Waterbirds metadata file",
        WATERBIRDS_SOURCE,
    )
    path = folder / "metadata.csv"
    rows = read_csv_rows(
        path, ("img_filename", "y", "split", "place"), "Waterbirds metadata file", WATERBIRDS_SOURCE
    )

    images, target, place, split, img_id = [], [], [], [], []
    for line, row in enumerate(rows, start=1):
        label = parse_int(row["y"], "y", path, line)
        background = parse_int(row["place"], "place", path, line)
        if label not in (0, 1) or background not in (0, 1):
            raise ValueError(
                f"{str(path)!r}, data row {line}: y and place must be 0 or 1, got "
                f"y={row['y']!r}, place={row['place']!r}."
            )
        images.append(member_path(folder, row["img_filename"], path, line))
        target.append(label)
        place.append(background)
        split.append(parse_split(row["split"], path, line))
        img_id.append(parse_int(row["img_id"], "img_id", path, line) if "img_id" in row else -1)

    boxes = None
    if cub_root is not None:
        by_id, by_name = _read_cub_boxes(cub_root)
        boxes = []
        for row, identifier in zip(rows, img_id):
            box = by_name.get(row["img_filename"].replace(os.sep, "/"))
            if box is None and not by_name:
                box = by_id.get(identifier)
            if box is None:
                raise ValueError(
                    f"No CUB bounding box for Waterbirds image {row['img_filename']!r} "
                    f"(img_id {identifier}) in {str(Path(cub_root))!r}. {CUB_SOURCE}"
                )
            boxes.append(box)

    target = np.asarray(target)
    place = np.asarray(place)
    return make_bunch(
        images, target, 2 * target + place, split, place,
        target_names=TARGET_NAMES, group_names=GROUP_NAMES, spurious_names=PLACE_NAMES,
        descr=DESCR, root=folder, boxes=boxes, img_id=np.asarray(img_id, dtype=np.int64),
    )
