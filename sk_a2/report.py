"""One self-contained HTML page of an evaluation run: ``report.html``.

:func:`~sk_a2.write_report` takes what a run computed: its settings, the test labels,
predictions and confidences with the group of each image, the test images with the attention
maps and boxes the run chose (a :class:`~sk_a2.CropSet`), and, when there are any, the
validation search, the compared methods, a localization measurement and the paper's values. It
writes one HTML file:

* the run's settings;
* the headline: worst-group accuracy, test accuracy, the average weighted by the train groups'
  sizes (when the train groups are given) and the unweighted mean of the group accuracies, each
  with the paper's value beside it where one is given and the spread over seeds where there are
  several;
* per group: train / val / test counts and test accuracy, as a table and a bar chart, worst
  group marked; the confusion matrix;
* the worst group's failures: up to ``n_failures`` misclassified test images of the worst group
  (the most confident mistakes first) and a few correct ones, each with the attention heat map,
  the boxes, the crops as the embedding model saw them, the true and predicted label and the
  head's confidence;
* the tuning table and the chosen setting, the compared methods, and the localization
  measurement (mass in box per layer, and its per-image distribution at the last layer).

Everything is inside the file: images are JPEG thumbnails (quality :data:`JPEG_QUALITY`) as
``data:`` URIs, charts are inline SVG, the style sheet is inline; nothing is fetched, so the file
opens from disk in any browser and prints to PDF. Only the images shown are embedded, so the size
does not grow with the number of test images (about 1 MB with 24 failures and 3 crops each,
random-noise images included).

:func:`~sk_a2.report_from_estimators` runs fitted estimators on a test split and writes the
report: the cropper runs once (:func:`~sk_a2.report.crops_and_maps` gives the boxes and the
attention maps they were chosen from, from one pass), and the embedding model and head run as
``predict`` runs them.
"""

from __future__ import annotations

import base64
import html
import inspect
import io
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "JPEG_QUALITY",
    "SECTIONS",
    "crops_and_maps",
    "report_from_estimators",
    "write_report",
]

#: JPEG quality of the embedded thumbnails.
JPEG_QUALITY = 80
#: Longer side, in pixels, of an image thumbnail with its heat map and boxes.
THUMB_SIZE = 192
#: Side, in pixels, of a crop thumbnail.
CROP_THUMB_SIZE = 80
#: Opacity of the attention heat map over the image.
HEATMAP_ALPHA = 0.45
#: ``(id, title)`` of every section a report can have, in page order.
SECTIONS = (
    ("run", "Run"),
    ("headline", "Headline"),
    ("groups", "Groups"),
    ("confusion", "Confusion matrix"),
    ("failures", "Worst group: failures"),
    ("tuning", "Tuning"),
    ("compare", "Compared methods"),
    ("localization", "Localization"),
)
#: The first line after the doctype of every report; a file without it is never overwritten.
MARKER = "<!-- sk-a2 evaluation report -->"
_BOX_COLORS = ("#00ff66", "#00d0ff", "#ffdd00", "#ff3df5", "#ff7a00", "#ffffff")
#: Anchors of the heat map's colour scale (black, purple, red, orange, pale yellow).
_HEAT = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
                  [245, 125, 21], [250, 193, 39], [252, 255, 164]], dtype=np.float32)
_METRIC_LABELS = {
    "worst_group_accuracy": "Worst-group accuracy",
    "accuracy": "Test accuracy",
    "train_weighted_accuracy": "Average accuracy, weighted by train group sizes",
    "mean_group_accuracy": "Mean of the group accuracies (unweighted)",
    "worst_class_accuracy": "Worst-class accuracy",
}
_ROW_METRICS = ("accuracy", "worst_group_accuracy", "worst_class_accuracy")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _vector(name, values, n=None, what="y_true"):
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.ravel()
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per image), got shape {array.shape}")
    if n is not None and len(array) != n:
        raise ValueError(f"{name} has {len(array)} entries and {what} has {n}: give one per "
                         "test image, in the same order")
    return array


def _predictions(y_true, y_pred, groups, proba, classes):
    """The test labels, predictions, groups and confidences, checked; None without them."""
    given = [v is not None for v in (y_true, y_pred, groups)]
    if not any(given):
        if proba is not None:
            raise ValueError("proba was given without y_true, y_pred and groups")
        return None
    if not all(given):
        raise ValueError("y_true, y_pred and groups go together: give all three (or none of "
                         "them, for a report of a localization measurement only)")
    y = _vector("y_true", y_true)
    if not len(y):
        raise ValueError("y_true is empty: the report needs at least one test image")
    pred, groups = _vector("y_pred", y_pred, len(y)), _vector("groups", groups, len(y))
    out = {"y": y, "pred": pred, "groups": groups, "proba": None, "confidence": None,
           "classes": np.unique(np.concatenate([y, pred])) if classes is None
           else _vector("classes", classes)}
    if proba is not None:
        out.update(_confidences(proba, pred, out["classes"], classes is None))
    return out


def _confidences(proba, pred, classes, guessed):
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or len(proba) != len(pred):
        raise ValueError(f"proba must have shape ({len(pred)}, n_classes), one row per test "
                         f"image, got {proba.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("proba holds NaN or infinite values")
    if proba.shape[1] != len(classes):
        hint = (" (the classes found in y_true and y_pred): pass classes=, the head's classes_"
                if guessed else " in classes")
        raise ValueError(f"proba has {proba.shape[1]} columns but there are {len(classes)} "
                         f"classes{hint}, in the order of proba's columns")
    column = {c.item() if isinstance(c, np.generic) else c: j for j, c in enumerate(classes)}
    missing = [p for p in pred.tolist() if p not in column]
    if missing:
        raise ValueError(f"y_pred holds {missing[0]!r}, which is not one of classes "
                         f"{classes.tolist()}")
    cols = np.asarray([column[p] for p in pred.tolist()])
    return {"proba": proba, "confidence": proba[np.arange(len(pred)), cols]}


def _images(images, crops, attention_maps, n):
    """``(sources, boxes or None, maps or None)`` of the test images, checked."""
    if crops is not None:
        if not all(hasattr(crops, a) for a in ("images", "boxes", "image_sizes")):
            raise ValueError(f"crops must be a CropSet (a cropper's output), got "
                             f"{type(crops).__name__}")
        if n is not None and len(crops) != n:
            raise ValueError(f"crops has {len(crops)} images and y_true has {n}: give the "
                             "CropSet of the test images, in the same order")
    if images is None and crops is not None:
        images = crops.images
    if images is not None:
        from .images import as_sources

        images = as_sources(images, name="images")
        if n is not None and len(images) != n:
            raise ValueError(f"images has {len(images)} entries and y_true has {n}: give the "
                             "test images, in the same order")
    maps = None
    if attention_maps is not None:
        maps = np.asarray(attention_maps, dtype=np.float32)
        if maps.ndim != 3 or (n is not None and len(maps) != n):
            raise ValueError(f"attention_maps must have shape ({n}, grid_h, grid_w), one map "
                             f"per test image, got {maps.shape}")
        if not np.isfinite(maps).all():
            raise ValueError("attention_maps holds NaN or infinite values")
    return images, None if crops is None else np.asarray(crops.boxes), maps


def _percent_value(name, entry):
    """``(value, std, where)`` of a reported value given in percent."""
    if hasattr(entry, "to_dict"):
        entry = entry.to_dict()
    std, where = None, ""
    if isinstance(entry, dict):
        if "value" not in entry:
            raise ValueError(f"{name} is a dict without 'value': give {{'value': percent, "
                             "'table': ...}} or a number")
        std, where = entry.get("std"), f"Table {entry['table']}" if entry.get("table") else ""
        entry = entry["value"]
    try:
        value = float(entry)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in percent, got {entry!r}") from None
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"{name} is {value}: reported values are percentages in [0, 100], as "
                         "in the paper's tables")
    return value, std, where


