"""Hostile inputs: every one gets a clear error naming the problem (or a documented conversion).

Images (decompression bombs, integer arrays) and weights files (pickled lists, empty or text
safetensors, folders, devices, unreadable files), each built here.
"""

import builtins
import os
import pickle
import re
import sqlite3
import struct
import tempfile
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_images
from safetensors.torch import load_file, save_file
from sklearn.pipeline import Pipeline

import sk_a2._base
import sk_a2.cache
import sk_a2.cropper
import sk_a2.weights
from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.backends import get_backend
from sk_a2.cache import STORE_NAME, DiskCache, file_digest
from sk_a2.images import load_rgb
from sk_a2.models import load_model
from sk_a2.weights import check_weights_file

# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _png_header_only(path, width, height):
    """A PNG whose header declares ``width × height`` RGB pixels (no pixel data needed)."""

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * min(width, 16))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture
def cropper(tiny_vit_file):
    return AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                            crop_sizes=(32,), device="cpu")


def test_decompression_bomb_names_index_path_and_limit(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ValueError) as info:
        load_rgb(bomb, index=2)
    message = str(info.value)
    assert message.startswith("X[2]: ") and str(bomb) in message
    assert "decompression bomb" in message and "PIL.Image.MAX_IMAGE_PIXELS" in message


def test_decompression_bomb_in_transform_names_its_position(cropper, tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 20000, 20000)
    good = random_images(2, 64, 64)
    cropper.fit(good)
    with pytest.raises(ValueError, match=r"X\[1\]: image file .*bomb\.png.* decompression bomb"):
        cropper.transform([good[0], bomb])


@pytest.mark.parametrize(
    "dtype, hint",
    [(np.int32, "img.astype(np.uint8) when every value"), (np.int64, "every value lies in 0-255"),
     (np.bool_, "img.astype(np.uint8) * 255"), (np.float32, "(img * 255)")],
)
def test_array_dtype_errors_give_a_fitting_hint(dtype, hint):
    arr = np.zeros((4, 4, 3), dtype=dtype)
    with pytest.raises(ValueError, match=re.escape(hint)) as info:
        load_rgb(arr, index=0)
    if dtype != np.float32:
        assert "float" not in str(info.value)


# --------------------------------------------------------------------------------------------
# Weights files
# --------------------------------------------------------------------------------------------


def _torch_list(path):
    torch.save([1, 2, 3], path)


def _torch_nested_list(path):
    torch.save({"state_dict": [1, 2, 3]}, path)


def _torch_not_tensors(path):
    torch.save({"a": 1, "b": "x"}, path)


def _empty(path):
    path.write_bytes(b"")


def _text(path):
    path.write_text("these are not weights\n")


def _truncated_safetensors(path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(path))
    path.write_bytes(path.read_bytes()[:40])


def _no_tensors_safetensors(path):
    from safetensors.torch import save_file

    save_file({}, str(path))


def _random_pickle_bytes(path):
    path.write_bytes(np.random.RandomState(0).bytes(256))


@pytest.mark.parametrize(
    "name, write, expected",
    [
        ("list.pth", _torch_list, "holds a list that is not a state dict"),
        ("nested.pt", _torch_nested_list, "holds a dict that is not a state dict"),
        ("values.bin", _torch_not_tensors, "holds a dict that is not a state dict"),
        ("empty.safetensors", _empty, "is empty"),
        ("empty.pth", _empty, "is empty"),
        ("text.safetensors", _text, "is not a valid safetensors file"),
        ("text.pth", _text, "cannot be read as a torch checkpoint"),
        ("random.bin", _random_pickle_bytes, "cannot be read as a torch checkpoint"),
        ("cut.safetensors", _truncated_safetensors, "is not a valid safetensors file"),
        ("none.safetensors", _no_tensors_safetensors, "holds no tensors"),
    ],
)
def test_malformed_weights_files_are_named(tmp_path, name, write, expected):
    path = tmp_path / name
    write(path)
    for call in (lambda: check_weights_file(path),
                 lambda: load_model("timm:test_vit", weights=path, image_size=64, device="cpu"),
                 lambda: AttentionCropper("timm:test_vit", weights=path, image_size=64,
                                          device="cpu").fit(random_images(1))):
        with pytest.raises(ValueError, match=expected) as info:
            call()
        assert str(path) in str(info.value) and "Traceback" not in str(info.value)


