"""``sk-a2 localize`` on tiny random-weight models."""

import csv
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from sk_a2.cli import main

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory):
    """Two random ``test_vit`` weight files (two 'models' of the same size)."""
    folder = tmp_path_factory.mktemp("loc_weights")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = folder / f"vit{seed}.safetensors"
        save_file(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict(),
                  str(path))
        paths.append(str(path))
    return paths


def _error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[-1].startswith("sk-a2") and " error: " in lines[-1], err
    assert not any("error" in line for line in lines[:-1]), err
    return lines[-1]


def test_localize_synthetic_writes_table_summary_and_figures(two_weights, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["localize", "--models", "timm:test_vit,timm:test_vit", "--weights",
            ",".join(two_weights), "--head-aggregation", "mean,max", "--n-images", "4",
            "--image-size", "64", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(out / "localization.csv")))
    # 2 models x 2 aggregations x 6 blocks x 4 images
    assert len(rows) == 2 * 2 * 6 * 4
    assert {r["head_aggregation"] for r in rows} == {"mean", "max"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 4 and len(summary["summary"]) == 2 * 2 * 6
    first = summary["summary"][0]
    masses = [float(r["mass_in_box"]) for r in rows[:4]]
    assert first["mass_in_box_mean"] == pytest.approx(np.mean(masses), abs=1e-5)
    for name in ("mass_hit_vs_size.png", "per_layer.png", "token_shares.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    printed = capsys.readouterr().out
    assert "timm:test_vit@vit1.safetensors\tmax" in printed


def test_localize_folder_dataset_last_layer(two_weights, tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        Image.new("RGB", (40, 30), (200, 10, 10)).save(root / cls / "0.png")
    (root / "boxes.csv").write_text("image,x0,y0,x1,y1\na/0.png,0,0,20,30\nb/0.png,5,5,40,30\n")
    out = tmp_path / "out"
    assert main(["localize", "--dataset", "folder", "--root", str(root), "--boxes",
                 str(root / "boxes.csv"), "--models", "timm:test_vit", "--weights",
                 two_weights[0], "--layers", "last", "--image-size", "64", "--device", "cpu",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["layer"] for s in summary["summary"]] == [-1]  # counted from the end
    rows = list(csv.DictReader(open(out / "localization.csv")))
    assert [r["path"].rsplit("/", 2)[1:] for r in rows] == [["a", "0.png"], ["b", "0.png"]]
    assert not (out / "per_layer.png").exists()


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--dataset", "imagenet"], "needs --root"),
        (["--dataset", "waterbirds", "--root", "."], "needs --cub-root"),
        (["--head-aggregation", "median"], "median"),
        (["--layers", "x"], "argument --layers: expected 'all'"),
        (["--layers", "9"], "layers: layer=9 is out of range"),
        (["--weights", "a.pt,b.pt"], "one per model"),
    ],
)
def test_localize_errors_are_one_line(two_weights, tmp_path, capsys, extra, match):
    argv = ["localize", "--models", "timm:test_vit", "--n-images", "2", "--image-size", "64",
            "--device", "cpu", "--out", str(tmp_path)]
    if "--weights" not in extra:
        argv += ["--weights", two_weights[0]]
    assert main(argv + extra) == 2
    assert match in _error_line(capsys.readouterr().err)


def test_localize_help_lists_every_option(capsys):
    from sk_a2.cli import build_parser

    assert main(["localize", "--help"]) == 0
    out = capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["localize"]
    for action in sub._actions:
        for option in action.option_strings:
            assert option in out, option
    assert main(["--help"]) == 0
    assert "localize" in capsys.readouterr().out


def test_localize_checks_image_size_against_every_model(tmp_path, capsys):
    argv = ["localize", "--models", "timm:test_vit,dinov2_vits14", "--image-size", "64",
            "--device", "cpu", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "patch size 14 of --models dinov2_vits14" in _error_line(capsys.readouterr().err)