def _reported(reported):
    """``{metric: (value %, std, where)}`` of the paper's values."""
    out = {}
    for metric, entry in dict(reported or {}).items():
        if metric not in _METRIC_LABELS:
            raise ValueError(f"reported has the key {metric!r}; known metrics: "
                             f"{', '.join(_METRIC_LABELS)}")
        if isinstance(entry, (list, tuple)):
            if not entry:
                continue
            entry = entry[0]
        out[metric] = _percent_value(f"reported[{metric!r}]", entry)
    return out


def _dict_rows(name, rows, what):
    """``rows`` (None or a sequence of dicts) as a list; ``name[i]`` named if one is no dict."""
    rows = list(rows or ())
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{name}[{i}] must be a dict ({what}), got {type(row).__name__}")
    return rows


def _split_counts(split_groups, name="split_groups"):
    """``{split: {group: count}}``."""
    out = {}
    for split, values in dict(split_groups or {}).items():
        array = _vector(f"{name}[{split!r}]", values)
        labels, counts = np.unique(array, return_counts=True)
        out[str(split)] = {_plain(g): int(c) for g, c in zip(labels, counts)}
    return out


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _namer(names):
    """A function label -> display name, from a dict or a sequence indexed by the label."""
    if names is None:
        return str
    if isinstance(names, dict):
        return lambda label: str(names.get(_plain(label), label))
    names = list(names)

    def name(label):
        label = _plain(label)
        if isinstance(label, (int, np.integer)) and 0 <= label < len(names):
            return str(names[label])
        return str(label)

    return name


def _localization_columns(localization):
    from .localization import report_columns

    try:
        cols = report_columns(localization)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"localization must be localization_report results (a DataFrame, "
                         f"Bunch or dict of columns, or a list of them): {exc}") from None
    for column in ("layer", "mass_in_box"):
        if column not in cols:
            raise ValueError(f"localization lacks the column {column!r}: pass "
                             "sk_a2.localization.localization_report results")
    n = len(cols["layer"])
    cols.setdefault("model", np.full(n, "model", dtype=object))
    cols.setdefault("head_aggregation", np.full(n, "", dtype=object))
    return cols


def _tuning(tuning):
    if tuning is None:
        return None
    data = tuning.to_dict() if hasattr(tuning, "to_dict") else tuning
    if not isinstance(data, dict) or "best_params" not in data:
        raise ValueError("tuning must be a Protocol.tune result (TuneResult) or its to_dict(): "
                         "a dict with 'best_params' and 'validation_table'")
    return data


