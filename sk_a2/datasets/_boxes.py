"""Annotated images for localization: ImageNet validation and users' own image folders."""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._common import (
    IMAGE_EXTENSIONS,
    ClipTally,
    check_unique,
    image_frame,
    list_images,
    missing_file_error,
    read_csv_rows,
    read_fields,
)

IMAGENET_SOURCE = (
    "ImageNet (ILSVRC2012) validation images and boxes come from https://image-net.org "
    "(ILSVRC2012_img_val.tar and ILSVRC2012_bbox_val_v3.tgz) or the Kaggle 'ImageNet Object "
    "Localization Challenge' (ILSVRC/Data/CLS-LOC/val and LOC_val_solution.csv)."
)
_VAL_NAME = re.compile(r"^(ILSVRC2012_val_\d{8})\.(jpe?g|png)$", re.IGNORECASE)
_XML_NAME = re.compile(r"^(ILSVRC2012_val_\d{8})\.xml$", re.IGNORECASE)
_SYNSET = re.compile(r"^n\d{8}$")

IMAGENET_DESCR = """\
ImageNet (ILSVRC2012) validation images with object boxes (``load_imagenet_val``)
----------------------------------------------------------------------------------

Images are the files named ``ILSVRC2012_val_<8 digits>.JPEG`` anywhere under ``root`` (flat, as
in ``ILSVRC2012_img_val/`` or Kaggle's ``ILSVRC/Data/CLS-LOC/val/``, or in per-class folders).
Boxes and labels come from, in this order of preference (``annotations="auto"``):

* ``LOC_val_solution.csv`` (Kaggle), anywhere under ``root``: columns ``ImageId`` and
  ``PredictionString``, the latter ``"<synset> x_min y_min x_max y_max"`` repeated per object;
* the per-image PASCAL-VOC XML files ``ILSVRC2012_val_<8 digits>.xml`` anywhere under ``root``
  (``ILSVRC2012_bbox_val_v3.tgz``, or Kaggle's ``ILSVRC/Annotations/CLS-LOC/val/``): one
  ``<object>`` per box with ``<name>`` (synset) and ``<bndbox>`` (``xmin ymin xmax ymax``).

Coordinates are used as ``(x0, y0, x1, y1)`` in original-image pixels, clipped to the image
frame: the size the XML states, else (CSV, or an XML file without ``<size>``) the image file's
size read from its header. A box extending past the frame is clipped to it and counted
(``clipped_boxes`` per image, ``n_clipped_boxes`` in all, one warning); a box outside its image
or empty is an error naming its file and line, as are a repeated ``ImageId`` and a repeated
synset in the mapping file. ``target`` is the index of the image's synset in
``LOC_synset_mapping.txt`` (anywhere under ``root``: ``"<synset> <names>"`` per line, the
standard 1000-class order) when it exists, else in the sorted synsets found. Every image found
needs annotations.
"""

FOLDER_DESCR = """\
Image folder, one sub-folder per class (``load_image_folder``)
---------------------------------------------------------------

``root/<class name>/<image>.jpg|.jpeg|.png``; classes are the sub-folders holding images, in
sorted order (``target`` indexes ``target_names``). With ``boxes=<csv file>``, the file has the
columns ``image,x0,y0,x1,y1`` (``image`` relative to ``root`` with ``/``, e.g.
``cat/001.jpg``), one row per box, several rows for several boxes; every image needs at least one
row, and ``boxes`` is then a list of ``(k, 4)`` float32 arrays in original-image pixels, clipped
to the image (its size read from its header): a box extending past the image is clipped and
counted (``clipped_boxes`` per image, ``n_clipped_boxes`` in all, one warning); a box outside its
image or empty is an error naming the file and data row.
"""


