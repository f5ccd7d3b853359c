"""Tests of ``sk_a2.datasets``: the synthetic benchmark and the loaders on tiny fixtures."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from sk_a2.datasets import (
    load_celeba,
    load_metashift_animals,
    load_metashift_cvd,
    load_spawrious,
    load_waterbirds,
    make_spurious_images,
    spawrious_plan,
)

# --------------------------------------------------------------------------------------------
# Synthetic benchmark
# --------------------------------------------------------------------------------------------

SIZE = 96


@pytest.fixture(scope="module")
def synthetic():
    return make_spurious_images(1000, image_size=SIZE, random_state=0, return_masks=True)


def test_make_spurious_images_fields():
    data = make_spurious_images(12, random_state=3)
    n = 12
    assert data.images.shape == (n, 224, 224, 3)
    assert data.images.dtype == np.uint8
    for name in ("target", "groups", "spurious", "split"):
        assert data[name].shape == (n,)
    assert data.boxes.shape == (n, 4)
    assert list(data.target_names) == ["disk", "square"]
    assert list(data.spurious_names) == ["land", "water"]
    assert list(data.group_names) == [
        "disk_on_land",
        "disk_on_water",
        "square_on_land",
        "square_on_water",
    ]
    np.testing.assert_array_equal(data.groups, 2 * data.target + data.spurious)
    assert set(data.split) <= {"train", "val", "test"}
    assert "group = 2 * label + background" in data.DESCR
    assert "masks" not in data


def test_make_spurious_images_is_deterministic():
    first = make_spurious_images(60, image_size=64, random_state=7)
    second = make_spurious_images(60, image_size=64, random_state=7)
    for key in ("images", "target", "groups", "spurious", "split", "boxes"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first.images.tobytes() == second.images.tobytes()
    other = make_spurious_images(60, image_size=64, random_state=8)
    assert not np.array_equal(first.images, other.images)


def test_make_spurious_images_accepts_generators():
    from_int = make_spurious_images(10, image_size=48, random_state=5)
    from_generator = make_spurious_images(10, image_size=48, random_state=np.random.default_rng(5))
    np.testing.assert_array_equal(from_int.images, from_generator.images)
    from_legacy = make_spurious_images(10, image_size=48, random_state=np.random.RandomState(5))
    assert from_legacy.images.shape == (10, 48, 48, 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_samples": 0},
        {"image_size": 16},
        {"correlation": 1.5},
        {"split_fractions": (0.5, 0.2, 0.2)},
        {"object_size": (0.3, 0.1)},
        {"random_state": "seed"},
    ],
)
def test_make_spurious_images_rejects_bad_arguments(kwargs):
    params = {"n_samples": 10, "image_size": 48, **kwargs}
    with pytest.raises(ValueError):
        make_spurious_images(**params)


def test_split_sizes_and_group_statistics(synthetic):
    split, target, background = synthetic.split, synthetic.target, synthetic.spurious
    assert [(split == name).sum() for name in ("train", "val", "test")] == [600, 200, 200]
    for name in ("train", "val", "test"):
        in_split = split == name
        assert abs(target[in_split].mean() - 0.5) < 0.01
    train, val, test = split == "train", split == "val", split == "test"
    agreement_train = (background[train] == target[train]).mean()
    assert 0.93 <= agreement_train <= 0.97
    for held_out in (val, test):
        assert abs((background[held_out] == target[held_out]).mean() - 0.5) < 0.05
        assert np.all(np.bincount(synthetic.groups[held_out], minlength=4) >= 40)
    assert not np.all(split[:600] == "train"), "splits should be interleaved"


def test_waterbirds_like_split_fractions():
    data = make_spurious_images(200, image_size=48, split_fractions=(0.408, 0.102, 0.49))
    counts = [(data.split == name).sum() for name in ("train", "val", "test")]
    assert counts == [82, 20, 98]


def test_boxes_lie_inside_images_and_hold_the_object(synthetic):
    boxes, masks, images = synthetic.boxes, synthetic.masks, synthetic.images
    x0, y0, x1, y1 = boxes.T
    assert np.all((x0 >= 0) & (y0 >= 0) & (x1 <= SIZE) & (y1 <= SIZE))
    assert np.all((x1 > x0) & (y1 > y0))
    side = np.maximum(x1 - x0, y1 - y0) / SIZE
    # Nominal size 15-35 % of the side; a square rotated by 45 deg spans 1.25x that.
    assert 0.15 - 2 / SIZE <= side.min() and side.max() <= 0.35 * 1.26 + 2 / SIZE

    inside_box = np.zeros_like(masks)
    for index, (a, b, c, d) in enumerate(boxes):
        inside_box[index, b:d, a:c] = True
    assert not np.any(masks & ~inside_box)

    rows, cols = masks.any(axis=2), masks.any(axis=1)
    mask_x0, mask_y0 = cols.argmax(axis=1), rows.argmax(axis=1)
    mask_x1 = SIZE - cols[:, ::-1].argmax(axis=1)
    mask_y1 = SIZE - rows[:, ::-1].argmax(axis=1)
    np.testing.assert_array_equal(np.stack([mask_x0, mask_y0, mask_x1, mask_y1], axis=1), boxes)

    # Objects are warm or white (red channel > 180), backgrounds blue or green/brown.
    reddish = images[..., 0] > 180
    assert reddish[inside_box].mean() > 0.4
    assert reddish[~inside_box].mean() < 0.01
    assert reddish[masks].mean() > 0.75


def _border_score(images, width=4):
    """Mean blue minus mean green of the top and bottom strips of each image."""
    strips = np.concatenate([images[:, :width], images[:, -width:]], axis=1).astype(float)
    return strips[..., 2].mean(axis=(1, 2)) - strips[..., 1].mean(axis=(1, 2))


def test_background_predicts_train_label_but_not_test_label(synthetic):
    predicted_water = (_border_score(synthetic.images) > 0).astype(int)
    np.testing.assert_array_equal(predicted_water, synthetic.spurious)
    train, test = synthetic.split == "train", synthetic.split == "test"
    assert (predicted_water[train] == synthetic.target[train]).mean() > 0.93
    assert abs((predicted_water[test] == synthetic.target[test]).mean() - 0.5) < 0.05


def _worst_group_accuracy(features, data):
    train, test = data.split == "train", data.split == "test"
    model = LogisticRegression(max_iter=2000).fit(features[train], data.target[train])
    correct = model.predict(features[test]) == data.target[test]
    groups = data.groups[test]
    return correct.mean(), min(correct[groups == g].mean() for g in range(4))


def test_full_image_probe_uses_background_and_crop_probe_uses_shape(synthetic):
    n, cells = len(synthetic.target), 8
    block = SIZE // cells
    full = synthetic.images.reshape(n, cells, block, cells, block, 3).mean(axis=(2, 4))
    accuracy, worst = _worst_group_accuracy(full.reshape(n, -1) / 255.0, synthetic)
    assert worst < 0.3
    assert accuracy < 0.75

    steps = (np.arange(16) + 0.5) / 16
    crops = np.empty((n, 16 * 16 * 3))
    for index, (x0, y0, x1, y1) in enumerate(synthetic.boxes):
        rows = (y0 + steps * (y1 - y0)).astype(int)
        cols = (x0 + steps * (x1 - x0)).astype(int)
        crops[index] = synthetic.images[index][np.ix_(rows, cols)].ravel() / 255.0
    accuracy, worst = _worst_group_accuracy(crops, synthetic)
    assert accuracy > 0.9
    assert worst > 0.8


# --------------------------------------------------------------------------------------------
# Fixture helpers
# --------------------------------------------------------------------------------------------


def _write_image(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), value, dtype=np.uint8)).save(path)
    return path


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# --------------------------------------------------------------------------------------------
# Waterbirds
# --------------------------------------------------------------------------------------------

ALBATROSS = "001.Black_footed_Albatross/Black_Footed_Albatross_"
BUNTING = "014.Indigo_Bunting/Indigo_Bunting_"
WATERBIRDS_ROWS = [
    # img_id, img_filename, y, split, place, place_filename
    (1, ALBATROSS + "0046_18.jpg", 1, 0, 1, "/o/ocean/00002178.jpg"),
    (2, ALBATROSS + "0009_34.jpg", 1, 1, 0, "/b/bamboo_forest/00000934.jpg"),
    (3, BUNTING + "0001_12469.jpg", 0, 0, 0, "/f/forest/broadleaf/00003012.jpg"),
    (4, BUNTING + "0002_13012.jpg", 0, 2, 1, "/l/lake/natural/00001011.jpg"),
    (5, BUNTING + "0003_13260.jpg", 0, 2, 0, "/f/forest_path/00004500.jpg"),
]


@pytest.fixture
def waterbirds_root(tmp_path):
    root = tmp_path / "waterbird_complete95_forest2water2"
    for row in WATERBIRDS_ROWS:
        _write_image(root / row[1])
    _write_csv(
        root / "metadata.csv",
        ["img_id", "img_filename", "y", "split", "place", "place_filename"],
        WATERBIRDS_ROWS,
    )
    return root


@pytest.fixture
def cub_root(tmp_path):
    root = tmp_path / "CUB_200_2011"
    root.mkdir()
    # CUB ids differ from the Waterbirds order on purpose: boxes are matched by file name.
    names = {10 + row[0]: row[1] for row in WATERBIRDS_ROWS}
    (root / "images.txt").write_text("".join(f"{i} {name}\n" for i, name in names.items()))
    (root / "bounding_boxes.txt").write_text(
        "".join(f"{i} {i}.0 2.0 30.0 {i + 5}.0\n" for i in names)
    )
    return root


def test_load_waterbirds(waterbirds_root):
    data = load_waterbirds(waterbirds_root)
    np.testing.assert_array_equal(data.target, [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(data.spurious, [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(data.groups, [3, 2, 0, 1, 0])
    assert list(data.split) == ["train", "val", "train", "test", "test"]
    assert list(data.group_names) == [
        "landbird_on_land",
        "landbird_on_water",
        "waterbird_on_land",
        "waterbird_on_water",
    ]
    np.testing.assert_array_equal(data.img_id, [1, 2, 3, 4, 5])
    for path, row in zip(data.images, WATERBIRDS_ROWS):
        assert isinstance(path, str) and Path(path).is_absolute()
        assert Path(path) == (waterbirds_root / row[1]).resolve()
        assert Path(path).is_file()
    assert "boxes" not in data
    assert "metadata.csv" in data.DESCR


def test_load_waterbirds_from_parent_folder(waterbirds_root):
    data = load_waterbirds(waterbirds_root.parent)
    assert len(data.target) == len(WATERBIRDS_ROWS)


def test_load_waterbirds_with_cub_boxes(waterbirds_root, cub_root):
    data = load_waterbirds(waterbirds_root, cub_root=cub_root)
    assert data.boxes.dtype == np.float32
    expected = [[10 + i, 2.0, 10 + i + 30.0, 2.0 + 10 + i + 5] for i in range(1, 6)]
    np.testing.assert_allclose(data.boxes, expected)
    # The parent of CUB_200_2011 works as well.
    np.testing.assert_allclose(
        load_waterbirds(waterbirds_root, cub_root=cub_root.parent).boxes, expected
    )


def test_load_waterbirds_errors(tmp_path, waterbirds_root):
    with pytest.raises(FileNotFoundError, match="does not exist.*group_DRO"):
        load_waterbirds(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"metadata\.csv.*waterbird_complete95"):
        load_waterbirds(empty)
    _write_csv(waterbirds_root / "metadata.csv", ["img_id", "img_filename", "y", "split"], [])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['place'\]"):
        load_waterbirds(waterbirds_root)


def test_load_waterbirds_bad_values_and_missing_boxes(waterbirds_root, cub_root):
    (cub_root / "bounding_boxes.txt").write_text("11 1.0 2.0 3.0 4.0\n")
    with pytest.raises(ValueError, match="No CUB bounding box"):
        load_waterbirds(waterbirds_root, cub_root=cub_root)
    (cub_root / "bounding_boxes.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"bounding_boxes\.txt.*cub_200_2011"):
        load_waterbirds(waterbirds_root, cub_root=cub_root)
    rows = [list(row) for row in WATERBIRDS_ROWS]
    rows[0][2] = 2
    _write_csv(
        waterbirds_root / "metadata.csv",
        ["img_id", "img_filename", "y", "split", "place", "place_filename"],
        rows,
    )
    with pytest.raises(ValueError, match="y and place must be 0 or 1"):
        load_waterbirds(waterbirds_root)


# --------------------------------------------------------------------------------------------
# CelebA
# --------------------------------------------------------------------------------------------

CELEBA_ATTRIBUTES = [
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
]
# file name, Blond_Hair, Male, partition
CELEBA_ROWS = [
    ("000001.jpg", 1, -1, 0),
    ("000002.jpg", -1, -1, 0),
    ("000003.jpg", -1, 1, 1),
    ("000004.jpg", 1, 1, 2),
    ("000005.jpg", -1, 1, 2),
]


def _write_celeba(root, rows=CELEBA_ROWS, declared=None):
    root.mkdir(parents=True, exist_ok=True)
    blond, male = CELEBA_ATTRIBUTES.index("Blond_Hair"), CELEBA_ATTRIBUTES.index("Male")
    lines = [str(len(rows) if declared is None else declared), " ".join(CELEBA_ATTRIBUTES) + " "]
    for name, is_blond, is_male, _ in rows:
        values = [-1] * len(CELEBA_ATTRIBUTES)
        values[blond], values[male] = is_blond, is_male
        lines.append(name + " " + " ".join(f"{value:2d}" for value in values))
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text(
        "".join(f"{name} {part}\n" for name, *_, part in rows)
    )
    for name, *_ in rows:
        _write_image(root / "img_align_celeba" / name)
    return root


def test_load_celeba(tmp_path):
    root = _write_celeba(tmp_path / "celeba")
    data = load_celeba(root)
    np.testing.assert_array_equal(data.target, [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(data.spurious, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(data.groups, [2, 0, 1, 3, 1])
    assert list(data.split) == ["train", "train", "val", "test", "test"]
    assert list(data.group_names) == [
        "not_blond_female",
        "not_blond_male",
        "blond_female",
        "blond_male",
    ]
    assert Path(data.images[3]) == (root / "img_align_celeba" / "000004.jpg").resolve()
    assert all(Path(path).is_file() for path in data.images)
    assert "boxes" not in data
    # torchvision's layout: the parent holding celeba/ works too.
    np.testing.assert_array_equal(load_celeba(tmp_path).groups, data.groups)


def test_load_celeba_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*mmlab.ie.cuhk.edu.hk"):
        load_celeba(tmp_path / "nowhere")
    root = _write_celeba(tmp_path / "celeba")
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"list_eval_partition\.txt.*CelebA"):
        load_celeba(root)

    root = _write_celeba(tmp_path / "truncated", declared=202599)
    with pytest.raises(ValueError, match="declares 202599 images but lists 5"):
        load_celeba(root)

    root = _write_celeba(tmp_path / "partial")
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(ValueError, match="no split for 4 image"):
        load_celeba(root)


# --------------------------------------------------------------------------------------------
# Spawrious
# --------------------------------------------------------------------------------------------

BREEDS = ("bulldog", "corgi", "dachshund", "labrador")
LOCATIONS = ("desert", "jungle", "dirt", "mountain", "snow", "beach")


@pytest.fixture(scope="module")
def spawrious_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("spawrious")
    for folder in ("0", "1"):
        for location in LOCATIONS:
            for breed in BREEDS:
                for index in range(2):
                    _write_image(root / "spawrious224" / folder / location / breed / f"{index}.png")
    return root


def test_spawrious_plan_matches_official_combinations():
    plan = spawrious_plan("o2o_hard")
    main = {
        (env, breed): (loc, limit)
        for split, env, folder, loc, breed, limit in plan
        if split == "train" and loc != "beach"
    }
    assert main[(0, "bulldog")] == ("jungle", 3072)
    assert main[(1, "bulldog")] == ("jungle", 2756)
    assert main[(0, "dachshund")] == ("mountain", 3072)
    assert main[(0, "labrador")] == ("snow", 3072)
    assert main[(0, "corgi")] == ("desert", 3072)
    filler = [
        (env, breed, limit)
        for split, env, folder, loc, breed, limit in plan
        if split == "train" and loc == "beach"
    ]
    assert sorted(filler) == sorted(
        [(0, breed, 96) for breed in BREEDS] + [(1, breed, 412) for breed in BREEDS]
    )
    for env in (0, 1):
        per_env = sum(entry[5] for entry in plan if entry[0] == "train" and entry[1] == env)
        assert per_env == 4 * 3168
    test = {
        (folder, breed, loc) for split, env, folder, loc, breed, limit in plan if split == "test"
    }
    assert test == {
        (folder, breed, loc)
        for folder in ("0", "1")
        for breed, loc in zip(
            ("bulldog", "dachshund", "labrador", "corgi"), ("mountain", "snow", "desert", "jungle")
        )
    }

    plan = spawrious_plan("m2m_hard")
    assert {entry[2] for entry in plan} == {"0"}
    train = {(breed, env): loc for split, env, _, loc, breed, _ in plan if split == "train"}
    assert train == {
        ("bulldog", 0): "dirt",
        ("bulldog", 1): "jungle",
        ("dachshund", 0): "jungle",
        ("dachshund", 1): "dirt",
        ("labrador", 0): "snow",
        ("labrador", 1): "beach",
        ("corgi", 0): "beach",
        ("corgi", 1): "snow",
    }
    test = {(breed, env): loc for split, env, _, loc, breed, _ in plan if split == "test"}
    assert test == {
        ("bulldog", 0): "snow",
        ("bulldog", 1): "beach",
        ("dachshund", 0): "beach",
        ("dachshund", 1): "snow",
        ("labrador", 0): "dirt",
        ("labrador", 1): "jungle",
        ("corgi", 0): "jungle",
        ("corgi", 1): "dirt",
    }
    assert spawrious_plan("o2o_easy", total=100)[0][5] == 97
    with pytest.raises(ValueError, match="benchmark must be one of"):
        spawrious_plan("o2o_extreme")


def _pairs(data, split):
    mask = data.split == split
    return {
        (data.target_names[t], data.spurious_names[s])
        for t, s in zip(data.target[mask], data.spurious[mask])
    }


def test_load_spawrious_o2o_hard(spawrious_root):
    data = load_spawrious(spawrious_root, "o2o_hard")
    assert data.benchmark == "o2o_hard"
    assert (data.split == "train").sum() == 2 * 8 * 2
    assert (data.split == "test").sum() == 2 * 4 * 2
    assert (data.split == "val").sum() == 0
    main = {("bulldog", "jungle"), ("dachshund", "mountain"), ("labrador", "snow")}
    filler = {(breed, "beach") for breed in BREEDS}
    assert _pairs(data, "train") == main | {("corgi", "desert")} | filler
    assert _pairs(data, "test") == {
        ("bulldog", "mountain"),
        ("dachshund", "snow"),
        ("labrador", "desert"),
        ("corgi", "jungle"),
    }
    np.testing.assert_array_equal(data.groups, 6 * data.target + data.spurious)
    assert data.group_names[data.groups[0]] == "bulldog_jungle"
    assert list(data.target_names) == list(BREEDS)
    env1 = data.images[(data.environment == 1) & (data.split == "train")]
    assert all("/spawrious224/1/" in path.replace("\\", "/") for path in env1)
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in data.images)


def test_load_spawrious_takes_the_first_sorted_images_up_to_the_limit(spawrious_root, monkeypatch):
    from sk_a2.datasets import _spawrious

    official = _spawrious.spawrious_plan
    monkeypatch.setattr(_spawrious, "spawrious_plan", lambda name: official(name, total=2))
    data = load_spawrious(spawrious_root, "o2o_hard")
    train = data.split == "train"
    # int(0.97 * 2) = int(0.87 * 2) = 1 main image and 2 - 1 = 1 filler image per folder.
    assert train.sum() == 2 * 8
    assert all(Path(path).name == "0.png" for path in data.images[train])
    assert (data.split == "test").sum() == 2 * 4 * 2


def test_load_spawrious_m2m_hard_and_val_holdout(spawrious_root):
    data = load_spawrious(spawrious_root / "spawrious224", "M2M_Hard")
    assert all("/spawrious224/0/" in path.replace("\\", "/") for path in data.images)
    assert _pairs(data, "train") == {
        ("bulldog", "dirt"),
        ("bulldog", "jungle"),
        ("dachshund", "jungle"),
        ("dachshund", "dirt"),
        ("labrador", "snow"),
        ("labrador", "beach"),
        ("corgi", "beach"),
        ("corgi", "snow"),
    }
    held = load_spawrious(spawrious_root, "m2m_hard", val_size=0.5, random_state=0)
    assert (held.split == "val").sum() == (held.split == "train").sum() == 8
    np.testing.assert_array_equal(held.split == "test", data.split == "test")
    again = load_spawrious(spawrious_root, "m2m_hard", val_size=0.5, random_state=0)
    np.testing.assert_array_equal(held.split, again.split)


def test_load_spawrious_errors(tmp_path, spawrious_root):
    with pytest.raises(FileNotFoundError, match="does not exist.*aengusl/spawrious"):
        load_spawrious(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="spawrious224.*aengusl/spawrious"):
        load_spawrious(tmp_path)
    with pytest.raises(ValueError, match="benchmark must be one of"):
        load_spawrious(spawrious_root, "hard")
    partial = tmp_path / "partial" / "spawrious224" / "0" / "dirt" / "bulldog"
    _write_image(partial / "0.png")
    with pytest.raises(FileNotFoundError, match=r"0[/\\]jungle[/\\]dachshund"):
        load_spawrious(tmp_path / "partial", "m2m_hard")


# --------------------------------------------------------------------------------------------
# MetaShift Cats vs. Dogs
# --------------------------------------------------------------------------------------------

CVD_FOLDERS = {
    "train/cat/cat(indoor)": 3,
    "train/dog/dog(outdoor)": 2,
    "test/cat/cat(outdoor)": 2,
    "test/dog/dog(indoor)": 1,
}


@pytest.fixture
def cvd_root(tmp_path):
    root = tmp_path / "MetaShift-Cat-Dog-indoor-outdoor"
    for folder, count in CVD_FOLDERS.items():
        for index in range(count):
            _write_image(root / folder / f"{2300000 + index}.jpg")
    return root


def test_load_metashift_cvd(cvd_root):
    data = load_metashift_cvd(cvd_root)
    np.testing.assert_array_equal(data.target, [0, 0, 0, 1, 1, 0, 0, 1])
    np.testing.assert_array_equal(data.spurious, [0, 0, 0, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(data.groups, [0, 0, 0, 3, 3, 1, 1, 2])
    assert list(data.split) == ["train"] * 5 + ["test"] * 3
    assert list(data.group_names) == ["cat(indoor)", "cat(outdoor)", "dog(indoor)", "dog(outdoor)"]
    assert Path(data.images[0]) == (cvd_root / "train/cat/cat(indoor)/2300000.jpg").resolve()
    assert "boxes" not in data
    np.testing.assert_array_equal(load_metashift_cvd(cvd_root.parent).groups, data.groups)

    with pytest.raises(ValueError, match="val_size must be in"):
        load_metashift_cvd(cvd_root, val_size=1.0)
    held = load_metashift_cvd(cvd_root, val_size=0.34)
    assert (held.split == "val").sum() == 2  # one of the 3 cat(indoor), one of the 2 dog(outdoor)
    assert set(held.groups[held.split == "val"]) == {0, 3}


def test_load_metashift_cvd_errors(tmp_path, cvd_root):
    with pytest.raises(FileNotFoundError, match="does not exist.*Weixin-Liang/MetaShift"):
        load_metashift_cvd(tmp_path / "nowhere")
    for path in (cvd_root / "test/dog/dog(indoor)").iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="holds no"):
        load_metashift_cvd(cvd_root)
    (cvd_root / "test/dog/dog(indoor)").rmdir()
    with pytest.raises(FileNotFoundError, match=r"dog\(indoor\).*subpopulation_shift"):
        load_metashift_cvd(cvd_root)


# --------------------------------------------------------------------------------------------
# MetaShift Animals
# --------------------------------------------------------------------------------------------

ANIMAL_ROWS = [
    # img_filename, label, context, split, image_id
    ("images/2317981.jpg", "elephant", "rope", "train", 2317981),
    ("images/2339322.jpg", "elephant", "tree", "train", 2339322),
    ("images/2410004.jpg", "elephant", "rope", "train", 2410004),
    ("images/2374436.jpg", "bear", "tree", "train", 2374436),
    ("images/2400555.jpg", "elephant", "water", "test", 2400555),
    ("images/2356012.jpg", "zebra", "dirt", "test", 2356012),
    ("images/2390099.jpg", "bear", "water", "val", 2390099),
]


@pytest.fixture
def animals_root(tmp_path):
    root = tmp_path / "metashift_animals"
    for row in ANIMAL_ROWS:
        _write_image(root / row[0])
    _write_csv(
        root / "metadata.csv",
        ["img_filename", "label", "context", "split", "image_id"],
        ANIMAL_ROWS,
    )
    return root


def test_load_metashift_animals(animals_root):
    data = load_metashift_animals(animals_root)
    assert list(data.target_names) == [
        "bear",
        "bird",
        "cow",
        "elephant",
        "giraffe",
        "horse",
        "sheep",
        "zebra",
    ]
    np.testing.assert_array_equal(data.target, [3, 3, 3, 0, 3, 7, 0])
    assert list(data.spurious_names) == ["dirt", "rope", "tree", "water"]
    np.testing.assert_array_equal(data.spurious, [1, 2, 1, 2, 3, 0, 3])
    assert list(data.group_names) == [
        "bear(tree)",
        "bear(water)",
        "elephant(rope)",
        "elephant(tree)",
        "elephant(water)",
        "zebra(dirt)",
    ]
    np.testing.assert_array_equal(data.groups, [2, 3, 2, 0, 4, 5, 1])
    assert list(data.context) == [row[2] for row in ANIMAL_ROWS]
    assert list(data.split) == ["train"] * 4 + ["test", "test", "val"]
    assert Path(data.images[0]) == (animals_root / "images/2317981.jpg").resolve()
    assert all(Path(path).is_file() for path in data.images)
    assert "img_filename,label,context,split" in data.DESCR

    held = load_metashift_animals(animals_root, val_size=0.5, random_state=1)
    assert list(held.split[:3]).count("val") == 1  # the elephant(rope) pair, 2 images -> 1


def test_load_metashift_animals_numeric_labels_and_splits(tmp_path):
    root = tmp_path / "animals"
    _write_csv(
        root / "meta.csv",
        ["img_filename", "label", "context", "split"],
        [("a.jpg", 4, "tree", 0), ("b.jpg", 5, "water", 2), ("/abs/c.jpg", 4, "rope", 1)],
    )
    data = load_metashift_animals(root, metadata="meta.csv")
    np.testing.assert_array_equal(data.target, [4, 5, 4])
    assert list(data.split) == ["train", "test", "val"]
    assert data.images[2] == str(Path("/abs/c.jpg"))


def test_load_metashift_animals_errors(tmp_path, animals_root):
    with pytest.raises(FileNotFoundError, match="does not exist.*Appendix C"):
        load_metashift_animals(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"other\.csv.*MetaShift Animals"):
        load_metashift_animals(animals_root, metadata="other.csv")
    _write_csv(
        animals_root / "metadata.csv",
        ["img_filename", "label", "split"],
        [("a.jpg", "bear", "train")],
    )
    with pytest.raises(ValueError, match=r"missing column\(s\) \['context'\]"):
        load_metashift_animals(animals_root)
    _write_csv(
        animals_root / "metadata.csv",
        ["img_filename", "label", "context", "split"],
        [("a.jpg", "cat", "sofa", "train")],
    )
    with pytest.raises(ValueError, match="label should be one of"):
        load_metashift_animals(animals_root)
    _write_csv(
        animals_root / "metadata.csv",
        ["img_filename", "label", "context", "split"],
        [("a.jpg", "bear", "sofa", "holdout")],
    )
    with pytest.raises(ValueError, match="split should be"):
        load_metashift_animals(animals_root)


# --------------------------------------------------------------------------------------------
# Hostile metadata: every bad cell is an error naming the file, the row and the value
# --------------------------------------------------------------------------------------------

WATERBIRDS_HEADER = ["img_id", "img_filename", "y", "split", "place", "place_filename"]


def _waterbirds_with(root, row_index, column, value):
    rows = [list(row) for row in WATERBIRDS_ROWS]
    rows[row_index][WATERBIRDS_HEADER.index(column)] = value
    _write_csv(root / "metadata.csv", WATERBIRDS_HEADER, rows)
    return root / "metadata.csv"


@pytest.mark.parametrize("column", ["y", "place", "img_id"])
@pytest.mark.parametrize("value", ["1.7", "-0.9", "0.5", "inf", "-inf", "nan", "1e400", "one"])
def test_waterbirds_non_integer_cells_are_errors(waterbirds_root, column, value):
    path = _waterbirds_with(waterbirds_root, 2, column, value)
    with pytest.raises(ValueError) as info:
        load_waterbirds(waterbirds_root)
    message = str(info.value)
    assert str(path) in message and "data row 3" in message and repr(value) in message
    assert column in message


@pytest.mark.parametrize("value", ["1.0", " 1 ", "1e0", "+1"])
def test_waterbirds_integer_written_as_float_is_accepted(waterbirds_root, value):
    _waterbirds_with(waterbirds_root, 2, "y", value)
    assert load_waterbirds(waterbirds_root).target[2] == 1


def test_waterbirds_non_utf8_metadata_names_the_file(waterbirds_root):
    path = waterbirds_root / "metadata.csv"
    path.write_bytes(path.read_bytes().replace(b"Indigo", b"Indig\xff"))
    with pytest.raises(ValueError, match="not UTF-8") as info:
        load_waterbirds(waterbirds_root)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("value", ["", "   "])
def test_waterbirds_blank_image_name_is_an_error(waterbirds_root, value):
    _waterbirds_with(waterbirds_root, 1, "img_filename", value)
    with pytest.raises(ValueError, match=r"data row 2: column 'img_filename' is empty"):
        load_waterbirds(waterbirds_root)


@pytest.mark.parametrize(
    "value", ["../../etc/passwd", "a/../../outside.jpg", "..", ".", "/etc/passwd"]
)
def test_waterbirds_paths_outside_the_root_are_errors(waterbirds_root, value):
    path = _waterbirds_with(waterbirds_root, 3, "img_filename", value)
    with pytest.raises(ValueError) as info:
        load_waterbirds(waterbirds_root)
    message = str(info.value)
    assert str(path) in message and "data row 4" in message and repr(value) in message


def test_waterbirds_paths_are_normalised(waterbirds_root):
    written = "014.Indigo_Bunting/./x/../Indigo_Bunting_0002_13012.jpg"
    _waterbirds_with(waterbirds_root, 3, "img_filename", written)
    image = load_waterbirds(waterbirds_root).images[3]
    assert ".." not in Path(image).parts and "." not in Path(image).parts
    assert Path(image) == (waterbirds_root / WATERBIRDS_ROWS[3][1]).resolve()


@pytest.mark.parametrize("line", ["11 1.0 2.0 x 4.0", "11 nan 2.0 3.0 4.0", "eleven 1 2 3 4"])
def test_cub_malformed_box_line_is_an_error(waterbirds_root, cub_root, line):
    (cub_root / "bounding_boxes.txt").write_text(line + "\n")
    with pytest.raises(ValueError, match="line 1: expected"):
        load_waterbirds(waterbirds_root, cub_root=cub_root)


def test_metashift_animals_relative_path_must_stay_inside_root(tmp_path):
    root = tmp_path / "animals"
    _write_csv(
        root / "meta.csv",
        ["img_filename", "label", "context", "split"],
        [("a.jpg", 4, "tree", 0), ("../b.jpg", 5, "water", 2)],
    )
    with pytest.raises(ValueError, match=r"data row 2: column 'img_filename' \('\.\./b\.jpg'\)"):
        load_metashift_animals(root, metadata="meta.csv")


@pytest.mark.parametrize("label", ["4.5", "inf"])
def test_metashift_animals_non_integer_label_is_an_error(tmp_path, label):
    root = tmp_path / "animals"
    _write_csv(root / "meta.csv", ["img_filename", "label", "context", "split"],
               [("a.jpg", label, "tree", 0)])
    with pytest.raises(ValueError, match=rf"data row 1.*{label!r}"):
        load_metashift_animals(root, metadata="meta.csv")


def test_celeba_hostile_files(tmp_path):
    rows = [("../../escape.jpg", 1, -1, 0), *CELEBA_ROWS[1:]]
    root = _write_celeba(tmp_path / "escape", rows=CELEBA_ROWS)
    _write_celeba(root, rows=rows)
    with pytest.raises(ValueError, match=r"data row 1: column 'file name' \('\.\./\.\./escape"):
        load_celeba(root)
    root = _write_celeba(tmp_path / "latin1")
    attributes = root / "list_attr_celeba.txt"
    attributes.write_bytes(attributes.read_bytes().replace(b"Bald", b"B\xe4ld"))
    with pytest.raises(ValueError, match="not UTF-8") as info:
        load_celeba(root)
    assert str(attributes) in str(info.value)
