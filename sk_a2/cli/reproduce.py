"""The paper-protocol options of ``sk-a2 evaluate``: presets, seeds, tuning, matrices, compare.

Any of ``--preset``, ``--seeds``, ``--tune``, ``--compare``, ``--attention-models`` or
``--embedding-models`` runs the evaluation through :class:`sk_a2.paper.protocol.Protocol`: each
configuration (row) is evaluated once per seed, with mean ± std over seeds, and the paper's
reported value beside it where the configuration matches a row of the paper
(:mod:`sk_a2.paper.reported`). Crops and embeddings are computed once per image and box (the content
cache, ``--cache``), whatever the number of seeds, rows or tuning candidates.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from ..paper.presets import paper_preset
from ..paper.protocol import (
    EvalData,
    ModelRef,
    Protocol,
    RowSpec,
    apply_tuned,
    compare_specs,
    default_tune_grid,
    parse_model_list,
)
from . import common, reporting
from .common import CLIError, OptionError, info
from .results import COLUMN_NOTE, format_groups, write_json

PRESETS = ("paper",)
_METHOD_OF_CROPPER = {"attention": "a2", "center": "center", "random": "random", "none": "full"}
_TITLES = {"accuracy": "test accuracy", "worst_group_accuracy": "worst-group",
           "mean_group_accuracy": "group mean", "train_weighted_accuracy": "train-weighted",
           "worst_class_accuracy": "worst-class"}
#: The metrics of the cross-model matrix (one table each); the rows show them all.
_MATRIX_METRICS = ("accuracy", "worst_group_accuracy", "worst_class_accuracy")


def add_options(parser):
    """The option group of the paper's protocol."""
    group = parser.add_argument_group(
        "paper protocol", "seeds, tuning on validation, cross-model matrices and the rows of a "
                          "paper table, with the paper's reported values beside the measured ones")
    group.add_argument("--preset", choices=PRESETS, default=None,
                       help="the paper's settings for --dataset and --head (crop sizes, models, "
                            "DFR mode, 128 px center crop, 5 seeds), each printed and written "
                            "to the JSON file; explicit options override them")
    group.add_argument("--seeds", type=common.positive_int, default=None, metavar="N",
                       help="repeat the stochastic parts (DFR resampling, random crops) N times "
                            "with seeds --seed .. --seed+N-1 and report mean ± std (default: 5 "
                            "with --preset paper, else 1)")
    group.add_argument("--tune", action="store_true",
                       help="choose A²'s crop count, crop sizes, attention layer and C on the "
                            "val split (GridSearchCV, worst-group or worst-class scorer), then "
                            "refit on train and score on test")
    group.add_argument("--compare", action="store_true",
                       help="the rows of a paper table: full image, center crop, random crops "
                            "and A², and A² with crops cut from the original pixels, each "
                            "with LR and DFR, same splits and seeds")
    group.add_argument("--attention-models", default=None, metavar="M[,M...]",
                       help="cross-model matrix: attention models, each NAME or "
                            "NAME=WEIGHTS_FILE, comma-separated (default: --attention-model)")
    group.add_argument("--embedding-models", default=None, metavar="M[,M...]",
                       help="cross-model matrix: embedding models, each NAME or "
                            "NAME=WEIGHTS_FILE (default: --embedding-model)")
    group.add_argument("--center-crop-size", type=common.positive_int, default=None,
                       metavar="PX", help="side of the center-crop baseline's one crop "
                                          "(default: 128, Appendix H)")
    group.add_argument("--val-size", type=common.fraction, default=None, metavar="F",
                       help="for datasets without a val split (Spawrious, MetaShift): hold out "
                            "this group-stratified fraction of train as val, in (0, 1), e.g. "
                            "0.2 (seeded by --seed); DFR is then fitted on it (DFR(Val)) unless "
                            "--preset paper says DFR(Train), and --tune scores on it")
    group.add_argument("--cache", default=None, metavar="memory|none|DIR",
                       help="content cache of attention maps and embeddings: memory, none (in "
                            "any case), or a folder kept between runs, created if needed (a "
                            "folder named like a keyword as ./memory) (default: memory "
                            "with the options of this group, none without)")
    # the parser's defaults, to tell options given explicitly from defaults
    parser.set_defaults(protocol_defaults={attr: parser.get_default(attr)
                                           for _, attr, _ in _OVERRIDES})


