"""``--report`` of ``sk-a2 evaluate`` and ``sk-a2 localize``: ``report.html`` in ``--out``.

The page is :func:`sk_a2.report.write_report`'s: the run's settings, the headline scores with
the paper's values where the run matched a reported row, the groups, the confusion matrix, the
worst group's failures with their attention maps, boxes and crops, and with the protocol options
the tuning table, the compared rows and the spread over seeds; for ``localize``, the
localization measurement.

No model runs for the report. The boxes and the attention maps they were chosen from come from
the run's own attention pass (:func:`sk_a2.report.crops_and_maps` in place of the cropper's
``transform``), the confidences from the fitted head on the features the run computed. With the
protocol options the run's content cache gives the maps back; with ``--cache none`` the protocol
keeps no maps, and the report shows the boxes without heat maps (and says so).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import CLIError, OptionError, info

REPORT_NAME = "report.html"
_NO_MAPS = "not shown: with --cache none the protocol keeps no attention maps (boxes only)"


def add_option(parser, what, needs_out):
    """``--report``: also write ``report.html`` (the run's settings and ``what``) into
    ``--out``."""
    parser.add_argument(
        "--report", action="store_true",
        help=f"also write {REPORT_NAME}, one self-contained HTML page of the run, into --out"
             + (" (needed)" if needs_out else "") + f": its settings and {what}; no model runs "
             "again for it")


def output_names(args):
    """``[report.html]`` with ``--report``."""
    return [REPORT_NAME] if args.report else []


def check_option(args):
    """``--report`` writes into ``--out``: refused without it (``evaluate`` has no default)."""
    if args.report and args.out is None:
        raise OptionError(f"--report needs --out DIR: {REPORT_NAME} is written there")


def check_file(args, out):
    """A ``report.html`` in ``--out`` (there with ``--overwrite``) that sk_a2 did not write is
    never replaced: refused before any work."""
    if not args.report or out is None:
        return
    from ..report import MARKER

    path = Path(out) / REPORT_NAME
    if path.is_dir():
        raise CLIError(f"--out {str(out)!r} holds a folder {REPORT_NAME}: move it away or "
                       "pass another --out")
    if path.exists():
        with open(path, "rb") as handle:
            head = handle.read(256)
        if MARKER.encode() not in head:
            raise CLIError(f"--out {str(out)!r} holds {REPORT_NAME}, which sk-a2 did not "
                           "write: it is never replaced, --overwrite or not; move it away or "
                           "pass another --out")


# --------------------------------------------------------------------------------------------
# What a run keeps for its report
# --------------------------------------------------------------------------------------------


def crop(cropper, inputs, view):
    """The cropper's crops of ``inputs`` and the attention maps they were chosen from, one
    attention pass (:func:`sk_a2.report.crops_and_maps`); kept in ``view``."""
    from ..report import crops_and_maps

    crops, maps = crops_and_maps(cropper, inputs)
    view.update(crops=crops, maps=maps)
    return crops


def keep_head(view, head, X_test, test_rows=None):
    """The head's confidences on the test inputs ``X_test`` (features: no model runs);
    ``test_rows``: the test images' positions in ``view["crops"]``."""
    if hasattr(head, "predict_proba"):
        view.update(proba=np.asarray(head.predict_proba(X_test)),
                    classes=np.asarray(head.classes_))
    view["test_rows"] = test_rows


def predict_with_proba(model, inputs, view):
    """A head that runs a model (zero-shot CLIP): its probabilities, and the predictions from
    them, in one pass."""
    proba = np.asarray(model.predict_proba(inputs))
    classes = np.asarray(model.classes_)
    view.update(proba=proba, classes=classes)
    return classes[np.argmax(proba, axis=1)]


# --------------------------------------------------------------------------------------------
# Settings shown
# --------------------------------------------------------------------------------------------


def _model(name, weights):
    return name if weights is None else f"{name} ({weights})"


def _precision(device):
    from ..device import resolve_device
    from ..precision import resolve_precision

    dev = resolve_device(device)
    return (f"attention {resolve_precision('auto', dev, 'attention')}, "
            f"embedding {resolve_precision('auto', dev, 'embedding')}")


def _runtime(args, cache_default):
    from .common import cache_keyword

    cache = args.cache if args.cache is not None else cache_default
    return {"device": args.device, "precision": _precision(args.device),
            "batch size": args.batch_size,
            "cache": cache_keyword(cache) or str(cache)}


def _splits(data_groups, data_y, masks):
    """``split_groups`` (the other splits) and ``split_labels`` (every split) of the report."""
    groups = {s: data_groups[m] for s, m in masks.items() if s != "test" and m.any()}
    labels = {s: data_y[m] for s, m in masks.items() if m.any()}
    return groups, labels


def _write(path, **params):
    from ..report import write_report

    written = write_report(path, **params)
    info(f"wrote {written}")
    return written


# --------------------------------------------------------------------------------------------
# evaluate, one run
# --------------------------------------------------------------------------------------------


def _evaluate_metadata(args, settings, data, cropper, results, maps):
    attention = args.cropper in ("attention", "adapter")
    meta = {"dataset": args.dataset, "test images": results["n_test"],
            "method": results["method"], "cropper": args.cropper}
    if attention:
        meta["attention model"] = _model(args.attention_model, args.attention_weights)
    meta["embedding model"] = _model(settings.embedding_model, args.embedding_weights)
    if cropper is not None:
        meta.update({"crop sizes": list(cropper.crop_sizes_), "crop source": args.crop_source})
    meta.update({"image size": args.image_size, "head": results["config"]["head"],
                 "fit split": data.fit_split, "seed": args.seed,
                 **_runtime(args, "none"), "elapsed seconds": results.get("elapsed_seconds")})
    if attention and maps is None:
        meta["attention maps"] = f"not shown: --cropper {args.cropper} gives boxes only"
    return meta


def write_evaluate(args, settings, data, cropper, pred, view, results):
    """``report.html`` of a run of ``sk-a2 evaluate`` without the protocol options."""
    te = data.masks["test"]
    crops, maps, rows = view.get("crops"), view.get("maps"), view.get("test_rows")
    if crops is not None and rows is not None:
        crops, maps = crops[rows], None if maps is None else maps[rows]
    split_groups, split_labels = _splits(data.groups, data.y, data.masks)
    return _write(
        Path(args.out).expanduser() / REPORT_NAME,
        metadata=_evaluate_metadata(args, settings, data, cropper, results, maps),
        y_true=data.y[te], y_pred=pred, groups=data.groups[te], proba=view.get("proba"),
        classes=view.get("classes"), target_names=list(data.target_names),
        group_names=getattr(data, "group_names", None), split_groups=split_groups,
        split_labels=split_labels, images=None if crops is not None else data.images[te].tolist(),
        crops=crops, attention_maps=maps, image_size=args.image_size,
        crop_source=args.crop_source)


# --------------------------------------------------------------------------------------------
# evaluate with the protocol options
# --------------------------------------------------------------------------------------------


def _shown_row(args, rows, matrix):
    """The row whose test predictions the page shows: the A² row of ``--head`` (else that
    head's first row, else the first), or the matrix's first cell."""
    if not rows:
        return matrix.cells[min(matrix.cells)]
    for wanted in (lambda r: r["method"] == "a2" and r["head"] == args.head,
                   lambda r: r["head"] == args.head):
        found = [r for r in rows if wanted(r)]
        if found:
            return found[0]
    return rows[0]


def _spec_of(proto, row):
    """The :class:`~sk_a2.paper.protocol.RowSpec` of a row the protocol ran."""
    for spec in proto.last_fits:
        config = spec.config()
        if spec.key == row["key"] and all(row.get(k) == v for k, v in config.items()):
            return spec
    raise CLIError(f"the report cannot find the fitted head of the row {row['label']!r}")


def _protocol_view(proto, spec):
    """Predictions, confidences, crops and maps of ``spec``'s last seed, from what the run
    kept: the fitted head, the memoised features and crops, the cached attention maps."""
    from ..report import crops_and_maps

    data, test = proto.data, proto.data.mask("test")
    seed, head, pred = proto.last_fits[spec]
    view = {"seed": seed, "pred": pred, "images": data.images[test].tolist()}
    if spec.head != "zs":
        keep_head(view, head, proto.features(spec, seed)[test])
    if spec.method == "full":
        return view
    _, crops = proto.crops(spec, seed)  # memoised: no model runs
    view["crops"], view["maps"] = crops[test], None
    if spec.head == "zs" and proto.cache is not None:  # embeddings read back from the cache
        view.update(proba=np.asarray(head.predict_proba(view["crops"])),
                    classes=np.asarray(head.classes_))
    if spec.method == "a2" and proto.cache is not None:  # maps read back from the cache
        view["crops"], view["maps"] = crops_and_maps(proto.cropper(spec, seed).fit(),
                                                     view["images"])
    return view


def _protocol_metadata(args, settings, proto, spec, row, seeds, view):
    v = settings.values
    meta = {"dataset": args.dataset, "test images": int(proto.data.mask("test").sum()),
            "row shown": row["label"], "seeds": seeds, "seed shown": view["seed"],
            "preset": args.preset or "none",
            "overridden by options": ", ".join(settings.overrides) or "none",
            "attention model": None if spec.attention is None else str(spec.attention),
            "embedding model": str(spec.embedding),
            "crop sizes": None if spec.crop_sizes is None else list(spec.crop_sizes),
            "n crops": spec.n_crops, "layer": spec.layer, "crop source": spec.crop_source,
            "image size": v["image_size"], "head": spec.head,
            "fit split": proto.fit_split(spec.head), "DFR mode": proto.dfr_mode}
    if spec.head == "lr":
        meta["C"] = spec.C
    meta.update(_runtime(args, "memory"))
    if spec.method == "a2" and view.get("maps") is None:
        meta["attention maps"] = _NO_MAPS
    return {k: val for k, val in meta.items() if val is not None}


def _compare_rows(rows, matrix):
    """The compared rows, and the matrix's cells, each once."""
    out, seen = [], set()
    cells = [] if matrix is None else [matrix.cells[k] for k in sorted(matrix.cells)]
    for row in [*rows, *cells]:
        if (row["key"], row["label"]) not in seen:
            seen.add((row["key"], row["label"]))
            out.append(row)
    return out if len(out) > 1 else None


def write_protocol(args, settings, proto, seeds, rows, tuned, matrix):
    """``report.html`` of a run of ``sk-a2 evaluate`` with the protocol options."""
    row = _shown_row(args, rows, matrix)
    spec = _spec_of(proto, row)
    view = _protocol_view(proto, spec)
    data, test = proto.data, proto.data.mask("test")
    masks = {s: data.mask(s) for s in ("train", "val", "test")}
    split_groups, split_labels = _splits(data.groups, data.y, masks)
    return _write(
        Path(args.out).expanduser() / REPORT_NAME,
        metadata=_protocol_metadata(args, settings, proto, spec, row, seeds, view),
        y_true=data.y[test], y_pred=view["pred"], groups=data.groups[test],
        proba=view.get("proba"), classes=view.get("classes"),
        target_names=list(data.target_names) or None,
        group_names=getattr(data, "group_names", None), split_groups=split_groups,
        split_labels=split_labels, images=None if view.get("crops") is not None else view["images"],
        crops=view.get("crops"), attention_maps=view.get("maps"),
        image_size=settings.values["image_size"], crop_source=spec.crop_source,
        per_seed=row.get("per_seed"), reported=row.get("reported"),
        tuning=tuned, compare=_compare_rows(rows, matrix))


# --------------------------------------------------------------------------------------------
# localize
# --------------------------------------------------------------------------------------------


def write_localize(args, out, reports, payload):
    """``report.html`` of ``sk-a2 localize``: its settings and the measurement."""
    meta = {"dataset": args.dataset, "images": payload["n_images"],
            "models": ", ".join(args.models),
            "weights": ", ".join(args.weights) if args.weights else "pretrained",
            "head aggregations": ", ".join(args.head_aggregation),
            "blocks": args.layers if isinstance(args.layers, str)
            else ", ".join(map(str, args.layers)),
            "image size": args.image_size, "seed": args.seed,
            "clipped boxes": payload.get("n_clipped_boxes", 0),
            **_runtime(args, "none"), "elapsed seconds": payload.get("elapsed_seconds")}
    return _write(out / REPORT_NAME, metadata=meta, localization=reports,
                  title=f"Localization report: {args.dataset}")
