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

from ..paper.benchmarks import BENCHMARK_SETTINGS
from . import common, reporting, reproduce
from .common import CLIError, OptionError, info
from .results import (
    COLUMN_NOTE,
    fit_dfr,
    fit_lr,
    format_groups,
    format_table,
    score_columns,
    scores,
    split_masks,
    write_json,
)

DESCRIPTION = (
    "Run one benchmark as the paper does: crops from the attention model, embeddings from the "
    "embedding model, a head fitted on the train split (lr: logistic regression; dfr: DFR(Val) "
    "on the val split when the dataset has one, else DFR(Train) on the train split; zs: "
    "zero-shot CLIP with the class names, nothing fitted). Prints test accuracy, worst-group "
    "accuracy, the mean of the group accuracies and their train-weighted average (and "
    "worst-class accuracy for MetaShift Animals), with the images of each group."
)
CROPPERS = ("attention", "adapter", "center", "random", "none")
HEADS = {"lr": "LR", "dfr": "DFR", "zs": "zero-shot CLIP"}
ZS_CROP_SIZES = (128,)
#: Appendix H: the center-crop baseline is one 128 x 128 crop.
CENTER_CROP_SIZES = (128,)
#: The paper's embedding model per head (Table 1: A²_LR ViT-S x ViT-G, DFR + A² ViT-S x ViT-S).
ZS_EMBEDDING = "openclip_vitl14"
# The library's names, spelt out so that ``--help`` imports neither PyTorch nor scikit-learn
# (tests/test_cli_help.py checks that they agree):
CROP_SOURCES = ("resized", "original")  # sk_a2.original_crops.CROP_SOURCES
BENCHMARKS = tuple(BENCHMARK_SETTINGS)  # sk_a2.datasets.list_benchmarks()
DEFAULT_EMBEDDING = {"zs": ZS_EMBEDDING, "dfr": "dinov2_vits14", "lr": "dinov2_vitg14"}
CSV_PREFIX = "csv:"  # sk_a2.datasets.get_benchmark("csv:FILE"): your own images in a CSV file
CSV_OPTIONS = ("image_column", "target_column", "group_column", "split_column")


class DatasetNames(tuple):
    """The benchmark names; ``in`` also accepts ``csv:FILE`` (a user's own CSV file)."""

    def __contains__(self, value):
        return super().__contains__(value) or (
            isinstance(value, str) and value.startswith(CSV_PREFIX) and
            bool(value[len(CSV_PREFIX):].strip()))


def is_csv(args):
    """Whether ``--dataset`` is ``csv:FILE``."""
    return args.dataset.startswith(CSV_PREFIX)


def add_csv_options(parser):
    """The columns of ``--dataset csv:FILE`` (sk_a2.datasets.load_csv)."""
    group = parser.add_argument_group(
        "your own dataset (--dataset csv:FILE)",
        "a CSV file with a header and one row per image; relative image paths start at --root "
        "(default: the CSV's folder)")
    for dest, what in (("image", "the image paths (required)"),
                       ("target", "the classes (required)"),
                       ("group", "the spurious attribute; groups are the (class, attribute) "
                                 "pairs (default: each class is a group)"),
                       ("split", "train/val/test (default: a seeded draw of 20 %% of each "
                                 "group as test, seeded by --seed)")):
        group.add_argument(f"--{dest}-column", default=None, metavar="NAME",
                           help=f"column of {what}")


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "evaluate", description=DESCRIPTION,
        help="run one benchmark of the paper (Waterbirds, CelebA, Spawrious, MetaShift)",
    )
    parser.add_argument("--dataset", required=True, choices=DatasetNames(BENCHMARKS),
                        metavar="NAME",
                        help="benchmark: " + ", ".join(BENCHMARKS) + ", or csv:FILE for your "
                             "own images listed in a CSV file (see the --*-column options)")
    parser.add_argument("--root", default=None, metavar="DIR",
                        help="folder of the dataset's local copy, or its parent (the layouts "
                             "are in docs/datasets.md); required except with csv:FILE, where "
                             "it is the folder relative image paths start at (default: the "
                             "CSV's folder)")
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
                        help="seed of DFR, of the random cropper, of the adapter and of the "
                             "--val-size split (default: 0)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder where evaluate_<dataset>_<head>.json is written, created "
                             "if needed (default: print only)")
    common.add_overwrite_option(parser, "the results files")
    reporting.add_option(parser, "scores per group, the worst group's failures with the "
                                 "attention maps and boxes they were cropped by, and the "
                                 "tuning, compared rows and seeds of the protocol options",
                         needs_out=True)
    add_csv_options(parser)
    reproduce.add_options(parser)
    return parser


