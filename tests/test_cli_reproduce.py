"""``sk-a2 evaluate`` with the paper's protocol: presets, seeds, tuning, matrices, compare."""

import csv
import json

import numpy as np
import pytest
from repro_layouts import count_forwards, tiny_vit_weights, write_spawrious, write_waterbirds
from sklearn.model_selection import ParameterGrid

from sk_a2 import AttentionCropper, CenterCropper, CropEmbedder, RandomCropper
from sk_a2.cli import build_parser, main
from sk_a2.cli.evaluate import plan
from sk_a2.datasets import load_waterbirds
from sk_a2.paper.presets import paper_preset
from sk_a2.paper.protocol import default_tune_grid

pytest.importorskip("matplotlib")
# tiny frames: some tuning candidates cannot place every crop without overlap
pytestmark = pytest.mark.filterwarnings("ignore::sk_a2.boxes.CropOverlapWarning")

SIZE = "64"
ROW_KEYS = ["full_lr", "full_dfr", "center_lr", "center_dfr", "random_lr", "random_dfr",
            "a2_lr", "a2_dfr", "a2_original_lr", "a2_original_dfr"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_repro")
    return {"wb": write_waterbirds(root / "wb"), "sp": write_spawrious(root / "sp"),
            "a": tiny_vit_weights(root / "a.safetensors", 20),
            "e": tiny_vit_weights(root / "e.safetensors", 21)}


def _models(files, single=True, center=True):
    """The tiny models (``single``: --attention-model/--embedding-model, not given beside the
    model lists), and the center crop of the rows that have one."""
    return [*(["--attention-model", "timm:test_vit", "--attention-weights", files["a"],
               "--embedding-model", "timm:test_vit", "--embedding-weights", files["e"]]
              if single else []),
            "--image-size", SIZE, *(["--center-crop-size", "32"] if center else []),
            "--device", "cpu"]


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("sk-a2")]
    assert "Traceback" not in err and lines and "error:" in lines[-1], err
    return lines[-1]


def _check_results(result, dataset, head, seeds):
    assert [r["key"] for r in result["rows"]] == ROW_KEYS
    for row in result["rows"]:
        assert row["seeds"] == list(range(seeds)) and len(row["per_seed"]) == seeds
        for metric in ("accuracy", "worst_group_accuracy", "worst_class_accuracy"):
            values = [s[metric] for s in row["per_seed"]]
            assert row["mean"][metric] == pytest.approx(np.mean(values))
            assert row["std"][metric] == pytest.approx(np.std(values))
    assert result["preset"] == json.loads(json.dumps(paper_preset(dataset, head).to_dict()))
    tuning = result["tuning"]
    assert set(tuning["best_params"]) == {"crop__crop_sizes", "crop__n_crops", "crop__layer",
                                          "lr__C"}
    sizes = result["settings"]["crop_sizes"]
    grid = default_tune_grid(sizes, int(SIZE))
    assert len(tuning["validation_table"]) == len(ParameterGrid(grid))
    best = tuning["best_params"]
    for key in ("a2_lr", "a2_original_lr"):
        a2 = result["rows"][ROW_KEYS.index(key)]
        assert (a2["crop_sizes"], a2["n_crops"], a2["layer"], a2["C"]) == (
            best["crop__crop_sizes"], best["crop__n_crops"], best["crop__layer"], best["lr__C"])
    sources = {r["key"]: r["crop_source"] for r in result["rows"]}
    assert {k for k, v in sources.items() if v == "original"} == {"a2_original_lr",
                                                                  "a2_original_dfr"}


def _original_a2_oracle(files, row):
    """A² from the original pixels with the row's setting, written with the estimators."""
    from sklearn.linear_model import LogisticRegression

    from sk_a2.metrics import worst_group_accuracy

    data = load_waterbirds(files["wb"])
    split = np.asarray(data.split).astype(str)
    tr, te = split == "train", split == "test"
    crop = AttentionCropper("timm:test_vit", weights=files["a"], image_size=int(SIZE),
                            crop_sizes=row["crop_sizes"], n_crops=row["n_crops"],
                            layer=row["layer"], device="cpu").fit()
    emb = CropEmbedder("timm:test_vit", weights=files["e"], image_size=int(SIZE), device="cpu",
                       crop_source="original")
    F = emb.fit_transform(crop.transform(list(data.images)))
    pred = LogisticRegression(C=row["C"], max_iter=5000).fit(F[tr], data.target[tr]).predict(
        F[te])
    return np.mean(pred == data.target[te]), worst_group_accuracy(data.target[te], pred,
                                                                   groups=data.groups[te])