def wanted(args) -> bool:
    """Whether the options ask for the protocol."""
    return bool(args.preset or args.seeds or args.tune or args.compare
                or args.attention_models or args.embedding_models)


def row_methods(args):
    """The crop methods the protocol run evaluates (rows, matrix cells, tuning)."""
    if args.compare:
        return {"full", "center", "random", "a2"}
    if args.attention_models or args.embedding_models:
        return {"a2"}
    return {_METHOD_OF_CROPPER.get(args.cropper, "a2")}


def takes_val_size(benchmark) -> bool:
    """Whether the benchmark's loader holds a val split out of train (``val_size=``)."""
    try:
        return "val_size" in inspect.signature(benchmark.loader).parameters
    except (TypeError, ValueError):
        return False


def val_size_kwargs(args):
    """The loader's keyword arguments for ``--val-size`` (split seeded by ``--seed``)."""
    if args.val_size is None:
        return {}
    return {"val_size": args.val_size, "random_state": args.seed}


# --------------------------------------------------------------------------------------------
# Settings: preset, then explicit options
# --------------------------------------------------------------------------------------------

_OVERRIDES = (  # (preset field, option attribute, option name)
    ("attention_model", "attention_model", "--attention-model"),
    ("embedding_model", "embedding_model", "--embedding-model"),
    ("crop_sizes", "crop_sizes", "--crop-sizes"),
    ("image_size", "image_size", "--image-size"),
    ("seeds", "seeds", "--seeds"),
    ("center_crop_sizes", "center_crop_size", "--center-crop-size"),
)


def resolve_settings(args, parser_defaults, benchmark):
    """The effective settings: the preset (if any), explicit options overriding it."""
    preset = None
    if args.preset:
        try:
            preset = paper_preset(args.dataset, args.head)
        except ValueError as exc:
            raise CLIError(f"--preset {args.preset}: {exc}") from None
    base = _defaults(args, benchmark) if preset is None else preset.to_dict()
    if preset is not None:  # DFR rows (--compare) follow the paper's DFR mode for the dataset
        dfr = paper_preset(args.dataset, "dfr")
        base.update(dfr_mode=dfr.dfr_mode, dfr_tune_fraction=dfr.dfr_tune_fraction)
    overrides = []
    for field, attr, option in _OVERRIDES:
        value = getattr(args, attr)
        if value is not None and value != parser_defaults.get(attr):
            value = list(value) if isinstance(value, tuple) else value
            value = [value] if field == "center_crop_sizes" else value
            if value != base[field]:
                overrides.append(option)
            base[field] = value
    base["random_crop_sizes"] = list(base["crop_sizes"]) if args.crop_sizes else \
        base["random_crop_sizes"]
    if args.cropper == "center" and args.crop_sizes and args.center_crop_size is None:
        base["center_crop_sizes"] = list(args.crop_sizes)  # the one row's crops, as without
    return SimpleNamespace(preset=preset, values=base, overrides=overrides)


def _defaults(args, benchmark):
    """Settings without a preset: the paper's crop sizes, one seed, DFR mode from the data."""
    zs = args.head == "zs"
    sizes = [128] if zs else list(benchmark.crop_sizes)
    embedding = {"lr": "dinov2_vitg14", "dfr": "dinov2_vits14", "zs": "openclip_vitl14"}
    return {"name": None, "dataset": args.dataset, "head": args.head,
            "attention_model": args.attention_model, "embedding_model": embedding[args.head],
            "crop_sizes": sizes, "center_crop_sizes": [128], "random_crop_sizes": sizes,
            "image_size": args.image_size, "fit_split": None, "dfr_mode": None,
            "dfr_tune_fraction": None, "seeds": 1,
            "metric": "worst_class_accuracy" if benchmark.report_worst_class
            else "worst_group_accuracy"}


