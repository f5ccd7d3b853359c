"""The data path on the CPU: decoding threads, the pixel store, content keys, the device decoder.

    python benchmarks/loader.py [--n-images 48] [--grid-images 40] [--baseline-src DIR]
                                [--photos-views 150] [--json docs/performance_loader_cpu.json]

Every timing is best of 3 with the candidates interleaved (so that load on the machine hits all
of them alike); ``spread`` is (worst - best) / best of each candidate's three runs. The model is
the real DINOv2 ViT-S/14 architecture (``imgfocus_vits14``), float32, crops (64, 48), 224 px.

1. **Throughput.** A² (``AttentionCropper`` + ``CropEmbedder`` from PNG files) with
   ``num_workers="auto"`` against: the same with decoding in the calling thread
   (``num_workers=0``), the same without the pixel store (each image decoded by both stages),
   and a naive float32 loop written independently of the package (``benchmarks/run.py``'s
   ``naive_loop``: per image, PIL decode, one forward, boxes, one forward per crop).
2. **Threads or processes.** The decoding alone (no model), two decoders each: the loader's
   thread pool, a ``torch.utils.data.DataLoader`` with two persistent worker processes (its
   second epoch, so that start-up is not counted), and decoding in the calling thread.
3. **Decodes and digests per pass.** A cropper → embedder ``Pipeline`` over files counts PIL
   decodes per image; a cached ``GridSearchCV`` (3 crop counts x 7 C x 5 folds, 40 in-memory
   224 px images, every forward a cache hit) counts image digests and is timed, here and, with
   ``--baseline-src`` (a checkout of an earlier version), with that version, each in its own
   process.
4. **Peak RSS** of a transform over n and 4n files (each in a fresh process).
5. **Device decoder, on the CPU.** The device path (``torchvision.io.decode_jpeg`` on a batch,
   then :func:`sk_a2.resize.pil_bicubic`) run on the CPU against PIL, on square views of real
   photographs saved as JPEG files: identical model inputs, and identical A² boxes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402  (benchmarks/run.py: images, naive loop, timing, RSS)

MODEL = "imgfocus_vits14"


def _a2(paths, num_workers=None, store=True):
    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.pixel_store import pixel_store

    kw = dict(device="cpu", precision="float32", batch_size=32)
    if num_workers is not None:
        kw["num_workers"] = num_workers
    store_obj = pixel_store()
    bound = store_obj.max_bytes
    store_obj.clear()
    store_obj.max_bytes = bound if store else 0
    try:
        cs = AttentionCropper(MODEL, crop_sizes=base.CROPS, **kw).fit().transform(paths)
        return CropEmbedder(MODEL, **kw).fit(cs).transform(cs)
    finally:
        store_obj.max_bytes = bound
        store_obj.clear()


def bench_throughput(paths):
    from sk_a2.models import load_model

    vm = load_model(MODEL, image_size=base.SIZE, device="cpu")
    dev = torch.device("cpu")
    fns = {
        "a2_auto": lambda: _a2(paths),
        "a2_threads0": lambda: _a2(paths, num_workers=0),
        "a2_auto_no_store": lambda: _a2(paths, store=False),
        "naive": lambda: base.naive_loop(vm.module, vm.mean, vm.std, paths, dev),
    }
    warm = paths[:2]
    warmups = {
        "a2_auto": lambda: _a2(warm), "a2_threads0": lambda: _a2(warm, 0),
        "a2_auto_no_store": lambda: _a2(warm, store=False),
        "naive": lambda: base.naive_loop(vm.module, vm.mean, vm.std, warm, dev),
    }
    t = base._time_side_by_side(fns, dev, warmups=warmups)
    out = {f"{k}_s": v[0] for k, v in t.items()}
    out.update({f"{k}_spread": v[1] for k, v in t.items()})
    out["a2_auto_vs_naive"] = out["naive_s"] / out["a2_auto_s"]
    out["a2_auto_vs_threads0"] = out["a2_threads0_s"] / out["a2_auto_s"]
    out["a2_auto_vs_no_store"] = out["a2_auto_no_store_s"] / out["a2_auto_s"]
    out["n_images"] = len(paths)
    return out


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from sk_a2.images import load_resized

        return torch.from_numpy(np.array(load_resized(self.paths[i], base.SIZE)[0]))


def bench_decode_only(paths, workers=2):
    """The loader's threads vs persistent worker processes vs the calling thread, decoding
    only."""
    from sk_a2._data import iter_image_batches

    dev = torch.device("cpu")
    loader = torch.utils.data.DataLoader(_Decoded(paths), batch_size=16, num_workers=workers,
                                         persistent_workers=True)

    def threads(n):
        for _ in iter_image_batches(paths, base.SIZE, batch_size=16, num_workers=n, device=dev):
            pass

    def processes():
        for _ in loader:
            pass

    fns = {"threads": lambda: threads(workers), "processes": processes,
           "calling_thread": lambda: threads(0)}
    t = base._time_side_by_side(fns, dev)  # the untimed first run starts the processes
    out = {f"decode_{k}_s": v[0] for k, v in t.items()}
    out.update({f"decode_{k}_spread": v[1] for k, v in t.items()})
    out["decode_workers"] = workers
    return out


def count_pipeline_decodes(paths):
    """PIL decodes per image in a cropper -> embedder Pipeline over files."""
    import sk_a2.images
    from sklearn.pipeline import Pipeline

    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.pixel_store import pixel_store

    counts = {}
    original = sk_a2.images.load_resized

    def counting(source, size, index=None):
        counts[source] = counts.get(source, 0) + 1
        return original(source, size, index)

    kw = dict(device="cpu", precision="float32")
    pipe = Pipeline([("crop", AttentionCropper(MODEL, crop_sizes=base.CROPS, **kw)),
                     ("emb", CropEmbedder(MODEL, **kw))])
    pixel_store().clear()
    sk_a2.images.load_resized = counting
    try:
        pipe.fit_transform(paths)
    finally:
        sk_a2.images.load_resized = original
    per_image = sorted(set(counts.values()))
    return {"pipeline_decodes_per_image": per_image, "pipeline_images": len(paths)}


_GRID_CHILD = r"""
import json, sys, time
import numpy as np
import sk_a2.images
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.datasets import make_spurious_images

