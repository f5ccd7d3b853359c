"""``sk-a2 evaluate --report`` and ``sk-a2 localize --report``; the ``--cache`` keywords."""

import json
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import test_cli_options as options
import test_hardening_cli as hardening

from sk_a2.cli import main

inputs = options.inputs  # fixtures: replica datasets, and recorders instead of models
rec = options.rec
no_models = hardening.no_models
one_error_line = options.one_error_line
COMMANDS = hardening.COMMANDS


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# --------------------------------------------------------------------------- --cache keywords


@pytest.mark.parametrize("protocol", [(), ("--seeds", "2")])
@pytest.mark.parametrize("value", ["Memory", "MEMORY", " memory "])
def test_cache_memory_in_any_case(value, protocol, inputs, rec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run([*COMMANDS["evaluate"](inputs), "--cache", value, *protocol], capsys)
    assert rc == 0, err
    assert rec.kw("Protocol" if protocol else "AttentionCropper", "cache") == "memory"
    assert list(tmp_path.iterdir()) == []  # no folder of that name


@pytest.mark.parametrize("value", ["NONE", "None", " none "])
def test_cache_none_in_any_case(value, inputs, rec, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run([*COMMANDS["evaluate"](inputs), "--cache", value, "--seeds", "2"], capsys)
    assert rc == 0, err
    assert rec.calls("Protocol") and rec.kw("Protocol", "cache", "unset") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["evaluate", "evaluate --seeds", "localize"])
def test_cache_dot_slash_memory_is_a_folder(command, inputs, rec, tmp_path, monkeypatch, capsys):
    from sk_a2.cache import DiskCache, resolve_cache

    monkeypatch.chdir(tmp_path)
    argv = [*COMMANDS[command](inputs), "--cache", "./memory", "--out", str(tmp_path / "o")]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    value = rec.kw("Protocol" if "--seeds" in command else "AttentionCropper", "cache")
    assert value == "./memory"  # passed on unchanged: the library reads it as a folder too
    assert isinstance(resolve_cache(value), DiskCache)
    assert (tmp_path / "memory").is_dir()


@pytest.mark.parametrize("command", ["evaluate", "evaluate --seeds", "localize"])
@pytest.mark.parametrize("value", ["MEM", "memroy", "Memor"])
def test_cache_near_miss_refused_with_a_suggestion(value, command, inputs, rec, tmp_path,
                                                   monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [*COMMANDS[command](inputs), "--cache", value, "--out", str(tmp_path / "o")]
    rc, _, err = _run(argv, capsys)
    assert rc == 2, err
    line = one_error_line(err, command.split()[0])
    assert f"--cache {value!r}" in line and "did you mean 'memory'" in line
    assert f"'./{value}'" in line and "cache=" not in line
    assert not (tmp_path / value).exists()
    assert not rec.called("load") and not rec.called("AttentionCropper")
    assert not rec.called("Protocol")


def _foreign_stores(folder):
    """Two folders with an ``sk_a2-cache.sqlite3`` that no sk_a2 cache wrote."""
    other_bytes = folder / "bytes"
    other_bytes.mkdir(parents=True)
    (other_bytes / "sk_a2-cache.sqlite3").write_bytes(b"my notes, not a database\n" * 40)
    other_db = folder / "sqlite"
    other_db.mkdir()
    conn = sqlite3.connect(other_db / "sk_a2-cache.sqlite3")
    conn.execute("CREATE TABLE photos (name TEXT)")
    conn.execute("INSERT INTO photos VALUES ('a.jpg')")
    conn.commit()
    conn.close()
    return [other_bytes, other_db]


@pytest.mark.parametrize("command", ["evaluate", "evaluate --seeds", "localize"])
def test_cache_folder_with_a_foreign_database_refused_before_any_model(
        command, inputs, no_models, tmp_path, capsys):
    for folder in _foreign_stores(tmp_path / "caches"):
        store = folder / "sk_a2-cache.sqlite3"
        before = store.read_bytes()
        argv = [*COMMANDS[command](inputs), "--cache", str(folder), "--out", str(tmp_path / "o")]
        rc, _, err = _run(argv, capsys)
        assert rc == 2, err
        line = one_error_line(err, command.split()[0])
        assert line.startswith(f"sk-a2 {command.split()[0]}: error: --cache: {str(store)!r} "
                               "is not an sk_a2 cache database")
        assert line.endswith("pass another folder as --cache")
        assert store.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["sk_a2-cache.sqlite3"]


# --------------------------------------------------------------------------- --report


def _sections(text):
    return re.findall(r'<section id="([a-z]+)"', text)


def _assert_self_contained(text):
    links = re.findall(r'\b(?:src|href)="([^"]*)"', text)
    assert links and all(link.startswith(("data:", "#")) for link in links), links
    assert not re.search(r"https?://", " ".join(links))
    assert not re.search(r"<link|@import|url\(", text)


@pytest.fixture
def spy(monkeypatch):
    """``write_report``'s keyword arguments, call by call (the real function still runs)."""
    import sk_a2.report

    calls, real = [], sk_a2.report.write_report

    def write_report(path, **kwargs):
        calls.append({"path": Path(path), **kwargs})
        return real(path, **kwargs)

    monkeypatch.setattr(sk_a2.report, "write_report", write_report)
    return calls


@pytest.fixture(scope="module")
def tiny(inputs, tiny_vit_file, tiny_vit_file2):
    """The replica Waterbirds and two tiny models: attention and embedding."""
    return {"wb": inputs["wb"], "a": str(tiny_vit_file), "e": str(tiny_vit_file2)}


def _evaluate_real(tiny, out, *extra):
    return ["evaluate", "--dataset", "waterbirds", "--root", tiny["wb"],
            "--attention-model", "timm:test_vit", "--attention-weights", tiny["a"],
            "--embedding-model", "timm:test_vit", "--embedding-weights", tiny["e"],
            "--crop-sizes", "32,16", "--image-size", "64", "--device", "cpu",
            "--out", str(out), *extra]


def _counted_runs(tiny, tmp_path, capsys, *extra):
    """The run without and with ``--report``: images through each model, and the report's
    path. The memory cache is emptied before each run, so both start alike."""
    from repro_layouts import count_forwards

    from sk_a2.cache import memory_cache

    counts = []
    for name, report in (("plain", ()), ("report", ("--report",))):
        memory_cache().clear()
        with count_forwards([tiny["a"], tiny["e"]], 64) as forwards:
            rc, _, err = _run(_evaluate_real(tiny, tmp_path / name, *extra, *report), capsys)
            assert rc == 0, err
        counts.append((sum(forwards[tiny["a"]]), sum(forwards[tiny["e"]])))
    assert not (tmp_path / "plain" / "report.html").exists()
    return counts, tmp_path / "report" / "report.html"


def _test_images(tiny):
    from sk_a2.datasets import load_waterbirds

    data = load_waterbirds(tiny["wb"])
    test = data.split == "test"
    return [str(p) for p in data.images[test]], data.target[test], data.groups[test]


def _oracle_cropper(tiny, **params):
    from sk_a2 import AttentionCropper

    return AttentionCropper("timm:test_vit", weights=tiny["a"], image_size=64,
                            crop_sizes=(32, 16), device="cpu", **params).fit()


def test_evaluate_report_runs_no_model_again(tiny, spy, tmp_path, capsys):
    import json

    counts, path = _counted_runs(tiny, tmp_path, capsys)
    assert counts[0] == (24, 48)  # 16 train and 8 test images; 2 crops each
    assert counts[1] == counts[0]
    text = path.read_text()
    assert _sections(text) == ["run", "headline", "groups", "confusion", "failures"]
    _assert_self_contained(text)
    (kw,) = spy
    images, y, groups = _test_images(tiny)
    cropper = _oracle_cropper(tiny)
    np.testing.assert_allclose(kw["attention_maps"], cropper.attention_maps(images))
    np.testing.assert_array_equal(kw["crops"].boxes, cropper.transform(images).boxes)
    assert [str(p) for p in kw["crops"].images] == images
    np.testing.assert_array_equal(kw["y_true"], y)
    np.testing.assert_array_equal(kw["groups"], groups)
    result = json.loads((tmp_path / "report" / "evaluate_waterbirds_lr.json").read_text())
    assert np.mean(kw["y_pred"] == y) == pytest.approx(result["accuracy"])
    np.testing.assert_array_equal(kw["classes"][kw["proba"].argmax(1)], kw["y_pred"])
    assert kw["metadata"]["attention model"] == f"timm:test_vit ({tiny['a']})"
    assert kw["metadata"]["crop sizes"] == [32, 16]
    assert set(kw["split_groups"]) == {"train", "val"}
    assert f'{len(images)} test images' in text


def test_evaluate_protocol_report_reads_the_maps_back(tiny, spy, tmp_path, capsys):
    """--seeds 2 with DFR: the attention maps come back from the run's memory cache."""
    counts, path = _counted_runs(tiny, tmp_path, capsys, "--seeds", "2", "--head", "dfr")
    assert counts[0][0] == 32 and counts[1] == counts[0]  # every image once
    text = path.read_text()
    assert _sections(text) == ["run", "headline", "groups", "confusion", "failures"]
    _assert_self_contained(text)
    assert "over 2 seeds" in text
    (kw,) = spy
    images, y, groups = _test_images(tiny)
    cropper = _oracle_cropper(tiny)
    np.testing.assert_allclose(kw["attention_maps"], cropper.attention_maps(images))
    np.testing.assert_array_equal(kw["crops"].boxes, cropper.transform(images).boxes)
    assert [row["worst_group_accuracy"] for row in kw["per_seed"]] == [
        row["worst_group_accuracy"] for row in json.loads(
            (path.parent / "evaluate_waterbirds_dfr.json").read_text())["rows"][0]["per_seed"]]
    assert kw["metadata"]["seed shown"] == 1 and kw["metadata"]["seeds"] == [0, 1]
    np.testing.assert_array_equal(kw["classes"][kw["proba"].argmax(1)], kw["y_pred"])
    assert "attention maps" not in kw["metadata"]


def test_evaluate_protocol_report_without_cache_shows_boxes_only(tiny, spy, tmp_path, capsys):
    counts, path = _counted_runs(tiny, tmp_path, capsys, "--seeds", "2", "--cache", "none")
    assert counts[1] == counts[0]
    (kw,) = spy
    images, _, _ = _test_images(tiny)
    assert kw["attention_maps"] is None
    np.testing.assert_array_equal(kw["crops"].boxes, _oracle_cropper(tiny).transform(images).boxes)
    assert kw["metadata"]["attention maps"].startswith("not shown: with --cache none")
    text = path.read_text()
    assert "not shown: with --cache none" in text
    assert text.count('class="case ') > 0


@pytest.mark.filterwarnings("ignore::sk_a2.boxes.CropOverlapWarning")  # tiny frames
def test_evaluate_report_of_tune_and_compare(tiny, spy, tmp_path, capsys):
    argv = _evaluate_real(tiny, tmp_path / "o", "--tune", "--compare", "--center-crop-size", "32",
                          "--report")
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    text = (tmp_path / "o" / "report.html").read_text()
    assert _sections(text) == ["run", "headline", "groups", "confusion", "failures", "tuning",
                               "compare"]
    _assert_self_contained(text)
    (kw,) = spy
    result = json.loads((tmp_path / "o" / "evaluate_waterbirds_lr.json").read_text())
    assert [r["label"] for r in kw["compare"]] == [r["label"] for r in result["rows"]]
    shown = next(r for r in result["rows"] if r["key"] == "a2_lr")
    assert kw["metadata"]["row shown"] == shown["label"]
    assert kw["metadata"]["layer"] == shown["layer"] and kw["metadata"]["n crops"] == \
        shown["n_crops"]
    assert kw["tuning"].to_dict()["best_params"] == result["tuning"]["best_params"]
    assert "Chosen on the validation split" in text
    assert kw["attention_maps"] is not None


def test_evaluate_zero_shot_report(tiny, spy, tmp_path, capsys):
    """Zero-shot CLIP: probabilities and predictions from one pass of the CLIP model."""
    from conftest import make_clip
    from safetensors.torch import save_file

    from sk_a2.models import load_model

    clip_file = tmp_path / "clip.safetensors"
    save_file(make_clip(seed=3).state_dict(), str(clip_file))
    vm = load_model("open_clip:SkA2-Tiny:", weights=clip_file, image_size=64, device="cpu")
    seen = []
    hook = vm.module.visual.conv1.register_forward_hook(
        lambda mod, args, out: seen.append(int(args[0].shape[0])))
    argv = _evaluate_real(tiny, tmp_path / "o", "--head", "zs", "--report",
                          "--classnames", "land bird", "water bird")
    i = argv.index("--embedding-model")
    argv[i + 1:i + 4] = ["open_clip:SkA2-Tiny:", "--embedding-weights", str(clip_file)]
    try:
        rc, _, err = _run(argv, capsys)
    finally:
        hook.remove()
    assert rc == 0, err
    assert sum(seen) == 8 * 2  # the 8 test images' 2 crops, once
    (kw,) = spy
    np.testing.assert_array_equal(kw["classes"][kw["proba"].argmax(1)], kw["y_pred"])
    np.testing.assert_allclose(kw["proba"].sum(1), 1.0)
    assert kw["attention_maps"].shape[0] == 8 and len(kw["crops"]) == 8
    assert "failures" in _sections((tmp_path / "o" / "report.html").read_text())


def test_localize_report_in_the_default_out(tiny, spy, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["localize", "--models", "timm:test_vit", "--weights", tiny["a"], "--image-size", "64",
            "--n-images", "6", "--layers", "last", "--device", "cpu", "--report"]
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    path = tmp_path / "sk_a2_localize" / "report.html"
    text = path.read_text()
    assert _sections(text) == ["run", "localization"]
    _assert_self_contained(text)
    (kw,) = spy
    summary = json.loads((path.parent / "summary.json").read_text())
    assert kw["metadata"]["clipped boxes"] == summary["n_clipped_boxes"] == 0
    assert kw["metadata"]["images"] == 6
    table = kw["localization"][0]
    assert len(table["mass_in_box"]) == 6  # one block, six images


@pytest.mark.parametrize("command", ["evaluate", "evaluate --seeds"])
def test_report_needs_out(command, inputs, rec, capsys):
    rc, _, err = _run([*COMMANDS[command](inputs), "--report"], capsys)
    assert rc == 2
    line = one_error_line(err, "evaluate")
    assert "--report needs --out DIR" in line and "report.html" in line
    assert not rec.called("load") and not rec.called("Protocol")


@pytest.mark.parametrize("command", ["evaluate", "evaluate --seeds", "localize"])
def test_report_file_rules(command, inputs, rec, tmp_path, capsys):
    """An earlier report is replaced only with --overwrite; a report.html that sk-a2 did not
    write never is, and both are refused before any work."""
    out = tmp_path / "out"
    out.mkdir()
    argv = [*COMMANDS[command](inputs), "--out", str(out), "--report"]
    target = out / "report.html"
    target.write_text("<!DOCTYPE html>\n<!-- sk-a2 evaluation report -->\nearlier")
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    line = one_error_line(err, command.split()[0])
    assert "report.html" in line and "--overwrite" in line
    assert target.read_text().endswith("earlier")
    options.assert_no_work(rec)
    target.write_text("my own page")
    rc, _, err = _run([*argv, "--overwrite"], capsys)
    assert rc == 2
    line = one_error_line(err, command.split()[0])
    assert "report.html, which sk-a2 did not write" in line
    assert target.read_text() == "my own page"
    options.assert_no_work(rec)


def test_earlier_report_replaced_with_overwrite(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["evaluate", "--dataset", "waterbirds", "--root", tiny["wb"], "--cropper", "none",
            "--embedding-model", "timm:test_vit", "--embedding-weights", tiny["e"],
            "--image-size", "64", "--device", "cpu", "--out", str(out), "--report"]
    assert _run(argv, capsys)[0] == 0
    target = out / "report.html"
    first = target.read_text()
    assert "failures" in _sections(first) and "attention maps" not in first
    target.write_text(first.replace("<main>", "<main>earlier run"))
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "--overwrite" in one_error_line(err, "evaluate")
    assert "earlier run" in target.read_text()
    rc, _, err = _run([*argv, "--overwrite"], capsys)
    assert rc == 0, err
    assert "earlier run" not in target.read_text()
    assert _sections(target.read_text()) == _sections(first)
