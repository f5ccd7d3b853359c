"""Every accepted on-disk layout of every benchmark, from the dataset folder or its parent.

The replicas are written here (never downloaded): CelebA in the official, torchvision and
Kaggle/WILDS/group_DRO layouts, the other benchmarks in their released layouts under the folder
names of ``DATASET_FOLDERS``. CelebA runs end to end through ``sk-a2 evaluate`` from each
documented ``--root``; the others through their loaders. Also: the rule table in
docs/datasets.md is the loaders' table, the MetaShift Animals CSV builder of ``examples/``, and
the clipped-box count of ``sk-a2 localize``.
"""

import csv
import importlib.util
import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from repro_layouts import write_spawrious, write_waterbirds

from sk_a2.cli import main
from sk_a2.datasets import (
    DATASET_FOLDERS,
    load_celeba,
    load_metashift_animals,
    load_metashift_cvd,
    load_spawrious,
    load_waterbirds,
)

ROOT = Path(__file__).resolve().parent.parent
ATTRIBUTES = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Blond_Hair", "Male", "Young"]
# file name, Blond_Hair, Male, partition: both classes in every split
ROWS = [(f"{i + 1:06d}.jpg", (1, -1)[i % 2], (-1, 1)[i // 2 % 2], (0, 0, 0, 0, 0, 0, 1, 1, 2, 2,
                                                                     2, 2)[i])
        for i in range(12)]
EXPECTED_GROUPS = [2 * (b == 1) + (m == 1) for _, b, m, _ in ROWS]


def _jpeg(path, shade):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 20, 3), shade, dtype=np.uint8)).save(path)


def _attribute_values(blond, male):
    values = [-1] * len(ATTRIBUTES)
    values[ATTRIBUTES.index("Blond_Hair")], values[ATTRIBUTES.index("Male")] = blond, male
    return values


