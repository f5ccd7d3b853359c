"""``sk-a2 demo``: A² against the full-image baseline on the embedded synthetic benchmark."""

from __future__ import annotations

import time
import warnings

import numpy as np

from . import common
from .common import CLIError, info
from .results import fit_dfr, fit_lr, format_table, scores, split_masks, write_json

#: ``(key, label)`` of the four methods, in the printed order.
METHODS = (
    ("full_lr", "Full image + LR"),
    ("a2_lr", "A²_LR (A² crops + LR)"),
    ("full_dfr", "DFR(Val), full image"),
    ("a2_dfr", "A² + DFR(Val)"),
)
COLUMNS = ("accuracy", "worst_group_accuracy", "worst_class_accuracy")

DESCRIPTION = (
    "Fit the full-image baseline (LR), A²_LR, DFR(Val) on full-image embeddings and A² + "
    "DFR(Val) on the embedded synthetic spurious-correlation benchmark "
    "(sk_a2.datasets.make_spurious_images: disks and squares on land or water backgrounds, "
    "background 95% correlated with the label in train, balanced in val and test). Print "
    "accuracy, worst-group and worst-class accuracy on the test split, and write them as "
    "results.json with overlay PNGs of test images (attention heat map and chosen boxes) to "
    "--out. Each image is embedded once; the heads are fitted on the embeddings."
)


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "demo", description=DESCRIPTION,
        help="A² vs. the full-image baseline (LR and DFR) on the embedded synthetic benchmark",
    )
    common.add_model_options(parser, "attention", common.OFFLINE_MODEL,
                             "whose CLS attention picks the crops")
    common.add_model_options(parser, "embedding", common.OFFLINE_MODEL,
                             "that embeds the crops and the full images")
    parser.add_argument("--n-samples", type=common.positive_int, default=400, metavar="N",
                        help="synthetic images over train/val/test, split 60/20/20 "
                             "(default: 400)")
    parser.add_argument("--crop-sizes", type=common.crop_sizes, default=(56,),
                        metavar="S[,S...]",
                        help="crop sides in pixels of the image_size frame, comma-separated, "
                             "one crop per size, largest first (default: 56)")
    common.add_image_size_option(parser, 112, "the synthetic images and of the models' input")
    common.add_runtime_options(parser)
    parser.add_argument("--out", default="sk_a2_demo", metavar="DIR",
                        help="folder for results.json and the overlay PNGs, created if needed "
                             "(default: sk_a2_demo)")
    common.add_overwrite_option(parser, "results.json and the overlay PNGs")
    parser.add_argument("--no-plots", action="store_true",
                        help="write no overlay PNGs (then matplotlib is not needed)")
    parser.add_argument("--seed", type=int, default=0, metavar="INT",
                        help="seed of the synthetic data and of DFR (default: 0)")
    return parser


#: The overlay PNGs the demo writes (``overlays/test_<index>_<group>.png``, one per image).
OVERLAY_PATTERNS = ("overlays/test_*.png",)


def check(args):
    """Every check that needs no data and no model; returns the output folder."""
    models = {"--attention-model": args.attention_model,
              "--embedding-model": args.embedding_model}
    extras = [None if args.no_plots else "plot", *map(common.model_extra, models.values())]
    common.check_extras("demo", extras, "" if args.no_plots else " (or use --no-plots)")
    common.check_device(args.device)
    common.check_image_size(args.image_size, models)
    common.check_crop_sizes(args.crop_sizes, args.image_size)
    out = common.check_output_dir(args.out)
    plots = not args.no_plots
    common.check_overwrite(out, ["results.json"] + ["overlays.png"] * plots, args.overwrite,
                           OVERLAY_PATTERNS * plots)
    return out


def make_data(args):
    """The synthetic benchmark and its split masks."""
    from ..datasets import make_spurious_images

    info(f"generating {args.n_samples} synthetic images of {args.image_size} px")
    data = make_spurious_images(args.n_samples, image_size=args.image_size,
                                random_state=args.seed)
    masks = split_masks(data.split, ("train", "val", "test"))
    if len(np.unique(data.target[masks["train"]])) < 2:
        raise CLIError(f"--n-samples {args.n_samples} is too small: the train split needs "
                       "both classes")
    return data, masks