def test_weights_folder_device_and_unreadable_file(tmp_path, tiny_vit_file, monkeypatch):
    folder = tmp_path / "weights.safetensors"
    folder.mkdir()
    with pytest.raises(ValueError, match="is a folder"):
        check_weights_file(folder)
    with pytest.raises(ValueError, match="not a regular file"):
        check_weights_file(os.devnull)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_weights_file(tmp_path / "missing.pth")
    locked = tmp_path / "locked.safetensors"
    locked.write_bytes(tiny_vit_file.read_bytes())
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # running as root: permissions are not enforced, deny here

        def deny(file, *args, **kwargs):
            if os.fspath(file) == str(locked):
                raise PermissionError(13, "Permission denied", str(file))
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(sk_a2.weights, "open", deny, raising=False)
    with pytest.raises(ValueError, match="cannot be read .*Permission denied") as info:
        check_weights_file(locked)
    assert "No such file" not in str(info.value) and str(locked) in str(info.value)


def test_valid_weights_files_pass_the_check(tmp_path, tiny_vit_file):
    assert check_weights_file(tiny_vit_file) == tiny_vit_file.resolve()
    from safetensors.torch import load_file

    state = load_file(str(tiny_vit_file))
    for i, wrap in enumerate([lambda s: s, lambda s: {"state_dict": s, "epoch": 3}]):
        path = tmp_path / f"ok{i}.pth"
        torch.save(wrap(state), path)
        assert check_weights_file(path) == path.resolve()


# --------------------------------------------------------------------------------------------
# Weights fingerprint
# --------------------------------------------------------------------------------------------


def test_pickled_pipeline_refuses_a_replaced_weights_file(tmp_path, tiny_vit_file, tiny_vit_file2):
    path = tmp_path / "attention.safetensors"
    path.write_bytes(tiny_vit_file.read_bytes())
    emb_path = tmp_path / "embedding.safetensors"
    emb_path.write_bytes(tiny_vit_file2.read_bytes())
    pipe = Pipeline([
        ("crop", AttentionCropper("timm:test_vit", weights=path, image_size=64, crop_sizes=(32,),
                                  device="cpu")),
        ("emb", CropEmbedder("timm:test_vit", weights=emb_path, image_size=64, device="cpu")),
    ])
    X = random_images(2, 64, 64)
    expected = pipe.fit_transform(X)
    assert pipe["crop"].weights_digest_ == file_digest(path)
    blob = pickle.dumps(pipe)
    np.testing.assert_array_equal(pickle.loads(blob).transform(X), expected)  # unchanged file

    path.write_bytes(tiny_vit_file2.read_bytes())  # other weights, same name
    loaded = pickle.loads(blob)
    with pytest.raises(ValueError, match="has changed since AttentionCropper was fitted") as info:
        loaded.transform(X)
    assert str(path) in str(info.value)
    # Refitting takes the new file as the reference.
    assert not np.array_equal(loaded.fit_transform(X), expected)
    assert loaded["crop"].weights_digest_ == file_digest(path)


# --------------------------------------------------------------------------------------------
# Cache location: checked in fit and before the first forward pass
# --------------------------------------------------------------------------------------------


def _no_model_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded or run")

    monkeypatch.setattr(sk_a2._base, "load_model", fail)
    monkeypatch.setattr("sk_a2.attention.layer_cls_attention", fail)


def _read_only(folder, monkeypatch):
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):  # running as root: permissions are not enforced, deny here
        real = tempfile.mkstemp

        def deny(*args, dir=None, **kwargs):
            if Path(dir) == folder:
                raise PermissionError(13, "Permission denied", str(dir))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", deny)


@pytest.mark.parametrize("kind", ["file", "read-only", "empty", "blank", "under-a-file"])
def test_bad_cache_location_fails_in_fit(tmp_path, tiny_vit_file, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "cache"
    if kind == "file":
        target.write_text("not a folder")
    elif kind == "read-only":
        target.mkdir()
        _read_only(target, monkeypatch)
    elif kind == "under-a-file":
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "cache"
    cache = {"empty": "", "blank": "  "}.get(kind, str(target))
    expected = {"file": "is a file, not a folder", "read-only": "cannot be written",
                "under-a-file": "cannot be written", "empty": "names no folder",
                "blank": "names no folder"}[kind]
    _no_model_work(monkeypatch)
    before = sorted(os.listdir(tmp_path))
    for est in (AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                                 device="cpu", cache=cache),
                CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu",
                             cache=cache)):
        with pytest.raises(ValueError, match=expected):
            est.fit(random_images(1))
    assert sorted(os.listdir(tmp_path)) == before  # nothing written into the working folder
    if kind == "read-only":
        target.chmod(0o700)