def get_benchmark(name, **csv_options):
    """:func:`sk_a2.datasets.get_benchmark`, imported when a run needs it."""
    from ..datasets import get_benchmark as benchmark_of

    return benchmark_of(name, **csv_options)


def dataset_benchmark(args):
    """The benchmark of ``--dataset``: one of the paper's, or ``csv:FILE`` with its columns
    (its drawn split, if any, seeded by ``--seed``)."""
    if not is_csv(args):
        return get_benchmark(args.dataset)
    return get_benchmark(args.dataset, random_state=args.seed,
                         **{dest: getattr(args, dest) for dest in CSV_OPTIONS})


def dataset_stem(args):
    """The dataset's part of the output file names: its name, or ``csv_<file stem>``."""
    return f"csv_{Path(args.dataset[len(CSV_PREFIX):]).stem}" if is_csv(args) else args.dataset


def dataset_root(args):
    """``--root`` with ``~`` expanded (``None`` when not given, for csv:FILE)."""
    return None if args.root is None else str(Path(args.root).expanduser())


def check_dataset(args):
    """``--root`` (required except with csv:FILE) and the csv: column options."""
    if is_csv(args):
        missing = [f"--{d.replace('_', '-')}" for d in CSV_OPTIONS[:2] if getattr(args, d) is None]
        if missing:
            raise OptionError(f"--dataset {args.dataset} needs {' and '.join(missing)}: the "
                              "columns of the image paths and of the classes")
        if not Path(args.dataset[len(CSV_PREFIX):]).expanduser().is_file():
            raise CLIError(f"--dataset {args.dataset}: the CSV file does not exist")
    elif args.root is None:
        raise OptionError(f"--dataset {args.dataset} needs --root: the folder of its local "
                          "copy (or its parent)")
    if args.root is not None and not Path(args.root).expanduser().is_dir():
        raise CLIError(f"--root {args.root!r} does not exist or is not a folder")


def plan(args):
    """The settings that follow from the options: benchmark, crop sizes, embedding model."""
    benchmark = dataset_benchmark(args)
    default_sizes = benchmark.crop_sizes
    if args.cropper == "center":
        default_sizes = ((args.center_crop_size,) if args.center_crop_size
                         else CENTER_CROP_SIZES)
    elif args.head == "zs":
        default_sizes = ZS_CROP_SIZES
    return SimpleNamespace(
        benchmark=benchmark,
        crop_sizes=args.crop_sizes or default_sizes,
        embedding_model=args.embedding_model or DEFAULT_EMBEDDING[args.head],
    )


# --------------------------------------------------------------------------------------------
# Checks before any work
# --------------------------------------------------------------------------------------------


def row_methods(args):
    """The crop methods the run evaluates, of ``full``, ``center``, ``random`` and ``a2`` (the
    attention cropper and the adapter)."""
    if reproduce.wanted(args):
        return reproduce.row_methods(args)
    return {"none": {"full"}, "center": {"center"}, "random": {"random"}}.get(args.cropper,
                                                                              {"a2"})