def _walk(root):
    """Val images and XML files under ``root``: ``{image id: path}`` twice."""
    images, xmls, others = {}, {}, {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if m := _VAL_NAME.match(name):
                images.setdefault(m.group(1), path)
            elif m := _XML_NAME.match(name):
                xmls.setdefault(m.group(1), path)
            elif name in ("LOC_val_solution.csv", "LOC_synset_mapping.txt"):
                others.setdefault(name, Path(path))
    return images, xmls, others


def _parse_csv_boxes(path):
    """``{image id: (synset, boxes as written, data row)}`` of ``LOC_val_solution.csv``."""
    by_id, seen = {}, {}
    for line, row in enumerate(
        read_csv_rows(path, ("ImageId", "PredictionString"), "ImageNet box file",
                      IMAGENET_SOURCE), start=1):
        fields = row["PredictionString"].split()
        if not fields or len(fields) % 5:
            raise ValueError(f"{str(path)!r}, data row {line}: PredictionString must be "
                             f"'<synset> x_min y_min x_max y_max' per object, got "
                             f"{row['PredictionString']!r}")
        objects = [fields[i:i + 5] for i in range(0, len(fields), 5)]
        try:
            boxes = [[float(v) for v in obj[1:]] for obj in objects]
        except ValueError:
            raise ValueError(f"{str(path)!r}, data row {line}: non-numeric box coordinate in "
                             f"{row['PredictionString']!r}") from None
        check_unique(seen, row["ImageId"], path, line, "ImageId", unit="data row")
        by_id[row["ImageId"]] = (objects[0][0], boxes, line)
    return by_id


def _object_lines(path, count):
    """1-based line of each ``<object>`` of an XML file (for error messages)."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines, start = [], 0
    for _ in range(count):
        start = text.find("<object", start) + 1
        lines.append(text.count("\n", 0, max(start, 0)) + 1)
    return lines


def _parse_xml_boxes(path):
    """Synset, boxes as written, the stated ``(width, height)`` (None when absent) and the
    line of each box, of a PASCAL-VOC XML file."""
    try:
        tree = ET.parse(path).getroot()
        size = tree.find("size")
        frame = None
        if size is not None:
            frame = (float(size.findtext("width")), float(size.findtext("height")))
        names, boxes = [], []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            names.append(obj.findtext("name").strip())
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise ValueError(f"ImageNet box file {str(path)!r} is not a valid PASCAL-VOC annotation "
                         f"({type(exc).__name__}: {exc})") from None
    if not boxes:
        raise ValueError(f"ImageNet box file {str(path)!r} has no <object> box")
    if frame is not None and not all(math.isfinite(v) and v > 0 for v in frame):
        raise ValueError(f"ImageNet box file {str(path)!r}: <size> states {frame[0]:g} x "
                         f"{frame[1]:g} pixels; width and height must be positive")
    return names[0], boxes, frame, _object_lines(path, len(boxes))


def _clipped_table(ids, images, parsed, csv_path, xmls, tally):
    """``{image id: (synset, clipped boxes)}`` from the parsed CSV file (``parsed``, from
    ``csv_path``) or, when it is None, the XML files; the images' frames come from the XML
    ``<size>``, else the image's header."""
    table = {}
    for i in ids:
        if parsed is not None:
            synset, boxes, row = parsed[i]
            wheres = [f"ImageNet box file {str(csv_path)!r}, data row {row}"] * len(boxes)
            frame = None
        else:
            synset, boxes, frame, lines = _parse_xml_boxes(xmls[i])
            wheres = [f"ImageNet box file {str(xmls[i])!r}, line {n}" for n in lines]
        frame = frame or image_frame(images[i], wheres[0])
        table[i] = (synset, tally.clip(boxes, frame, wheres))
    return table


def _synset_order(others, synsets):
    mapping = others.get("LOC_synset_mapping.txt")
    if mapping is None:
        order = sorted(set(synsets))
        return order, np.asarray(order)
    order, names, seen = [], [], {}
    for number, fields, line in read_fields(mapping, "ImageNet synset mapping"):
        wnid, _, text = line.strip().partition(" ")
        check_unique(seen, wnid, mapping, number, "synset")
        order.append(wnid)
        names.append(text.split(",")[0].strip() or wnid)
    unknown = sorted(set(synsets) - set(order))
    if unknown:
        raise ValueError(f"synsets {unknown[:3]} are not in {str(mapping)!r}")
    return order, np.asarray(names)


def load_imagenet_val(root, *, annotations="auto"):
    """Load ImageNet (ILSVRC2012) validation image paths, labels and object boxes.

    Parameters
    ----------
    root : path-like
        A folder holding the validation images and their annotations (see ``DESCR``).
    annotations : {"auto", "csv", "xml"}, default="auto"
        Where boxes and labels come from: ``LOC_val_solution.csv``, the per-image XML files, or
        the CSV when there is one, else the XML files.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (paths, sorted by image id), ``target`` (int64), ``synsets``, ``boxes`` (one
        ``(k, 4)`` float32 array per image: ``(x0, y0, x1, y1)`` in original-image pixels,
        clipped to the image), ``clipped_boxes`` (int64, boxes of each image that were clipped),
        ``n_clipped_boxes`` (int), ``target_names``, ``DESCR``, ``root``.

    Raises
    ------
    FileNotFoundError
        If ``root`` holds no validation image or no annotations of the requested kind.
    ValueError
        If an annotation file is malformed, repeats an image id, holds a box outside its image,
        or an image has none.

    Warns
    -----
    UserWarning
        When boxes extending past their image were clipped (how many, and the first one's line).

    Examples
    --------
    >>> import tempfile
    >>> from sk_a2.datasets import load_imagenet_val
    >>> load_imagenet_val(tempfile.mkdtemp())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    FileNotFoundError: ImageNet validation images (ILSVRC2012_val_*.JPEG) not found: expected ...
    """
    if annotations not in ("auto", "csv", "xml"):
        raise ValueError(f"annotations must be 'auto', 'csv' or 'xml', got {annotations!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"ImageNet root {str(root)!r} does not exist or is not a folder. "
                                f"{IMAGENET_SOURCE}")
    images, xmls, others = _walk(root)
    if not images:
        raise missing_file_error("ImageNet validation images (ILSVRC2012_val_*.JPEG)", root,
                                 IMAGENET_SOURCE)
    csv_path = others.get("LOC_val_solution.csv")
    use_csv = annotations == "csv" or (annotations == "auto" and csv_path is not None)
    if use_csv and csv_path is None:
        raise missing_file_error("ImageNet box file LOC_val_solution.csv",
                                 root / "LOC_val_solution.csv", IMAGENET_SOURCE)
    if not use_csv and not xmls:
        raise missing_file_error("ImageNet box files (ILSVRC2012_val_*.xml or "
                                 "LOC_val_solution.csv)", root, IMAGENET_SOURCE)
    ids = sorted(images)
    parsed = _parse_csv_boxes(csv_path) if use_csv else None
    missing = [i for i in ids if i not in (xmls if parsed is None else parsed)]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no box annotation, e.g. "
                         f"{images[missing[0]]!r}")
    tally = ClipTally()
    table = _clipped_table(ids, images, parsed, csv_path, xmls, tally)
    synsets = [table[i][0] for i in ids]
    order, names = _synset_order(others, synsets)
    index = {s: k for k, s in enumerate(order)}
    boxes = np.empty(len(ids), dtype=object)
    boxes[:] = [table[i][1] for i in ids]
    data = Bunch(images=np.asarray([images[i] for i in ids], dtype=object),
                 target=np.asarray([index[s] for s in synsets], dtype=np.int64),
                 synsets=np.asarray(synsets), boxes=boxes, target_names=names,
                 DESCR=IMAGENET_DESCR, root=str(root.resolve()))
    return tally.finish(data, "load_imagenet_val")