def _check_path(path):
    """``path`` as a Path; an existing file that is not a report is refused."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a folder: give the report's file name, e.g. "
                         f"{str(path / 'report.html')!r}")
    if path.exists():
        with open(path, "rb") as handle:
            head = handle.read(256)
        if MARKER.encode() not in head:
            raise ValueError(f"path {str(path)!r} exists and is not a report written by sk_a2: "
                             "remove it or choose another file name")
    return path


def _options(n_failures=24, n_correct=4, image_size=None, crop_source="resized"):
    if crop_source not in ("resized", "original"):
        raise ValueError(f"crop_source must be 'resized' or 'original', got {crop_source!r}")
    if image_size is not None and (isinstance(image_size, bool)
                                   or not isinstance(image_size, (int, np.integer))
                                   or image_size < 1):
        raise ValueError(f"image_size must be None or a positive int, got {image_size!r}")
    return {"n_failures": _check_count("n_failures", n_failures),
            "n_correct": _check_count("n_correct", n_correct),
            "image_size": image_size, "crop_source": crop_source}


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------


def _scores(pred, split_counts):
    """The group report and the headline values of the test predictions."""
    from .metrics import group_accuracy_report, worst_class_accuracy

    report = group_accuracy_report(pred["y"], pred["pred"], groups=pred["groups"])
    values = {"worst_group_accuracy": report.worst, "accuracy": report.mean,
              "mean_group_accuracy": report.balanced,
              "worst_class_accuracy": worst_class_accuracy(pred["y"], pred["pred"])}
    train = split_counts.get("train")
    if train:
        weights = np.asarray([train.get(g, 0) for g in report.groups], dtype=np.float64)
        if weights.sum() > 0:
            values["train_weighted_accuracy"] = float(weights @ np.asarray(report.accuracies)
                                                / weights.sum())
    return report, values


def _pct(value, digits=1):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * float(value):.{digits}f}%"


def _seed_spread(per_seed, metric):
    values = [float(row[metric]) for row in per_seed if metric in row]
    if len(values) < 2:
        return ""
    v = np.asarray(values)
    return (f"{100 * v.mean():.1f} ± {100 * v.std():.1f}% over {len(v)} seeds "
            f"({100 * v.min():.1f}–{100 * v.max():.1f})")


# --------------------------------------------------------------------------------------------
# HTML pieces
# --------------------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _table(name, header, rows, *, row_classes=None):
    """An HTML table; ``rows`` hold HTML cells (escape text before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        body.append(f"<tr{f' class={cls!r}' if cls else ''}>"
                    + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return (f'<table data-table="{_e(name)}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _format_value(value):
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_format_value(v) for v in list(value)) or "—"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(_plain(value))


def _run_section(metadata):
    from . import __version__

    meta = dict(metadata or {})
    meta.setdefault("sk_a2 version", __version__)
    meta.setdefault("written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))
    rows = [[_e(k), _e(_format_value(v))] for k, v in meta.items()]
    return _table("run", ["setting", "value"], rows)


def _headline_section(values, report, reported, per_seed, group_name):
    worst = group_name(report.worst_group)
    cards = []
    for metric in ("worst_group_accuracy", "accuracy", "train_weighted_accuracy",
                   "mean_group_accuracy"):
        if metric in values:
            paper = reported.get(metric)
            note = f"paper {paper[0]:.1f}%" if paper else ""
            cards.append(f'<div class="kpi{" worst" if metric.startswith("worst") else ""}">'
                         f'<div class="kpi-value">{_pct(values[metric])}</div>'
                         f'<div class="kpi-label">{_e(_METRIC_LABELS[metric])}</div>'
                         f'<div class="kpi-note">{_e(note)}</div></div>')
    rows = []
    for metric, label in _METRIC_LABELS.items():
        if metric not in values:
            continue
        paper = reported.get(metric)
        paper_text = "—" if paper is None else (
            f"{paper[0]:.1f}%" + (f" ± {paper[1]:.1f}" if paper[1] else "")
            + (f" ({paper[2]})" if paper[2] else ""))
        extra = f" (group {worst})" if metric == "worst_group_accuracy" else ""
        rows.append([_e(label + extra), _pct(values[metric]), _e(paper_text),
                     _e(_seed_spread(per_seed, metric) or "—")])
    return (f'<div class="kpis">{"".join(cards)}</div>'
            + _table("headline", ["metric", "this run", "paper", "over seeds"], rows))


def _groups_section(report, split_counts, split_labels, group_name, class_name):
    splits = [s for s in ("train", "val") if s in split_counts]
    splits += [s for s in split_counts if s not in splits and s != "test"]
    extra = [g for s in splits for g in split_counts[s] if g not in report.groups]
    rows, classes, bars = [], [], []
    for g in list(report.groups) + list(dict.fromkeys(extra)):
        i = report.groups.index(g) if g in report.groups else None
        acc = None if i is None else report.accuracies[i]
        n_test = 0 if i is None else report.sizes[i]
        is_worst = i is not None and g == report.worst_group
        rows.append([_e(group_name(g)) + (' <span class="tag">worst</span>' if is_worst else ""),
                     *[str(split_counts[s].get(g, 0)) for s in splits], str(n_test),
                     _pct(acc)])
        classes.append("worst" if is_worst else "")
        bars.append((group_name(g), acc, n_test, is_worst))
    header = ["group", *[f"{s} images" for s in splits], "test images", "test accuracy"]
    out = _table("groups", header, rows, row_classes=classes) + _svg_group_bars(bars)
    if split_labels:
        out += _class_counts(split_labels, class_name)
    return out


def _class_counts(split_labels, class_name):
    counts = _split_counts(split_labels, "split_labels")
    labels = list(dict.fromkeys(c for s in counts.values() for c in s))
    rows = [[_e(class_name(c)), *[str(counts[s].get(c, 0)) for s in counts]] for c in labels]
    return ("<h3>Images per class</h3>"
            + _table("classes", ["class", *[f"{s} images" for s in counts]], rows))


def _svg_group_bars(bars):
    """A horizontal bar per group: test accuracy, the worst group in red."""
    width, label_w, bar_w, row_h, top = 680, 210, 380, 26, 24
    height = top + row_h * len(bars) + 8
    out = [f'<svg class="chart" data-chart="group-accuracy" xmlns="http://www.w3.org/2000/svg" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="test accuracy per group">']
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        x = label_w + t * bar_w
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 4}" '
                   f'class="grid"/><text x="{x:.1f}" y="{top - 10}" class="tick">{t:.0%}</text>')
    for i, (name, acc, n, worst) in enumerate(bars):
        y = top + i * row_h
        short = name if len(name) <= 30 else name[:29] + "…"
        out.append(f'<text x="{label_w - 8}" y="{y + 17}" class="label">{_e(short)}'
                   f"<title>{_e(name)}</title></text>")
        if acc is not None:
            w = max(acc * bar_w, 1.0)
            out.append(f'<rect x="{label_w}" y="{y + 4}" width="{w:.1f}" height="{row_h - 8}" '
                       f'class="{"bar worst" if worst else "bar"}"><title>{_e(name)}: '
                       f'{_pct(acc)} of {n}</title></rect>')
            mark = "  ◀ worst" if worst else ""
            out.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 17}" class="value">'
                       f"{_pct(acc)}{mark}</text>")
    return "".join(out) + "</svg>"


def _confusion_section(pred, class_name):
    from sklearn.metrics import confusion_matrix

    classes = pred["classes"]
    if len(classes) > 40:
        return f"<p>{len(classes)} classes: too many for a table.</p>"
    matrix = confusion_matrix(pred["y"], pred["pred"], labels=classes)
    rows = []
    for i, c in enumerate(classes):
        total = max(int(matrix[i].sum()), 1)
        cells = [_e(class_name(c))]
        for j in range(len(classes)):
            share = matrix[i, j] / total
            style = f' style="background:rgba(31,78,121,{0.85 * share:.2f});' + (
                'color:#fff"' if share > 0.5 else '"')
            cells.append(f'<span class="cell{" diag" if i == j else ""}"{style}>'
                         f"{int(matrix[i, j])}</span>")
        rows.append(cells)
    header = ["true \\ predicted", *[_e(class_name(c)) for c in classes]]
    return _table("confusion", header, rows)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _heat_colors(values):
    """(h, w) values in [0, 1] -> (h, w, 3) float32 colours of the heat scale."""
    xs = np.linspace(0.0, 1.0, len(_HEAT))
    return np.stack([np.interp(values, xs, _HEAT[:, c]) for c in range(3)], axis=-1)


