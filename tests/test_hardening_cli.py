"""``sk-a2``: output folders checked before any model runs, results never overwritten silently,
``--cache`` and ``--val-size`` honoured (or refused) on every path of ``evaluate``."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import test_cli_options as options

from sk_a2.cli import main
from sk_a2.datasets import load_metashift_animals

inputs = options.inputs  # fixtures: replica datasets, and recorders instead of models
rec = options.rec
one_error_line = options.one_error_line


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _evaluate(inputs, *extra, dataset="waterbirds", root="wb"):
    return ["evaluate", "--dataset", dataset, "--root", inputs[root], *extra]


# --------------------------------------------------------------------------- --cache, --val-size


def test_evaluate_cache_folder_is_used_without_protocol_options(inputs, rec, tmp_path,
                                                               monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    rc, _, err = _run(_evaluate(inputs, "--cache", "~/cache"), capsys)
    assert rc == 0, err
    folder = str(tmp_path / "cache")
    assert rec.kw("AttentionCropper", "cache") == folder
    assert rec.kw("CropEmbedder", "cache") == folder
    assert Path(folder).is_dir()


@pytest.mark.parametrize("protocol", [(), ("--seeds", "2")])
@pytest.mark.parametrize("value", ["", "{file}", "{file}/sub"])
def test_evaluate_bad_cache_refused_before_work(value, protocol, inputs, rec, capsys):
    cache = value.format(file=inputs["file"])
    rc, _, err = _run(_evaluate(inputs, "--cache", cache, *protocol), capsys)
    assert rc == 2
    line = one_error_line(err, "evaluate")
    assert "--cache" in line
    assert not rec.called("load") and not rec.called("Protocol")
    assert not rec.called("AttentionCropper")


@pytest.mark.parametrize("protocol", [(), ("--seeds", "2")])
@pytest.mark.parametrize("value", ["1.5", "1", "0", "-0.2", "nan"])
def test_val_size_outside_0_1_refused(value, protocol, inputs, rec, capsys):
    argv = _evaluate(inputs, "--val-size", value, *protocol, dataset="spawrious_o2o_hard",
                     root="sp")
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    line = one_error_line(err, "evaluate")
    assert "--val-size" in line and "(0, 1)" in line
    assert not rec.called("load")


@pytest.mark.parametrize("head", ["dfr", "lr"])
def test_val_size_splits_train_and_dfr_fits_on_it(head, inputs, rec, capsys):
    """MetaShift has no val split: --val-size 0.3 holds one out of train (the loader's
    group-stratified split, seeded by --seed); DFR is fitted on it, LR on the rest of train."""
    argv = _evaluate(inputs, "--head", head, "--val-size", "0.3", dataset="metashift_animals",
                     root="ma")
    rc, out, err = _run(argv, capsys)
    assert rc == 0, err
    oracle = load_metashift_animals(inputs["ma"], val_size=0.3, random_state=0)
    split = np.asarray(oracle.split).astype(str)
    n = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    assert n["val"] > 0 and n["train"] + n["val"] == 24
    assert f"train {n['train']}, val {n['val']}, test {n['test']} images" in err
    fit_split = "val" if head == "dfr" else "train"
    X, y = rec.arg(f"fit_{head}", 0), rec.arg(f"fit_{head}", 1)
    fitted = [rec.item_of(row[0]) for row in X]
    expected = [str(p) for p in np.asarray(oracle.images)[split == fit_split]]
    assert [Path(f).name for f in fitted] == [Path(e).name for e in expected]
    assert list(y) == list(np.asarray(oracle.target)[split == fit_split])
    if head == "dfr":
        assert rec.arg("fit_dfr", 3) == "val" and "DFR(Val)" in out


# --------------------------------------------------------------- outputs checked before any work


@pytest.fixture
def no_models(monkeypatch):
    """Any model loading, embedding, protocol run or localization fails the test loudly."""
    import sk_a2.localization
    import sk_a2.models
    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.paper.protocol import Protocol

    def forbidden(*args, **kwargs):
        raise AssertionError("model work started before the output folders were checked")

    monkeypatch.setattr(sk_a2.models, "load_model", forbidden)
    for cls, names in ((AttentionCropper, ("fit", "transform", "attention_maps")),
                       (CropEmbedder, ("fit", "fit_transform", "transform")),
                       (Protocol, ("run_rows", "tune", "cross_model_matrix", "features"))):
        for name in names:
            monkeypatch.setattr(cls, name, forbidden)
    monkeypatch.setattr(sk_a2.localization, "localization_report", forbidden)


COMMANDS = {
    "evaluate": lambda i: ["evaluate", "--dataset", "waterbirds", "--root", i["wb"],
                           "--attention-model", "timm:test_vit", "--embedding-model",
                           "timm:test_vit", "--image-size", "64", "--crop-sizes", "32",
                           "--device", "cpu"],
    "evaluate --seeds": lambda i: [*COMMANDS["evaluate"](i), "--seeds", "2"],
    "demo": lambda i: ["demo", "--n-samples", "40", "--image-size", "64", "--crop-sizes", "32",
                       "--attention-model", "timm:test_vit", "--embedding-model",
                       "timm:test_vit", "--device", "cpu"],
    "localize": lambda i: ["localize", "--models", "timm:test_vit", "--image-size", "64",
                           "--n-images", "4", "--device", "cpu"],
    "crops": lambda i: ["crops", i["img"], "--model", "timm:test_vit", "--image-size", "64",
                        "--crop-sizes", "32", "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_unwritable_out_refused_before_any_model(command, inputs, no_models, capsys):
    out = Path(inputs["file"]) / "results"  # under a file: it cannot be created
    rc, _, err = _run([*COMMANDS[command](inputs), "--out", str(out)], capsys)
    assert rc == 2, err
    line = one_error_line(err, command.split()[0])
    assert line.startswith(f"sk-a2 {command.split()[0]}: error: --out folder {str(out)!r} "
                           "cannot be written (")
    assert "pass a writable folder" in line


@pytest.mark.parametrize("command", ["evaluate", "localize"])
def test_unwritable_cache_refused_before_any_model(command, inputs, no_models, tmp_path, capsys):
    cache = Path(inputs["file"]) / "cache"
    argv = [*COMMANDS[command](inputs), "--cache", str(cache), "--out", str(tmp_path / "o")]
    rc, _, err = _run(argv, capsys)
    assert rc == 2, err
    line = one_error_line(err, command)
    assert f"--cache folder {str(cache)!r} cannot be written" in line
    assert "'memory', or 'none'" in line or "memory, or none" in line


def test_read_only_out_folder_refused(inputs, no_models, tmp_path, capsys):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("this user can write into read-only folders (root)")
        rc, _, err = _run([*COMMANDS["evaluate"](inputs), "--out", str(out)], capsys)
    finally:
        out.chmod(0o755)
    assert rc == 2
    assert "cannot be written" in one_error_line(err, "evaluate")


@pytest.mark.parametrize("command", ["evaluate", "demo", "localize", "crops"])
def test_out_path_rule(command, inputs, no_models, capsys, tmp_path):
    """``""`` and an existing file are refused, with the fix; ``~`` is expanded."""
    base = COMMANDS[command](inputs)
    rc, _, err = _run([*base, "--out", ""], capsys)
    assert rc == 2 and "--out '' names no folder" in one_error_line(err, command)
    rc, _, err = _run([*base, "--out", inputs["file"]], capsys)
    assert rc == 2
    assert f"--out {inputs['file']!r} is an existing file" in one_error_line(err, command)


# ------------------------------------------------------------------------ results not overwritten


def test_evaluate_rerun_refuses_to_overwrite(inputs, tiny_vit_file, tmp_path, capsys):
    out = tmp_path / "results"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", inputs["wb"], "--cropper", "none",
            "--embedding-model", "timm:test_vit", "--embedding-weights", str(tiny_vit_file),
            "--image-size", "64", "--device", "cpu", "--out", str(out)]
    (out / "notes").mkdir(parents=True)  # other files in the folder do not matter
    (out / "notes" / "a.txt").write_text("mine")
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    path = out / "evaluate_waterbirds_lr.json"
    first = json.loads(path.read_text())
    path.write_text(json.dumps({**first, "marker": 1}))
    before = path.read_text()

    rc, _, err = _run(argv, capsys)
    assert rc == 2
    line = one_error_line(err, "evaluate")
    assert "evaluate_waterbirds_lr.json" in line and "--overwrite" in line and "--out" in line
    assert path.read_text() == before

    rc, _, err = _run([*argv, "--overwrite"], capsys)
    assert rc == 0, err
    again = json.loads(path.read_text())
    assert "marker" not in again and again["accuracy"] == first["accuracy"]
    assert (out / "notes" / "a.txt").read_text() == "mine"


@pytest.mark.parametrize("command, existing, blocks", [
    ("evaluate", "evaluate_waterbirds_dfr.json", False),  # another head's file
    ("evaluate", "evaluate_waterbirds_lr.json", True),
    ("demo", "overlays.png", True),
    ("demo", "overlays/test_00001_x.png", True),
    ("demo", "other.png", False),
    ("localize", "localization.csv", True),
    ("localize", "per_layer.png", True),
    ("crops", "one_crops.png", True),
    ("crops", "two_crops.png", False),
])
def test_only_files_the_command_writes_block(command, existing, blocks, inputs, rec, tmp_path,
                                             capsys):
    out = tmp_path / "out"
    (out / existing).parent.mkdir(parents=True, exist_ok=True)
    (out / existing).write_text("earlier")
    rc, _, err = _run([*COMMANDS[command](inputs), "--out", str(out)], capsys)
    if blocks:
        assert rc == 2
        line = one_error_line(err, command)
        assert Path(existing).name in line and "--overwrite" in line
    else:
        assert rc == 0, err
    assert (out / existing).read_text() == "earlier"


def test_demo_no_plots_ignores_old_overlays(inputs, rec, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays.png").write_text("earlier")
    rc, _, err = _run([*COMMANDS["demo"](inputs), "--no-plots", "--out", str(out)], capsys)
    assert rc == 0, err
    assert (out / "overlays.png").read_text() == "earlier"
