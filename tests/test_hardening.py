"""Hostile inputs: every one gets a clear error naming the problem (or a documented conversion).

Images (decompression bombs, integer arrays) and weights files (pickled lists, empty or text
safetensors, folders, devices, unreadable files), each built here.
"""

import builtins
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from conftest import random_images

import sk_a2.weights
from sk_a2 import AttentionCropper
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
