"""``sk-a2 localize``: where attention models look, measured against object boxes.

For each attention model (and head aggregation), :func:`sk_a2.localization.localization_report`
on the annotated images, then the per-image table (``localization.csv``, with the image file of
each row when images are files), the summary (``summary.json``: mean ± std per model, aggregation
and block) and the paper's figures:
``mass_hit_vs_size.png`` (Figs. 2 and 11), ``per_layer.png`` (Figs. 9, 12–14) and
``token_shares.png`` (Fig. 10). With no option it runs on the embedded synthetic set with
``imgfocus_vits14`` (offline DINOv2 ViT-S/14 weights).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path

import numpy as np

from . import common, reporting
from .common import CLIError, info

__all__ = ["add_parser", "run"]

DATASETS = ("synthetic", "waterbirds", "imagenet", "folder")
#: The loaders' warning about clipped boxes (sk_a2.datasets ClipTally); run() reports the count.
_CLIPPED_WARNING = r".*boxes extended past their image and were clipped"
#: sk_a2.attention.HEAD_AGGREGATIONS, spelt out so that ``--help`` does not import PyTorch
#: (tests/test_cli_help.py checks that they agree).
HEAD_AGGREGATIONS = (
    "mean", "max", "entropy_weighted", "lowest_entropy_mean", "topk_mean", "head_pruned"
)


def _names(text):
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _layers(text):
    text = str(text).strip()
    if text in ("all", "last"):
        return text
    try:
        return [int(p) for p in text.split(",") if p.strip()] or None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'all', 'last' or comma-separated block indices, got {text!r}"
        ) from None


def add_parser(subparsers):
    """Add the ``localize`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "localize",
        help="measure how much attention falls inside object boxes, per model and block",
        description="Measure where attention models look (Section 2 and Appendices A and J of "
                    "the paper): mass of the upsampled CLS attention inside the ground-truth "
                    "boxes, hit rate of its argmax, normalised entropy, top-10%/25% patch mass "
                    "and the CLS/register/patch token shares, per model, head aggregation and "
                    "block. Writes localization.csv (one row per block and image), summary.json "
                    "(mean and std) and the figures mass_hit_vs_size.png, per_layer.png and "
                    "token_shares.png to --out. With no option: the embedded synthetic set and "
                    "imgfocus_vits14 (offline weights).",
    )
    p.add_argument("--dataset", choices=DATASETS, default="synthetic", metavar="NAME",
                   help="annotated images: synthetic (embedded, no download), waterbirds (with "
                        "--cub-root for the bird boxes), imagenet (ILSVRC2012 val with XML or "
                        "LOC_val_solution.csv boxes), folder (class sub-folders with a --boxes "
                        "CSV) (default: synthetic)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="folder of the dataset (not for synthetic)")
    p.add_argument("--cub-root", default=None, metavar="DIR",
                   help="CUB-200-2011 folder with bounding_boxes.txt (waterbirds)")
    p.add_argument("--boxes", default=None, metavar="CSV",
                   help="box file image,x0,y0,x1,y1 for --dataset folder")
    p.add_argument("--split", choices=("train", "val", "test"), default="test",
                   help="waterbirds split (default: test, the paper's)")
    p.add_argument("--models", type=_names, default=["imgfocus_vits14"], metavar="A[,B...]",
                   help="attention models, comma-separated: short names (sk_a2.list_models()), "
                        "'timm:<name>' or 'open_clip:<arch>:<tag>' (default: imgfocus_vits14)")
    p.add_argument("--weights", type=_names, default=None, metavar="FILE[,FILE...]",
                   help="local state-dict files, one per model (default: pretrained weights)")
    p.add_argument("--layers", type=_layers, default="all", metavar="all|last|I[,J...]",
                   help="blocks to measure: all, last, or indices (from 0, or negative from "
                        "the end; printed counted from the end, -1 the last); all blocks come "
                        "from one forward pass (default: all)")
    p.add_argument("--head-aggregation", type=_names, default=["mean"], metavar="A[,B...]",
                   help="head aggregations, comma-separated, of " + ", ".join(HEAD_AGGREGATIONS)
                        + " (default: mean)")
    p.add_argument("--n-images", type=common.positive_int, default=None, metavar="N",
                   help="images measured: a seeded random subset (default: all; 64 synthetic)")
    common.add_image_size_option(p, 224)
    common.add_runtime_options(p)
    p.add_argument("--cache", default="none", metavar="memory|none|DIR",
                   help="cache of attention maps: memory, none (in any case), or a folder kept "
                        "across runs, created if needed (a folder named like a keyword as "
                        "./memory) (default: none)")
    p.add_argument("--seed", type=int, default=0, metavar="INT",
                   help="seed of the synthetic set and of the --n-images subset (default: 0)")
    p.add_argument("--out", default="sk_a2_localize", metavar="DIR",
                   help="output folder, created if needed (default: sk_a2_localize)")
    common.add_overwrite_option(p, "the table, summary and figures")
    reporting.add_option(p, "the measurement (mass in box per block, its spread over the "
                            "images)", needs_out=False)
    return p


def _dataset(args):
    """(images, boxes, clipped) of the chosen dataset: ``clipped`` counts the boxes of each
    image that extended past it and were clipped to it (the loaders' ``clipped_boxes``)."""
    from .. import datasets

    if args.dataset == "synthetic":
        data = datasets.make_spurious_images(args.n_images or 64, image_size=args.image_size,
                                             random_state=args.seed)
        return data.images, data.boxes, np.zeros(len(data.images), dtype=np.int64)
    with warnings.catch_warnings():  # the count is reported by run(), for the images measured
        warnings.filterwarnings("ignore", message=_CLIPPED_WARNING, category=UserWarning)
        if args.dataset == "waterbirds":
            data = datasets.load_waterbirds(args.root, cub_root=args.cub_root)
            keep = data.split == args.split
            return data.images[keep], data.boxes[keep], data.clipped_boxes[keep]
        if args.dataset == "imagenet":
            data = datasets.load_imagenet_val(args.root)
        else:
            data = datasets.load_image_folder(args.root, boxes=args.boxes)
    return data.images, data.boxes, data.clipped_boxes


def _subset(images, boxes, clipped, n, seed):
    if n is None or n >= len(images):
        return images, boxes, clipped
    idx = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    return images[idx], boxes[idx], clipped[idx]


def _write_csv(path, cols):
    names = list(cols)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*(cols[k] for k in names)):
            writer.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v
                             for v in row])


def _records(cols):
    def plain(v):
        return v.item() if isinstance(v, np.generic) else v

    return [{k: plain(cols[k][i]) for k in cols} for i in range(len(cols["layer"]))]


def _figures(summary, out, n_layers):
    from ..localization_plot import plot_mass_hit_vs_size, plot_per_layer, plot_token_shares
    from ..plot import save_figure

    written = [save_figure(plot_mass_hit_vs_size(summary), out / "mass_hit_vs_size.png")]
    if n_layers > 1:
        written.append(save_figure(plot_per_layer(summary), out / "per_layer.png"))
    written.append(save_figure(plot_token_shares(summary), out / "token_shares.png"))
    return written


def _print_summary(cols):
    print("model\taggregation\tparams\tblock\tmass\thit\tentropy\ttop10\tpatch_share")
    last = {}
    for i, key in enumerate(zip(cols["model"], cols["head_aggregation"])):
        if key not in last or cols["layer"][i] > cols["layer"][last[key]]:
            last[key] = i
    for (model, agg), i in last.items():
        print(f"{model}\t{agg}\t{cols['n_params'][i] / 1e6:.1f}M\t{cols['layer'][i]}\t"
              f"{cols['mass_in_box_mean'][i]:.3f}±{cols['mass_in_box_std'][i]:.3f}\t"
              f"{cols['hit_mean'][i]:.3f}\t{cols['entropy_mean'][i]:.3f}\t"
              f"{cols['top10_mass_mean'][i]:.3f}\t{cols['patch_share_mean'][i]:.3f}")


FIGURES = ("mass_hit_vs_size.png", "per_layer.png", "token_shares.png")


def output_names(args):
    """The files the run writes to ``--out`` (``per_layer.png`` only with several blocks)."""
    single = args.layers == "last" or (isinstance(args.layers, list) and len(args.layers) == 1)
    return ["localization.csv", "summary.json",
            *(f for f in FIGURES if not (single and f == "per_layer.png")),
            *reporting.output_names(args)]


def option_rules(args):
    """``(option dest, applies, reason)`` of the options that some datasets ignore."""
    dataset = f"--dataset {args.dataset} does not use it"
    return [
        ("root", args.dataset != "synthetic", "the synthetic set is generated, not read"),
        ("cub_root", args.dataset == "waterbirds", f"{dataset} (waterbirds only)"),
        ("boxes", args.dataset == "folder", f"{dataset} (folder only)"),
        ("split", args.dataset == "waterbirds", f"{dataset} (waterbirds only)"),
        ("seed", args.dataset == "synthetic" or args.n_images is not None,
         "it seeds the synthetic set and the --n-images subset, and this run has neither"),
    ]


def check(args):
    """Every check that needs no data and no model, before any work; returns the output
    folder."""
    common.refuse_ignored(args, option_rules(args))
    if args.dataset != "synthetic" and args.root is None:
        raise CLIError(f"--dataset {args.dataset} needs --root DIR")
    if args.dataset == "waterbirds" and args.cub_root is None:
        raise CLIError("--dataset waterbirds needs --cub-root DIR (the CUB-200-2011 folder "
                       "with bounding_boxes.txt) for the bird boxes")
    if args.dataset == "folder" and args.boxes is None:
        raise CLIError("--dataset folder needs --boxes CSV (columns image,x0,y0,x1,y1)")
    bad = [a for a in args.head_aggregation if a not in HEAD_AGGREGATIONS]
    if bad:
        raise CLIError(f"--head-aggregation {bad[0]!r} is not one of "
                       f"{', '.join(HEAD_AGGREGATIONS)}")
    if args.weights is not None and len(args.weights) != len(args.models):
        raise CLIError(f"--weights names {len(args.weights)} file(s) for "
                       f"{len(args.models)} model(s): give one per model")
    for w in args.weights or ():
        if not Path(w).expanduser().is_file():
            raise CLIError(f"--weights file {w!r} does not exist")
    common.check_extras("localize", [common.model_extra(m) for m in args.models])
    common.check_device(args.device)
    for model in args.models:
        common.check_image_size(args.image_size, {"--models": model})
    common.check_cache(args.cache)
    out = common.check_output_dir(args.out)
    common.check_overwrite(out, output_names(args), args.overwrite)
    reporting.check_file(args, out)
    return out


def _measure(args, images, boxes):
    """One localization report per (model, head aggregation)."""
    from ..cropper import AttentionCropper
    from ..localization import localization_report

    layers = {"all": "all", "last": None}.get(args.layers) if isinstance(args.layers, str) \
        else args.layers
    reports = []
    for model, weights in zip(args.models, args.weights or [None] * len(args.models)):
        for agg in args.head_aggregation:
            info(f"{model} ({agg}): {len(images)} images")
            with common.model_errors("--models", "--weights"):
                cropper = AttentionCropper(model, weights=weights, image_size=args.image_size,
                                           crop_sizes=(min(64, args.image_size),),
                                           head_aggregation=agg,
                                           cache=common.cache_value(args.cache, "none"),
                                           verbose=True, **common.runtime_kwargs(args)).fit()
                reports.append(localization_report(cropper, images, boxes, layers=layers))
    return reports


def run(args):
    """Run ``sk-a2 localize``; returns the summary written to ``summary.json``."""
    from ..localization import report_columns, summarize_report

    out = check(args)
    started = time.perf_counter()
    images, boxes, clipped = _subset(*_dataset(args), args.n_images, args.seed)
    if clipped.sum() > 0:
        info(f"{int(clipped.sum())} box(es) of the {len(images)} images extended past their "
             "image and were clipped to it (n_clipped_boxes in summary.json)")
    reports = _measure(args, images, boxes)
    table = report_columns(reports)
    if images.dtype == object:  # image files: name each row's file
        table["path"] = np.asarray([str(p) for p in images], dtype=object)[table["image"]]
    _write_csv(out / "localization.csv", table)
    summary = report_columns(summarize_report(reports))
    payload = {"dataset": args.dataset, "n_images": int(len(images)),
               "image_size": int(args.image_size), "models": args.models,
               "head_aggregations": args.head_aggregation,
               "n_clipped_boxes": int(clipped.sum()), "summary": _records(summary),
               "elapsed_seconds": round(time.perf_counter() - started, 1)}
    (out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    _print_summary(summary)
    try:
        written = _figures(summarize_report(reports), out, len(set(table["layer"].tolist())))
    except ImportError as exc:
        info(f"no figures ({exc})")
        written = []
    info(f"wrote localization.csv, summary.json and {len(written)} figure(s) to {out}")
    if args.report:
        reporting.write_localize(args, out, reports, payload)
    return payload