def model_lists(args, values):
    """Attention and embedding models as :class:`ModelRef` lists, names checked up front."""
    attention = [ModelRef(values["attention_model"], args.attention_weights)]
    embedding = [ModelRef(values["embedding_model"], args.embedding_weights)]
    for option, attr in (("--attention-models", "attention_models"),
                         ("--embedding-models", "embedding_models")):
        text = getattr(args, attr)
        if text is not None:
            try:
                refs = parse_model_list(text, option)
            except ValueError as exc:
                raise CLIError(str(exc)) from None
            if attr == "attention_models":
                attention = refs
            else:
                embedding = refs
    for ref in attention + embedding:
        common.model_extra(ref.name)
    return attention, embedding


def check(args, settings, attention, embedding, benchmark):
    """Checks before any work."""
    from . import evaluate

    evaluate.check_options(args, benchmark)
    evaluate.check_dataset(args)
    if args.cropper not in _METHOD_OF_CROPPER:
        raise OptionError(f"--cropper {args.cropper} does not combine with --preset, --seeds, "
                          "--tune, --compare or the model lists; run it without them")
    if args.head == "zs" and (args.tune or args.compare):
        raise OptionError("--tune and --compare fit LR and DFR heads; use them with --head lr "
                          "or dfr")
    common.check_device(args.device)
    image_size = settings.values["image_size"]
    for option, refs in (("attention model", attention), ("embedding model", embedding)):
        for ref in refs:
            common.check_image_size(image_size, {option: ref.name})
    common.check_crop_sizes(settings.values["crop_sizes"], image_size)
    center = settings.values["center_crop_sizes"][0]
    if (args.compare or args.cropper == "center") and center > image_size:
        raise CLIError(f"the center crop ({center} px) is larger than --image-size {image_size}: "
                       "set --center-crop-size")
    if args.compare or args.attention_models or args.embedding_models:
        common.check_extras("evaluate", ["plot"] if args.out and (
            args.attention_models or args.embedding_models) else [])
    evaluate.check_outputs(args, "memory")


# --------------------------------------------------------------------------------------------
# Data and runs
# --------------------------------------------------------------------------------------------


def load_data(args, benchmark):
    """The dataset as :class:`EvalData`; ``--val-size`` goes to loaders that take it."""
    from .evaluate import dataset_root

    bunch = benchmark.loader(dataset_root(args), **val_size_kwargs(args))
    data = EvalData.from_bunch(args.dataset, bunch)
    data.group_names = getattr(bunch, "group_names", None)  # shown by --report
    for split in ("train", "test"):
        data.require(split, "evaluate")
    sizes = ", ".join(f"{s} {int(data.mask(s).sum())}" for s in ("train", "val", "test"))
    info(f"{args.dataset}: {sizes} images")
    return data


def make_protocol(args, settings, data):
    v = settings.values
    return Protocol(
        data, cache=common.cache_value(args.cache, "memory"), image_size=v["image_size"],
        batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
        dfr_mode=v["dfr_mode"], dfr_tune_fraction=v["dfr_tune_fraction"], metric=v["metric"],
        classnames=args.classnames, log=info)


def row_specs(args, settings, attention, embedding):
    """The rows to evaluate: the compare rows, or the one row of ``--cropper``."""
    v = settings.values
    a, e = attention[0], embedding[0]
    if args.compare:
        specs = compare_specs(a, e, crop_sizes=tuple(v["crop_sizes"]),
                              center_crop_sizes=tuple(v["center_crop_sizes"]),
                              random_crop_sizes=tuple(v["random_crop_sizes"]),
                              crop_source=args.crop_source)
        return [replace(s, n_crops=args.n_crops) if s.method == "a2" else s for s in specs]
    method = _METHOD_OF_CROPPER[args.cropper]
    sizes = {"full": None, "center": v["center_crop_sizes"], "random": v["random_crop_sizes"],
             "a2": v["crop_sizes"]}[method]
    return [RowSpec(method, args.head, e, a if method == "a2" else None,
                    None if sizes is None else tuple(sizes), args.n_crops,
                    crop_source=args.crop_source)]