def write_celeba(folder, layout):
    """CelebA's files in ``layout``: ``official``, ``torchvision`` or ``kaggle``."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "kaggle":
        with open(folder / "list_attr_celeba.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image_id", *ATTRIBUTES])
            writer.writerows([name, *_attribute_values(b, m)] for name, b, m, _ in ROWS)
        (folder / "list_eval_partition.csv").write_text(
            "image_id,partition\n" + "".join(f"{n},{p}\n" for n, *_, p in ROWS))
        images = folder / "img_align_celeba" / "img_align_celeba"
    else:
        anno, part = ("Anno", "Eval") if layout == "official" else (".", ".")
        lines = [str(len(ROWS)), " ".join(ATTRIBUTES)]
        lines += [f"{n} " + " ".join(f"{v:2d}" for v in _attribute_values(b, m))
                  for n, b, m, _ in ROWS]
        (folder / anno).mkdir(exist_ok=True)
        (folder / part).mkdir(exist_ok=True)
        (folder / anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        (folder / part / "list_eval_partition.txt").write_text(
            "".join(f"{n} {p}\n" for n, *_, p in ROWS))
        images = folder / ("Img/img_align_celeba" if layout == "official" else "img_align_celeba")
    for i, (name, blond, *_) in enumerate(ROWS):
        _jpeg(images / name, 200 if blond == 1 else 40 + i)
    return folder


# (layout, the folder written under tmp_path, the --root passed): the dataset folder itself,
# torchvision's parent of celeba/, the parent of CelebA/, WILDS' celebA_v1.0/, group_DRO's data/
CELEBA_CASES = [
    ("official", "CelebA", "CelebA"),
    ("official", "CelebA", "."),
    ("torchvision", "celeba", "."),
    ("kaggle", "archive", "archive"),
    ("kaggle", "celebA_v1.0", "."),
    ("kaggle", "celebA/data", "celebA"),
]


@pytest.mark.parametrize("layout, folder, root", CELEBA_CASES)
def test_celeba_layouts_load_the_same_dataset(tmp_path, layout, folder, root):
    written = write_celeba(tmp_path / folder, layout)
    data = load_celeba(tmp_path / root)
    assert data.root == str(written.resolve())
    assert data.groups.tolist() == EXPECTED_GROUPS
    assert data.split.tolist() == [("train", "val", "test")[p] for *_, p in ROWS]
    assert [Path(p).name for p in data.images] == [n for n, *_ in ROWS]
    assert all(Path(p).is_file() for p in data.images)


def test_celeba_kaggle_csv_errors_name_file_and_line(tmp_path):
    root = write_celeba(tmp_path / "k", "kaggle")
    attributes = root / "list_attr_celeba.csv"
    text = attributes.read_text().splitlines()
    attributes.write_text("\n".join(text[:3] + [text[2]] + text[3:]) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.csv', line 4: image_id "
                                         r"'000002\.jpg' appears twice \(first at line 3\)"):
        load_celeba(root)
    attributes.write_text("\n".join(text[:2] + ["000002.jpg,-1,-1,0,-1,-1"] + text[3:]) + "\n")
    with pytest.raises(ValueError, match=r"line 3: attribute values must be 1 or -1"):
        load_celeba(root)
    attributes.write_text(text[0].replace("Young", "Male") + "\n" + "\n".join(text[1:]) + "\n")
    with pytest.raises(ValueError, match=r"line 1 \(header\): column 'Male' appears twice"):
        load_celeba(root)


def test_celeba_kaggle_partition_csv_errors(tmp_path):
    root = write_celeba(tmp_path / "k", "kaggle")
    (root / "list_eval_partition.csv").write_text("image_id,partition\n000001.jpg,3\n")
    with pytest.raises(ValueError, match=r"list_eval_partition\.csv', line 2: expected "
                                         r"'<file name>,<0\|1\|2>', got '000001\.jpg,3'"):
        load_celeba(root)
    (root / "list_eval_partition.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"CelebA partition file not found: .*"
                                                r"list_eval_partition\.csv"):
        load_celeba(root)


def test_two_candidate_folders_are_ambiguous(tmp_path):
    write_celeba(tmp_path / "celeba", "torchvision")
    write_celeba(tmp_path / "data", "kaggle")
    with pytest.raises(ValueError, match="holds 2 folders with .*pass that folder itself"):
        load_celeba(tmp_path)


def test_missing_dataset_names_the_folders_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"CelebA attribute file not found: expected "
                                                r".*its parent holding a folder named 'celeba' "
                                                r"or 'celebA_v1.0' or 'data', in any case"):
        load_celeba(tmp_path)


@pytest.fixture(scope="module")
def celeba_weights(tmp_path_factory):
    import timm
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("celeba_weights") / "test_vit.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(),
              str(path))
    return str(path)


@pytest.mark.parametrize("layout, folder, root", [CELEBA_CASES[i] for i in (1, 2, 3, 5)])
def test_celeba_layouts_run_through_the_cli(tmp_path, celeba_weights, capsys, layout, folder,
                                            root):
    write_celeba(tmp_path / "data" / folder, layout)
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "celeba", "--root", str(tmp_path / "data" / root),
            "--cropper", "none", "--embedding-model", "timm:test_vit", "--embedding-weights",
            celeba_weights, "--image-size", "64", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads((out / "evaluate_celeba_lr.json").read_text())
    test = [g for g, (*_, p) in zip(EXPECTED_GROUPS, ROWS) if p == 2]
    assert {g: c["n_test"] for g, c in result["per_group"].items()} == {
        str(g): test.count(g) for g in sorted(set(test))}
    assert "4 test images" in capsys.readouterr().out


# -------------------------------------------------------------------- the other benchmarks


def test_waterbirds_from_its_folder_and_any_case_parent(tmp_path):
    folder = write_waterbirds(tmp_path / "Waterbird_Complete95_Forest2Water2")
    expected = load_waterbirds(folder)
    for root in (folder, tmp_path):
        data = load_waterbirds(root)
        assert data.root == str(folder.resolve())
        assert data.groups.tolist() == expected.groups.tolist()


def test_spawrious_from_its_folder_and_its_parent(tmp_path):
    parent = write_spawrious(tmp_path / "sp")
    (parent / "spawrious224").rename(parent / "Spawrious224")
    data = load_spawrious(parent, "o2o_easy")
    assert data.root == str((parent / "Spawrious224").resolve())
    same = load_spawrious(parent / "Spawrious224", "o2o_easy")
    assert same.images.tolist() == data.images.tolist()
    with pytest.raises(FileNotFoundError, match="Spawrious image folder not found: .*"
                                                "'spawrious224', in any case"):
        load_spawrious(tmp_path, "o2o_easy")


def test_metashift_from_their_folders_and_parents(tmp_path):
    cvd = tmp_path / "metashift-cat-dog-indoor-outdoor"
    for split, animal, context in (("train", "cat", "indoor"), ("train", "dog", "outdoor"),
                                   ("test", "cat", "outdoor"), ("test", "dog", "indoor")):
        _jpeg(cvd / split / animal / f"{animal}({context})" / "1.jpg", 9)
    assert load_metashift_cvd(tmp_path).root == load_metashift_cvd(cvd).root == \
        str(cvd.resolve())

    animals = tmp_path / "MetaShift_Animals"
    animals.mkdir()
    (animals / "metadata.csv").write_text("img_filename,label,context,split\n"
                                          "a.jpg,bear,tree,train\nb.jpg,cow,rope,test\n")
    assert load_metashift_animals(tmp_path).root == str(animals.resolve())
    assert load_metashift_animals(animals).target.tolist() == [0, 2]


def test_cub_boxes_from_the_parent_of_cub_200_2011(tmp_path):
    wb = write_waterbirds(tmp_path / "wb")
    data = load_waterbirds(wb)
    cub = tmp_path / "cub" / "cub_200_2011"
    cub.mkdir(parents=True)
    (cub / "bounding_boxes.txt").write_text(
        "".join(f"{i} 1 2 10 12\n" for i in data.img_id.tolist()))
    boxes = load_waterbirds(wb, cub_root=tmp_path / "cub").boxes
    np.testing.assert_array_equal(boxes, np.tile([1, 2, 11, 14], (len(data.images), 1)))


_LOADER_KEYS = {"load_waterbirds": "waterbirds", "load_waterbirds(cub_root=)": "cub",
                "load_celeba": "celeba", "load_spawrious": "spawrious",
                "load_metashift_cvd": "metashift_cvd",
                "load_metashift_animals": "metashift_animals"}


def _rule_table():
    """``{dataset key: folder names}`` of the rule table in docs/datasets.md (the rows of the
    benchmark loaders; their third column lists the folder names)."""
    text = (ROOT / "docs" / "datasets.md").read_text()
    table = {}
    for line in text.splitlines():
        match = re.match(r"^\| `(load_\w+(?:\(cub_root=\))?)`[^|]*\|[^|]*\|([^|]*)\|\s*$", line)
        if match and match.group(1) in _LOADER_KEYS:
            table[_LOADER_KEYS[match.group(1)]] = tuple(re.findall(r"`([^`]+)/`",
                                                                   match.group(2)))
    return table


def test_the_docs_rule_table_is_the_loaders_table():
    assert _rule_table() == DATASET_FOLDERS


# -------------------------------------------------------------------- MetaShift Animals CSV


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_metashift_animals_csv_builder_on_a_replica(tmp_path, capsys):
    """A replica of the release: three contexts of three images per class, one image shared
    between a train and a test context of one class, one context too small."""
    images = tmp_path / "allImages" / "images"
    classes = ("bear", "bird", "cow", "elephant", "giraffe", "horse", "sheep", "zebra")
    subsets, n = {}, 0
    for name in classes:
        for context in ("tree", "water", "rope"):
            subsets[f"{name}({context})"] = {str(1000 + n + k) for k in range(3)}
            n += 3
    subsets["bear(tree)"].add("1003")  # also in bear(water)
    subsets["bear(dirt)"] = {"1"}  # too small for --min-images 2
    subsets["cat(sofa)"] = {"2", "3"}  # not one of the eight classes
    for i in {i for ids in subsets.values() for i in ids}:
        _jpeg(images / f"{i}.jpg", 7)
    pkl = tmp_path / "full-candidate-subsets.pkl"
    pkl.write_bytes(pickle.dumps(subsets))
    out = tmp_path / "metashift_animals"
    builder = _example("make_metashift_animals_csv")
    argv = ["--subsets", str(pkl), "--images", str(images), "--out", str(out),
            "--min-images", "2", "--seed", "1"]
    assert builder.main(argv) == 0
    rows = list(csv.DictReader(open(out / "metadata.csv")))
    for name in classes:  # contexts split in halves, disjoint, each test context whole
        train = {r["context"] for r in rows if r["label"] == name and r["split"] == "train"}
        test = {r["context"] for r in rows if r["label"] == name and r["split"] == "test"}
        assert len(train) + len(test) == 3 and not train & test and len(test) == 1
        for context in test:
            assert {r["image_id"] for r in rows if r["label"] == name and
                    r["context"] == context} == subsets[f"{name}({context})"]
    assert "dirt" not in {r["context"] for r in rows} and "cat" not in {r["label"] for r in rows}
    test_ids = {r["image_id"] for r in rows if r["split"] == "test"}
    assert not test_ids & {r["image_id"] for r in rows if r["split"] == "train"}
    data = load_metashift_animals(tmp_path)  # the parent of metashift_animals/
    assert len(data.images) == len(rows) and set(data.split) == {"train", "test"}
    with pytest.raises(SystemExit):  # an earlier metadata.csv is kept
        builder.main(argv)
    assert "--overwrite" in capsys.readouterr().err
    assert builder.main([*argv, "--overwrite"]) == 0
    assert list(csv.DictReader(open(out / "metadata.csv"))) == rows  # seeded


# -------------------------------------------------------------------- localize: clipped boxes


def test_localize_counts_clipped_boxes_once(tmp_path, celeba_weights, capsys):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        _jpeg(root / cls / "0.png", 90)  # 20 wide, 24 high
    (root / "boxes.csv").write_text("image,x0,y0,x1,y1\na/0.png,0,0,10,10\n"
                                    "b/0.png,5,5,30,24\nb/0.png,-3,0,8,8\n")
    out = tmp_path / "out"
    argv = ["localize", "--dataset", "folder", "--root", str(root), "--boxes",
            str(root / "boxes.csv"), "--models", "timm:test_vit", "--weights", celeba_weights,
            "--layers", "last", "--image-size", "64", "--device", "cpu", "--out", str(out)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert not [w for w in caught if "clipped" in str(w.message)]
    assert json.loads((out / "summary.json").read_text())["n_clipped_boxes"] == 2
    err = capsys.readouterr().err
    assert err.count("were clipped") == 1 and "2 box(es) of the 2 images" in err

    (root / "boxes.csv").write_text("image,x0,y0,x1,y1\na/0.png,0,0,10,10\nb/0.png,1,1,9,9\n")
    assert main([*argv, "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_clipped_boxes"] == 0
    assert "were clipped" not in capsys.readouterr().err
