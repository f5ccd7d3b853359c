"""Cost of a localization report over every block against one block, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/localization_layers.py [--n-images 32] [--device cpu]
        [--per-layer] [--json FILE]

On the real DINOv2 ViT-S/14 architecture (``imgfocus_vits14``, 12 blocks), synthetic images at
224 px, three ways of measuring the same images:

* ``single``: ``localization_report(cropper, X, boxes)``, the cropper's own (last) block;
* ``all``: ``localization_report(..., layers="all")``, the 12 blocks from one forward pass per
  batch (hooks on every block);
* ``per_layer`` (with ``--per-layer``; about 6 times longer): 12 reports, one per block
  (``layers=[i]``), what one pass saves.

Timings are best of 3, interleaved so that load on the machine hits all of them alike. Printed:
the ratio of the best times to ``single``, the ratio within each round (the runs of one round
see the same load, so their spread says how noisy the figure is) and each timing's spread
``(max - min) / min`` over the rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from sk_a2 import AttentionCropper
from sk_a2.datasets import make_spurious_images
from sk_a2.localization import localization_report
from sk_a2.models import load_model


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(n_images=32, device="cpu", repeat=3, per_layer=False):
    data = make_spurious_images(n_images, image_size=224, random_state=0)
    cropper = AttentionCropper("imgfocus_vits14", image_size=224, batch_size=32,
                               device=device).fit()
    n_blocks = load_model("imgfocus_vits14", image_size=224, device=device).num_layers
    fns = {
        "single": lambda: localization_report(cropper, data.images, data.boxes),
        "all": lambda: localization_report(cropper, data.images, data.boxes, layers="all"),
    }
    if per_layer:
        fns["per_layer"] = lambda: [
            localization_report(cropper, data.images, data.boxes, layers=[i])
            for i in range(n_blocks)]
    times = {name: [] for name in fns}
    for run in range(repeat + 1):  # run 0 warms up; the others are interleaved
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if run:
                times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {
        "n_images": n_images, "n_blocks": n_blocks, "device": device,
        "machine": f"{platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "seconds": times, "best": best,
        "ratios_to_single": {k: best[k] / best["single"] for k in best},
        "per_round_ratios": {k: [t / s for t, s in zip(v, times["single"])]
                             for k, v in times.items()},
        "spread": {k: (max(v) - min(v)) / min(v) for k, v in times.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-layer", action="store_true",
                        help="also time one report per block (12 forward passes)")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    result = measure(args.n_images, args.device, per_layer=args.per_layer)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    for name, ratio in result["ratios_to_single"].items():
        rounds = ", ".join(f"{r:.2f}" for r in result["per_round_ratios"][name])
        print(f"{name} / single: {ratio:.2f} (best {result['best'][name]:.2f} s; per round "
              f"{rounds}; spread {100 * result['spread'][name]:.0f} %)")


if __name__ == "__main__":
    main()
