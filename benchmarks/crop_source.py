"""Crops from the resized image vs crops from the original pixels: accuracy and cost per crop.

    python benchmarks/crop_source.py [--data-size 448] [--image-size 112] [--crop-size 32]
        [--object-size 0.15 0.35] [--n-images 160] [--seeds 0 1 2] [--json results.json]

1. Accuracy. For each seed, the embedded synthetic benchmark (``make_spurious_images``) is
   generated at ``--data-size`` pixels (objects are a fixed fraction of the side, so they grow with
   it), split 50/50 into train (95 % spurious correlation) and test (balanced groups). One
   ``AttentionCropper`` (``imgfocus_vits14``, DINOv2 ViT-S/14) picks one ``--crop-size`` crop per
   image in the ``--image-size`` frame; the same boxes are embedded by ``CropEmbedder`` (same
   model) with each ``crop_source`` and a ``LogisticRegression`` is fitted on the train half.
   Reported: test accuracy and worst-group accuracy per source and seed, and their difference.
2. Cost per crop of the data path alone (no model): decoding, resizing and cutting for the
   resized source (PIL resize of the whole image, then the batched on-device crop-and-resize)
   against the original source (cut from the decoded original and resized once, as the decoding
   workers do), in one process. Inputs: PNG files at ``--data-size`` and 2048 px JPEG files
   (with and without draft decoding). Best of 3, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODEL = "imgfocus_vits14"
SOURCES = ("resized", "original")


def accuracy_one_seed(seed, args):
    from sklearn.linear_model import LogisticRegression

    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.datasets import make_spurious_images
    from sk_a2.metrics import worst_group_accuracy

    data = make_spurious_images(args.n_images, image_size=args.data_size,
                                object_size=tuple(args.object_size),
                                split_fractions=(0.5, 0.0, 0.5), random_state=seed)
    train, test = data.split == "train", data.split == "test"
    common = dict(image_size=args.image_size, batch_size=32, device=args.device)
    cs = AttentionCropper(MODEL, crop_sizes=(args.crop_size,), **common).fit_transform(data.images)
    out = {"seed": seed}
    for source in SOURCES:
        E = CropEmbedder(MODEL, crop_source=source, **common).fit_transform(cs)
        lr = LogisticRegression(max_iter=2000).fit(E[train], data.target[train])
        pred = lr.predict(E[test])
        out[source] = {
            "accuracy": float(np.mean(pred == data.target[test])),
            "worst_group_accuracy": float(worst_group_accuracy(data.target[test], pred,
                                                               groups=data.groups[test])),
        }
        print(f"seed {seed} {source:8s} {out[source]}", flush=True)
    return out


def _best_of(fns, repeat=3):
    """Best wall time of each function, runs interleaved so that machine load hits all alike."""
    times = {name: [] for name in fns}
    for round_ in range(repeat + 1):  # round 0 warms up
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            if round_:
                times[name].append(time.perf_counter() - t)
    return {name: min(v) for name, v in times.items()}


def _write(images, directory, ext, **save):
    paths = []
    for i, img in enumerate(images):
        p = Path(directory) / f"{i:04d}.{ext}"
        Image.fromarray(img).save(p, **save)
        paths.append(str(p))
    return paths


def _path_fns(paths, side, size, frame_boxes):
    """The resized and original data paths over ``paths`` (originals ``side`` px a side)."""
    from sk_a2._data import iter_image_batches
    from sk_a2.boxes import crop_resize
    from sk_a2.original_crops import OriginalCrops, iter_original_crop_batches, load_original_crops

    cpu = torch.device("cpu")
    n, k = frame_boxes.shape[:2]
    orig_boxes = frame_boxes * (side / size)

    def resized():
        for start, pixels, _ in iter_image_batches(paths, size, batch_size=16, num_workers=0,
                                                   device=cpu):
            b = torch.as_tensor(frame_boxes[start:start + len(pixels)])
            crop_resize(pixels, b, size)

    def original(draft=True):
        ds = OriginalCrops(paths, list(orig_boxes), [np.zeros(k, bool)] * n, [(side, side)] * n,
                           size)
        if draft:
            for _ in iter_original_crop_batches(ds, batch_size=16, num_workers=0, device=cpu):
                pass
        else:
            for i, p in enumerate(paths):
                load_original_crops(p, orig_boxes[i], size, draft=False)

    return resized, original


def _random_frame_boxes(n, size, crops, rng):
    boxes = np.zeros((n, len(crops), 4))
    for j, s in enumerate(crops):
        xy = rng.integers(0, size - s, size=(n, 2))
        boxes[:, j] = np.concatenate([xy, xy + s], axis=1)
    return boxes


def cost_per_crop(args, n=32, size=224):
    """Seconds per crop of each data path (no model), best of 3, interleaved.

    Cases: PNG originals at ``--data-size`` with A² crops (64, 48) of the 224 frame; 2048 px
    JPEG originals with the same crops (too small for draft decoding: every box must stay at
    least 2 * 224 px after the reduction) and with crops (128, 112) (draft at 1/2).
    """
    rng = np.random.default_rng(0)
    small = (rng.random((n, 64, 64, 3)) * 255).astype(np.uint8)
    cases = ((args.data_size, "png", (64, 48)), (2048, "jpg", (64, 48)),
             (2048, "jpg", (128, 112)))
    out = {}
    with tempfile.TemporaryDirectory() as d:
        written = {}
        for side, ext, crops in cases:
            if (side, ext) not in written:
                sub = Path(d) / f"{side}{ext}"
                sub.mkdir()
                imgs = [np.asarray(Image.fromarray(s).resize((side, side), Image.BICUBIC))
                        for s in small]
                written[side, ext] = _write(imgs, sub, ext, quality=90)
            boxes = _random_frame_boxes(n, size, crops, rng)
            resized, original = _path_fns(written[side, ext], side, size, boxes)
            fns = {"resized": resized, "original": original}
            if ext == "jpg":
                fns["original_no_draft"] = lambda original=original: original(draft=False)
            n_crops = n * len(crops)
            t = _best_of(fns)
            key = f"{side}px_{ext}_crops{'x'.join(map(str, crops))}"
            out[key] = {name: sec / n_crops for name, sec in t.items()}
            print(f"{key}: " + ", ".join(f"{a} {1e3 * sec / n_crops:.2f} ms/crop"
                                         for a, sec in t.items()), flush=True)
    return out


def summarize(runs):
    rows = {}
    for source in SOURCES:
        for metric in ("accuracy", "worst_group_accuracy"):
            v = np.array([r[source][metric] for r in runs])
            rows[f"{source}_{metric}"] = (float(v.mean()), float(v.std()))
    for metric in ("accuracy", "worst_group_accuracy"):
        d = np.array([r["original"][metric] - r["resized"][metric] for r in runs])
        rows[f"delta_{metric}"] = (float(d.mean()), float(d.std()))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-size", type=int, default=448)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--crop-size", type=int, default=32)
    parser.add_argument("--object-size", type=float, nargs=2, default=[0.15, 0.35],
                        help="object size range, a fraction of the side (the dataset's default)")
    parser.add_argument("--n-images", type=int, default=160)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    results = {"args": vars(args), "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                              f"torch {torch.__version__}"}
    if not args.skip_cost:
        results["cost_per_crop_s"] = cost_per_crop(args)
    if not args.skip_accuracy:
        runs = [accuracy_one_seed(s, args) for s in args.seeds]
        results["runs"], results["summary"] = runs, summarize(runs)
        for name, (m, s) in results["summary"].items():
            print(f"{name:36s} {m:.3f} ± {s:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