def _overlay(rgb, attention, boxes):
    """A thumbnail of ``rgb`` with its heat map and box outlines (PIL image)."""
    h, w = rgb.shape[:2]
    scale = THUMB_SIZE / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    img = Image.fromarray(rgb).resize((tw, th), Image.BILINEAR)
    if attention is not None:
        m = np.asarray(Image.fromarray(np.asarray(attention, np.float32), mode="F")
                       .resize((tw, th), Image.BILINEAR))
        m = m - m.min()
        m = m / m.max() if m.max() > 0 else m
        mixed = (1 - HEATMAP_ALPHA) * np.asarray(img, np.float32) \
            + HEATMAP_ALPHA * _heat_colors(m)
        img = Image.fromarray(np.clip(np.round(mixed), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    sx, sy = tw / w, th / h
    for j, (x0, y0, x1, y1) in enumerate(np.zeros((0, 4)) if boxes is None else boxes):
        draw.rectangle([x0 * sx, y0 * sy, max(x0 * sx, x1 * sx - 1), max(y0 * sy, y1 * sy - 1)],
                       outline=_BOX_COLORS[j % len(_BOX_COLORS)], width=2)
    return img


def _crop_views(rgb, boxes, image_size, crop_source):
    """Each box's crop as the embedding model saw it, as PIL thumbnails."""
    from .boxes import to_frame
    from .images import resize_rgb

    if image_size and crop_source == "resized":
        frame = resize_rgb(rgb, int(image_size))
        boxes = to_frame(boxes[None], [rgb.shape[:2]], int(image_size))[0]
    else:
        frame = rgb
    h, w = frame.shape[:2]
    views = []
    for x0, y0, x1, y1 in np.round(boxes).astype(np.int64):
        x0, x1 = np.clip([x0, x1], 0, w)
        y0, y1 = np.clip([y0, y1], 0, h)
        cut = frame[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
        views.append(Image.fromarray(np.ascontiguousarray(cut))
                     .resize((CROP_THUMB_SIZE, CROP_THUMB_SIZE), Image.BICUBIC))
    return views


def _data_uri(img):
    buffer = io.BytesIO()
    img.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(img, alt, cls, style=""):
    return (f'<img class="{cls}" src="{_data_uri(img)}" width="{img.width}" '
            f'height="{img.height}" alt="{_e(alt)}"{style}>')


def _source_name(source, i):
    if isinstance(source, (str, os.PathLike)):
        return f"#{i} · {Path(source).name}"
    return f"#{i}"


def _case(i, correct, pred, images, boxes, maps, opts, class_name):
    from .images import load_rgb

    rgb = load_rgb(images[i], i)
    box = None if boxes is None else boxes[i]
    parts = [_img(_overlay(rgb, None if maps is None else maps[i], box),
                  f"test image {i} with its attention and boxes", "overlay")]
    if box is not None and len(box):
        views = _crop_views(rgb, box, opts["image_size"], opts["crop_source"])
        parts.append('<div class="crops">' + "".join(
            _img(v, f"crop {j + 1} of test image {i}", "crop",
                 f' style="border-color:{_BOX_COLORS[j % len(_BOX_COLORS)]}"')
            for j, v in enumerate(views)) + "</div>")
    conf = pred["confidence"]
    caption = (f"<b>true</b> {_e(class_name(pred['y'][i]))} · <b>predicted</b> "
               f"{_e(class_name(pred['pred'][i]))}"
               + ("" if conf is None else f" · confidence {conf[i]:.2f}")
               + f'<br><span class="src">{_e(_source_name(images[i], i))}</span>')
    return (f'<figure class="case {"right" if correct else "wrong"}" data-index="{i}">'
            f'{"".join(parts)}<figcaption>{caption}</figcaption></figure>')


def _failure_indices(pred, worst, n_failures, n_correct):
    in_group = pred["groups"] == worst
    hit = pred["y"] == pred["pred"]
    wrong = np.flatnonzero(in_group & ~hit)
    if pred["confidence"] is not None:
        wrong = wrong[np.argsort(-pred["confidence"][wrong], kind="stable")]
    return wrong, wrong[:n_failures], np.flatnonzero(in_group & hit)[:n_correct]


def _failures_section(pred, report, images, boxes, maps, opts, group_name, class_name):
    worst = report.worst_group
    wrong, shown, right = _failure_indices(pred, worst, opts["n_failures"], opts["n_correct"])
    n_group = int((pred["groups"] == worst).sum())
    intro = (f"<p>Group <b>{_e(group_name(worst))}</b>: {len(wrong)} of {n_group} test images "
             f"misclassified; {len(shown)} shown"
             + (", most confident mistakes first" if pred["confidence"] is not None else "")
             + ". Heat map: the attention the crops were chosen from; outlines: the boxes, in "
             "the colours of the crops beside each image.</p>")
    if images is None:
        rows = [[str(i), _e(class_name(pred["y"][i])), _e(class_name(pred["pred"][i])),
                 "—" if pred["confidence"] is None else f"{pred['confidence'][i]:.2f}"]
                for i in shown]
        return intro + "<p>No images were given.</p>" + _table(
            "failures", ["test index", "true", "predicted", "confidence"], rows)
    cases = [_case(i, False, pred, images, boxes, maps, opts, class_name) for i in shown]
    good = [_case(i, True, pred, images, boxes, maps, opts, class_name) for i in right]
    out = intro + (f'<div class="cases">{"".join(cases)}</div>' if cases
                   else "<p>No misclassified image in this group.</p>")
    if good:
        out += (f"<h3>Correct, for contrast ({len(good)})</h3>"
                f'<div class="cases">{"".join(good)}</div>')
    return out


# --------------------------------------------------------------------------------------------
# Tuning, compare, localization
# --------------------------------------------------------------------------------------------


def _tuning_section(data):
    table = list(data.get("validation_table") or data.get("table") or [])
    best = dict(data.get("best_params") or {})
    metric = data.get("metric", "score")
    keys = list(dict.fromkeys(k for row in table for k in dict(row.get("params", {}))))
    table.sort(key=lambda r: (r.get("rank", 0), -float(r.get("score", 0))))
    rows, classes = [], []
    for row in table[:200]:
        params = dict(row.get("params", {}))
        rows.append([*[_e(_format_value(params.get(k))) for k in keys],
                     _pct(row.get("score")), _e(row.get("rank", ""))])
        classes.append("chosen" if params == best else "")
    chosen = "; ".join(f"{k} = {_format_value(v)}" for k, v in best.items())
    score = data.get("best_score")
    out = (f"<p>Chosen on the validation split by {_e(metric.replace('_', ' '))}: "
           f"<b>{_e(chosen) or '—'}</b> ({_pct(score)}).</p>")
    if len(table) > 200:
        out += f"<p>The 200 best of {len(table)} candidates.</p>"
    return out + _table("tuning", [*map(_e, keys), _e(metric.replace("_", " ")), "rank"], rows,
                        row_classes=classes)


def _compare_cell(row, metric):
    mean = row.get("mean", {}).get(metric) if isinstance(row.get("mean"), dict) \
        else row.get(metric)
    if mean is None:
        return "—"
    text = _pct(mean)
    std = row.get("std", {}).get(metric) if isinstance(row.get("std"), dict) else None
    if std and len(row.get("seeds", ())) > 1:
        text += f" ± {100 * float(std):.1f}"
    reported = dict(row.get("reported") or {}).get(metric)
    if reported:
        value, _, where = _percent_value(f"compare reported {metric}", reported[0]
                                         if isinstance(reported, (list, tuple)) else reported)
        text += f' <span class="paper">[paper {value:.1f}{f", {where}" if where else ""}]</span>'
    return text


def _compare_section(rows):
    metrics = [m for m in _ROW_METRICS
               if any(_compare_cell(r, m) != "—" for r in rows)]
    body = [[_e(r.get("label") or r.get("key") or f"row {i}"),
             *[_compare_cell(r, m) for m in metrics]] for i, r in enumerate(rows)]
    return _table("compare", ["method", *[_e(_METRIC_LABELS[m]) for m in metrics]], body)


def _series(cols):
    """``{(model, aggregation): {layer: row indices}}`` in order of appearance."""
    out = {}
    for i, (m, a, layer) in enumerate(zip(cols["model"], cols["head_aggregation"],
                                          cols["layer"])):
        out.setdefault((str(m), str(a)), {}).setdefault(int(layer), []).append(i)
    return out


def _localization_section(cols):
    series = _series(cols)
    mass = np.asarray(cols["mass_in_box"], dtype=np.float64)
    hit = np.asarray(cols["hit"], dtype=np.float64) if "hit" in cols else None
    rows, classes, hists = [], [], []
    for (model, agg), layers in series.items():
        last = max(layers)
        for layer in sorted(layers):
            idx = layers[layer]
            v = mass[idx]
            std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            rows.append([_e(model), _e(agg), str(layer), f"{v.mean():.3f} ± {std:.3f}",
                         "—" if hit is None else f"{hit[idx].mean():.3f}", str(len(idx))])
            classes.append("chosen" if layer == last else "")
        title = f"{model}{f' ({agg})' if agg else ''}, block {last}"
        hists.append(f"<figure class='hist'>{_svg_histogram(mass[layers[last]], title)}"
                     f"<figcaption>{_e(title)}: mass in box per image</figcaption></figure>")
    table = _table("localization", ["model", "head aggregation", "block", "mass in box",
                                    "hit rate", "images"], rows, row_classes=classes)
    return ("<p>Mass in box: the share of the upsampled attention inside the object's box; "
            "hit: its maximum lies inside. Mean ± standard deviation over images; the last "
            "block of each model is highlighted.</p>" + table + "".join(hists[:8]))


def _svg_histogram(values, title, bins=20):
    counts, _ = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    width, height, left, bottom, top = 560, 200, 40, 28, 10
    plot_w, plot_h = width - left - 10, height - top - bottom
    peak = max(int(counts.max()), 1)
    out = [f'<svg class="chart" data-chart="histogram" xmlns="http://www.w3.org/2000/svg" '
           f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{_e(title)}">']
    bar = plot_w / bins
    for k, c in enumerate(counts):
        h = plot_h * c / peak
        out.append(f'<rect x="{left + k * bar + 1:.1f}" y="{top + plot_h - h:.1f}" '
                   f'width="{bar - 2:.1f}" height="{h:.1f}" class="bar"><title>'
                   f"{k / bins:.2f}–{(k + 1) / bins:.2f}: {int(c)}</title></rect>")
    for t in (0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<text x="{left + t * plot_w:.1f}" y="{height - 8}" class="tick">'
                   f"{t:g}</text>")
    mean_x = left + plot_w * float(np.mean(values))
    out.append(f'<line x1="{mean_x:.1f}" y1="{top}" x2="{mean_x:.1f}" y2="{top + plot_h}" '
               f'class="mean"/><text x="{left - 6}" y="{top + 10}" class="label">{peak}</text>'
               f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
               f'y2="{top + plot_h}" class="axis"/>')
    return "".join(out) + "</svg>"


# --------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------

_CSS = """
:root{--ink:#1d2330;--muted:#5b6475;--line:#d9dee7;--accent:#1f4e79;--bad:#b03a2e;
--good:#2e7d4f;--bg:#fff;--soft:#f4f6f9}
*{box-sizing:border-box}
body{margin:0 auto;max-width:1180px;padding:24px 28px 48px;color:var(--ink);background:var(--bg);
font:15px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header h1{margin:0 0 4px;font-size:26px}header p{margin:0;color:var(--muted)}
nav.toc{position:sticky;top:0;background:var(--bg);border-bottom:1px solid var(--line);
padding:8px 0;margin:12px 0 8px;z-index:2}
nav.toc a{margin-right:14px;color:var(--accent);text-decoration:none;font-size:14px}
section{margin:28px 0}h2{font-size:20px;border-bottom:2px solid var(--accent);
padding-bottom:4px;margin:0 0 12px}h3{font-size:16px;margin:18px 0 8px}
table{border-collapse:collapse;margin:8px 0 14px;font-size:14px}
th,td{border-bottom:1px solid var(--line);padding:4px 10px;text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600}
td:not(:first-child){font-variant-numeric:tabular-nums}
tr.worst td{background:#fbeceb}tr.chosen td{background:#e8f3ec;font-weight:600}
.tag{background:var(--bad);color:#fff;border-radius:3px;padding:0 5px;font-size:12px}
.paper{color:var(--muted)}
.kpis{display:flex;flex-wrap:wrap;gap:12px;margin:4px 0 12px}
.kpi{border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:190px;
background:var(--soft)}
.kpi-value{font-size:28px;font-weight:700;color:var(--accent)}
.kpi.worst .kpi-value{color:var(--bad)}
.kpi-label{font-size:13px}.kpi-note{font-size:12px;color:var(--muted)}
svg.chart{display:block;max-width:100%;height:auto;margin:6px 0 14px}
svg .grid{stroke:#e3e7ee}svg .axis{stroke:#8a93a3}
svg .tick{font-size:11px;fill:var(--muted);text-anchor:middle}
svg .label{font-size:12px;fill:var(--ink);text-anchor:end}
svg .value{font-size:12px;fill:var(--ink)}
svg .bar{fill:#3b6ea5}svg .bar.worst{fill:var(--bad)}
svg .mean{stroke:var(--bad);stroke-dasharray:4 3}
.cell{display:inline-block;min-width:44px;padding:2px 6px;border-radius:3px;text-align:right}
.cell.diag{font-weight:700}
.cases{display:grid;grid-template-columns:repeat(auto-fill,minmax(212px,1fr));gap:12px}
figure.case{margin:0;border:1px solid var(--line);border-top:4px solid var(--bad);
border-radius:6px;padding:8px;background:var(--bg)}
figure.case.right{border-top-color:var(--good)}
figure.case img.overlay{display:block;max-width:100%;height:auto;margin:0 auto}
.crops{display:flex;flex-wrap:wrap;gap:4px;margin-top:6px}
.crops img{width:56px;height:56px;border:3px solid;border-radius:2px}
figcaption{font-size:12.5px;margin-top:6px}.src{color:var(--muted)}
figure.hist{margin:6px 0 12px}figure.hist figcaption{font-size:13px;color:var(--muted)}
footer{margin-top:36px;color:var(--muted);font-size:12px}
@media print{body{max-width:none;padding:0;font-size:10pt}nav.toc{display:none}
section{break-inside:auto}h2,h3{break-after:avoid}figure.case,tr,.kpis,svg,
table[data-table=run],table[data-table=headline],table[data-table=confusion]{break-inside:avoid}
.cases{grid-template-columns:repeat(4,1fr)}@page{margin:14mm}}
"""

#: Marks each image: ``data-decoded="1"`` once it decoded (naturalWidth > 0), else "0"; the
#: body gets ``data-images-checked`` (the number of images) and ``data-images-broken``.
_SCRIPT = """
(function(){function mark(){var imgs=document.images,bad=0;
for(var i=0;i<imgs.length;i++){var ok=imgs[i].complete&&imgs[i].naturalWidth>0;
imgs[i].setAttribute('data-decoded',ok?'1':'0');if(!ok)bad++;}
document.body.setAttribute('data-images-checked',String(imgs.length));
document.body.setAttribute('data-images-broken',String(bad));}
if(document.readyState==='complete')mark();else window.addEventListener('load',mark);})();
"""


def _page(title, subtitle, sections):
    titles = dict(SECTIONS)
    nav = "".join(f'<a href="#{sid}">{_e(titles[sid])}</a>' for sid, _ in sections)
    body = "".join(f'<section id="{sid}" data-section="{sid}"><h2>{_e(titles[sid])}</h2>'
                   f"{content}</section>" for sid, content in sections)
    return (f"<!DOCTYPE html>\n{MARKER}\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>{_e(subtitle)}</p></header>"
            f'<nav class="toc">{nav}</nav><main>{body}</main>'
            "<footer>Written by sk_a2.report.write_report; self-contained: images are embedded "
            f"and nothing is fetched.</footer><script>{_SCRIPT}</script></body></html>\n")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_extras(metadata, split_groups, split_labels, per_seed, reported, tuning, compare,
                  localization):
    """Every optional input checked and normalised (before any image or model work)."""
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict of settings, got {type(metadata).__name__}")
    return {
        "split_counts": _split_counts(split_groups),
        "split_labels": split_labels and dict(split_labels),
        "per_seed": _dict_rows("per_seed", per_seed,
                               "of metric values, as Protocol.run_row's 'per_seed'"),
        "reported": _reported(reported),
        "tuning": _tuning(tuning),
        "compare": _dict_rows("compare", compare,
                              "a Protocol.run_row result, or label and metric values"),
        "localization": None if localization is None else _localization_columns(localization),
    }


def _sections(pred, extras, visuals, opts, group_name, class_name):
    out = []
    if pred is not None:
        report, values = _scores(pred, extras["split_counts"])
        out += [
            ("headline", _headline_section(values, report, extras["reported"],
                                           extras["per_seed"], group_name)),
            ("groups", _groups_section(report, extras["split_counts"], extras["split_labels"],
                                       group_name, class_name)),
            ("confusion", _confusion_section(pred, class_name)),
            ("failures", _failures_section(pred, report, *visuals, opts, group_name,
                                           class_name)),
        ]
    if extras["tuning"] is not None:
        out.append(("tuning", _tuning_section(extras["tuning"])))
    if extras["compare"]:
        out.append(("compare", _compare_section(extras["compare"])))
    if extras["localization"] is not None:
        out.append(("localization", _localization_section(extras["localization"])))
    return out


def write_report(path, *, metadata=None, y_true=None, y_pred=None, groups=None, proba=None,
                 classes=None, target_names=None, group_names=None, split_groups=None,
                 split_labels=None, images=None, crops=None, attention_maps=None,
                 image_size=None, crop_source="resized", per_seed=None, reported=None,
                 tuning=None, compare=None, localization=None, title=None, n_failures=24,
                 n_correct=4):
    """Write one self-contained HTML report of an evaluation run.

    Parameters
    ----------
    path : str or path-like
        The HTML file to write (its folder is created). An existing file is replaced only when
        it is a report written by this function.
    metadata : dict, default=None
        The run's settings, shown in order (dataset, models and weights, crops, head,
        precision, seeds, ...); the package version and the time are added.
    y_true, y_pred, groups : array-like of shape (n_test,), default=None
        Test labels, predictions and group of each test image: all three, or none for a report
        of a localization measurement only.
    proba : array-like of shape (n_test, n_classes), default=None
        The head's ``predict_proba``; the confidence shown is that of the predicted class.
    classes : array-like of shape (n_classes,), default=None
        The classes of ``proba``'s columns (the head's ``classes_``); default: the sorted
        labels of ``y_true`` and ``y_pred``.
    target_names, group_names : sequence or dict, default=None
        Display names of the classes and groups (a sequence is indexed by the label).
    split_groups : dict of str to array-like, default=None
        Group of each image of the other splits, e.g. ``{"train": ..., "val": ...}``: their
        counts per group, and with ``"train"`` the average accuracy weighted by the train
        groups' sizes.
    split_labels : dict of str to array-like, default=None
        Label of each image per split (test included if wanted): a table of counts per class.
    images : sequence of image sources or (n_test, H, W, 3) array, default=None
        The test images; default: ``crops.images``.
    crops : CropSet, default=None
        The test images' boxes as the run chose them (a cropper's output).
    attention_maps : array-like of shape (n_test, grid_h, grid_w), default=None
        The maps the boxes were chosen from (:func:`~sk_a2.report.crops_and_maps`), shown as
        heat maps.
    image_size : int, default=None
        The frame the boxes were chosen in; with ``crop_source="resized"`` the crops are cut
        from the image resized to it, as the embedding model saw them.
    crop_source : {"resized", "original"}, default="resized"
        Where the embedder cut the crops (``CropEmbedder(crop_source=...)``).
    per_seed : list of dict, default=None
        Scores of each seed (``Protocol.run_row(...)["per_seed"]``): their spread is shown.
    reported : dict, default=None
        The paper's values in percent by metric (``accuracy``, ``worst_group_accuracy``,
        ``worst_class_accuracy``, ``train_weighted_accuracy``, ``mean_group_accuracy``): a
        number, a ``{"value", "table", "std"}`` dict, a
        :class:`~sk_a2.paper.reported.ReportedValue` or a list of them (the first is shown), as
        :func:`~sk_a2.paper.reported.match_reported` returns.
    tuning : TuneResult or dict, default=None
        ``Protocol.tune``'s result (or its ``to_dict()``): the table and chosen setting.
    compare : list of dict, default=None
        Rows of compared methods (``Protocol.run_row`` results: ``label``, ``mean``, ``std``,
        ``reported``; or ``label`` and metric values).
    localization : DataFrame, Bunch or list of them, default=None
        :func:`sk_a2.localization.localization_report` results (per image and block).
    title : str, default=None
        The page title (default: from ``metadata["dataset"]``).
    n_failures, n_correct : int, default=24, 4
        Misclassified and correct test images of the worst group shown.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        On inputs of mismatched lengths or shapes, unknown metrics in ``reported``, or a
        ``path`` that exists and is not a report; before any image is read.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from sk_a2.report import write_report
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 40)
    >>> groups = 2 * y + rng.integers(0, 2, 40)
    >>> path = write_report(Path(tempfile.mkdtemp()) / "report.html",
    ...                     metadata={"dataset": "example"}, y_true=y, y_pred=y ^ (groups == 1),
    ...                     groups=groups, images=rng.integers(0, 256, (40, 32, 32, 3), np.uint8),
    ...                     reported={"worst_group_accuracy": 90.0})
    >>> text = path.read_text()  # group 1 is always wrong: its 9 test images are shown
    >>> 'id="headline"' in text, text.count('class="case wrong"'), int((groups == 1).sum())
    (True, 9, 9)
    """
    path = _check_path(path)
    opts = _options(n_failures, n_correct, image_size, crop_source)
    pred = _predictions(y_true, y_pred, groups, proba, classes)
    extras = _check_extras(metadata, split_groups, split_labels, per_seed, reported, tuning,
                           compare, localization)
    visuals = _images(images, crops, attention_maps, None if pred is None else len(pred["y"]))
    if pred is None and extras["localization"] is None:
        raise ValueError("nothing to report: give y_true, y_pred and groups, or localization")
    sections = [("run", _run_section(metadata)),
                *_sections(pred, extras, visuals, opts, _namer(group_names),
                           _namer(target_names))]
    meta = metadata or {}
    title = title or f"Evaluation report: {meta.get('dataset', 'test split')}"
    subtitle = f"{len(pred['y'])} test images" if pred is not None else "localization"
    return _write(path, _page(title, subtitle, sections))


# --------------------------------------------------------------------------------------------
# From estimators
# --------------------------------------------------------------------------------------------


def crops_and_maps(cropper, X):
    """A fitted cropper's crops of ``X`` and the attention maps they were chosen from, in one
    pass.

    For an :class:`~sk_a2.AttentionCropper` (without ``embed_full_image`` or an engine), the
    attention model runs once per image: the maps come from
    :meth:`~sk_a2.AttentionCropper.attention_maps` and the boxes are chosen from them as
    :meth:`~sk_a2.AttentionCropper.transform` chooses them (same upsampling, same greedy
    selection, on the model's device), so the ``CropSet`` equals ``transform(X)``. Any other
    cropper runs ``transform`` once and gives no maps.

    Parameters
    ----------
    cropper : fitted cropper
        :class:`~sk_a2.AttentionCropper`, :class:`~sk_a2.AttentionAdapter`,
        :class:`~sk_a2.CenterCropper` or :class:`~sk_a2.RandomCropper`.
    X : sequence of image sources, or (n, H, W, 3) uint8 array

    Returns
    -------
    crops : CropSet
    maps : ndarray of shape (n, grid_h, grid_w), float32, or None

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2 import AttentionCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> from sk_a2.report import crops_and_maps
    >>> images = make_spurious_images(n_samples=10, image_size=56, random_state=0).images[:3]
    >>> cropper = AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56,
    ...                            device="cpu").fit()
    >>> crops, maps = crops_and_maps(cropper, images)
    >>> maps.shape, bool(np.array_equal(crops.boxes, cropper.transform(images).boxes))
    ((3, 4, 4), True)
    """
    from sklearn.utils.validation import check_is_fitted

    from .cropper import AttentionCropper

    check_is_fitted(cropper)
    if not isinstance(cropper, AttentionCropper) or cropper.embed_full_image \
            or cropper.engine is not None:
        return cropper.transform(X), None
    from .cropset import CropSet
    from .images import as_sources, image_sizes

    sources = as_sources(X)
    maps = cropper.attention_maps(sources)
    hws = image_sizes(sources)
    boxes, scores = _boxes_from_maps(cropper, maps, hws)
    return CropSet(sources, boxes, scores, hws), maps


def _boxes_from_maps(cropper, maps, hws):
    """The boxes (original pixels) and scores ``cropper.transform`` chooses from ``maps``."""
    import torch

    from .boxes import greedy_boxes, to_original, upsample_maps
    from .cropset import effective_crop_sizes
    from .models import resolve_device

    sizes = effective_crop_sizes(cropper.crop_sizes, cropper.n_crops, cropper.image_size)
    device = resolve_device(cropper.device)
    boxes = np.zeros((len(maps), len(sizes), 4), np.float32)
    scores = np.zeros((len(maps), len(sizes)), np.float32)
    step = max(int(cropper.batch_size), 256)
    for i in range(0, len(maps), step):
        up = upsample_maps(torch.as_tensor(maps[i:i + step], device=device), cropper.image_size)
        up = up / up.sum((-2, -1), keepdim=True).clamp_min(1e-30)
        b, s = greedy_boxes(up, sizes, return_scores=True)
        boxes[i:i + step] = to_original(b.cpu().numpy(), hws[i:i + step], cropper.image_size)
        scores[i:i + step] = s.cpu().numpy()
    return boxes, scores


def _split_estimators(estimator, cropper, embedder, head):
    """``(cropper, [steps after it])`` of a pipeline or of the given estimators."""
    from sklearn.utils.validation import check_is_fitted

    if estimator is not None:
        if any(e is not None for e in (cropper, embedder, head)):
            raise ValueError("give either estimator (a fitted Pipeline) or cropper, embedder "
                             "and head, not both")
        if not hasattr(estimator, "steps") or len(estimator.steps) < 2:
            raise ValueError("estimator must be a fitted Pipeline of at least two steps, its "
                             "first a cropper (e.g. AttentionCropper -> CropEmbedder -> "
                             "LogisticRegression)")
        cropper, rest = estimator.steps[0][1], [s for _, s in estimator.steps[1:]]
    else:
        if cropper is None or head is None:
            raise ValueError("report_from_estimators needs estimator=, or cropper= and head= "
                             "(and embedder= unless the head takes crops)")
        rest = [embedder, head]
    rest = [s for s in rest if s is not None and s != "passthrough"]
    for step in (cropper, *rest):
        check_is_fitted(step)
    return cropper, rest


def _predict(steps, crops):
    """Predictions, probabilities and classes of the steps after the cropper, one pass."""
    Z = crops
    for step in steps[:-1]:
        Z = step.transform(Z)
    head = steps[-1]
    if not hasattr(head, "predict_proba"):
        return np.asarray(head.predict(Z)), None, None
    proba = np.asarray(head.predict_proba(Z))
    classes = np.asarray(head.classes_)
    if isinstance(Z, np.ndarray):  # features: predict is cheap and exact
        return np.asarray(head.predict(Z)), proba, classes
    return classes[np.argmax(proba, axis=1)], proba, classes  # a head that runs a model


def _describe(estimator):
    params = estimator.get_params(deep=False)
    out = {}
    for key in ("model", "weights", "crop_sizes", "n_crops", "image_size", "layer",
                "head_aggregation", "crop_source", "include_full_image", "precision"):
        if key in params and params[key] is not None:
            value = params[key]
            out[key] = value if isinstance(value, (str, int, float, tuple, list)) else \
                type(value).__name__
    return out


def _estimator_metadata(cropper, steps):
    meta = {"cropper": f"{type(cropper).__name__} {_format_value(_describe(cropper))}"}
    if hasattr(cropper, "crop_sizes_"):
        meta["crop sizes"] = list(cropper.crop_sizes_)
    for step in steps[:-1]:
        meta[type(step).__name__] = _format_value(_describe(step))
    meta["head"] = repr(steps[-1])
    return meta


def report_from_estimators(path, estimator=None, *, cropper=None, embedder=None, head=None,
                           X_test, y_test, groups_test, metadata=None, **report_params):
    """Run fitted estimators on a test split and write its :func:`~sk_a2.write_report`.

    The cropper runs once (:func:`~sk_a2.report.crops_and_maps`: boxes and attention maps from
    one pass), then the embedder and head as ``predict`` runs them: no model runs more often than
    for ``estimator.predict(X_test)``.

    Parameters
    ----------
    path : str or path-like
        The HTML file to write.
    estimator : Pipeline, default=None
        A fitted pipeline, its first step a cropper, e.g. AttentionCropper -> CropEmbedder ->
        LogisticRegression. Or give ``cropper``, ``embedder`` and ``head``.
    cropper, embedder, head : fitted estimators, default=None
        The pipeline's pieces; ``embedder`` may be None when ``head`` takes crops
        (:class:`~sk_a2.ZeroShotCLIPClassifier`).
    X_test : sequence of image sources, or (n, H, W, 3) uint8 array
        The test images.
    y_test, groups_test : array-like of shape (n,)
        Their labels and groups.
    metadata : dict, default=None
        Settings shown in the report, after those read from the estimators.
    **report_params
        Any other parameter of :func:`~sk_a2.write_report` (``split_groups``, ``target_names``,
        ``group_names``, ``reported``, ``tuning``, ``compare``, ...).

    Returns
    -------
    sklearn.utils.Bunch
        ``path`` (the report), ``y_pred``, ``proba`` (None when the head has no
        ``predict_proba``), ``crops`` (the test CropSet; None when the pipeline's first step
        is no cropper, then the report shows the images without boxes) and
        ``attention_maps`` (or None).

    Raises
    ------
    ValueError
        On mismatched lengths, unfitted estimators or invalid report parameters, before any
        model runs.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sk_a2 import AttentionCropper, CropEmbedder
    >>> from sk_a2.datasets import make_spurious_images
    >>> from sk_a2.report import report_from_estimators
    >>> data = make_spurious_images(n_samples=24, image_size=56, random_state=0)
    >>> pipe = make_pipeline(
    ...     AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56, device="cpu"),
    ...     CropEmbedder("imgfocus_vits14", image_size=56, device="cpu"),
    ...     LogisticRegression(max_iter=500)).fit(data.images[:16], data.target[:16])
    >>> out = report_from_estimators(Path(tempfile.mkdtemp()) / "report.html", pipe,
    ...                              X_test=data.images[16:], y_test=data.target[16:],
    ...                              groups_test=data.groups[16:],
    ...                              group_names=data.group_names)
    >>> out.path.name, out.attention_maps.shape, out.proba.shape
    ('report.html', (8, 4, 4), (8, 2))
    """
    from sklearn.utils import Bunch

    from .images import as_sources

    unknown = set(report_params) - set(inspect.signature(write_report).parameters)
    known = {"y_true", "y_pred", "groups", "proba", "classes", "images", "crops",
             "attention_maps"} & set(report_params)
    if unknown or known:
        bad = sorted(unknown or known)
        raise ValueError(f"report_from_estimators got {bad}: the predictions, images and crops "
                         "come from the estimators; other parameters are write_report's")
    path = _check_path(path)
    sources = as_sources(X_test, name="X_test")
    _vector("y_test", y_test, len(sources), "X_test")
    _vector("groups_test", groups_test, len(sources), "X_test")
    _check_extras(metadata, *(report_params.get(k) for k in (
        "split_groups", "split_labels", "per_seed", "reported", "tuning", "compare",
        "localization")))
    _options(**{k: report_params[k] for k in ("n_failures", "n_correct", "image_size",
                                               "crop_source") if k in report_params})
    first, steps = _split_estimators(estimator, cropper, embedder, head)
    crops, maps = crops_and_maps(first, sources)
    pred, proba, classes = _predict(steps, crops)
    if not hasattr(crops, "boxes"):  # a first step that is no cropper: images without boxes
        crops, report_params["images"] = None, sources
    meta = {**_estimator_metadata(first, steps), **(metadata or {})}
    report_params.setdefault("image_size", getattr(first, "image_size", None))
    report_params.setdefault("crop_source", getattr(steps[0], "crop_source", "resized"))
    written = write_report(path, metadata=meta, y_true=y_test, y_pred=pred,
                           groups=groups_test, proba=proba, classes=classes, crops=crops,
                           attention_maps=maps, **report_params)
    return Bunch(path=written, y_pred=pred, proba=proba, crops=crops, attention_maps=maps)
