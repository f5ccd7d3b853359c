"""``sk-a2 evaluate``: one benchmark of the paper, as the paper runs it.

The steps are separate functions so that options can be added to each: :func:`plan` (defaults
that depend on other options), :func:`check` (before any work), :func:`build_data`,
:func:`build_cropper`, :func:`build_embedder`, :func:`fit_head`, :func:`make_results` and
:func:`write_results`.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..datasets import get_benchmark, list_benchmarks
from . import common, reproduce
from .common import CLIError, info
from .results import fit_dfr, fit_lr, format_table, scores, split_masks, write_json

DESCRIPTION = (
    "Run one benchmark as the paper does: crops from the attention model, embeddings from the "
    "embedding model, a head fitted on the train split (lr: logistic regression; dfr: DFR(Val) "
    "on the val split when the dataset has one, else DFR(Train) on the train split; zs: "
    "zero-shot CLIP with the class names, nothing fitted). Prints test accuracy and worst-group "
    "accuracy (and worst-class accuracy for MetaShift Animals)."
)
CROPPERS = ("attention", "adapter", "center", "random", "none")
HEADS = {"lr": "LR", "dfr": "DFR", "zs": "zero-shot CLIP"}
ZS_CROP_SIZES = (128,)
#: Appendix H: the center-crop baseline is one 128 x 128 crop.
CENTER_CROP_SIZES = (128,)
#: The paper's embedding model per head (Table 1: A²_LR ViT-S x ViT-G, DFR + A² ViT-S x ViT-S).
ZS_EMBEDDING = "openclip_vitl14"
CROP_SOURCES = ("resized", "original")  # sk_a2.original_crops.CROP_SOURCES, without torch
DEFAULT_EMBEDDING = {"zs": ZS_EMBEDDING, "dfr": "dinov2_vits14", "lr": "dinov2_vitg14"}


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate", description=DESCRIPTION,
        help="run one benchmark of the paper (Waterbirds, CelebA, Spawrious, MetaShift)",
    )
    names = list_benchmarks()
    parser.add_argument("--dataset", required=True, choices=names, metavar="NAME",
                        help="benchmark: " + ", ".join(names))
    parser.add_argument("--root", required=True, metavar="DIR",
                        help="folder of the dataset's local copy (see the loaders in "
                             "sk_a2.datasets for the expected layouts)")
    common.add_model_options(parser, "attention", "dinov2_vits14",
                             "whose CLS attention picks the crops")
    common.add_model_options(parser, "embedding", None, "embedding the crops",
                             "dinov2_vitg14 for --head lr, dinov2_vits14 for --head dfr, "
                             "openclip_vitl14 for --head zs, which needs an open_clip CLIP "
                             "model")
    parser.add_argument("--cropper", choices=CROPPERS, default="attention",
                        help="how crops are chosen: attention (A²), adapter (A² with an "
                             "attention adapter learned on the fit split, Appendix G), center or "
                             "random (the paper's baselines), none (full image only) (default: "
                             "attention)")
    common.add_crop_options(parser, None, "the paper's: 64 for Waterbirds and CelebA, 64,32 "
                                          "for Spawrious and MetaShift, 128 for --head zs "
                                          "and for --cropper center")
    parser.add_argument("--head", choices=tuple(HEADS), default="lr",
                        help="classifier: lr (logistic regression), dfr (DFR), zs (zero-shot "
                             "CLIP) (default: lr)")
    parser.add_argument("--classnames", nargs="+", default=None, metavar="NAME",
                        help="class names for --head zs, one per class of the train split in "
                             "label order (default: the dataset's target names)")
    common.add_image_size_option(parser, 224)
    parser.add_argument("--crop-source", choices=CROP_SOURCES, default="resized",
                        help="cut crops from the image resized to --image-size (the paper's "
                             "way) or from the original pixels (default: resized)")
    common.add_runtime_options(parser, workers=True)
    parser.add_argument("--seed", type=int, default=0, metavar="INT",
                        help="seed of DFR and of the random cropper (default: 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder where evaluate_<dataset>_<head>.json is written (default: "
                             "print only)")
    reproduce.add_options(parser)
    return parser


def plan(args):
    """The settings that follow from the options: benchmark, crop sizes, embedding model."""
    benchmark = get_benchmark(args.dataset)
    default_sizes = benchmark.crop_sizes
    if args.head == "zs":
        default_sizes = ZS_CROP_SIZES
    elif args.cropper == "center":
        default_sizes = CENTER_CROP_SIZES
    return SimpleNamespace(
        benchmark=benchmark,
        crop_sizes=args.crop_sizes or default_sizes,
        embedding_model=args.embedding_model or DEFAULT_EMBEDDING[args.head],
    )


def check(args, settings):
    """Every check that needs no data and no model."""
    common.check_out_dir(args.out)
    if not Path(args.root).expanduser().is_dir():
        raise CLIError(f"--root {args.root!r} does not exist or is not a folder")
    models = {"--embedding-model": settings.embedding_model}
    if args.cropper in ("attention", "adapter"):
        models["--attention-model"] = args.attention_model
    if args.cropper == "adapter" and args.head == "zs":
        raise CLIError("--cropper adapter learns from labels: use it with --head lr or dfr")
    common.check_extras("evaluate", [common.model_extra(m) for m in models.values()])
    common.check_device(args.device)
    common.check_image_size(args.image_size, models)
    if args.cropper != "none":
        common.check_crop_sizes(settings.crop_sizes, args.image_size)
    if args.classnames is not None and args.head != "zs":
        raise CLIError("--classnames applies to --head zs only")
    if args.head == "zs":
        zero_shot_class()
        check_text_tower(settings.embedding_model)


def check_text_tower(model):
    """``--head zs`` needs an embedding model that also encodes text (a CLIP model)."""
    from ..backends import get_backend
    from ..models import resolve_model_spec

    if not get_backend(resolve_model_spec(model).library).has_text_tower:
        raise CLIError(f"--head zs needs a CLIP model with a text encoder as --embedding-model "
                       f"(e.g. {ZS_EMBEDDING} or 'open_clip:<arch>:<tag>'), got {model!r}")


def zero_shot_class():
    try:
        from ..zeroshot import ZeroShotCLIPClassifier
    except ImportError as exc:
        raise CLIError(
            "--head zs needs sk_a2.zeroshot.ZeroShotCLIPClassifier, which cannot be imported in "
            f"this installation ({exc})"
        ) from None
    return ZeroShotCLIPClassifier


def build_data(args, settings):
    """The dataset as arrays, its split masks and the split the head is fitted on."""
    data = settings.benchmark.loader(str(Path(args.root).expanduser()))
    masks = split_masks(data.split, ("train", "test"))
    fit_split = "val" if args.head == "dfr" and masks["val"].any() else "train"
    y = np.asarray(data.target)
    if args.head != "zs" and len(np.unique(y[masks[fit_split]])) < 2:
        raise CLIError(f"the {fit_split!r} split of {args.dataset} has a single class")
    sizes = ", ".join(f"{s} {int(m.sum())}" for s, m in masks.items() if m.any())
    info(f"{args.dataset}: {sizes} images")
    return SimpleNamespace(images=np.asarray(data.images, dtype=object), y=y,
                           groups=np.asarray(data.groups), target_names=data.target_names,
                           masks=masks, fit_split=fit_split)


def build_cropper(args, crop_sizes):
    """The cropper of ``--cropper`` (``None`` for ``none``), not fitted."""
    from ..baselines import CenterCropper, RandomCropper
    from ..cropper import AttentionCropper

    shared = dict(crop_sizes=crop_sizes, n_crops=args.n_crops, image_size=args.image_size)
    if args.cropper == "attention":
        return AttentionCropper(args.attention_model, weights=args.attention_weights,
                                verbose=True, **shared, **common.runtime_kwargs(args))
    if args.cropper == "adapter":
        from ..adapter import AttentionAdapter

        return AttentionAdapter(args.attention_model, plan(args).embedding_model,
                                attention_weights=args.attention_weights,
                                embedding_weights=args.embedding_weights,
                                n_crops=args.n_crops or len(crop_sizes), image_size=args.image_size,
                                batch_size=args.batch_size, device=args.device,
                                random_state=args.seed, verbose=True)
    if args.cropper == "center":
        return CenterCropper(**shared)
    if args.cropper == "random":
        return RandomCropper(**shared, random_state=args.seed)
    return None


def crop_inputs(args, cropper, images, fit=None):
    """The head's inputs: ``images`` (file paths) or their crops.

    ``fit``: the (images, labels) an adapter learns from."""
    inputs = images.tolist()
    if cropper is None:
        return inputs
    with common.model_errors("--attention-model", "--attention-weights"):
        cropper.fit(*([fit[0].tolist(), fit[1]] if args.cropper == "adapter" else []))
        info(f"choosing {args.cropper} crops {list(cropper.crop_sizes_)}")
        return cropper.transform(inputs)


def build_embedder(args, model):
    """The (unfitted) :class:`~sk_a2.CropEmbedder` of ``model``."""
    from ..embedder import CropEmbedder

    return CropEmbedder(model, weights=args.embedding_weights, image_size=args.image_size,
                        crop_source=args.crop_source, verbose=True,
                        **common.runtime_kwargs(args))


def head_label(args, data):
    if args.head == "dfr":
        return f"DFR({data.fit_split.capitalize()})"
    return HEADS[args.head]


def fit_head(args, data, X_fit):
    """Fit LR or DFR on ``X_fit``, the features of the fit split's images."""
    fit = data.masks[data.fit_split]
    info(f"fitting {head_label(args, data)} on the {data.fit_split} split")
    if args.head == "lr":
        return fit_lr(X_fit, data.y[fit])
    return fit_dfr(X_fit, data.y[fit], data.groups[fit], data.fit_split, args.seed)


