"""Compute the values ``tests/test_bit_identical.py`` compares, and store them as a fixture.

The fixture ``tests/data/baseline_fixture.npz`` holds attention maps (several blocks and every
head aggregation), the boxes and scores of :class:`~sk_a2.AttentionCropper`, crop embeddings of
:class:`~sk_a2.CropEmbedder` and the numeric columns of :func:`sk_a2.localization.localization_report`
rows, all from tiny random-weight timm ViTs (seeds fixed, float32, CPU) on a few images of the
embedded synthetic benchmark. It was computed by the code before the attention maps moved to one
module; run this script from a checkout of that code to recompute it::

    cd <checkout> && PYTHONPATH=$PWD python <this repo>/tests/make_baseline_fixture.py out.npz

Only public API is used, so the same script runs against the current code
(:func:`compute` is what the test calls).
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import timm
import torch
from safetensors.torch import save_file

#: Blocks whose maps are stored, as the cropper's ``layer`` parameter takes them.
LAYERS = (-1, -2, 0)
#: Blocks of the localization report, in the order they are asked for.
REPORT_LAYERS = (-2, -1, 0)
#: Numeric columns of the report rows (the ``layer`` label is compared by position instead).
REPORT_COLUMNS = ("image", "n_params", "mass_in_box", "hit", "entropy", "top10_mass",
                  "top25_mass", "cls_share", "register_share", "patch_share")
AGGREGATIONS = ("mean", "max", "entropy_weighted", "lowest_entropy_mean", "topk_mean",
                "head_pruned")


def _save_model(path, name, seed, **kwargs):
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    save_file(model.state_dict(), str(path))
    return str(path)


def _models(folder):
    """Cropper / embedder keyword arguments of the tiny models: two timm ``test_vit`` (files,
    64 px) and a DINOv2 with registers (a module, 56 px)."""
    vit = _save_model(os.path.join(folder, "vit.safetensors"), "test_vit", 0)
    vit2 = _save_model(os.path.join(folder, "vit2.safetensors"), "test_vit", 1)
    torch.manual_seed(0)  # a shrunk DINOv2 with 4 registers, passed as a module
    reg = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0,
                            img_size=56, embed_dim=48, depth=2, num_heads=3).eval()
    return {
        "vit": dict(model="timm:test_vit", weights=vit, image_size=64),
        "vit2": dict(model="timm:test_vit", weights=vit2, image_size=64),
        "reg": dict(model=reg, image_size=56),
    }


def _images():
    from sk_a2.datasets import make_spurious_images

    data = make_spurious_images(n_samples=20, image_size=64, random_state=0)
    return data.images[:5], data.boxes[:5]


def _maps_and_crops(out, name, kw, X):
    from sk_a2 import AttentionCropper

    for agg in AGGREGATIONS:
        for layer in LAYERS if agg == "mean" else (-1,):
            c = AttentionCropper(crop_sizes=(32, 16), head_aggregation=agg, layer=layer,
                                 device="cpu", precision="float32", **kw).fit()
            tag = f"{name}/{agg}/{layer}"
            out[f"maps/{tag}"] = c.attention_maps(X)
            crops = c.transform(X)
            out[f"boxes/{tag}"] = crops.boxes
            out[f"scores/{tag}"] = crops.scores


def _embeddings(out, models, X):
    from sk_a2 import AttentionCropper, CropEmbedder

    kw = dict(device="cpu", precision="float32")
    crops = AttentionCropper(crop_sizes=(32, 16), embed_full_image=True, **kw,
                             **models["vit"]).fit().transform(X)
    out["embed/full_from_cropper"] = crops.full_embeddings
    out["embed/crops"] = CropEmbedder(**kw, **models["vit2"]).fit(crops).transform(crops)
    out["embed/crops_with_full"] = CropEmbedder(
        include_full_image=True, **kw, **models["vit"]).fit(crops).transform(crops)


def _report(out, name, kw, X, boxes):
    from sk_a2 import AttentionCropper
    from sk_a2.localization import localization_report, report_columns

    for agg in ("mean", "max"):
        c = AttentionCropper(crop_sizes=(32,), head_aggregation=agg, device="cpu",
                             precision="float32", **kw).fit()
        cols = report_columns(localization_report(c, X, boxes, layers=list(REPORT_LAYERS)))
        for col in REPORT_COLUMNS:
            out[f"report/{name}/{agg}/{col}"] = np.asarray(cols[col])


def compute() -> dict:
    """Every stored value, computed by the code on ``sys.path``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order on any machine
    X, boxes = _images()
    out = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            models = _models(folder)
            for name in ("vit", "reg"):
                _maps_and_crops(out, name, models[name], X)
                _report(out, name, models[name], X, boxes)
            _embeddings(out, models, X)
    finally:
        torch.set_num_threads(threads)
    return out


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "baseline_fixture.npz"
    values = compute()
    np.savez_compressed(target, **values)
    print(f"{len(values)} arrays written to {target} ({os.path.getsize(target)} bytes)")