def embed(args, images):
    """The fitted cropper, its crops, and the full-image and crop embeddings."""
    from ..cropper import AttentionCropper
    from ..embedder import CropEmbedder

    kwargs = dict(image_size=args.image_size, verbose=True, **common.runtime_kwargs(args))
    # one model for both: the full-image embeddings come from the attention pass
    shared = (args.attention_model == args.embedding_model
              and args.attention_weights == args.embedding_weights)
    with common.model_errors("--attention-model", "--attention-weights"):
        cropper = AttentionCropper(args.attention_model, weights=args.attention_weights,
                                   crop_sizes=args.crop_sizes, embed_full_image=shared,
                                   **kwargs).fit()
        info(f"choosing crops {list(cropper.crop_sizes_)} with {args.attention_model} attention")
        crops = cropper.transform(images)
    with common.model_errors("--embedding-model", "--embedding-weights"):
        embedder = CropEmbedder(args.embedding_model, weights=args.embedding_weights, **kwargs)
        if shared:
            info(f"embedding the crops with {args.embedding_model} (full images: attention pass)")
            both = embedder.set_params(include_full_image=True).fit_transform(crops)
            a2, full = both[:, :-embedder.embed_dim_], both[:, -embedder.embed_dim_:]
        else:
            info(f"embedding the full images with {args.embedding_model}")
            full = embedder.fit_transform(images)
            info(f"embedding the crops with {args.embedding_model}")
            a2 = embedder.fit_transform(crops)
    return cropper, crops, {"full": full, "a2": a2}


def fit_and_predict(features, data, masks, seed):
    """Fit the four heads; their test predictions by method key."""
    y, groups = data.target, data.groups
    tr, va, te = masks["train"], masks["val"], masks["test"]
    info("fitting the heads (LR on train; DFR(Val) on val)")
    predictions = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tuning part is empty.*")
        for kind, F in features.items():
            lr = fit_lr(F[tr], y[tr])
            dfr = fit_dfr(F[va], y[va], groups[va], "val", seed)
            predictions[f"{kind}_lr"] = lr.predict(F[te])
            predictions[f"{kind}_dfr"] = dfr.predict(F[te])
    return predictions


def overlay_indices(groups, test_mask, per_group=2):
    """The first ``per_group`` test images of each group."""
    idx = []
    for g in np.unique(groups):
        idx.extend(np.flatnonzero(test_mask & (groups == g))[:per_group].tolist())
    return np.asarray(idx, dtype=np.int64)


def draw_overlays(out, cropper, crops, data, test_mask, predictions):
    """``overlays.png`` (a grid) and ``overlays/*.png`` for 2 test images per group."""
    from ..plot import plot_crop_grid, save_figure, save_overlays

    info("drawing overlays of test images")
    groups, names = data.groups, data.target_names
    idx = overlay_indices(groups, test_mask)
    position = {i: p for p, i in enumerate(np.flatnonzero(test_mask))}
    titles = [
        f"{data.group_names[groups[i]]}\nA²: {names[predictions['a2_lr'][position[i]]]}, "
        f"full: {names[predictions['full_lr'][position[i]]]}"
        for i in idx
    ]
    maps = cropper.attention_maps(data.images[idx])
    grid = plot_crop_grid(None, crops[idx], maps, ncols=4, titles=titles)
    files = [save_figure(grid, out / "overlays.png", dpi=110)]
    files += save_overlays(
        cropper, data.images[idx], out / "overlays", cropset=crops[idx], attention_maps=maps,
        names=[f"test_{i:05d}_{data.group_names[groups[i]]}" for i in idx],
    )
    return [str(p.relative_to(out)) for p in files]


def make_results(args, cropper, masks, methods, overlays, elapsed):
    """The content of ``results.json``."""
    counts = {f"n_{s}": int(masks[s].sum()) for s in ("train", "val", "test")}
    return {
        "benchmark": "sk_a2.datasets.make_spurious_images",
        "metric_split": "test",
        "n_samples": int(args.n_samples),
        **counts,
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
        "overlays": overlays,
    }


def print_results(args, results, out):
    config = results["config"]
    print(f"Synthetic benchmark: {results['n_train']} train / {results['n_val']} val / "
          f"{results['n_test']} test images of {args.image_size} px; attention "
          f"{args.attention_model}, embedding {args.embedding_model}, crops "
          f"{config['crop_sizes']}")
    print(format_table([(m["label"], m) for m in results["methods"].values()], COLUMNS))
    pngs = f" and {len(results['overlays'])} overlay PNGs" if results["overlays"] else ""
    print(f"Wrote {out / 'results.json'}{pngs} in {results['elapsed_seconds']:.0f} s.")


def run(args):
    """The ``demo`` subcommand; returns the results written to ``results.json``."""
    out = check(args)
    start = time.perf_counter()
    data, masks = make_data(args)
    cropper, crops, features = embed(args, data.images)
    predictions = fit_and_predict(features, data, masks, args.seed)
    te = masks["test"]
    methods = {key: {"label": label, **scores(data.target[te], predictions[key],
                                              data.groups[te], data.groups[masks["train"]])}
               for key, label in METHODS}
    overlays = [] if args.no_plots else draw_overlays(out, cropper, crops, data, te, predictions)
    results = make_results(args, cropper, masks, methods, overlays,
                           time.perf_counter() - start)
    write_json(out / "results.json", results)
    print_results(args, results, out)
    return results
