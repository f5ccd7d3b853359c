"""The device check: one command that measures what a GPU machine is there to measure.

    python benchmarks/gpu_check.py [--device cuda] [--n-images 2048] [--skip-tests]
                                   [--model dinov2_vits14] [--weights FILE]
                                   [--giant-model vit_giant_patch14_dinov2]
                                   [--precisions float32,bfloat16] [--json gpu_check.json]

In order (sized for at most 6 minutes on one H100; not yet timed there):

1. ``tests/test_cuda.py`` (pytest, in a subprocess; ``--skip-tests`` leaves it out);
2. ``benchmarks/run.py``'s throughput part (imported, not copied) on ``--n-images`` JPEG files
   (the synthetic benchmark images, written as JPEG to a temporary folder) for ViT-S/14 ->
   ViT-S/14 at each of ``--precisions``: A² against the bare forwards of the same work and
   against a naive per-image loop;
3. the bf16 embedding throughput of ``--giant-model`` (timm, random weights: throughput does not
   depend on them) through ``CropEmbedder`` and as bare forwards on pre-made tensors, with its
   MFU: FLOPs per image from the architecture (:func:`vit_flops_per_image`) times images per
   second, over the device's dense bf16 peak (:data:`PEAK_BF16`; "n/a" for a device not in it);
4. ``benchmarks/ray_overhead.py``: the Ray engine's first and second call against in-process.

It prints one table and writes the figures as JSON (``--json``). The ViT-S/14 weights are random
too (saved to a temporary file for ``--weights``) unless ``--weights`` is given. On a CPU,
``tests/test_gpu_check.py`` dry-runs it with tiny sizes so that it cannot rot.
"""

from __future__ import annotations

import argparse
import importlib.util
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Dense bf16 peak (FLOP/s) by GPU name, first match in order (NVIDIA data sheets, no sparsity).
PEAK_BF16 = {
    "H100 PCIe": 756e12,
    "H100": 989e12,   # SXM
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
}


def _load(name):
    """A benchmark script of this folder, imported as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_bf16(device_name):
    """The dense bf16 peak of a device name, or None when it is not in :data:`PEAK_BF16`."""
    for key, flops in PEAK_BF16.items():
        if key in device_name:
            return flops
    return None


def vit_flops_per_image(model):
    """Forward FLOPs (2 per multiply-add) of one image through a timm ViT's trunk.

    From the architecture: the patch embedding (``num_patches`` x ``3 p^2`` x width), and per
    block every linear layer (``2 T in out``: qkv, projection, the MLP at its own ratio, SwiGLU
    included) and the attention's two matrix products (``4 T^2 width``), ``T`` the tokens
    (patches plus class and register tokens). Norms, softmax and activations are left out.
    """
    width = model.embed_dim
    patches = model.patch_embed.num_patches
    tokens = patches + getattr(model, "num_prefix_tokens", 1)
    kh, kw = model.patch_embed.patch_size
    flops = 2 * patches * 3 * kh * kw * width
    for block in model.blocks:
        for layer in block.modules():
            if isinstance(layer, torch.nn.Linear):
                flops += 2 * tokens * layer.in_features * layer.out_features
        flops += 4 * tokens * tokens * width
    return flops


def write_jpeg_images(n, directory, seed=0, size=256, quality=90):
    """``n`` synthetic benchmark images (:func:`sk_a2.datasets.make_spurious_images`) written as
    JPEG files; their paths and labels."""
    from sk_a2.datasets import make_spurious_images

    data = make_spurious_images(n_samples=n, image_size=size, random_state=seed)
    paths = []
    for i, img in enumerate(data.images):
        path = Path(directory) / f"{i:05d}.jpg"
        Image.fromarray(img).save(path, quality=quality)
        paths.append(str(path))
    return paths, np.asarray(data.target)


def random_weights(model, directory):
    """A random-weights state-dict file for the timm architecture of a model name."""
    import timm
    from safetensors.torch import save_file

    from sk_a2.models import resolve_model_spec

    torch.manual_seed(0)
    module = timm.create_model(resolve_model_spec(model).arch, pretrained=False, num_classes=0)
    path = Path(directory) / "random.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return str(path)


def run_tests(timeout):
    """``tests/test_cuda.py`` in a subprocess: (passed, seconds, last line of its summary)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                  "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_cuda.py"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"passed": proc.returncode == 0, "seconds": time.perf_counter() - start,
            "summary": lines[-1] if lines else proc.stderr[-500:]}


def vits_throughput(paths, args, device):
    """``benchmarks/run.py``'s throughput figures on ``paths`` at ``args.precisions``."""
    run = _load("run")
    run.MODEL.update(model=args.model, weights=args.weights)
    out = run.bench_throughput(paths, device, args.batch_size, args.num_workers,
                               args.precisions.split(","))
    rows = {}
    for prec in args.precisions.split(","):
        rows[prec] = {"a2_images_per_s": len(paths) / out[f"a2_{prec}_s"],
                      "a2_vs_bare": out[f"a2_{prec}_vs_bare"],
                      "a2_vs_naive": out[f"a2_{prec}_vs_naive"],
                      "spread": out[f"a2_{prec}_spread"]}
    return rows, out