data = make_spurious_images(n_samples={n}, image_size=224, random_state=0)
X, y = list(data.images), data.target
calls = [0]
original = sk_a2.images.image_digest
def counting(*args, **kwargs):
    calls[0] += 1
    return original(*args, **kwargs)
sk_a2.images.image_digest = counting
kw = dict(cache="memory", device="cpu", precision="float32")
def pipe():
    return Pipeline([("crop", AttentionCropper("{model}", crop_sizes=(64, 48, 32), **kw)),
                     ("emb", CropEmbedder("{model}", **kw)),
                     ("lr", LogisticRegression(max_iter=2000))])
grid = {{"crop__n_crops": [1, 2, 3], "lr__C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}}
search = lambda: GridSearchCV(pipe(), grid, cv=5, n_jobs=1, error_score="raise").fit(X, y)
search()  # fills the memory cache: the timed run is all hits
calls[0] = 0
t = time.perf_counter()
search()
print(json.dumps({{"seconds": time.perf_counter() - t, "digests": calls[0]}}))
"""


def bench_grid(n, baseline_src=None, repeat=3):
    """The cached grid search, here and in ``baseline_src``, interleaved, each run in a fresh
    process."""
    child = _GRID_CHILD.format(n=n, model=MODEL)
    here = str(Path(__file__).resolve().parents[1])
    sources = {"after": here}
    if baseline_src:
        sources["before"] = str(Path(baseline_src).resolve())
    runs = {k: [] for k in sources}
    for _ in range(repeat):
        for name, src in sources.items():
            env = {**os.environ, "PYTHONPATH": src}
            res = subprocess.run([sys.executable, "-c", child], env=env, check=True,
                                 capture_output=True, text=True, cwd=src)
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    out = {"grid_images": n}
    for name, rs in runs.items():
        ts = [r["seconds"] for r in rs]
        out[f"grid_{name}_s"] = min(ts)
        out[f"grid_{name}_spread"] = (max(ts) - min(ts)) / min(ts)
        out[f"grid_{name}_digests"] = rs[0]["digests"]
    if "before" in runs:
        out["grid_speedup"] = out["grid_before_s"] / out["grid_after_s"]
    return out


def _photo_views(n, directory):
    """Square views (random position, 50-100 % of the short side) of the real photographs at
    hand (scikit-learn's china and flower, matplotlib's grace_hopper), saved as JPEG files."""
    import matplotlib.cbook
    from sklearn.datasets import load_sample_images

    photos = [p for p in load_sample_images().images]
    photos.append(np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
                             .convert("RGB")))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        short = min(img.shape[:2])
        side = int(rng.integers(short // 2, short + 1))
        y, x = (int(rng.integers(0, s - side + 1)) for s in img.shape[:2])
        p = Path(directory) / f"view{i:04d}.jpg"
        Image.fromarray(np.ascontiguousarray(img[y:y + side, x:x + side])).save(p, quality=90)
        paths.append(str(p))
    return paths, len(photos)


def bench_device_path(n, directory):
    """The device decoder's path, run on the CPU, against PIL: same pixels, same boxes."""
    from sk_a2 import AttentionCropper
    from sk_a2.decode import decode_jpeg_batch, device_jpeg
    from sk_a2.images import load_resized

    paths, n_photos = _photo_views(n, directory)
    cpu = np.stack([load_resized(p, base.SIZE)[0] for p in paths])
    dev = []
    for i in range(0, n, 32):
        datas = [device_jpeg(p) for p in paths[i:i + 32]]
        dev += [t.numpy() for t, _ in decode_jpeg_batch(datas, base.SIZE, torch.device("cpu"))]
    dev = np.stack(dev)
    cropper = AttentionCropper(MODEL, crop_sizes=(64, 32), device="cpu",
                               precision="float32").fit()
    boxes_cpu, boxes_dev = cropper.transform(cpu).boxes, cropper.transform(dev).boxes
    return {"device_path_views": n, "device_path_photos": n_photos,
            "device_path_pixels_identical": float(np.all(cpu == dev, axis=(1, 2, 3)).mean()),
            "device_path_boxes_identical": float(np.all(boxes_cpu == boxes_dev,
                                                        axis=(1, 2)).mean())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-images", type=int, default=48)
    parser.add_argument("--grid-images", type=int, default=40)
    parser.add_argument("--baseline-src", default=None,
                        help="a checkout of an earlier version to run the grid search with")
    parser.add_argument("--photo-views", type=int, default=150)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    base.MODEL.update(model=MODEL, weights=None)
    results = {"machine": base.machine(torch.device("cpu")), "model": MODEL,
               "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as d:
        paths, _ = base.write_images(args.n_images * 4, d)
        sections = [
            ("throughput", lambda: bench_throughput(paths[:args.n_images])),
            ("decode", lambda: bench_decode_only(paths[:args.n_images * 2])),
            ("decodes", lambda: count_pipeline_decodes(paths[:args.n_images])),
            ("grid", lambda: bench_grid(args.grid_images, args.baseline_src)),
            ("rss", lambda: base.bench_rss(paths, "cpu")),
            ("device", lambda: bench_device_path(args.photo_views, d)),
        ]
        for name, fn in sections:
            if name in skip:
                continue
            print(f"{name} ...", flush=True)
            t = time.perf_counter()
            results.update(fn())
            print(f"  {time.perf_counter() - t:.0f} s", flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
