"""Ray-engine throughput vs in-process, first and second call, side by side in one run.

    python benchmarks/ray_overhead.py [--n-images 96] [--model imgfocus_vits14] [--weights FILE]
                                      [--device cpu] [--rounds 3] [--json out.json]

``CropEmbedder(...).transform`` over the same image files (full images, float32) with the
in-process engine and with ``engine="ray"`` on a local Ray instance (started once, before the
timings) with one model actor: on the CPU (``--device cpu``: two logical CPUs, the actor's and
one for a reading actor beside it, ``OMP_NUM_THREADS`` threads each side; ``--num-readers 0``:
no reading actor, the model actor reads the images itself as the in-process call does, so the
ratio is the engine's own overhead), or on the GPU (``--device cuda``: the actor takes the GPU,
``num_gpus=1``, reading actors on the other CPUs).

Each round times, interleaved: the in-process call; the Ray engine's **first** call (the engine
closed before it with :func:`sk_a2.ray_engine.close_engines`, so it includes everything a cold
call costs: starting the actors, importing the package in them, loading the model, the batches
and the gathering); and its **second** call (the same estimator again: the actors and their
model are warm). Best of ``--rounds``; ``ratio`` is in-process seconds / Ray seconds (the Ray
engine's relative throughput; 1.0 = no overhead); ``spread`` is (worst - best) / best.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_files(folder, n, size=224, seed=0, ext="png"):
    """``n`` random RGB images of ``size`` px written as files; their paths."""
    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        path = Path(folder) / f"{i}.{ext}"
        Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def time_calls(local, remote, paths, rounds):
    """Seconds of each side per round: in-process, Ray first call, Ray second call."""
    from sk_a2.ray_engine import close_engines

    times = {"in_process": [], "ray_first": [], "ray_second": []}
    ref = None
    for _ in range(rounds):
        seconds, ref = _timed(lambda: local.transform(paths))
        times["in_process"].append(seconds)
        close_engines()  # a cold engine: the first call starts it
        for name in ("ray_first", "ray_second"):
            seconds, out = _timed(lambda: remote.transform(paths))
            times[name].append(seconds)
            if not np.allclose(out, ref, rtol=1e-4, atol=1e-5):
                raise AssertionError(f"{name}: the Ray engine's result differs from in-process")
    close_engines()
    return times


def summarize(times, n_images, **info):
    """Best seconds, images/s, ratios to in-process and spreads of :func:`time_calls`."""
    best = {k: min(v) for k, v in times.items()}
    return {
        **info, "n_images": n_images,
        "seconds": times, "seconds_best": best,
        "images_per_s": {k: n_images / v for k, v in best.items()},
        "ratio": {k: best["in_process"] / best[k] for k in ("ray_first", "ray_second")},
        "spread": {k: (max(v) - min(v)) / min(v) for k, v in times.items()},
    }


def run(n_images=96, model="imgfocus_vits14", weights=None, device="cpu", batch_size=16,
        image_size=224, rounds=3, num_cpus=2, paths=None, num_readers=None):
    """Time in-process vs the Ray engine's first and second call on ``paths`` (default:
    ``n_images`` random PNG files); the summary dict. Starts a private local Ray instance
    (``num_cpus`` logical CPUs) and shuts it down. ``num_readers`` (default: the engine's) sets
    the reading actors; 0: the model actor reads the images itself, as in-process does."""
    import ray

    from sk_a2 import CropEmbedder

    gpus = 1 if device == "cuda" else 0
    ray.init(address="local", num_cpus=num_cpus, num_gpus=gpus, include_dashboard=False,
             log_to_driver=False)
    common = dict(weights=weights, image_size=image_size, batch_size=batch_size, device=device,
                  precision="float32", num_workers=0)
    local = CropEmbedder(model, **common)
    options = {"num_actors": 1, "batch_size": batch_size, "num_gpus": gpus}
    if num_readers is not None:
        options["num_readers"] = num_readers
    remote = CropEmbedder(model, engine="ray", engine_options=options, **common)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = paths or make_files(tmp, n_images, image_size)
            local.fit(paths)
            remote.fit(paths)
            local.transform(paths[:batch_size])  # warm the in-process model once
            times = time_calls(local, remote, paths, rounds)
    finally:
        ray.shutdown()
    return summarize(times, len(paths), model=model, device=device, batch_size=batch_size,
                     image_size=image_size, ray_cpus=num_cpus, num_readers=num_readers,
                     omp_num_threads=os.environ.get("OMP_NUM_THREADS"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=96)
    parser.add_argument("--model", default="imgfocus_vits14")
    parser.add_argument("--weights", default=None, help="local weights file for --model")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the Ray instance")
    parser.add_argument("--num-readers", type=int, default=None,
                        help="reading actors (default: the engine's; 0: the model actor reads)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    result = run(args.n_images, args.model, args.weights, args.device, args.batch_size,
                 args.image_size, args.rounds, args.num_cpus, num_readers=args.num_readers)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