def _best_rate(fn, n, device, repeat=3):
    """Images per second of ``fn`` (``n`` images a call), best of ``repeat`` after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return n / best


def giant_throughput(arch, n, batch_size, device, image_size=224):
    """bf16 embedding throughput and MFU of a timm ViT with random weights, through
    ``CropEmbedder`` (in-memory uint8 images) and as bare forwards on pre-made tensors."""
    import timm

    from sk_a2 import CropEmbedder

    torch.manual_seed(0)
    with torch.device(device):  # initialised on the device: a ViT-g takes a minute on a CPU
        model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=image_size)
    model = model.eval().requires_grad_(False)
    flops = vit_flops_per_image(model)
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, image_size, image_size, 3), dtype=np.uint8)
    emb = CropEmbedder(model, image_size=image_size, batch_size=batch_size, device=str(device),
                       precision="bfloat16", num_workers=0).fit(images)
    a2 = _best_rate(lambda: emb.transform(images), n, device)
    bf16 = model.to(torch.bfloat16)
    x = torch.randn(batch_size, 3, image_size, image_size, device=device, dtype=torch.bfloat16)

    def bare():
        with torch.no_grad():
            for _ in range(0, n, batch_size):
                bf16.forward_features(x)

    bare_rate = _best_rate(bare, -(-n // batch_size) * batch_size, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_bf16(name)
    mfu = (lambda rate: "n/a" if peak is None else rate * flops / peak)
    return {"arch": arch, "device_name": name, "flops_per_image": flops,
            "peak_bf16_flops": peak if peak is not None else "n/a",
            "a2_images_per_s": a2, "bare_images_per_s": bare_rate,
            "a2_mfu": mfu(a2), "bare_mfu": mfu(bare_rate)}


def ray_calls(paths, args, device):
    """The Ray engine's first and second call against in-process (``ray_overhead.py``)."""
    overhead = _load("ray_overhead")
    cpus = args.ray_cpus or os.cpu_count()
    return overhead.run(len(paths), args.model, args.weights, device.type, args.batch_size,
                        224, rounds=1, num_cpus=cpus, paths=paths)


def table(results):
    """The one table: stage, figure, value."""
    rows = []
    if "tests" in results:
        t = results["tests"]
        rows.append(("tests/test_cuda.py", "passed", f"{t['passed']} ({t['summary']})"))
    for prec, r in results.get("vits", {}).items():
        stage = f"A² {results['model']} {prec}, {results['n_images']} JPEG"
        rows += [(stage, "images/s", f"{r['a2_images_per_s']:.1f}"),
                 (stage, "vs bare forwards", f"{r['a2_vs_bare']:.2f}"),
                 (stage, "vs naive loop", f"{r['a2_vs_naive']:.2f}")]
    g = results.get("giant")
    if g:
        stage = f"{g['arch']} bf16 embeddings"
        fmt = (lambda v: v if isinstance(v, str) else f"{100 * v:.1f} %")
        rows += [(stage, "GFLOP/image", f"{g['flops_per_image'] / 1e9:.2f}"),
                 (stage, "CropEmbedder images/s", f"{g['a2_images_per_s']:.1f}"),
                 (stage, "CropEmbedder MFU", fmt(g["a2_mfu"])),
                 (stage, "bare images/s", f"{g['bare_images_per_s']:.1f}"),
                 (stage, "bare MFU", fmt(g["bare_mfu"]))]
    r = results.get("ray")
    if r:
        stage = f"Ray engine, {r['n_images']} images"
        rows += [(stage, "first call / in-process", f"{r['ratio']['ray_first']:.3g}"),
                 (stage, "second call / in-process", f"{r['ratio']['ray_second']:.3g}")]
    width = max(len(s) for s, _, _ in rows) + 2
    lines = [f"{'stage':<{width}}{'figure':<28}value", "-" * (width + 40)]
    lines += [f"{s:<{width}}{f:<28}{v}" for s, f, v in rows]
    return "\n".join(lines)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-images", type=int, default=2048)
    parser.add_argument("--giant-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=8,
                        help="A²'s decoding workers in benchmarks/run.py (default: 8)")
    parser.add_argument("--model", default="dinov2_vits14", help="ViT-S/14 model name")
    parser.add_argument("--weights", default=None, help="its weights (default: random ones)")
    parser.add_argument("--giant-model", default="vit_giant_patch14_dinov2", help="timm name")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--ray-cpus", type=int, default=None,
                        help="logical CPUs of the Ray instance (default: all)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--test-timeout", type=int, default=180)
    parser.add_argument("--json", default="gpu_check.json")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    device = torch.device(args.device)
    results = {"device": str(device), "n_images": args.n_images, "model": args.model,
               "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if not args.skip_tests:
        print("tests/test_cuda.py ...", flush=True)
        results["tests"] = run_tests(args.test_timeout)
    with tempfile.TemporaryDirectory() as tmp:
        if args.weights is None:
            args.weights = random_weights(args.model, tmp)
        paths, _ = write_jpeg_images(args.n_images, tmp)
        print(f"A² {args.model} on {len(paths)} JPEG files ...", flush=True)
        results["vits"], results["run_py"] = vits_throughput(paths, args, device)
        print(f"{args.giant_model} bf16 embeddings ...", flush=True)
        results["giant"] = giant_throughput(args.giant_model, args.giant_images,
                                            args.batch_size, device)
        if not args.skip_ray:
            print("Ray engine ...", flush=True)
            results["ray"] = ray_calls(paths, args, device)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