def test_cache_made_read_only_after_fit_fails_before_the_forward_pass(tmp_path, tiny_vit_file,
                                                                      monkeypatch):
    target = tmp_path / "cache"
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                               device="cpu", cache=target).fit(random_images(1))
    _read_only(target, monkeypatch)
    _no_model_work(monkeypatch)
    try:
        with pytest.raises(ValueError, match="cannot be written"):
            cropper.transform(random_images(2))
    finally:
        target.chmod(0o700)


# --------------------------------------------------------------------------------------------
# With a cache, errors name the right image; a malformed entry is a corrupt entry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_cached_images_do_not_shift_error_positions(tmp_path, tiny_vit_file, cache):
    cache = tmp_path / "c" if cache == "disk" else cache
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                               crop_sizes=(32,), device="cpu", cache=cache)
    embedder = CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu",
                            cache=cache)
    a, b = random_images(2, 64, 64, seed=11)
    cropper.fit([a, b]).transform([a, b])
    embedder.fit([a, b]).transform([a, b])
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    X = [a, b, text]
    for est in (cropper, embedder):
        with pytest.raises(ValueError, match=r"^X\[2\]: cannot read image file .*text\.jpg"):
            est.transform(X)
    cropset = cropper.transform([a, b])
    with pytest.raises(ValueError, match=r"^X\[1\]: cannot read image file"):
        cropper.transform([a, text, b])
    assert X[2] == text and X[0] is a and len(X) == 3  # the user's list is untouched
    assert len(cropset) == 2


def test_malformed_entries_in_the_store_are_recomputed(tmp_path, tiny_vit_file):
    folder = tmp_path / "cache"
    X = random_images(2, 64, 64, seed=5)
    make = lambda: CropEmbedder("timm:test_vit", weights=tiny_vit_file,  # noqa: E731
                                image_size=64, device="cpu", cache=folder)
    expected = make().fit(X).transform(X)
    with closing(sqlite3.connect(folder / STORE_NAME)) as db, db:
        keys = [k for (k,) in db.execute("SELECT key FROM sk_a2_entries ORDER BY key")]
        assert len(keys) == 2
        db.execute("UPDATE sk_a2_entries SET dtype = 'O' WHERE key = ?", keys[:1])  # no array
        db.execute("UPDATE sk_a2_entries SET shape = '-1' WHERE key = ?", keys[1:])
    with pytest.warns(sk_a2.cache.CacheWarning, match="deleted from it and are recomputed"):
        np.testing.assert_array_equal(make().fit(X).transform(X), expected)
    assert len(DiskCache(folder)) == 2  # both entries written again
    np.testing.assert_array_equal(make().fit(X).transform(X), expected)


def test_disk_cache_get_of_a_malformed_row_is_a_miss(tmp_path):
    cache = DiskCache(tmp_path)
    key = "ab" + "0" * 38
    cache.put(key, np.arange(3, dtype=np.float32))
    with closing(sqlite3.connect(tmp_path / STORE_NAME)) as db, db:
        db.execute("UPDATE sk_a2_entries SET dtype = 'not a dtype', data = x'00'")
    with pytest.warns(sk_a2.cache.CacheWarning):
        assert cache.get(key) is None
    cache.put(key, np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(cache.get(key), [0, 1, 2])


# --------------------------------------------------------------------------------------------
# Non-finite model outputs
# --------------------------------------------------------------------------------------------


def _poisoned(tmp_path, source, keys):
    state = load_file(str(source))
    for key in keys:
        state[key] = torch.full_like(state[key], float("nan"))
    path = tmp_path / "nan.safetensors"
    save_file(state, str(path))
    return path


def test_nan_weights_give_an_error_naming_images_and_model(tmp_path, tiny_vit_file):
    path = _poisoned(tmp_path, tiny_vit_file, ["blocks.0.attn.qkv.weight"])
    X = random_images(3, 64, 64)
    before = X.copy()
    cropper = AttentionCropper("timm:test_vit", weights=path, image_size=64, crop_sizes=(32,),
                               device="cpu").fit(X)
    with pytest.raises(ValueError, match="non-finite") as info:
        cropper.transform(X)
    message = str(info.value)
    assert "'timm:test_vit'" in message and "attention maps" in message
    assert "X[0], X[1], X[2]" in message
    with pytest.raises(ValueError, match=r"non-finite \(NaN or inf\) attention maps for X\[0\]"):
        cropper.attention_maps(X[:1])
    np.testing.assert_array_equal(X, before)


def test_nan_embeddings_are_an_error_and_never_cached(tmp_path, tiny_vit_file):
    path = _poisoned(tmp_path, tiny_vit_file, ["norm.weight"])
    X = random_images(2, 64, 64, seed=9)
    cache = tmp_path / "cache"
    healthy = CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu",
                           cache=cache)
    assert np.isfinite(healthy.fit(X[:1]).transform(X[:1])).all()
    sick = CropEmbedder("timm:test_vit", weights=path, image_size=64, device="cpu", cache=cache)
    sick.fit(X)
    for _ in range(2):  # a rerun recomputes: no NaN entry was stored
        with pytest.raises(ValueError, match=r"'timm:test_vit' gave non-finite \(NaN or inf\) "
                                             r"embeddings for X\[0\], X\[1\]:"):
            sick.transform(X)
    assert len(DiskCache(cache)) == 1  # the healthy entry only


