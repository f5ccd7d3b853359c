"""Ray-engine throughput vs in-process, side by side in one run.

    python benchmarks/ray_overhead.py [--n-images 192] [--model imgfocus_vits14] [--weights FILE]
                                      [--device cpu] [--json out.json]

``CropEmbedder(...).transform`` over the same image files (full images, float32) with the
in-process engine and with ``engine="ray"`` on a local Ray instance with one actor and its
reading tasks: on the CPU (``--device cpu``: one CPU for the actor, one for the reading tasks,
``OMP_NUM_THREADS`` threads each side), or on the GPU (``--device cuda``: the actor takes the
GPU, ``num_gpus=1``). The two are timed interleaved, best of 3;
the Ray timing includes everything a call costs: starting the actor, loading the model in it,
shipping the batches and gathering the result (the Ray instance itself is started once, before).
``ratio`` is in-process seconds / Ray seconds (the Ray engine's relative throughput; 1.0 = no
overhead); ``spread`` is (worst - best) / best of each side's three runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_files(folder, n, size=224, seed=0):
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        path = Path(folder) / f"{i}.png"
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=192)
    parser.add_argument("--model", default="imgfocus_vits14")
    parser.add_argument("--weights", default=None, help="local weights file for --model")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    import ray

    from sk_a2 import CropEmbedder

    gpus = 1 if args.device == "cuda" else 0
    # two logical CPUs: the actor's and one for the reading tasks beside it
    ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False,
             log_to_driver=False)
    common = dict(weights=args.weights, image_size=args.image_size, batch_size=args.batch_size,
                  device=args.device, precision="float32", num_workers=0)
    local = CropEmbedder(args.model, **common)
    remote = CropEmbedder(args.model, engine="ray", engine_options={
        "num_actors": 1, "batch_size": args.batch_size, "num_gpus": gpus}, **common)
    times = {"in_process": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_files(tmp, args.n_images, args.image_size)
        local.fit(paths)
        remote.fit(paths)
        local.transform(paths[:16])  # warm the in-process model once, as the actor's load is
        for _ in range(3):
            for name, est in (("in_process", local), ("ray", remote)):
                start = time.perf_counter()
                out = est.transform(paths)
                times[name].append(time.perf_counter() - start)
                assert out.shape[0] == len(paths)
    ray.shutdown()
    best = {k: min(v) for k, v in times.items()}
    result = {
        "n_images": args.n_images, "model": args.model, "device": args.device,
        "seconds_best": best,
        "images_per_s": {k: args.n_images / v for k, v in best.items()},
        "ratio": best["in_process"] / best["ray"],
        "spread": {k: (max(v) - min(v)) / min(v) for k, v in times.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
