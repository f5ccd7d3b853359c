"""Waterbirds loader (Sagawa et al., 2020)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._common import (
    DATASET_FOLDERS,
    ClipTally,
    check_unique,
    image_frame,
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
  their CUB source image, so CUB boxes apply unchanged; a box extending past its image (its size
  read from the image file's header) is clipped to it and counted (``clipped_boxes``,
  ``n_clipped_boxes``, one warning). A box of zero or negative width or height, one outside its
  image, a repeated image id in ``bounding_boxes.txt`` or ``images.txt`` and a repeated file
  name in ``images.txt`` are errors naming the file and line.

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


def _read_cub_box_file(path):
    """``{image id: ((x0, y0, x1, y1), where)}`` of CUB's ``bounding_boxes.txt``."""
    by_id, seen = {}, {}
    for line_number, fields, line in read_fields(path, "CUB box file"):
        if len(fields) != 5 or not _is_box(fields):
            raise ValueError(
                f"{str(path)!r}, line {line_number}: expected '<image_id> <x> <y> "
                f"<width> <height>', got {line.strip()!r}. {CUB_SOURCE}"
            )
        for name, text in (("width", fields[3]), ("height", fields[4])):
            if float(text) <= 0:
                raise ValueError(
                    f"{str(path)!r}, line {line_number}: the box of image {fields[0]} has "
                    f"{name} {text}; CUB boxes are '<image_id> x y width height' with a positive "
                    f"width and height: correct or remove the line. {CUB_SOURCE}"
                )
        image_id = int(fields[0])
        check_unique(seen, image_id, path, line_number, "image id")
        x, y, width, height = (float(value) for value in fields[1:])
        by_id[image_id] = ((x, y, x + width, y + height),
                           f"CUB box file {str(path)!r}, line {line_number}")
    return by_id


def _read_cub_names(path, by_id):
    """``{file name: by_id entry}`` of CUB's ``images.txt`` (``<image_id> <file name>``)."""
    by_name, seen_ids, seen_names = {}, {}, {}
    for line_number, fields, line in read_fields(path, "CUB image list"):
        if len(fields) != 2:
            raise ValueError(
                f"{str(path)!r}, line {line_number}: expected '<image_id> <file name>', got "
                f"{line.strip()!r}. {CUB_SOURCE}"
            )
        try:
            image_id = int(fields[0])
        except ValueError:
            raise ValueError(
                f"{str(path)!r}, line {line_number}: the image id (first field) should be an "
                f"integer, got {fields[0]!r}. {CUB_SOURCE}"
            ) from None
        check_unique(seen_ids, image_id, path, line_number, "image id")
        check_unique(seen_names, fields[1], path, line_number, "file name")
        if image_id in by_id:
            by_name[fields[1]] = by_id[image_id]
    return by_name


def _read_cub_boxes(cub_root):
    """Map CUB image file names (and ids) to ``((x0, y0, x1, y1), where)`` boxes."""
    folder = resolve_root(
        cub_root, "bounding_boxes.txt", DATASET_FOLDERS["cub"], "CUB bounding-box file",
        CUB_SOURCE,
    )
    by_id = _read_cub_box_file(folder / "bounding_boxes.txt")
    images_path = folder / "images.txt"
    by_name = _read_cub_names(images_path, by_id) if images_path.is_file() else {}
    return by_id, by_name


def _waterbirds_boxes(cub_root, rows, img_id, images):
    """The CUB box of each Waterbirds image, clipped to the image, and the clip tally."""
    by_id, by_name = _read_cub_boxes(cub_root)
    tally, boxes = ClipTally(), []
    for row, identifier, image in zip(rows, img_id, images):
        entry = by_name.get(row["img_filename"].replace(os.sep, "/"))
        if entry is None and not by_name:
            entry = by_id.get(identifier)
        if entry is None:
            raise ValueError(
                f"No CUB bounding box for Waterbirds image {row['img_filename']!r} "
                f"(img_id {identifier}) in {str(Path(cub_root))!r}. {CUB_SOURCE}"
            )
        box, where = entry
        boxes.append(tally.clip([box], image_frame(image, where), [where])[0])
    return boxes, tally


def load_waterbirds(root, *, cub_root=None):
    """Load the Waterbirds metadata: image paths, labels, groups and splits.

    Parameters
    ----------
    root : path-like
        The extracted ``waterbird_complete95_forest2water2`` folder (holding ``metadata.csv``),
        or its parent.
    cub_root : path-like, default=None
        The CUB-200-2011 folder holding ``bounding_boxes.txt`` (and ``images.txt``). When given,
        the result has the bird ``boxes`` (the images' headers are then read for their size);
        otherwise it has no ``boxes`` field.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (0 = landbird, 1 = waterbird), ``spurious``
        (0 = land, 1 = water), ``groups`` (``2 * target + spurious``), ``split``
        (``"train"``/``"val"``/``"test"``), ``img_id``, optionally ``boxes`` (float32
        ``(x0, y0, x1, y1)``, clipped to the image) with ``clipped_boxes`` (int64 per image) and
        ``n_clipped_boxes`` (int), ``target_names``, ``spurious_names``, ``group_names``,
        ``DESCR`` and ``root``.

    Raises
    ------
    FileNotFoundError
        If ``root`` or ``metadata.csv`` (or, with ``cub_root``, ``bounding_boxes.txt`` or an
        image, whose size the boxes are clipped to) is missing.
    ValueError
        If ``metadata.csv`` lacks a column or repeats one, has an invalid value, or a bird has
        no CUB box or one outside its image.

    Warns
    -----
    UserWarning
        When CUB boxes extending past their image were clipped (how many, the first one's line).

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
        DATASET_FOLDERS["waterbirds"],
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

    boxes = tally = None
    if cub_root is not None:
        boxes, tally = _waterbirds_boxes(cub_root, rows, img_id, images)

    target = np.asarray(target)
    place = np.asarray(place)
    data = make_bunch(
        images, target, 2 * target + place, split, place,
        target_names=TARGET_NAMES, group_names=GROUP_NAMES, spurious_names=PLACE_NAMES,
        descr=DESCR, root=folder, boxes=boxes, img_id=np.asarray(img_id, dtype=np.int64),
    )
    return data if tally is None else tally.finish(data, "load_waterbirds")