def predict_linear(args, settings, data, cropper):
    """Embed the fit and test images (or crops), fit the head; test predictions."""
    fit, te = data.masks[data.fit_split], data.masks["test"]
    rows = np.flatnonzero(fit | te)
    inputs = crop_inputs(args, cropper, data.images[rows], (data.images[fit], data.y[fit]))
    info(f"embedding with {settings.embedding_model}")
    with common.model_errors("--embedding-model", "--embedding-weights"):
        features = build_embedder(args, settings.embedding_model).fit_transform(inputs)
    row_of = np.full(len(data.images), -1, dtype=np.int64)  # image index -> row of features
    row_of[rows] = np.arange(len(rows))
    return fit_head(args, data, features[row_of[fit]]).predict(features[row_of[te]])


def predict_zero_shot(args, settings, data, cropper):
    """Zero-shot CLIP predictions on the test images (or crops)."""
    ZeroShot = zero_shot_class()
    train, te = data.masks["train"], data.masks["test"]
    inputs = crop_inputs(args, cropper, data.images[te])
    classnames = args.classnames or [str(data.target_names[c]) for c in np.unique(data.y[train])]
    with common.model_errors("--embedding-model", "--embedding-weights"):
        model = ZeroShot(settings.embedding_model, weights=args.embedding_weights,
                         classnames=classnames, image_size=args.image_size,
                         crop_source=args.crop_source, verbose=True,
                         **common.runtime_kwargs(args))
        model.fit(data.images[train].tolist(), data.y[train])
        info(f"zero-shot classification with {settings.embedding_model}")
        return model.predict(inputs)