def run_tuning(args, proto, settings, attention, embedding):
    """The validation search; prints the chosen setting and the best candidates."""
    v = settings.values
    spec = RowSpec("a2", "lr", embedding[0], attention[0], tuple(v["crop_sizes"]),
                   crop_source=args.crop_source)
    try:
        proto.data.require("val", "--tune", "Hold one out of train with --val-size 0.2 "
                                            "(Spawrious, MetaShift).")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    from sklearn.model_selection import ParameterGrid

    grid = default_tune_grid(spec.crop_sizes, v["image_size"])
    info(f"tuning on the val split: {len(ParameterGrid(grid))} settings")
    with common.model_errors("--attention-model", "--attention-weights"):
        tuned = proto.tune(spec, grid)
    best = {k.split("__")[1]: v for k, v in tuned.best_params.items()}
    print(f"Validation search ({_TITLES[tuned.metric]} on val): chosen {best}, "
          f"score {100 * tuned.best_score:.1f}%")
    for row in sorted(tuned.table, key=lambda r: r["rank"])[:10]:
        params = {k.split("__")[1]: v for k, v in row["params"].items()}
        print(f"  {row['rank']:>3}  {100 * row['score']:5.1f}%  {params}")
    return tuned


def apply_tuning(specs, tuned):
    """A² rows take the tuned crops, layer (and C for LR); other rows are unchanged."""
    if tuned is None:
        return specs
    return [apply_tuned(s, tuned.best_params) if s.method == "a2" else s for s in specs]


def columns_of(settings):
    cols = ["accuracy", "worst_group_accuracy", "mean_group_accuracy", "train_weighted_accuracy"]
    if settings.values["metric"] == "worst_class_accuracy":
        cols.append("worst_class_accuracy")
    return cols


def _cell(row, metric):
    if row["mean"].get(metric) is None:  # train-weighted, when no test group is in train
        return "—"
    text = f"{100 * row['mean'][metric]:5.1f} ± {100 * row['std'][metric]:3.1f}"
    reported = row["reported"].get(metric)
    if reported:
        first = reported[0]
        std = "" if first["std"] is None else f" ± {first['std']:.1f}"
        text += f" [T{first['table']}: {first['value']:.1f}{std}]"
    else:
        text += " [—]"
    return text


def format_rows(rows, columns):
    """Measured mean ± std over seeds, and the paper's value [T<table>: value] beside it."""
    width = max(len("method"), *(len(r["label"]) for r in rows))
    cells = [[_cell(r, c) for c in columns] for r in rows]
    cw = max(len(_TITLES[c]) for c in columns)
    cw = max(cw, *(len(x) for row in cells for x in row))
    lines = ["  ".join([f"{'method':<{width}}"] + [f"{_TITLES[c]:>{cw}}" for c in columns])]
    lines.append("-" * len(lines[0]))
    for r, row in zip(rows, cells):
        lines.append("  ".join([f"{r['label']:<{width}}"] + [f"{x:>{cw}}" for x in row]))
    lines.append("(mean ± std over seeds, in %; [T<n>: value] is the paper's Table n, "
                 "[—] no reported row matches)")
    return "\n".join(lines)


