"""Annotated-image loaders: ImageNet validation layouts and class-per-subfolder folders."""

import numpy as np
import pytest
from PIL import Image

from sk_a2.datasets import load_image_folder, load_imagenet_val

XML = """<annotation><folder>val</folder><filename>{id}</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
OBJ = ("<object><name>{syn}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
       "<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>")
# image id -> (synset, (width, height), boxes)
ANNOTATIONS = {
    "ILSVRC2012_val_00000002": ("n01440764", (30, 20), [(1, 2, 10, 12), (5, 5, 30, 20)]),
    "ILSVRC2012_val_00000001": ("n09999999", (16, 24), [(0, 0, 16, 18)]),
    "ILSVRC2012_val_00000003": ("n01440764", (12, 12), [(2, 3, 13, 12)]),  # xmax past the edge
}


def _write_images(folder, per_class=False):
    for image_id, (syn, (w, h), _) in ANNOTATIONS.items():
        sub = folder / syn if per_class else folder
        sub.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (10, 20, 30)).save(sub / f"{image_id}.JPEG")


@pytest.fixture
def kaggle_root(tmp_path):
    _write_images(tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val")
    lines = ["ImageId,PredictionString"]
    for image_id, (syn, _, boxes) in ANNOTATIONS.items():
        lines.append(image_id + "," + " ".join(f"{syn} {b[0]} {b[1]} {b[2]} {b[3]}"
                                               for b in boxes) + " ")
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn05555555 other\nn09999999 volcano\n")
    return tmp_path


@pytest.fixture
def xml_root(tmp_path):
    _write_images(tmp_path / "val", per_class=True)
    ann = tmp_path / "ILSVRC2012_bbox_val_v3" / "val"
    ann.mkdir(parents=True)
    for image_id, (syn, (w, h), boxes) in ANNOTATIONS.items():
        objects = "".join(OBJ.format(syn=syn, b=b) for b in boxes)
        (ann / f"{image_id}.xml").write_text(XML.format(id=image_id, w=w, h=h, objects=objects))
    return tmp_path


def test_imagenet_csv_layout(kaggle_root):
    data = load_imagenet_val(kaggle_root)
    assert [p.rsplit("/", 1)[1] for p in data.images] == [
        "ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000002.JPEG",
        "ILSVRC2012_val_00000003.JPEG"]
    assert data.target.tolist() == [2, 0, 0]
    assert data.target_names.tolist() == ["tench", "other", "volcano"]
    np.testing.assert_array_equal(data.boxes[1], [[1, 2, 10, 12], [5, 5, 30, 20]])
    assert data.boxes[1].dtype == np.float32


def test_imagenet_xml_layout_clips_to_the_stated_size(xml_root):
    data = load_imagenet_val(xml_root)
    assert data.synsets.tolist() == ["n09999999", "n01440764", "n01440764"]
    assert data.target.tolist() == [1, 0, 0]  # sorted synsets without a mapping file
    np.testing.assert_array_equal(data.boxes[2], [[2, 3, 12, 12]])
    np.testing.assert_array_equal(data.boxes[0], [[0, 0, 16, 18]])


def test_imagenet_errors(tmp_path, kaggle_root):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_imagenet_val(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ILSVRC2012_val_"):
        load_imagenet_val(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="xml"):
        load_imagenet_val(kaggle_root, annotations="xml")
    with pytest.raises(ValueError, match="annotations must be"):
        load_imagenet_val(kaggle_root, annotations="json")
    csv = kaggle_root / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("n09999999 0 0 16 18", "n09999999 0 0 16"))
    with pytest.raises(ValueError, match="PredictionString"):
        load_imagenet_val(kaggle_root)
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n09999999 0 0 1 1\n")
    with pytest.raises(ValueError, match="2 image.* no box annotation"):
        load_imagenet_val(kaggle_root)


def _folder(tmp_path):
    for cls, sizes in {"cat": [(20, 10), (8, 8)], "dog": [(12, 30)]}.items():
        (tmp_path / cls).mkdir(parents=True)
        for k, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h)).save(tmp_path / cls / f"{k}.png")
    (tmp_path / "empty_class").mkdir()
    return tmp_path


def test_image_folder_with_boxes(tmp_path):
    root = _folder(tmp_path)
    (root / "boxes.csv").write_text("image,x0,y0,x1,y1\ncat/0.png,0,0,5,5\ndog/0.png,1,1,2,2\n"
                                    "cat/1.png,0,0,8,8\ncat/0.png,6,1,20,10\n")
    data = load_image_folder(root, boxes=root / "boxes.csv")
    assert data.target_names.tolist() == ["cat", "dog"]
    assert data.target.tolist() == [0, 0, 1]
    assert [p.rsplit("/", 2)[1:] for p in data.images] == [["cat", "0.png"], ["cat", "1.png"],
                                                           ["dog", "0.png"]]
    np.testing.assert_array_equal(data.boxes[0], [[0, 0, 5, 5], [6, 1, 20, 10]])
    np.testing.assert_array_equal(data.boxes[2], [[1, 1, 2, 2]])
    assert "boxes" not in load_image_folder(root)


def test_image_folder_errors(tmp_path):
    root = _folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_image_folder(root / "nope")
    (root / "b.csv").write_text("image,x0,y0,x1,y1\ncat/0.png,0,0,5,5\n")
    with pytest.raises(ValueError, match="2 image.* no row"):
        load_image_folder(root, boxes=root / "b.csv")
    (root / "b.csv").write_text("image,x0,y0,x1,y1\ncat/9.png,0,0,5,5\n")
    with pytest.raises(ValueError, match="cat/9.png"):
        load_image_folder(root, boxes=root / "b.csv")
    (root / "b.csv").write_text("image,x0,y0,x1\ncat/0.png,0,0,5\n")
    with pytest.raises(ValueError, match="missing column"):
        load_image_folder(root, boxes=root / "b.csv")
