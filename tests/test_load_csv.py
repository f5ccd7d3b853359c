"""Your own dataset from a CSV file: ``load_csv`` and ``sk-a2 evaluate --dataset csv:FILE``.

A tiny dataset of PNGs (a coloured square, the class, on a coloured background, the spurious
attribute) is written here; the CLI runs on it with the tiny random-weight models of
tests/conftest.py, plainly and through the protocol (``--tune``, ``--seeds``, ``--compare``).
"""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from repro_layouts import picture

from sk_a2.cli import main
from sk_a2.datasets import get_benchmark, load_csv

HEADER = ["file", "animal", "background", "part", "note"]


def _rows(n=32):
    """``(file, class, background, split)``: train 75 % correlated, val and test balanced."""
    cells = [("cat", "indoor"), ("cat", "outdoor"), ("dog", "indoor"), ("dog", "outdoor")]
    biased = [cells[0], cells[3]] * 3 + [cells[1], cells[2]]
    rows = []
    for i in range(n):
        split = "train" if i < 16 else ("val" if i < 24 else "test")
        animal, place = biased[i % 8] if split == "train" else cells[i % 4]
        rows.append((f"img/{animal}_{i:02d}.png", animal, place, split))
    return rows


def write_dataset(folder, rows=None, *, header=HEADER, image_root=None):
    """The PNGs under ``image_root`` (default ``folder``) and ``folder/pets.csv``."""
    rows = _rows() if rows is None else rows
    image_root = folder if image_root is None else image_root
    rng = np.random.RandomState(0)
    for name, animal, place, _ in rows:
        path = image_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            picture(("cat", "dog").index(animal), ("indoor", "outdoor").index(place),
                    rng).save(path)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "pets.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows([*row, "x"] for row in rows)
    return folder / "pets.csv"


COLUMNS = dict(image_column="file", target_column="animal", group_column="background",
               split_column="part")


# ------------------------------------------------------------------------------ load_csv


def test_load_csv_matches_the_rows(tmp_path):
    path = write_dataset(tmp_path)
    data = load_csv(path, **COLUMNS)
    rows = _rows()
    assert data.target_names.tolist() == ["cat", "dog"]
    assert data.spurious_names.tolist() == ["indoor", "outdoor"]
    assert data.group_names.tolist() == ["cat(indoor)", "cat(outdoor)", "dog(indoor)",
                                         "dog(outdoor)"]
    for i, (name, animal, place, split) in enumerate(rows):
        assert data.images[i] == str((tmp_path / name).resolve())
        assert data.target_names[data.target[i]] == animal
        assert data.group_names[data.groups[i]] == f"{animal}({place})"
        assert data.split[i] == split
    assert data.root == str(tmp_path.resolve()) and data.csv == str(path.resolve())
    assert "boxes" not in data


def test_load_csv_same_bunch_fields_as_the_benchmarks(tmp_path):
    from repro_layouts import write_waterbirds

    from sk_a2.datasets import load_waterbirds

    wb = load_waterbirds(write_waterbirds(tmp_path / "wb"))
    mine = load_csv(write_dataset(tmp_path / "mine"), **COLUMNS)
    assert set(wb) - {"img_id"} <= set(mine)
    for key in ("images", "target", "groups", "split", "spurious"):
        assert mine[key].dtype == wb[key].dtype


def test_relative_paths_start_at_root_or_the_csv_folder(tmp_path):
    images = tmp_path / "pictures"
    path = write_dataset(tmp_path / "tables", image_root=images)
    with pytest.raises(FileNotFoundError, match=r"pets\.csv', line 2: column 'file' names "
                                                r"'img/cat_00\.png', and the image file .* does "
                                                r"not exist \(32 rows name a missing image\)"):
        load_csv(path, **COLUMNS)
    data = load_csv(path, root=images, **COLUMNS)
    assert data.images[0] == str((images / "img" / "cat_00.png").resolve())
    absolute = [(str(images / r[0]), *r[1:]) for r in _rows()]
    data = load_csv(write_dataset(tmp_path / "abs", absolute, image_root=Path("/")), **COLUMNS)
    assert data.images[0] == str(images / "img" / "cat_00.png")