def _folder_boxes(path, root, images):
    """The boxes of the CSV file ``path``, one ``(k, 4)`` array per image of ``images``,
    clipped to the images (see :class:`ClipTally`), and the tally."""
    rows = read_csv_rows(Path(path), ("image", "x0", "y0", "x1", "y1"), "box file",
                         "See load_image_folder's DESCR for the layout.")
    by_image = {}
    for line, row in enumerate(rows, start=1):
        try:
            box = [float(row[k]) for k in ("x0", "y0", "x1", "y1")]
        except ValueError:
            raise ValueError(f"{str(path)!r}, data row {line}: non-numeric box coordinate") \
                from None
        key = str((root / row["image"]).resolve())
        if key not in images:
            raise ValueError(f"{str(path)!r}, data row {line}: image {row['image']!r} is not an "
                             f"image of a class folder under {str(root)!r}")
        by_image.setdefault(key, []).append((box, f"box file {str(path)!r}, data row {line}"))
    missing = [p for p in images if p not in by_image]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no row in {str(path)!r}, e.g. "
                         f"{missing[0]!r}")
    tally = ClipTally()
    out = np.empty(len(images), dtype=object)
    for k, p in enumerate(images):
        boxes, wheres = zip(*by_image[p])
        out[k] = tally.clip(boxes, image_frame(p, wheres[0]), wheres)
    return out, tally