def method_label(args, settings, data, cropper):
    if cropper is None:
        what = "full image"
    elif args.cropper == "attention":
        what = f"A² crops {list(cropper.crop_sizes_)} by {args.attention_model}"
    else:
        what = f"{args.cropper} crops {list(cropper.crop_sizes_)}"
    return f"{what} -> {settings.embedding_model} + {head_label(args, data)}"


def make_results(args, settings, data, cropper, values):
    """The content of the JSON file: configuration and scores."""
    return {
        "dataset": args.dataset,
        "n_test": int(data.masks["test"].sum()),
        "method": method_label(args, settings, data, cropper),
        "config": {
            "cropper": args.cropper,
            "attention_model": (args.attention_model
                                if args.cropper in ("attention", "adapter") else None),
            "embedding_model": settings.embedding_model,
            "crop_sizes": None if cropper is None else list(cropper.crop_sizes_),
            "head": head_label(args, data),
            "fit_split": data.fit_split,
            "image_size": int(args.image_size),
            "crop_source": args.crop_source,
            "seed": int(args.seed),
        },
        **values,
    }


def write_results(args, results, columns):
    """Print the table; write the JSON file when ``--out`` is given."""
    print(f"{args.dataset}: {results['n_test']} test images")
    print(format_table([(results["method"], results)], columns))
    if args.out is not None:
        path = write_json(Path(args.out) / f"evaluate_{args.dataset}_{args.head}.json", results)
        info(f"wrote {path}")


def run(args):
    """The ``evaluate`` subcommand; returns the results (also written to ``--out``)."""
    if reproduce.wanted(args):
        return reproduce.run(args, get_benchmark(args.dataset))
    settings = plan(args)
    check(args, settings)
    start = time.perf_counter()
    data = build_data(args, settings)
    cropper = build_cropper(args, settings.crop_sizes)
    predict = predict_zero_shot if args.head == "zs" else predict_linear
    pred = predict(args, settings, data, cropper)
    te = data.masks["test"]
    all_scores = scores(data.y[te], pred, data.groups[te])
    columns = ["accuracy", "worst_group_accuracy"]
    if settings.benchmark.report_worst_class:
        columns.append("worst_class_accuracy")
    results = make_results(args, settings, data, cropper, {c: all_scores[c] for c in columns})
    results["elapsed_seconds"] = round(time.perf_counter() - start, 1)
    write_results(args, results, columns)
    return results