def test_integer_classes_sort_numerically_and_no_group_column(tmp_path):
    rows = [(f"img/{i}.png", ("cat", "dog")[i % 2], "indoor", "train" if i < 6 else "test")
            for i in range(8)]
    path = write_dataset(tmp_path, rows)
    text = path.read_text().replace(",cat,", ",10,").replace(",dog,", ",9,")
    path.write_text(text)
    data = load_csv(path, image_column="file", target_column="animal", split_column="part")
    assert data.target_names.tolist() == ["9", "10"]
    assert data.target.tolist() == [1, 0] * 4
    assert data.groups.tolist() == data.target.tolist()  # each class its own group
    assert data.spurious_names.tolist() == ["none"] and set(data.spurious) == {0}


def test_without_split_column_a_seeded_stratified_split(tmp_path):
    path = write_dataset(tmp_path)
    kwargs = {k: v for k, v in COLUMNS.items() if k != "split_column"}
    data = load_csv(path, **kwargs)
    assert set(data.split) == {"train", "test"}
    for g in np.unique(data.groups):  # round(0.2 * n) of each group
        members = data.groups == g
        assert (data.split[members] == "test").sum() == round(0.2 * members.sum())
    again = load_csv(path, **kwargs)
    assert again.split.tolist() == data.split.tolist()
    other = load_csv(path, random_state=1, **kwargs)
    assert other.split.tolist() != data.split.tolist()
    half = load_csv(path, test_size=0.5, val_size=0.5, **kwargs)
    assert {s: int((half.split == s).sum()) for s in ("train", "val", "test")} == \
        {"train": 8, "val": 8, "test": 16}
    with pytest.raises(ValueError, match="test_size=0.5 would be ignored"):
        load_csv(path, test_size=0.5, **COLUMNS)


@pytest.mark.parametrize("edit, error, match", [
    (lambda t: t.replace("note", "animal", 1), ValueError,
     r"line 1 \(header\): column 'animal' appears twice"),
    (lambda t: t.replace("background", "place", 1), ValueError,
     r"missing column\(s\) \['background'\]"),
    (lambda t: t.replace(",cat,", ",,", 1), ValueError, r"line 2: column 'animal' is empty"),
    (lambda t: t.replace(",train,", ",training,", 1), ValueError,
     r"data row 2: split should be"),
    (lambda t: t.replace("img/cat_00.png", "../cat.png"), ValueError,
     r"column 'file' \('../cat.png'\) does not name a file inside"),
    (lambda t: t.replace("img/dog_03.png", "img/cat_00.png"), ValueError,
     r"line 5: image .*cat_00.png' appears twice \(first at line 2\)"),
    (lambda t: t.replace("img/cat_00.png", "img/gone.png"), FileNotFoundError,
     r"line 2: column 'file' names 'img/gone.png'"),
])
def test_bad_rows_name_file_line_and_column(tmp_path, edit, error, match):
    path = write_dataset(tmp_path)
    path.write_text(edit(path.read_text()))
    with pytest.raises(error, match=match):
        load_csv(path, **COLUMNS)


def test_bad_parameters(tmp_path):
    path = write_dataset(tmp_path)
    with pytest.raises(ValueError, match="target_column and group_column both name"):
        load_csv(path, image_column="file", target_column="animal", group_column="animal")
    with pytest.raises(ValueError, match="is a folder; pass the CSV file"):
        load_csv(tmp_path, **COLUMNS)
    with pytest.raises(FileNotFoundError, match="CSV file .* does not exist"):
        load_csv(tmp_path / "nope.csv", **COLUMNS)
    with pytest.raises(ValueError, match=r"test_size must be in \(0, 1\)"):
        load_csv(path, image_column="file", target_column="animal", test_size=1.0)


def test_csv_benchmark_from_the_registry(tmp_path):
    path = write_dataset(tmp_path)
    benchmark = get_benchmark(f"csv:{path}", **COLUMNS)
    data = benchmark.loader(None, val_size=0.5, random_state=0)
    assert (data.split == "val").sum() == 8 + 8  # the CSV's val rows and half of train
    with pytest.raises(ValueError, match="apply to csv:<file> datasets"):
        get_benchmark("waterbirds", image_column="file")