def load_image_folder(root, *, boxes=None):
    """Load a class-per-subfolder image folder, with optional object boxes.

    Parameters
    ----------
    root : path-like
        ``root/<class>/<image>`` (see ``DESCR``).
    boxes : path-like, default=None
        CSV file of boxes (columns ``image,x0,y0,x1,y1``; ``image`` relative to ``root``).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``images`` (absolute paths), ``target`` (int64), ``target_names``, ``DESCR``, ``root``,
        and with ``boxes`` given, ``boxes`` (one ``(k, 4)`` float32 array per image, clipped to
        the image), ``clipped_boxes`` (int64 per image) and ``n_clipped_boxes`` (int).

    Raises
    ------
    FileNotFoundError
        If ``root`` or the box file does not exist, or no sub-folder holds images.
    ValueError
        If the box file is malformed, names an unknown image, misses an image or holds a box
        outside its image.

    Warns
    -----
    UserWarning
        When boxes extending past their image were clipped (how many, and the first one's row).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from sk_a2.datasets import load_image_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat/a.png", "cat/b.png", "dog/c.png"):
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(root / name)
    >>> lines = ["image,x0,y0,x1,y1", "cat/a.png,0,0,4,4", "cat/b.png,2,2,6,6",
    ...          "cat/b.png,0,4,4,8", "dog/c.png,1,1,7,7", ""]
    >>> _ = (root / "boxes.csv").write_text(chr(10).join(lines))
    >>> data = load_image_folder(root, boxes=root / "boxes.csv")
    >>> data.target_names.tolist(), data.target.tolist()
    (['cat', 'dog'], [0, 0, 1])
    >>> data.boxes[0].tolist(), data.boxes[1].shape
    ([[0.0, 0.0, 4.0, 4.0]], (2, 4))
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    classes, images, target = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        found = list_images(sub)
        if found:
            target.extend([len(classes)] * len(found))
            classes.append(sub.name)
            images.extend(found)
    if not images:
        raise FileNotFoundError(f"no class sub-folder of {str(root)!r} holds images "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    data = Bunch(images=np.asarray(images, dtype=object),
                 target=np.asarray(target, dtype=np.int64), target_names=np.asarray(classes),
                 DESCR=FOLDER_DESCR, root=str(root.resolve()))
    if boxes is not None:
        data.boxes, tally = _folder_boxes(boxes, root.resolve(), {p: None for p in images})
        tally.finish(data, "load_image_folder")
    return data