# --------------------------------------------------------------------------------------------
# image_size against the model: checked before any work
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image_size, expected",
    [(65, "must be a multiple of the patch size, e.g. 64 or 80"),
     (8, "at least one patch, use >= 16"), (12, "at least one patch"),
     (10000, "at most 2048 .128 patches per side.*fourth power")],
)
def test_image_size_is_checked_against_the_patch_size(tiny_vit_file, image_size, expected,
                                                      monkeypatch):
    def no_build(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(type(get_backend("timm")), "load", no_build)
    for est in (AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=image_size,
                                 crop_sizes=(8,), device="cpu"),
                CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=image_size,
                             device="cpu")):
        with pytest.raises(ValueError, match=expected) as info:
            est.fit(random_images(1))
        message = str(info.value)
        assert f"image_size={image_size}" in message and "'timm:test_vit'" in message
        assert "weights" not in message


def test_image_size_of_a_module_and_of_open_clip(tiny_vit_file):
    from conftest import make_clip, make_timm

    vit = make_timm("test_vit", img_size=64)
    with pytest.raises(ValueError, match=r"image_size=72 .*patch size 16.*e\.g\. 64 or 80"):
        AttentionCropper(vit, image_size=72, device="cpu").fit(random_images(1))
    assert vit.patch_embed.img_size == (64, 64)  # the module passed in is untouched
    with pytest.raises(ValueError, match=r"image_size=16 for model 'open_clip:ViT-B-32:' "
                                         r"\(patch size 32\): the input must hold"):
        load_model("open_clip:ViT-B-32:", weights=tiny_vit_file, image_size=16, device="cpu")
    with pytest.raises(ValueError, match="patch size 16"):
        CropEmbedder(make_clip(), image_size=40, device="cpu").fit(random_images(1))


def test_largest_image_size_still_builds(tiny_vit_file):
    """The limit itself is accepted: the check is not off by one."""
    from sk_a2.input_size import MAX_GRID, check_input_size

    assert check_input_size(MAX_GRID * 16, 16, "m") == 2048
    assert check_input_size(16, 16, "m") == 16
    vm = load_model("timm:test_vit", weights=tiny_vit_file, image_size=16, device="cpu")
    assert vm.grid_size == (1, 1)


# --------------------------------------------------------------------------------------------
# The command line: every hostile case it can reach is one line ``sk-a2 ...: error: ...``, exit 2
# --------------------------------------------------------------------------------------------

WB_HEADER = ["img_id", "img_filename", "y", "split", "place", "place_filename"]