def _crop_rules(args, methods):
    """Rules of the options that shape the crops."""
    cropping = bool(methods - {"full"})
    full = "--cropper none embeds the full images, no crops"
    return [
        ("crop_sizes", cropping, full),
        ("crop_sizes", args.cropper != "adapter" or reproduce.wanted(args),
         "--cropper adapter chooses among its own candidate boxes (set their number with "
         "--n-crops)"),
        ("n_crops", cropping, full),
        ("n_crops", not args.tune, "--tune chooses the number of crops"),
        ("crop_source", cropping, full),
        ("center_crop_size", "center" in methods,
         "it sets the center-crop baseline (--cropper center, --compare), which this run has "
         "not"),
    ]


def _model_rules(args, methods):
    """Rules of the model options."""
    a2 = "a2" in methods
    return [
        ("attention_model", a2, f"--cropper {args.cropper} chooses no A² crops"),
        ("attention_weights", a2, f"--cropper {args.cropper} chooses no A² crops"),
        ("attention_model", not args.attention_models,
         "--attention-models names the attention models (weights as NAME=FILE there)"),
        ("attention_weights", not args.attention_models,
         "--attention-models names the attention models (weights as NAME=FILE there)"),
        ("embedding_model", not args.embedding_models,
         "--embedding-models names the embedding models (weights as NAME=FILE there)"),
        ("embedding_weights", not args.embedding_models,
         "--embedding-models names the embedding models (weights as NAME=FILE there)"),
    ]


def option_rules(args):
    """``(option dest, applies, reason)`` of every option that some runs ignore."""
    methods = row_methods(args)
    matrix = bool(args.attention_models or args.embedding_models)
    random_parts = (args.head == "dfr" or args.compare or "random" in methods
                    or args.cropper == "adapter" or args.val_size is not None
                    or (is_csv(args) and args.split_column is None))
    csv_only = "it applies to --dataset csv:FILE (a named benchmark has its own columns)"
    return [
        *_model_rules(args, methods), *_crop_rules(args, methods),
        ("cropper", not (reproduce.wanted(args) and (args.compare or matrix)),
         "--compare and the model matrix choose their own crops"),
        ("tune", "a2" in methods, "--tune searches A² crops, and this run chooses none "
                                  "(use --cropper attention, --compare or a model matrix)"),
        ("seed", random_parts, "nothing in this run is random (it seeds DFR, --cropper random "
                               "or adapter, the --val-size split and the split drawn for a "
                               "csv: dataset without --split-column)"),
        *[(dest, is_csv(args), csv_only) for dest in CSV_OPTIONS],
        ("val_size", args.head != "zs", "--head zs fits nothing on train or val"),
        ("classnames", args.head == "zs", "it applies to --head zs only"),
        ("overwrite", args.out is not None, "it applies with --out (without it nothing is "
                                            "written)"),
    ]


def check_options(args, benchmark):
    """Options that would be ignored, or that contradict each other, or the dataset."""
    common.refuse_ignored(args, option_rules(args))
    reporting.check_option(args)
    if args.cropper == "center" and args.crop_sizes and args.center_crop_size \
            and not args.compare:
        raise OptionError("--crop-sizes and --center-crop-size both set the crops of --cropper "
                          "center: give one of them")
    if args.cropper == "adapter" and args.head == "zs":
        raise OptionError("--cropper adapter learns from labels: use it with --head lr or dfr")
    if args.val_size is not None and not reproduce.takes_val_size(benchmark):
        raise OptionError(f"--val-size: {args.dataset} has its own val split; the option "
                          "applies to Spawrious, MetaShift and csv: datasets")


def output_names(args):
    """The files the run writes to ``--out``."""
    stem = f"{dataset_stem(args)}_{args.head}"
    names = [f"evaluate_{stem}.json"]
    if args.attention_models or args.embedding_models:
        names += [f"matrix_{stem}.csv", f"matrix_{stem}.png"]
    return names + reporting.output_names(args)


