"""Tiny random-weight ViTs built through timm's and open_clip's own constructors.

Nothing here downloads: weights are random, saved to files and loaded back through the public
``weights=`` path, so the real loading code runs.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

torch.set_num_threads(min(2, torch.get_num_threads()))



@pytest.fixture(autouse=True)
def _cpu_without_native_bf16(monkeypatch):
    """Every test sees a CPU without native bf16, so ``precision="auto"`` is float32 and float32
    oracles hold on any CI machine; tests of the bf16 paths patch ``native_bf16`` back to True."""
    import sk_a2.precision

    monkeypatch.setattr(sk_a2.precision, "native_bf16", lambda: False)


TINY_CLIP = "SkA2-Tiny"
open_clip.factory._MODEL_CONFIGS.setdefault(
    TINY_CLIP,
    {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16,
                       "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1},
    },
)


def make_timm(name="test_vit", img_size=64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, img_size=img_size, **kwargs)


def make_reg_vit(img_size=56, seed=0):
    """DINOv2 with 4 registers, shrunk."""
    return make_timm("vit_small_patch14_reg4_dinov2", img_size, seed, embed_dim=48, depth=2,
                     num_heads=3)


def make_dinov3(img_size=64, seed=0):
    """DINOv3 (timm Eva: rotary embeddings, registers), shrunk."""
    return make_timm("vit_small_patch16_dinov3", img_size, seed, embed_dim=48, depth=2,
                     num_heads=3)


def make_clip(seed=0):
    torch.manual_seed(seed)
    return open_clip.create_model(TINY_CLIP, pretrained=None).eval()


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def tiny_vit_file(weights_dir):
    """Random weights of timm's ``test_vit`` at its native 160 px, as safetensors."""
    path = weights_dir / "test_vit.safetensors"
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_vit_file2(weights_dir):
    """Another random ``test_vit`` (a different 'embedding model')."""
    path = weights_dir / "test_vit_b.safetensors"
    torch.manual_seed(1)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    save_file(model.state_dict(), str(path))
    return path


def random_images(n, h=48, w=40, seed=0):
    return np.random.RandomState(seed).randint(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def blob_images(n, size=64, seed=0):
    """Images whose class is the colour of a small square at a random position."""
    rng = np.random.RandomState(seed)
    X = rng.randint(90, 120, size=(n, size, size, 3)).astype(np.uint8)
    y = rng.randint(0, 2, size=n)
    for i in range(n):
        s = rng.randint(size // 5, size // 3)
        x0, y0 = rng.randint(0, size - s, size=2)
        X[i, y0:y0 + s, x0:x0 + s] = (230, 40, 40) if y[i] else (40, 40, 230)
    return X, y