def _waterbirds(tmp_path, bad=None):
    """A 4-image Waterbirds folder; ``bad`` = (column, value) written into the last row."""
    from PIL import Image

    root = tmp_path / "wb"
    (root / "b").mkdir(parents=True)
    rows = []
    for i in range(4):
        Image.fromarray(random_images(1, 32, 32, seed=i)[0]).save(root / "b" / f"{i}.png")
        rows.append([i + 1, f"b/{i}.png", i % 2, i % 3, (i // 2) % 2, "/p.jpg"])
    if bad is not None:
        rows[-1][WB_HEADER.index(bad[0])] = bad[1]
    text = "\n".join(",".join(map(str, row)) for row in [WB_HEADER, *rows]) + "\n"
    (root / "metadata.csv").write_text(text)
    return root


def _evaluate(root, tmp_path, weights, *extra):
    return ["evaluate", "--dataset", "waterbirds", "--root", str(root), "--attention-model",
            "timm:test_vit", "--attention-weights", str(weights), "--embedding-model",
            "timm:test_vit", "--embedding-weights", str(weights), "--image-size", "64",
            "--crop-sizes", "32", "--device", "cpu", *extra]


def _crops(image, tmp_path, weights, *extra):
    return ["crops", str(image), "--model", "timm:test_vit", "--weights", str(weights),
            "--image-size", "64", "--crop-sizes", "32", "--device", "cpu",
            "--out", str(tmp_path / "out"), *extra]


def _png(tmp_path):
    from PIL import Image

    path = tmp_path / "ok.png"
    Image.fromarray(random_images(1, 40, 48)[0]).save(path)
    return path


def _bad_weights(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    return path


CLI_CASES = {
    # dataset metadata
    "label 1.7": (lambda t, w: _evaluate(_waterbirds(t, ("y", "1.7")), t, w), "'1.7'"),
    "label -0.9": (lambda t, w: _evaluate(_waterbirds(t, ("y", "-0.9")), t, w), "'-0.9'"),
    "label inf": (lambda t, w: _evaluate(_waterbirds(t, ("y", "inf")), t, w), "'inf'"),
    "path ../../etc/passwd": (
        lambda t, w: _evaluate(_waterbirds(t, ("img_filename", "../../etc/passwd")), t, w),
        "does not name a file inside the dataset folder"),
    "absolute path": (lambda t, w: _evaluate(_waterbirds(t, ("img_filename", "/etc/passwd")), t,
                                             w), "is an absolute path"),
    "blank img_filename": (lambda t, w: _evaluate(_waterbirds(t, ("img_filename", "")), t, w),
                           "column 'img_filename' is empty"),
    "non-UTF-8 metadata": (
        lambda t, w: _evaluate(_latin1(_waterbirds(t)), t, w), "metadata.csv' is not UTF-8"),
    "--out is a file": (  # checked first: the bad label behind it is never reached
        lambda t, w: _evaluate(_waterbirds(t, ("y", "1.7")), t, w, "--out", str(_png(t))),
        "is an existing file, not a folder"),
    # images
    "decompression bomb": (
        lambda t, w: _crops(_png_header_only(t / "bomb.png", 20000, 20000), t, w),
        "decompression bomb"),
    # image_size against the model
    "image size 65": (lambda t, w: _crops(_png(t), t, w)[:-6] + ["--image-size", "65", "--out",
                                                                 str(t / "o")],
                      "multiple of the patch size"),
    "image size 10000": (lambda t, w: _crops(_png(t), t, w)[:-6] + ["--image-size", "10000",
                                                                    "--out", str(t / "o")],
                         "at most 2048"),
    # weights files
    "weights list": (lambda t, w: _crops(_png(t), t, _bad_weights(t, "l.pth", _torch_list)),
                     "holds a list that is not a state dict"),
    "weights empty safetensors": (lambda t, w: _crops(_png(t), t, _bad_weights(
        t, "e.safetensors", _empty)), "is empty"),
    "weights text safetensors": (lambda t, w: _crops(_png(t), t, _bad_weights(
        t, "x.safetensors", _text)), "not a valid safetensors file"),
    "weights folder": (lambda t, w: _crops(_png(t), t, _bad_weights(
        t, "d.safetensors", Path.mkdir)), "is a folder"),
    "weights /dev/null": (lambda t, w: _crops(_png(t), t, os.devnull), "not a regular file"),
    # devices
    "device meta": (lambda t, w: _crops(_png(t), t, w, "--device", "meta"), "meta"),
    "device mps": (lambda t, w: _crops(_png(t), t, w, "--device", "mps"), "mps"),
    # model outputs
    "NaN weights": (lambda t, w: _crops(_png(t), t, _poisoned(t, w, ["blocks.0.attn.qkv.weight"])),
                    "non-finite"),
}


def _latin1(root):
    path = root / "metadata.csv"
    path.write_bytes(path.read_bytes().replace(b"/p.jpg", b"/pl\xe4ce.jpg"))
    return root


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_turns_hostile_input_into_one_error_line(case, tmp_path, tiny_vit_file, capsys):
    from sk_a2.cli import main

    pytest.importorskip("matplotlib")
    build, needle = CLI_CASES[case]
    argv = build(tmp_path, tiny_vit_file)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.match(r"sk-a2( \w+)?: error: ", lines[0]), lines[0]
    assert needle in lines[0] and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_nan_embeddings_of_crops_cut_from_the_originals(tmp_path, tiny_vit_file):
    path = _poisoned(tmp_path, tiny_vit_file, ["norm.weight"])
    X = random_images(2, 64, 64, seed=3)
    crops = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                             crop_sizes=(32,), device="cpu").fit_transform(X)
    for source in ("resized", "original"):
        sick = CropEmbedder("timm:test_vit", weights=path, image_size=64, device="cpu",
                            crop_source=source).fit(crops)
        with pytest.raises(ValueError, match=r"non-finite .* embeddings for X\[0\], X\[1\]"):
            sick.transform(crops)