def check_outputs(args, cache_default):
    """``--out`` and a ``--cache`` folder under the path rule; no earlier results overwritten."""
    common.check_cache(args.cache if args.cache is not None else cache_default)
    out = common.check_out_dir(args.out)
    common.check_overwrite(out, output_names(args), args.overwrite)
    reporting.check_file(args, out)


def check(args, settings):
    """Every check that needs no data and no model."""
    check_options(args, settings.benchmark)
    check_dataset(args)
    models = {"--embedding-model": settings.embedding_model}
    if args.cropper in ("attention", "adapter"):
        models["--attention-model"] = args.attention_model
    common.check_extras("evaluate", [common.model_extra(m) for m in models.values()])
    common.check_device(args.device)
    common.check_image_size(args.image_size, models)
    if args.cropper != "none":
        common.check_crop_sizes(settings.crop_sizes, args.image_size)
    if args.head == "zs":
        zero_shot_class()
        check_text_tower(settings.embedding_model)
    check_outputs(args, "none")


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
    """The dataset as arrays, its split masks and the split the head is fitted on; with
    ``--val-size``, a val split held out of train (seeded by ``--seed``)."""
    data = settings.benchmark.loader(dataset_root(args), **reproduce.val_size_kwargs(args))
    masks = split_masks(data.split, ("train", "test"))
    fit_split = "val" if args.head == "dfr" and masks["val"].any() else "train"
    y = np.asarray(data.target)
    if args.head != "zs" and len(np.unique(y[masks[fit_split]])) < 2:
        raise CLIError(f"the {fit_split!r} split of {args.dataset} has a single class")
    sizes = ", ".join(f"{s} {int(m.sum())}" for s, m in masks.items() if m.any())
    info(f"{args.dataset}: {sizes} images")
    return SimpleNamespace(images=np.asarray(data.images, dtype=object), y=y,
                           groups=np.asarray(data.groups), target_names=data.target_names,
                           group_names=getattr(data, "group_names", None), masks=masks,
                           fit_split=fit_split)


def build_cropper(args, crop_sizes):
    """The cropper of ``--cropper`` (``None`` for ``none``), not fitted."""
    from ..baselines import CenterCropper, RandomCropper
    from ..cropper import AttentionCropper

    shared = dict(crop_sizes=crop_sizes, n_crops=args.n_crops, image_size=args.image_size)
    cache = common.cache_value(args.cache, "none")
    if args.cropper == "attention":
        return AttentionCropper(args.attention_model, weights=args.attention_weights,
                                verbose=True, cache=cache, **shared,
                                **common.runtime_kwargs(args))
    if args.cropper == "adapter":
        from ..adapter import AttentionAdapter

        return AttentionAdapter(args.attention_model, plan(args).embedding_model,
                                attention_weights=args.attention_weights,
                                embedding_weights=args.embedding_weights,
                                n_crops=args.n_crops or len(crop_sizes), image_size=args.image_size,
                                batch_size=args.batch_size, device=args.device, cache=cache,
                                random_state=args.seed, verbose=True)
    if args.cropper == "center":
        return CenterCropper(**shared)
    if args.cropper == "random":
        return RandomCropper(**shared, random_state=args.seed)
    return None


def crop_inputs(args, cropper, images, fit=None, view=None):
    """The head's inputs: ``images`` (file paths) or their crops.

    ``fit``: the (images, labels) an adapter learns from; ``view``: with ``--report``, a dict
    that keeps the crops and the attention maps they were chosen from (one attention pass)."""
    inputs = images.tolist()
    if cropper is None:
        return inputs
    with common.model_errors("--attention-model", "--attention-weights"):
        cropper.fit(*([fit[0].tolist(), fit[1]] if args.cropper == "adapter" else []))
        info(f"choosing {args.cropper} crops {list(cropper.crop_sizes_)}")
        if view is not None:
            return reporting.crop(cropper, inputs, view)
        return cropper.transform(inputs)