def test_waterbirds_preset_seeds_tune_compare(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(files["wb"]), "--preset",
            "paper", "--seeds", "3", "--tune", "--compare", *_models(files), "--crop-sizes",
            "32", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads((out / "evaluate_waterbirds_lr.json").read_text())
    _check_results(result, "waterbirds", "lr", 3)
    for key, value in paper_preset("waterbirds", "lr").to_dict().items():
        assert f"  {key}: " in stdout, key
    assert result["settings"]["crop_sizes"] == [32] and result["settings"]["seeds"] == [0, 1, 2]
    assert sorted(result["overridden_by_options"]) == sorted(
        ["--attention-model", "--embedding-model", "--crop-sizes", "--image-size", "--seeds",
         "--center-crop-size"])
    assert result["settings"]["fit_split"] == {"lr": "train", "dfr": "val"}
    assert "Validation search" in stdout and "± " in stdout and "[—]" in stdout
    original = result["rows"][ROW_KEYS.index("a2_original_lr")]
    assert original["reported"] == {} and "original pixels" in original["label"]
    assert original["label"] in stdout and result["settings"]["crop_source"] == "resized"
    accuracy, worst = _original_a2_oracle(files, original)
    assert [s["accuracy"] for s in original["per_seed"]] == [accuracy] * 3
    assert [s["worst_group_accuracy"] for s in original["per_seed"]] == [worst] * 3


def test_spawrious_preset_tune_compare_and_matrix(files, tmp_path, capsys):
    out = tmp_path / "out"
    pair = f"timm:test_vit={files['a']},timm:test_vit={files['e']}"
    argv = ["evaluate", "--dataset", "spawrious_o2o_hard", "--root", str(files["sp"]),
            "--preset", "paper", "--seeds", "3", "--tune", "--val-size", "0.25", "--compare",
            *_models(files, single=False), "--crop-sizes", "32,16", "--attention-models", pair,
            "--embedding-models", pair, "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    result = json.loads((out / "evaluate_spawrious_o2o_hard_lr.json").read_text())
    _check_results(result, "spawrious_o2o_hard", "lr", 3)
    assert result["n_images"]["val"] > 0
    assert result["settings"]["fit_split"] == {"lr": "train", "dfr": "train"}
    assert result["settings"]["dfr_tune_fraction"] == 0.2
    cells = result["matrix"]["cells"]
    assert len(cells) == 4 and all(len(c["per_seed"]) == 3 for c in cells)
    with open(out / "matrix_spawrious_o2o_hard_lr.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4
    assert float(table[0]["accuracy_mean"]) == pytest.approx(cells[0]["mean"]["accuracy"])
    assert (out / "matrix_spawrious_o2o_hard_lr.png").read_bytes()[:4] == b"\x89PNG"
    assert stdout.count("Cross-model matrix") == 2


def _boxes_of(cropper, images, rows=None):
    """The distinct (image, box) pairs a fitted cropper chooses for ``images`` (or ``rows``)."""
    rows = range(len(images)) if rows is None else rows
    boxes = cropper.fit().transform([images[i] for i in rows]).boxes
    return {(i, tuple(float(v) for v in b)) for i, bs in zip(rows, boxes) for b in bs}


def test_seeds_and_tune_run_each_model_once_per_image_and_box(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(files["wb"]), "--seeds", "3",
            "--tune", "--compare", *_models(files), "--crop-sizes", "32,16", "--cache",
            str(tmp_path / "cache"), "--out", str(out)]
    with count_forwards([files["a"], files["e"]], int(SIZE)) as counts:
        assert main(argv) == 0
    result = json.loads((out / "evaluate_waterbirds_lr.json").read_text())
    data = load_waterbirds(files["wb"])
    images = data.images.tolist()
    # the boxes of every row and of every tuning candidate, computed here with the croppers
    common = dict(image_size=int(SIZE), device="cpu")
    attention = dict(model="timm:test_vit", weights=files["a"], **common)
    grid = ParameterGrid(default_tune_grid((32, 16), int(SIZE)))
    assert len({params["crop__layer"] for params in grid}) == 2  # two layer candidates
    tuning_rows = np.flatnonzero(np.asarray(data.split).astype(str) != "test")
    boxes = {(i, (0.0, 0.0, 40.0, 40.0)) for i in range(len(images))}  # the full images
    for params in grid:
        crop = {k.split("__")[1]: v for k, v in params.items() if k.startswith("crop__")}
        boxes |= _boxes_of(AttentionCropper(**attention, **crop), images, tuning_rows)
    a2 = result["rows"][ROW_KEYS.index("a2_lr")]
    chosen = _boxes_of(AttentionCropper(**attention, crop_sizes=a2["crop_sizes"],
                                        n_crops=a2["n_crops"], layer=a2["layer"]), images)
    boxes |= chosen | _boxes_of(CenterCropper(image_size=int(SIZE), crop_sizes=(32,)), images)
    for seed in range(3):
        boxes |= _boxes_of(RandomCropper(random_state=seed, crop_sizes=(32, 16),
                                         image_size=int(SIZE)),
                           images)
    # one pass of the attention model for both layers, then the test images at the chosen one
    assert sum(counts[files["a"]]) == len(images)
    # every (image, box) once, and the chosen A² boxes once more from the original pixels
    assert sum(counts[files["e"]]) == len(boxes) + len(chosen)
    capsys.readouterr()


def test_defaults_follow_the_paper():
    parser = build_parser()
    base = ["evaluate", "--dataset", "waterbirds", "--root", "."]
    center = plan(parser.parse_args([*base, "--cropper", "center"]))
    assert center.crop_sizes == (128,)
    assert plan(parser.parse_args(base)).crop_sizes == (64,)
    assert plan(parser.parse_args([*base, "--head", "dfr"])).embedding_model == "dinov2_vits14"
    assert plan(parser.parse_args(base)).embedding_model == "dinov2_vitg14"


@pytest.mark.parametrize("extra, needle", [
    (["--dataset", "celeba", "--preset", "paper"], "no settings for dataset 'celeba'"),
    (["--dataset", "waterbirds", "--seeds", "0"], "--seeds: expected a positive integer"),
    (["--dataset", "spawrious_o2o_hard", "--tune", "--crop-sizes", "32"],
     "--tune needs a 'val' split, and spawrious_o2o_hard has no 'val' images. Hold one out "
     "of train with --val-size 0.2"),
    (["--dataset", "waterbirds", "--attention-models", "dinov2_vits14,dinov2_vtb14"],
     "--attention-models: entry 'dinov2_vtb14': Unknown model 'dinov2_vtb14'. Did you mean "
     "'dinov2_vitb14'"),
    (["--dataset", "waterbirds", "--embedding-models", "dinov2_vitg14,openclip_vitl41"],
     "Did you mean 'openclip_vitl14'"),
    (["--dataset", "waterbirds", "--val-size", "0.2", "--seeds", "2"],
     "--val-size: waterbirds has its own val split"),
    (["--dataset", "waterbirds", "--cropper", "adapter", "--seeds", "2"],
     "--cropper adapter does not combine with --preset, --seeds"),
    (["--dataset", "waterbirds", "--compare", "--center-crop-size", "128"],
     "center crop (128 px) is larger than --image-size 64"),
])
def test_bad_input(extra, needle, files, capsys):
    root = files["sp"] if "spawrious_o2o_hard" in extra else files["wb"]
    models = ["--attention-model", "timm:test_vit", "--attention-weights", files["a"],
              "--embedding-model", "timm:test_vit", "--image-size", SIZE, "--device", "cpu"]
    assert main(["evaluate", "--root", str(root), *models, *extra]) == 2
    assert needle in _error_line(capsys)


def test_zero_shot_where_to_look_matrix(files, tmp_path, capsys):
    """Table 30's shape: several attention models, one CLIP model embedding and classifying."""
    from conftest import make_clip
    from safetensors.torch import save_file

    clip = tmp_path / "clip.safetensors"
    save_file(make_clip(seed=3).state_dict(), str(clip))
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(files["wb"]), "--head", "zs",
            "--attention-models", f"timm:test_vit={files['a']},timm:test_vit={files['e']}",
            "--embedding-model", "open_clip:SkA2-Tiny:", "--embedding-weights", str(clip),
            "--image-size", SIZE, "--crop-sizes", "32", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "evaluate_waterbirds_zs.json").read_text())
    cells = result["matrix"]["cells"]
    assert [c["head"] for c in cells] == ["zs", "zs"] and result["rows"] == []
    assert [c["attention_model"] for c in cells] == [f"timm:test_vit={files[k]}" for k in "ae"]
    assert "Cross-model matrix" in capsys.readouterr().out


def test_crop_source_original_reaches_the_protocol_rows(files, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(files["wb"]), "--seeds", "2",
            *_models(files, center=False), "--crop-sizes", "32", "--crop-source", "original",
            "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "evaluate_waterbirds_lr.json").read_text())
    [row] = result["rows"]
    assert row["key"] == "a2_original_lr" and row["crop_source"] == "original"
    assert result["settings"]["crop_source"] == "original"
    accuracy, worst = _original_a2_oracle(files, row)
    assert [s["accuracy"] for s in row["per_seed"]] == [accuracy] * 2
    assert [s["worst_group_accuracy"] for s in row["per_seed"]] == [worst] * 2
    capsys.readouterr()
