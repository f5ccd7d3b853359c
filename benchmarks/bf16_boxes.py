"""How much bf16 moves A²'s boxes: float32 vs several bf16 schemes, on synthetic and real images.

    python benchmarks/bf16_boxes.py [--n-synthetic 150] [--photos DIR] [--n-photos 150]

For each image (resized to 224 px) the ``imgfocus_vits14`` (DINOv2 ViT-S/14) last-block CLS
attention is computed under each scheme, averaged over heads, upsampled and turned into greedy
(64, 32) boxes, exactly as ``AttentionCropper`` does. A scheme keeps an image's boxes when all of
them equal the float32 boxes. Schemes:

* ``bf16_trunk``: the whole attention forward under bf16 autocast;
* ``bf16_model``: the whole attention forward on a copy of the model held in bf16 (weights and
  activations; the final q·k in float32), which is what ``precision="bfloat16"`` runs;
* ``bf16_first_K``: blocks ``0..K-1`` under bf16 autocast, the rest (and the final q·k) in
  float32;
* ``f32_attention`` (attention in float32, embeddings in bf16): boxes are float32 by construction;
  what is measured is the cosine of the bf16 crop embeddings to the float32 ones, from the bf16
  copy of the model (``emb_cos_*``: what ``precision="auto"`` runs on a native-bf16 CPU) and
  under bf16 autocast (``autocast_emb_cos_*``).

Real photographs: ``--photos DIR`` (every .jpg/.png in it, RGB); ``--n-photos`` square views of
them (random position, 50–100 % of the short side), so that a few photographs give many images.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sk_a2.attention import aggregate_heads, patch_attention
from sk_a2.boxes import crop_resize, greedy_boxes, upsample_maps
from sk_a2.models import load_model

SIZES = (64, 32)


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@contextlib.contextmanager
def _bf16_blocks(vm, first_k):
    """bf16 autocast inside blocks ``0..first_k-1`` only (hooks on those blocks)."""
    handles, stack = [], []

    def pre(module, args):
        ctx = _bf16()
        ctx.__enter__()
        stack.append(ctx)

    def post(module, args, out):
        stack.pop().__exit__(None, None, None)
        return out.float()

    for blk in vm.module.blocks[:first_k]:
        handles += [blk.register_forward_pre_hook(pre), blk.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def boxes_of(vm, pixels, scheme):
    if scheme == "bf16_model":
        vm = vm.to_dtype(torch.bfloat16)
    x = vm.normalize(pixels)
    if scheme in ("f32", "bf16_model"):
        ctx = contextlib.nullcontext()
    elif scheme == "bf16_trunk":
        ctx = _bf16()
    else:
        ctx = _bf16_blocks(vm, int(scheme.rsplit("_", 1)[1]))
    with torch.no_grad(), ctx:
        a = patch_attention(vm, x)
    m = aggregate_heads(a.float()).reshape(-1, *vm.grid_size)
    up = upsample_maps(m, 224)
    up = up / up.sum((-2, -1), keepdim=True)
    return greedy_boxes(up, SIZES).numpy(), m.numpy()


def embeddings_of(vm, pixels, boxes, how="f32"):
    """Crop embeddings in float32 (``"f32"``), under bf16 autocast (``"autocast"``) or from the
    bf16 copy of the model (``"model"``)."""
    crops = crop_resize(pixels, torch.as_tensor(boxes, dtype=torch.float32), 224)
    flat = crops.reshape(-1, *crops.shape[2:])
    ctx = _bf16() if how == "autocast" else contextlib.nullcontext()
    if how == "model":
        vm = vm.to_dtype(torch.bfloat16)
    with torch.no_grad(), ctx:
        return vm.embed(vm.normalize(flat)).float()


def synthetic(n):
    from sk_a2.datasets import make_spurious_images

    return make_spurious_images(n_samples=n, image_size=256, random_state=0).images


def photo_views(directory, n, seed=0):
    files = sorted(p for p in Path(directory).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    rng = np.random.default_rng(seed)
    views = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.5, 1.0))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        views.append(np.asarray(Image.fromarray(img[y0:y0 + side, x0:x0 + side])
                                .resize((224, 224), Image.BILINEAR)))
    return np.stack(views), [f.name for f in files]


def to_pixels(images):
    t = torch.as_tensor(np.stack([np.asarray(Image.fromarray(im).resize((224, 224),
                                                                        Image.BILINEAR))
                                  for im in images]))
    return t.permute(0, 3, 1, 2).float() / 255


def measure(vm, images, schemes, batch=25):
    pixels = to_pixels(images)
    res = {s: [] for s in schemes}
    ref_boxes, emb_cos = [], {"model": [], "autocast": []}
    for i in range(0, len(pixels), batch):
        p = pixels[i:i + batch]
        b32, _ = boxes_of(vm, p, "f32")
        ref_boxes.append(b32)
        for s in schemes:
            b, _ = boxes_of(vm, p, s)
            same = np.all(b == b32, axis=(1, 2))
            shift = np.abs(b - b32).max(axis=(1, 2))
            res[s] += list(zip(same.tolist(), shift.tolist()))
        e32 = embeddings_of(vm, p, b32)
        for how, cos in emb_cos.items():
            e16 = embeddings_of(vm, p, b32, how)
            cos += torch.nn.functional.cosine_similarity(e32, e16, dim=-1).tolist()
    out = {}
    for s, rows in res.items():
        same = np.array([r[0] for r in rows])
        shift = np.array([r[1] for r in rows])
        out[s] = dict(identical=float(same.mean()), changed=int((~same).sum()),
                      over_16px=int((shift > 16).sum()), max_shift_px=float(shift.max()))
    out["f32_attention"] = dict(
        identical=1.0, changed=0,
        emb_cos_min=float(min(emb_cos["model"])), emb_cos_mean=float(np.mean(emb_cos["model"])),
        autocast_emb_cos_min=float(min(emb_cos["autocast"])),
        autocast_emb_cos_mean=float(np.mean(emb_cos["autocast"])))
    out["n"] = len(pixels)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-synthetic", type=int, default=150)
    ap.add_argument("--photos", default=None)
    ap.add_argument("--n-photos", type=int, default=150)
    ap.add_argument("--schemes",
                    default="bf16_trunk,bf16_model,bf16_first_6,bf16_first_9,bf16_first_11")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    vm = load_model("imgfocus_vits14", image_size=224, device="cpu")
    schemes = args.schemes.split(",")
    results = {}
    t = time.perf_counter()
    if args.n_synthetic:
        results["synthetic"] = measure(vm, synthetic(args.n_synthetic), schemes)
        print(json.dumps(results["synthetic"]), flush=True)
    if args.photos:
        views, names = photo_views(args.photos, args.n_photos)
        results["photos"] = measure(vm, views, schemes)
        results["photos"]["sources"] = names
        print(json.dumps(results["photos"]), flush=True)
    results["seconds"] = time.perf_counter() - t
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