# ------------------------------------------------------------------------------ the CLI


def _argv(path, weights, out, *extra):
    return ["evaluate", "--dataset", f"csv:{path}", "--image-column", "file",
            "--target-column", "animal", "--group-column", "background", "--split-column",
            "part", "--attention-model", "timm:test_vit", "--attention-weights", weights,
            "--embedding-model", "timm:test_vit", "--embedding-weights", weights,
            "--crop-sizes", "32", "--image-size", "64", "--device", "cpu", "--out", str(out),
            *extra]


def test_cli_runs_a_csv_dataset(tmp_path, tiny_vit_file, capsys):
    path = write_dataset(tmp_path / "data")
    assert main(_argv(path, str(tiny_vit_file), tmp_path / "out")) == 0
    out = capsys.readouterr().out
    assert "8 test images" in out and "group mean" in out and "train-weighted" in out
    result = json.loads((tmp_path / "out" / "evaluate_csv_pets_lr.json").read_text())
    assert result["dataset"] == f"csv:{path}"
    assert {g: (c["n_test"], c["n_train"]) for g, c in result["per_group"].items()} == \
        {"0": (2, 6), "1": (2, 2), "2": (2, 2), "3": (2, 6)}


def test_cli_protocol_on_a_csv_dataset(tmp_path, tiny_vit_file, capsys):
    path = write_dataset(tmp_path / "data")
    out = tmp_path / "out"
    argv = _argv(path, str(tiny_vit_file), out, "--tune", "--compare", "--seeds", "2",
                 "--center-crop-size", "48")
    assert main(argv) == 0
    result = json.loads((out / "evaluate_csv_pets_lr.json").read_text())
    assert result["tuning"]["best_params"] and len(result["rows"]) == 10
    for row in result["rows"]:
        assert row["seeds"] == [0, 1] and len(row["per_seed"]) == 2
        assert set(row["mean"]) >= {"accuracy", "worst_group_accuracy", "mean_group_accuracy",
                                    "train_weighted_accuracy"}
        assert row["per_group"]["0"]["n_test"] == 2 and row["per_group"]["0"]["n_train"] == 6
    printed = capsys.readouterr().out
    assert "Validation search" in printed and "[—]" in printed


def test_cli_csv_without_split_column_seeded_by_seed(tmp_path, tiny_vit_file, capsys):
    path = write_dataset(tmp_path / "data")
    argv = _argv(path, str(tiny_vit_file), tmp_path / "out", "--cropper", "none")
    argv = [a for a in argv if a not in ("--split-column", "part", "--crop-sizes", "32")]
    argv = argv[:argv.index("--attention-model")] + argv[argv.index("--embedding-model"):]
    assert main(argv) == 0
    first = json.loads((tmp_path / "out" / "evaluate_csv_pets_lr.json").read_text())
    assert first["n_test"] == 6  # round(0.2 * n) of each group: 8, 4, 4, 8 rows -> 2, 1, 1, 2
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("extra, needle", [
    (["--dataset", "waterbirds", "--root", "{data}", "--image-column", "file"],
     "--image-column file would be ignored: it applies to --dataset csv:FILE"),
    (["--dataset", "csv:{data}/pets.csv", "--image-column", "file"],
     "needs --target-column"),
    (["--dataset", "csv:{data}/nope.csv", "--image-column", "f", "--target-column", "t"],
     "the CSV file does not exist"),
    (["--dataset", "waterbirds"], "--dataset waterbirds needs --root"),
    (["--dataset", "csv:"], "invalid choice"),
])
def test_cli_csv_options_refused_before_any_work(tmp_path, capsys, extra, needle):
    data = write_dataset(tmp_path / "data").parent
    argv = ["evaluate", *[a.format(data=data) for a in extra], "--device", "cpu"]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("sk-a2 evaluate: error: ") and needle in lines[-1], lines