def run_matrix(args, proto, settings, attention, embedding, seeds, tuned):
    """The cross-model matrix: printed, and written as CSV and a heat map with ``--out``."""
    v = settings.values
    spec = apply_tuning([RowSpec("a2", args.head, embedding[0], attention[0],
                                 tuple(v["crop_sizes"]), args.n_crops)], tuned)[0]
    with common.model_errors("--attention-models", "--embedding-models"):
        matrix = proto.cross_model_matrix(attention, embedding, head=args.head,
                                          crop_sizes=spec.crop_sizes, n_crops=spec.n_crops,
                                          layer=spec.layer, C=spec.C, seeds=seeds,
                                          crop_source=args.crop_source)
    files = []
    for metric in [m for m in columns_of(settings) if m in _MATRIX_METRICS]:
        print(f"\nCross-model matrix, {_TITLES[metric]} (%), rows = attention, "
              "columns = embedding:")
        print(matrix.format(metric))
    if args.out is not None:
        from ..plot import save_figure
        from .evaluate import dataset_stem

        stem = Path(args.out).expanduser() / f"matrix_{dataset_stem(args)}_{args.head}"
        files.append(str(matrix.to_csv(stem.with_suffix(".csv"))))
        metric = v["metric"]
        fig = matrix.plot(metric, title=f"{args.dataset}: {_TITLES[metric]} (%)")
        files.append(str(save_figure(fig, stem.with_suffix(".png"), dpi=110)))
        info(f"wrote {', '.join(files)}")
    return matrix, files


def make_results(args, settings, proto, seeds, rows, tuned, matrix):
    return {
        "dataset": args.dataset, "head": args.head,
        "n_images": {s: int(proto.data.mask(s).sum()) for s in ("train", "val", "test")},
        "preset": None if settings.preset is None else settings.preset.to_dict(),
        "settings": {**settings.values, "seeds": seeds, "dfr_mode": proto.dfr_mode,
                     "crop_source": args.crop_source,
                     "fit_split": {h: proto.fit_split(h) for h in ("lr", "dfr")}},
        "overridden_by_options": settings.overrides,
        "tuning": None if tuned is None else tuned.to_dict(),
        "rows": rows,
        "matrix": None if matrix is None else matrix.to_dict(),
    }


def print_settings(settings):
    v = settings.values
    source = "preset paper" if settings.preset is not None else "defaults"
    info(f"settings ({source}" + (f"; overridden: {', '.join(settings.overrides)}"
                                  if settings.overrides else "") + "):")
    for key, value in v.items():
        print(f"  {key}: {value}")


def run(args, benchmark):
    """``sk-a2 evaluate`` with the protocol options; returns the results."""
    start = time.perf_counter()
    settings = resolve_settings(args, args.protocol_defaults, benchmark)
    attention, embedding = model_lists(args, settings.values)
    check(args, settings, attention, embedding, benchmark)
    print_settings(settings)
    seeds = [args.seed + i for i in range(int(settings.values["seeds"]))]
    data = load_data(args, benchmark)
    proto = make_protocol(args, settings, data)
    tuned = run_tuning(args, proto, settings, attention, embedding) if args.tune else None
    matrix, files, rows = None, [], []
    if args.attention_models or args.embedding_models:
        matrix, files = run_matrix(args, proto, settings, attention, embedding, seeds, tuned)
    if args.compare or matrix is None:
        specs = apply_tuning(row_specs(args, settings, attention, embedding), tuned)
        with common.model_errors("--embedding-model", "--embedding-weights"):
            rows = proto.run_rows(specs, seeds)
        print(f"\n{args.dataset}: {int(data.mask('test').sum())} test images, "
              f"{len(seeds)} seed(s)")
        print(format_rows(rows, columns_of(settings)))
        print(f"({COLUMN_NOTE})")
        if rows and rows[0].get("per_group"):  # the images of each group (same in every row)
            print(format_groups({g: {k: v for k, v in c.items() if k != "accuracy"}
                                 for g, c in rows[0]["per_group"].items()}))
    results = make_results(args, settings, proto, seeds, rows, tuned, matrix)
    results["files"] = files
    results["elapsed_seconds"] = round(time.perf_counter() - start, 1)
    if args.out is not None:
        from .evaluate import output_names

        path = write_json(Path(args.out).expanduser() / output_names(args)[0], results)
        info(f"wrote {path}")
    if args.report:
        reporting.write_protocol(args, settings, proto, seeds, rows, tuned, matrix)
    return results
