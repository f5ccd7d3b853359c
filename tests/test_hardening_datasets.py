"""Hostile dataset metadata: every file a loader reads is refused with its file and line when it
is ambiguous (a duplicated header column, a duplicated id), malformed (a non-integer id, an id
past int64, a CUB box of negative size), or holds a box that lies outside its image; a box that
only extends past the image edge is clipped to it, by the same rule for every box source, and
counted.

Each test builds a tiny replica of the metadata files in ``tmp_path``.
"""

import re
import warnings

import numpy as np
import pytest
from PIL import Image

from sk_a2.datasets import (
    load_celeba,
    load_image_folder,
    load_imagenet_val,
    load_metashift_animals,
    load_waterbirds,
)
from sk_a2.images import image_sizes
from sk_a2.localization import check_boxes

W, H = 30, 20  # size of every image written here
VAL_ID = "ILSVRC2012_val_00000001"
SYNSET = "n01440764"


def _image(path, size=(W, H)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)
    return path


def _text(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# Replicas: each writes one dataset's files and returns (load, path of the file under test)
# --------------------------------------------------------------------------------------------

WB_HEADER = "img_id,img_filename,y,split,place,place_filename"


def waterbirds(tmp, header=WB_HEADER, rows=("1,001.A/a_1.jpg,0,0,0,/p/1.jpg",
                                            "2,001.A/a_2.jpg,1,2,1,/p/2.jpg")):
    root = tmp / "waterbird_complete95_forest2water2"
    for name in ("001.A/a_1.jpg", "001.A/a_2.jpg"):
        _image(root / name)
    path = _text(root / "metadata.csv", [header, *rows])
    return (lambda **kw: load_waterbirds(root, **kw)), path


def cub(tmp, images=("1 001.A/a_1.jpg", "2 001.A/a_2.jpg"),
        boxes=("1 2.0 3.0 10.0 8.0", "2 4.0 1.0 12.0 9.0")):
    """Waterbirds with CUB boxes; the file under test is bounding_boxes.txt."""
    load, _ = waterbirds(tmp)
    root = tmp / "CUB_200_2011"
    _text(root / "images.txt", images)
    path = _text(root / "bounding_boxes.txt", boxes)
    return (lambda: load(cub_root=root)), path


def cub_images(tmp, lines):
    """As :func:`cub`, the file under test being images.txt."""
    load, path = cub(tmp, images=lines)
    return load, path.with_name("images.txt")


def animals(tmp, header="img_filename,label,context,split", rows=("a.jpg,bear,tree,0",)):
    path = _text(tmp / "animals" / "metadata.csv", [header, *rows])
    return (lambda: load_metashift_animals(path.parent)), path


def kaggle(tmp, lines, size=(W, H)):
    """ImageNet in the Kaggle layout: one validation image and LOC_val_solution.csv."""
    _image(tmp / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{VAL_ID}.JPEG", size)
    path = _text(tmp / "LOC_val_solution.csv", lines)
    return (lambda: load_imagenet_val(tmp)), path


def kaggle_box(tmp, box):
    return kaggle(tmp, ["ImageId,PredictionString", f"{VAL_ID},{SYNSET} " + " ".join(box)])


XML = ("<annotation><size><width>{w}</width><height>{h}</height></size>\n"
       "<object><name>{syn}</name>\n<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
       "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>\n</annotation>\n")


def xml_box(tmp, box):
    """ImageNet with the per-image PASCAL-VOC XML file stating the image size."""
    _image(tmp / "val" / f"{VAL_ID}.JPEG")
    path = tmp / "bbox" / f"{VAL_ID}.xml"
    path.parent.mkdir(parents=True)
    path.write_text(XML.format(w=W, h=H, syn=SYNSET, b=box))
    return (lambda: load_imagenet_val(tmp)), path


def folder(tmp, lines):
    root = tmp / "folder"
    _image(root / "cat" / "0.png")
    path = _text(tmp / "boxes.csv", lines)
    return (lambda: load_image_folder(root, boxes=path)), path


def folder_box(tmp, box):
    return folder(tmp, ["image,x0,y0,x1,y1", "cat/0.png," + ",".join(box)])


def cub_box(tmp, box):
    """A CUB box given as (x0, y0, x1, y1), written as CUB's ``x y width height``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return cub(tmp, boxes=(f"1 {x0} {y0} {x1 - x0} {y1 - y0}", "2 4.0 1.0 12.0 9.0"))


CELEBA_NAMES = "5_o_Clock_Shadow Blond_Hair Male"


def celeba(tmp, names=CELEBA_NAMES, partition=("000001.jpg 0", "000002.jpg 2")):
    root = tmp / "celeba"
    for name in ("000001.jpg", "000002.jpg"):
        _image(root / "img_align_celeba" / name)
    attributes = _text(root / "list_attr_celeba.txt",
                       ["2", names, "000001.jpg -1 1 -1", "000002.jpg 1 -1 1"])
    path = _text(root / "list_eval_partition.txt", partition)
    return (lambda: load_celeba(root)), attributes, path


def _refusal(load, *parts):
    """The ValueError of ``load()``; every part must be in its message."""
    with pytest.raises(ValueError) as info:
        load()
    message = str(info.value)
    for part in parts:
        assert part in message, (part, message)
    return message


# --------------------------------------------------------------------------------------------
# Duplicated header columns: refused, naming the column, never "the last one wins"
# --------------------------------------------------------------------------------------------

DUPLICATED_HEADERS = {
    "waterbirds-metadata.csv": lambda tmp: waterbirds(
        tmp, header="img_id,img_filename,y,split,place,y",
        rows=("1,001.A/a_1.jpg,0,0,0,1", "2,001.A/a_2.jpg,1,2,1,0")),
    "metashift-animals-metadata.csv": lambda tmp: animals(
        tmp, header="img_filename,label,context,split,label", rows=("a.jpg,bear,tree,0,zebra",)),
    "imagenet-LOC_val_solution.csv": lambda tmp: kaggle(
        tmp, ["ImageId,PredictionString,PredictionString",
              f"{VAL_ID},{SYNSET} 1 1 5 5,{SYNSET} 2 2 6 6"]),
    "image-folder-boxes.csv": lambda tmp: folder(
        tmp, ["image,x0,y0,x1,y1,x1", "cat/0.png,1,1,5,5,9"]),
}


@pytest.mark.parametrize("build", DUPLICATED_HEADERS.values(), ids=DUPLICATED_HEADERS)
def test_duplicated_csv_header_column_is_refused(tmp_path, build):
    load, path = build(tmp_path)
    header = path.read_text().splitlines()[0].split(",")
    twice = next(name for name in header if header.count(name) > 1)
    _refusal(load, str(path), "line 1", f"{twice!r}", "twice", "rename or remove")


def test_duplicated_celeba_attribute_name_is_refused(tmp_path):
    load, attributes, _ = celeba(tmp_path, names="Blond_Hair Blond_Hair Male")
    _refusal(load, str(attributes), "line 2", "'Blond_Hair'", "twice", "rename or remove")


# --------------------------------------------------------------------------------------------
# Duplicated ids: refused with both lines, never "the last line wins"
# --------------------------------------------------------------------------------------------

DUPLICATED_IDS = {
    # name: (build, the repeated key as written in the message, first line, repeated line)
    "cub-bounding_boxes-id": (
        lambda tmp: cub(tmp, boxes=("1 2 3 10 8", "2 4 1 12 9", "1 5 5 5 5")), "1", 1, 3),
    "cub-images-id": (
        lambda tmp: cub_images(tmp, ["1 001.A/a_1.jpg", "1 001.A/a_2.jpg"]), "1", 1, 2),
    "cub-images-file-name": (
        lambda tmp: cub_images(tmp, ["1 001.A/a_1.jpg", "2 001.A/a_2.jpg", "3 001.A/a_1.jpg"]),
        "'001.A/a_1.jpg'", 1, 3),
    "celeba-partition-file-name": (
        lambda tmp: celeba(tmp, partition=("000001.jpg 0", "000002.jpg 2", "000001.jpg 1"))[::2],
        "'000001.jpg'", 1, 3),
}


@pytest.mark.parametrize("build, key, first, again", DUPLICATED_IDS.values(), ids=DUPLICATED_IDS)
def test_duplicated_id_is_refused_with_both_lines(tmp_path, build, key, first, again):
    load, path = build(tmp_path)
    _refusal(load, str(path), f"line {again}", f"line {first}", key, "twice")


def test_duplicated_imagenet_image_id_is_refused(tmp_path):
    row = f"{VAL_ID},{SYNSET} 1 1 5 5"
    load, path = kaggle(tmp_path, ["ImageId,PredictionString", row, row.replace("5 5", "9 9")])
    _refusal(load, str(path), "data row 2", "data row 1", repr(VAL_ID), "twice")


# --------------------------------------------------------------------------------------------
# Malformed values: file, line, column and value; never a bare int() / int64 error
# --------------------------------------------------------------------------------------------

MALFORMED = {
    # name: (build, parts of the message besides the file)
    "cub-images-id-not-an-integer": (
        lambda tmp: cub_images(tmp, ["1 001.A/a_1.jpg", "2b 001.A/a_2.jpg"]),
        ("line 2", "image id", "'2b'", "integer")),
    "cub-images-missing-file-name": (
        lambda tmp: cub_images(tmp, ["1 001.A/a_1.jpg", "2"]),
        ("line 2", "'<image_id> <file name>'", "'2'")),
    "waterbirds-img_id-1e30": (
        lambda tmp: waterbirds(tmp, rows=("1e30,001.A/a_1.jpg,0,0,0,/p/1.jpg",)),
        ("data row 1", "'img_id'", "'1e30'", "64-bit")),
    "waterbirds-img_id-past-int64": (
        lambda tmp: waterbirds(tmp, rows=("1,001.A/a_1.jpg,0,0,0,/p/1.jpg",
                                          "9223372036854775808,001.A/a_2.jpg,1,2,1,/p/2.jpg")),
        ("data row 2", "'img_id'", "'9223372036854775808'", "64-bit")),
    "cub-negative-width": (
        lambda tmp: cub(tmp, boxes=("1 2 3 10 8", "2 14 1 -12 9")),
        ("line 2", "width -12", "x y width height", "positive")),
    "cub-negative-height": (
        lambda tmp: cub(tmp, boxes=("1 2 3 10 -8", "2 4 1 12 9")),
        ("line 1", "height -8", "x y width height", "positive")),
    "cub-zero-width": (
        lambda tmp: cub(tmp, boxes=("1 2 3 0 8", "2 4 1 12 9")),
        ("line 1", "width 0", "positive")),
}


@pytest.mark.parametrize("build, parts", MALFORMED.values(), ids=MALFORMED)
def test_malformed_metadata_value_names_file_line_and_value(tmp_path, build, parts):
    load, path = build(tmp_path)
    _refusal(load, str(path), *parts)


# --------------------------------------------------------------------------------------------
# Boxes past the image edge: one rule for every source, clip to the frame and count
# --------------------------------------------------------------------------------------------

BOX_SOURCES = {"imagenet-csv": kaggle_box, "imagenet-xml": xml_box, "image-folder-csv": folder_box,
               "waterbirds-cub": cub_box}


def _clipped_oracle(box):
    return np.clip(np.asarray(box, dtype=np.float64), 0, [W, H, W, H])


def _load_warning(load):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load()
    return data, [str(w.message) for w in caught if "clipped" in str(w.message)]


EDGE_BOXES = {
    # name: (x0, y0, x1, y1) in a 30 x 20 image, and whether it extends past the frame
    "inside": (("2", "3", "12", "11"), False),
    "touching-the-edge": (("0", "0", "30", "20"), False),
    "past-right-and-bottom": (("5", "5", "40", "25"), True),
    "negative-left": (("-3", "2", "10", "10"), True),
    "past-every-side": (("-1", "-1", "31", "21"), True),
}


@pytest.mark.parametrize("source", BOX_SOURCES.values(), ids=BOX_SOURCES)
@pytest.mark.parametrize("box, past", EDGE_BOXES.values(), ids=EDGE_BOXES)
def test_box_past_the_edge_is_clipped_and_counted(tmp_path, source, box, past):
    load, path = source(tmp_path, box)
    data, messages = _load_warning(load)
    np.testing.assert_array_equal(np.reshape(data.boxes[0], (-1, 4))[0], _clipped_oracle(box))
    # what localize does with them: every box inside its image
    check_boxes(list(data.boxes), len(data.images), image_sizes(data.images))
    assert data.n_clipped_boxes == int(past)
    assert data.clipped_boxes.tolist()[0] == int(past) and data.clipped_boxes.sum() == int(past)
    assert len(messages) == int(past)
    if past:
        assert re.search(r"1 of \d+ boxes extended past", messages[0]), messages
        assert str(path) in messages[0]


def test_csv_and_xml_boxes_agree(tmp_path):
    box = ("5", "-2", "40", "12")
    csv_data, _ = _load_warning(kaggle_box(tmp_path / "csv", box)[0])
    xml_data, _ = _load_warning(xml_box(tmp_path / "xml", box)[0])
    np.testing.assert_array_equal(csv_data.boxes[0], xml_data.boxes[0])
    assert csv_data.n_clipped_boxes == xml_data.n_clipped_boxes == 1


OUTSIDE = "outside its image (30 wide, 20 high)"
BAD_BOXES = {
    # name: (box in a 30 x 20 image, words of the message)
    "entirely-right-of-the-image": (("40", "5", "50", "10"), OUTSIDE),
    "entirely-above-the-image": (("2", "-9", "8", "-1"), OUTSIDE),
    "zero-width-after-clipping": (("30", "5", "45", "10"), OUTSIDE),
    "empty-as-written": (("10", "5", "10", "12"), "empty"),
}


@pytest.mark.parametrize("source", BOX_SOURCES.values(), ids=BOX_SOURCES)
@pytest.mark.parametrize("box, words", BAD_BOXES.values(), ids=BAD_BOXES)
def test_box_outside_or_empty_is_refused_with_file_and_line(tmp_path, source, box, words):
    load, path = source(tmp_path, box)
    if source is cub_box and words == "empty":
        words = "width 0"  # CUB writes the size: a zero width is refused as such
    message = _refusal(load, str(path), words)
    assert re.search(r"(data row|line) 1\b|line [2-9]\b", message), message


def test_box_source_image_that_cannot_be_read_is_named(tmp_path):
    load, _ = kaggle_box(tmp_path, ("1", "1", "5", "5"))
    image = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val" / f"{VAL_ID}.JPEG"
    image.write_bytes(b"not an image")
    _refusal(load, str(image), "cannot read")


def test_duplicated_synset_in_the_mapping_file_is_refused(tmp_path):
    load, _ = kaggle_box(tmp_path, ("1", "1", "5", "5"))
    mapping = _text(tmp_path / "LOC_synset_mapping.txt",
                    [f"{SYNSET} tench", "n01443537 goldfish", f"{SYNSET} again"])
    _refusal(load, str(mapping), "line 3", "line 1", repr(SYNSET), "twice")


def test_cub_boxes_need_the_waterbirds_image_for_its_size(tmp_path):
    load, boxes = cub(tmp_path)
    image = tmp_path / "waterbird_complete95_forest2water2" / "001.A" / "a_2.jpg"
    image.unlink()
    with pytest.raises(FileNotFoundError) as info:
        load()
    assert str(image) in str(info.value) and f"{str(boxes)!r}, line 2" in str(info.value)
