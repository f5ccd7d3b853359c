"""Cost of a localization report over every block against one block, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/localization_layers.py [--n-images 32] [--device cpu]

On the real DINOv2 ViT-S/14 architecture (``imgfocus_vits14``, 12 blocks), synthetic images at
224 px, three ways of measuring the same images:

* ``single``: ``localization_report(cropper, X, boxes)``, the cropper's own (last) block;
* ``all``: ``localization_report(..., layers="all")``, the 12 blocks from one forward pass per
  batch (hooks on every block);
* ``per_layer``: 12 reports, one per block (``layers=[i]``), what one pass saves.

Timings are best of 3, the three interleaved so that load on the machine hits all of them alike;
the figures printed are the ratios to ``single`` and the spread of the three runs of each.
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


def measure(n_images=32, device="cpu", repeat=3):
    data = make_spurious_images(n_images, image_size=224, random_state=0)
    cropper = AttentionCropper("imgfocus_vits14", image_size=224, batch_size=32,
                               device=device).fit()
    n_blocks = load_model("imgfocus_vits14", image_size=224, device=device).num_layers
    fns = {
        "single": lambda: localization_report(cropper, data.images, data.boxes),
        "all": lambda: localization_report(cropper, data.images, data.boxes, layers="all"),
        "per_layer": lambda: [localization_report(cropper, data.images, data.boxes, layers=[i])
                              for i in range(n_blocks)],
    }
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {
        "n_images": n_images, "n_blocks": n_blocks, "device": device,
        "machine": f"{platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "seconds": times, "best": best,
        "all_over_single": best["all"] / best["single"],
        "per_layer_over_single": best["per_layer"] / best["single"],
        "spread": {k: (max(v) - min(v)) / min(v) for k, v in times.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    result = measure(args.n_images, args.device)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    b = result["best"]
    print(f"all {result['n_blocks']} blocks / one block: {result['all_over_single']:.2f} "
          f"({b['all']:.2f} s vs {b['single']:.2f} s); one report per block / one block: "
          f"{result['per_layer_over_single']:.2f} ({b['per_layer']:.2f} s)")


if __name__ == "__main__":
    main()