def build_embedder(args, model):
    """The (unfitted) :class:`~sk_a2.CropEmbedder` of ``model``."""
    from ..embedder import CropEmbedder

    return CropEmbedder(model, weights=args.embedding_weights, image_size=args.image_size,
                        crop_source=args.crop_source, verbose=True,
                        cache=common.cache_value(args.cache, "none"),
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


def predict_linear(args, settings, data, cropper, view=None):
    """Embed the fit and test images (or crops), fit the head; test predictions (``view``: see
    :func:`crop_inputs`; it also keeps the head's confidences)."""
    fit, te = data.masks[data.fit_split], data.masks["test"]
    rows = np.flatnonzero(fit | te)
    inputs = crop_inputs(args, cropper, data.images[rows], (data.images[fit], data.y[fit]),
                         view)
    info(f"embedding with {settings.embedding_model}")
    with common.model_errors("--embedding-model", "--embedding-weights"):
        features = build_embedder(args, settings.embedding_model).fit_transform(inputs)
    row_of = np.full(len(data.images), -1, dtype=np.int64)  # image index -> row of features
    row_of[rows] = np.arange(len(rows))
    head = fit_head(args, data, features[row_of[fit]])
    if view is not None:
        reporting.keep_head(view, head, features[row_of[te]], row_of[te])
    return head.predict(features[row_of[te]])


def predict_zero_shot(args, settings, data, cropper, view=None):
    """Zero-shot CLIP predictions on the test images (or crops) (``view``: see
    :func:`crop_inputs`; it also keeps the probabilities)."""
    ZeroShot = zero_shot_class()
    train, te = data.masks["train"], data.masks["test"]
    inputs = crop_inputs(args, cropper, data.images[te], view=view)
    classnames = args.classnames or [str(data.target_names[c]) for c in np.unique(data.y[train])]
    with common.model_errors("--embedding-model", "--embedding-weights"):
        model = ZeroShot(settings.embedding_model, weights=args.embedding_weights,
                         classnames=classnames, image_size=args.image_size,
                         crop_source=args.crop_source, verbose=True,
                         cache=common.cache_value(args.cache, "none"),
                         **common.runtime_kwargs(args))
        model.fit(data.images[train].tolist(), data.y[train])
        info(f"zero-shot classification with {settings.embedding_model}")
        if view is not None:
            return reporting.predict_with_proba(model, inputs, view)
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
    """Print the table and the groups; write the JSON file when ``--out`` is given."""
    print(f"{args.dataset}: {results['n_test']} test images")
    print(format_table([(results["method"], results)], columns))
    print(f"({COLUMN_NOTE})")
    print(format_groups(results["per_group"]))
    if args.out is not None:
        path = write_json(Path(args.out).expanduser() / output_names(args)[0], results)
        info(f"wrote {path}")


def run(args):
    """The ``evaluate`` subcommand; returns the results (also written to ``--out``)."""
    if reproduce.wanted(args):
        return reproduce.run(args, dataset_benchmark(args))
    settings = plan(args)
    check(args, settings)
    start = time.perf_counter()
    data = build_data(args, settings)
    cropper = build_cropper(args, settings.crop_sizes)
    predict = predict_zero_shot if args.head == "zs" else predict_linear
    view = {} if args.report else None
    pred = predict(args, settings, data, cropper, view)
    te = data.masks["test"]
    all_scores = scores(data.y[te], pred, data.groups[te], data.groups[data.masks["train"]])
    columns = score_columns(settings.benchmark.report_worst_class)
    results = make_results(args, settings, data, cropper,
                           {c: all_scores[c] for c in (*columns, "per_group")})
    results["elapsed_seconds"] = round(time.perf_counter() - start, 1)
    write_results(args, results, columns)
    if view is not None:
        reporting.write_evaluate(args, settings, data, cropper, pred, view, results)
    return results
