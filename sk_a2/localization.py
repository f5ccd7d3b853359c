"""Where a ViT looks: attention localization against ground-truth boxes (Section 2, App. A, J).

Definitions, for one image, the attention model fed the image resized to ``image_size`` (the path
:class:`~sk_a2.AttentionCropper` takes):

**map**
    the head-aggregated CLS→patch attention over the patch grid, renormalised to sum to 1 over
    the ``P`` patches (:meth:`AttentionCropper.attention_maps`). The **upsampled map** is that map
    upsampled bilinearly (``align_corners=False``) to ``image_size × image_size`` and renormalised
    (computed here in float64), the map the crops are chosen from.
**mass in box**
    the sum of the upsampled map over the pixels whose centres lie inside the union of the
    image's ground-truth boxes. Boxes ``(x0, y0, x1, y1)`` are in original-image pixels, ``x1``
    and ``y1`` exclusive; they are scaled into the ``image_size`` frame (``x · S / W``,
    ``y · S / H``), and pixel ``(i, j)`` is inside when ``x0 <= j + 0.5 < x1`` and
    ``y0 <= i + 0.5 < y1``.
**hit**
    1 when the argmax pixel of the upsampled map (the first in row-major order on ties) is inside
    the union, else 0. The hit rate is its mean.
**normalised entropy**
    ``-Σ p log p / log P`` of the patch-grid map (``0 log 0 = 0``).
**top-q mass**
    the sum of the largest ``ceil(q · P)`` values of the patch-grid map (``q · P`` rounded to 9
    decimals first, so ``0.1 × 250`` counts 25 patches); reported for q = 0.10 and 0.25.
**token shares**
    the head mean of the CLS query's softmax row at a block, split into its share on the CLS
    token, on the register tokens and on the patch tokens; the three sum to 1.

:func:`localization_report` computes all of them for every requested block of a fitted
:class:`~sk_a2.AttentionCropper` from one forward pass per batch; :func:`summarize_report` gives
mean ± std per (model, head aggregation, layer); :func:`select_attention` picks the attention
model, layer and head aggregation that put the most mass in the boxes of a few annotated images.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import clone
from sklearn.utils import Bunch
from sklearn.utils.validation import check_is_fitted

from .attention import layer_cls_attention, layer_label, resolve_layer
from .cropper import AttentionCropper
from .cropset import int_list
from .images import as_sources
from .images import image_sizes as read_image_sizes

__all__ = [
    "METRICS",
    "TOKEN_SHARES",
    "check_boxes",
    "hits",
    "layer_attention_maps",
    "layer_cls_attention",
    "localization_report",
    "mass_in_boxes",
    "normalized_entropy",
    "report_columns",
    "select_attention",
    "summarize_report",
    "top_mass",
]

#: The per-image metrics of a report, in column order.
METRICS = ("mass_in_box", "hit", "entropy", "top10_mass", "top25_mass")
#: The token-share columns of a report.
TOKEN_SHARES = ("cls_share", "register_share", "patch_share")
_CHUNK = 64  # upsampled maps held at once (64 × 224² float64 = 25 MB)


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def _check_image_sizes(image_sizes, n):
    hws = np.asarray(image_sizes)
    if hws.shape != (n, 2) or not np.issubdtype(hws.dtype, np.number):
        raise ValueError(f"image_sizes must have shape ({n}, 2) (height, width), got {hws.shape}")
    if not np.all(np.isfinite(hws)) or np.any(hws < 1):
        raise ValueError("image_sizes must hold positive (height, width) pairs")
    return hws.astype(np.float64)


def _one_image_boxes(b, i, name):
    try:
        arr = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}[{i}] is not numeric: expected (x0, y0, x1, y1) boxes") from None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name}[{i}] must be one box (4,) or boxes (k, 4), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name}[{i}] has no box: every image needs at least one")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}[{i}] holds a non-finite coordinate")
    bad = np.flatnonzero((arr[:, 2] <= arr[:, 0]) | (arr[:, 3] <= arr[:, 1]))
    if bad.size:
        raise ValueError(
            f"{name}[{i}] box {arr[bad[0]].tolist()} is empty: boxes are (x0, y0, x1, y1) with "
            "x1 > x0 and y1 > y0"
        )
    return arr


def check_boxes(boxes, n, image_sizes=None, *, name="boxes"):
    """Validate ground-truth boxes and return one ``(k_i, 4)`` float64 array per image.

    Parameters
    ----------
    boxes : array-like of shape (n, 4) or (n, k, 4), or a sequence of n array-likes
        ``(x0, y0, x1, y1)`` in original-image pixels, ``x1``/``y1`` exclusive; a ragged
        sequence gives each image its own number of boxes (each ``(4,)`` or ``(k_i, 4)``).
    n : int
        Number of images.
    image_sizes : array-like of shape (n, 2), optional
        ``(height, width)`` of each image: then every box must lie inside its image.
    name : str, default="boxes"
        Name used in error messages.

    Returns
    -------
    list of ndarray

    Examples
    --------
    >>> from sk_a2.localization import check_boxes
    >>> [b.tolist() for b in check_boxes([[0, 0, 4, 4], [[1, 1, 3, 3], [4, 4, 8, 8]]], 2)]
    [[[0.0, 0.0, 4.0, 4.0]], [[1.0, 1.0, 3.0, 3.0], [4.0, 4.0, 8.0, 8.0]]]
    >>> check_boxes([[0, 0, 20, 4]], 1, image_sizes=[[8, 8]])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: boxes[0] box [0.0, 0.0, 20.0, 4.0] is outside the image (8 wide, 8 high)...
    """
    if isinstance(boxes, np.ndarray) and boxes.dtype != object:
        if boxes.ndim not in (2, 3) or boxes.shape[-1] != 4:
            raise ValueError(f"{name} must have shape (n, 4) or (n, k, 4), got {boxes.shape}")
    elif isinstance(boxes, (str, bytes)) or not hasattr(boxes, "__len__"):
        raise ValueError(f"{name} must be an array of boxes or a list of per-image boxes")
    if len(boxes) != n:
        raise ValueError(f"{name} has {len(boxes)} entries but X has {n} images: one per image")
    out = [_one_image_boxes(b, i, name) for i, b in enumerate(boxes)]
    if image_sizes is not None:
        hws = _check_image_sizes(image_sizes, n)
        for i, (arr, (h, w)) in enumerate(zip(out, hws)):
            outside = (arr[:, 0] < 0) | (arr[:, 1] < 0) | (arr[:, 2] > w) | (arr[:, 3] > h)
            if outside.any():
                raise ValueError(
                    f"{name}[{i}] box {arr[np.argmax(outside)].tolist()} is outside the image "
                    f"({int(w)} wide, {int(h)} high): boxes are in original-image pixels"
                )
    return out


def _box_masks(box_list, hws, size):
    """Union masks (n, size, size) of the pixels whose centres are inside a box."""
    n = len(box_list)
    kmax = max(len(b) for b in box_list)
    padded = np.full((n, kmax, 4), np.nan)
    for i, b in enumerate(box_list):
        padded[i, :len(b)] = b
    h, w = hws[:, 0:1], hws[:, 1:2]
    # x · S / W (product first: exact for integer boxes on the half-pixel boundaries)
    x0, x1 = padded[..., 0] * size / w, padded[..., 2] * size / w
    y0, y1 = padded[..., 1] * size / h, padded[..., 3] * size / h
    centres = np.arange(size) + 0.5
    masks = np.zeros((n, size, size), dtype=bool)
    for j in range(kmax):  # NaN (padding) compares False: no pixel
        cols = (x0[:, j, None] <= centres) & (centres < x1[:, j, None])
        rows = (y0[:, j, None] <= centres) & (centres < y1[:, j, None])
        masks |= rows[:, :, None] & cols[:, None, :]
    return masks


# --------------------------------------------------------------------------------------------
# Metrics on maps
# --------------------------------------------------------------------------------------------


def _check_maps(maps, *, grid=False):
    arr = np.asarray(maps, dtype=np.float64)
    if grid and arr.ndim != 3:
        raise ValueError(f"maps must have shape (n, grid_h, grid_w), got {arr.shape}")
    if arr.ndim < 2 or arr.shape[0] == 0 or arr[0].size < 2:
        raise ValueError(f"maps must have shape (n, ...) with at least 2 patches, got {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError("maps must be finite and non-negative")
    flat = arr.reshape(len(arr), -1)
    total = flat.sum(1)
    if np.any(total <= 0):
        raise ValueError(f"maps[{int(np.argmax(total <= 0))}] sums to 0: nothing to normalise")
    return flat / total[:, None], arr.shape


def _check_image_size(image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or (
        image_size < 1
    ):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def _box_stats(maps, boxes, image_sizes, image_size):
    """(mass in box, hit) of every map, upsampled ``_CHUNK`` maps at a time."""
    p, shape = _check_maps(maps, grid=True)
    n, size = shape[0], _check_image_size(image_size)
    hws = _check_image_sizes(image_sizes, n)
    box_list = check_boxes(boxes, n, hws)
    mass, hit = np.empty(n), np.zeros(n, dtype=np.int64)
    for s in range(0, n, _CHUNK):
        grid = torch.as_tensor(p[s:s + _CHUNK].reshape(-1, 1, *shape[1:]))
        up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
        up = up[:, 0].reshape(len(grid), -1).numpy()
        up = up / up.sum(1, keepdims=True)
        inside = _box_masks(box_list[s:s + _CHUNK], hws[s:s + _CHUNK], size).reshape(len(up), -1)
        mass[s:s + _CHUNK] = np.where(inside, up, 0.0).sum(1)
        hit[s:s + _CHUNK] = inside[np.arange(len(up)), up.argmax(1)]
    return mass, hit


def mass_in_boxes(maps, boxes, image_sizes, image_size):
    """Fraction of each upsampled map inside the union of the image's boxes.

    Parameters
    ----------
    maps : array-like of shape (n, grid_h, grid_w)
        Non-negative patch-grid maps (renormalised here).
    boxes : array-like of shape (n, 4) or (n, k, 4), or a sequence of n per-image box arrays
        ``(x0, y0, x1, y1)`` in original-image pixels (see :func:`check_boxes`).
    image_sizes : array-like of shape (n, 2)
        Original ``(height, width)`` of each image.
    image_size : int
        Side ``S`` of the square frame the maps are upsampled to.

    Returns
    -------
    ndarray of shape (n,), float64

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.localization import mass_in_boxes
    >>> maps = np.array([[[1.0, 1.0], [0.0, 0.0]]])  # all attention on the top row of patches
    >>> # the top half of the image; bilinear upsampling spreads 1/8 of the mass below it
    >>> mass_in_boxes(maps, [[0, 0, 64, 32]], image_sizes=[[64, 64]], image_size=64).round(3)
    array([0.875])
    """
    return _box_stats(maps, boxes, image_sizes, image_size)[0]


def hits(maps, boxes, image_sizes, image_size):
    """1 where the argmax pixel of the upsampled map is inside a box, else 0.

    Ties go to the first pixel in row-major order.

    Returns
    -------
    ndarray of shape (n,), int64

    Parameters
    ----------
    maps, boxes, image_sizes, image_size
        As in :func:`mass_in_boxes`.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.localization import hits
    >>> maps = np.array([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 0.0]]])
    >>> hits(maps, [[32, 0, 64, 32]] * 2, image_sizes=[[64, 64]] * 2, image_size=64)
    array([1, 0])
    """
    return _box_stats(maps, boxes, image_sizes, image_size)[1]


def normalized_entropy(maps):
    """``-Σ p log p / log P`` of each map (renormalised to sum to 1 over its P values).

    Parameters
    ----------
    maps : array-like of shape (n, ...)

    Returns
    -------
    ndarray of shape (n,), float64, in [0, 1]

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2.localization import normalized_entropy
    >>> uniform, peaked = [1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]
    >>> normalized_entropy(np.array([uniform, peaked])).round(3) + 0.0
    array([1., 0.])
    """
    p, _ = _check_maps(maps)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(1) / math.log(p.shape[1])


def top_mass(maps, q):
    """Sum of the largest ``ceil(q · P)`` values of each renormalised map.

    Parameters
    ----------
    maps : array-like of shape (n, ...)
    q : float in (0, 1]
        Fraction of the P values (patches).

    Returns
    -------
    ndarray of shape (n,), float64

    Examples
    --------
    >>> from sk_a2.localization import top_mass
    >>> top_mass([[4.0, 3.0, 2.0, 1.0]], 0.5)  # the 2 largest of 4, out of 10
    array([0.7])
    """
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 < q <= 1:
        raise ValueError(f"q must be a fraction in (0, 1], got {q!r}")
    p, _ = _check_maps(maps)
    k = max(1, math.ceil(round(float(q) * p.shape[1], 9)))
    return -np.sort(-p, axis=1)[:, :k].sum(1)


# --------------------------------------------------------------------------------------------
# One forward pass, every block
# --------------------------------------------------------------------------------------------


def _resolve_layers(layers, own_layer, num_layers):
    if layers is None:
        return [resolve_layer(own_layer, num_layers)]
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be None, 'all' or a list of ints, got {layers!r}")
        return list(range(num_layers))
    layers = int_list(layers, f"layers must be None, 'all' or a list of ints, got {layers!r}")
    if not layers:
        raise ValueError("layers is empty: give at least one block index, 'all' or None")
    out = []
    for layer in layers:
        try:
            out.append(resolve_layer(layer, num_layers))
        except ValueError as exc:
            raise ValueError(f"layers: {exc}") from None
    return list(dict.fromkeys(out))


def layer_attention_maps(cropper, X, layers):
    """The attention maps of several blocks, all from one forward pass per batch.

    With the cropper's ``cache``, the maps are read from and stored under the keys and in the
    entry layout the cropper itself uses (:meth:`AttentionCropper.attention_maps`), so that
    afterwards a clone of ``cropper`` with any of ``layers`` as its ``layer`` chooses its crops of
    ``X`` without running the model. (A cropper's own forward to block ``L`` stores the maps
    of blocks ``0 … L`` too, so a ``GridSearchCV`` over ``layer`` whose deepest layer comes first
    costs one pass without this call.)

    Parameters
    ----------
    cropper : AttentionCropper
        A fitted cropper: its model, weights, image size, head aggregation, batch size, device,
        cache and ``verbose`` are used.
    X : sequence of image sources, or (n, H, W, 3) uint8 array
    layers : None, "all" or sequence of int
        ``None``: the cropper's ``layer``; ``"all"``: every block; negative indices count from
        the end.

    Returns
    -------
    maps : ndarray of shape (len(layers), n, grid_h, grid_w), float32
        Each map sums to 1; layers in the given order (repeats removed).
    image_sizes : ndarray of shape (n, 2), int64
        Original ``(height, width)`` of each image.

    Examples
    --------
    >>> import numpy as np
    >>> from sk_a2 import AttentionCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> from sk_a2.localization import layer_attention_maps
    >>> images = make_spurious_images(n_samples=10, image_size=56, random_state=0).images[:3]
    >>> cropper = AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56,
    ...                            device="cpu", cache="memory").fit()
    >>> maps, image_sizes = layer_attention_maps(cropper, images, [-2, -1])
    >>> maps.shape, image_sizes.tolist()[0]
    ((2, 3, 4, 4), [56, 56])
    >>> bool(np.allclose(maps[1], cropper.attention_maps(images)))  # the cropper's own layer
    True
    """
    check_is_fitted(cropper)
    num_layers = cropper.map_source().vm.num_layers
    out = cropper.layer_maps(X, _resolve_layers(layers, cropper.layer, num_layers))
    return out["map"], out["image_size"]


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _table(columns):
    """A pandas DataFrame of the columns when pandas is installed, else a Bunch of arrays."""
    try:
        import pandas as pd
    except ImportError:
        return Bunch(**columns)
    return pd.DataFrame(columns)


def report_columns(report):
    """The columns of a report or summary (DataFrame, Bunch or a list of them) as NumPy arrays.

    Parameters
    ----------
    report : DataFrame or Bunch, or a list of them
        :func:`localization_report` or :func:`summarize_report` results.

    Returns
    -------
    dict of str to ndarray
        One array per column; several reports are concatenated.

    Examples
    --------
    >>> import pandas as pd
    >>> from sk_a2.localization import report_columns
    >>> columns = report_columns([pd.DataFrame({"hit": [1, 0]}), pd.DataFrame({"hit": [1]})])
    >>> columns["hit"].tolist()
    [1, 0, 1]
    """
    if isinstance(report, (list, tuple)):
        parts = [report_columns(r) for r in report]
        if not parts:
            raise ValueError("no report to summarise")
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if hasattr(report, "to_dict") and hasattr(report, "columns"):
        return {k: report[k].to_numpy() for k in report.columns}
    return {k: np.asarray(v) for k, v in dict(report).items()}


def _model_name(model, weights=None):
    name = model if isinstance(model, str) else type(model).__name__
    return name if weights is None else f"{name}@{os.path.basename(os.fspath(weights))}"


def _n_params(vm):
    return int(sum(p.numel() for p in vm.image_tower.parameters()))  # CLIP: the image tower


def localization_report(cropper, X, boxes, *, layers=None):
    """Localization metrics and token shares of an attention model, per layer and image.

    Parameters
    ----------
    cropper : AttentionCropper
        A fitted cropper: its model, weights, image size, head aggregation, batch size, device,
        cache and ``verbose`` are used. Maps are the content the cropper caches (same keys), so a
        report and the cropper share their cache.
    X : sequence of image sources, or (n, H, W, 3) uint8 array
    boxes : array-like of shape (n, 4) or (n, k, 4), or a sequence of n per-image box arrays
        Ground-truth boxes in original-image pixels (see :func:`check_boxes`).
    layers : None, "all" or sequence of int, default=None
        ``None``: the cropper's ``layer``; ``"all"``: every block. All requested blocks come from
        one forward pass per batch.

    Returns
    -------
    pandas.DataFrame or sklearn.utils.Bunch
        One row per (layer, image), layers in the given order: ``model`` (the model's name, with
        ``@<weights file name>`` when ``weights`` is set), ``head_aggregation``,
        ``n_params``, ``layer`` (the block counted from the end, ``-1`` the last, as
        :func:`sk_a2.attention.layer_label` prints it), ``image`` (position in ``X``), the
        :data:`METRICS` and the :data:`TOKEN_SHARES`. A Bunch of equal-length arrays when pandas
        is not installed.

    Examples
    --------
    >>> from sk_a2 import AttentionCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> from sk_a2.localization import localization_report, summarize_report
    >>> data = make_spurious_images(n_samples=10, image_size=56, random_state=0)
    >>> cropper = AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56,
    ...                             device="cpu")
    >>> report = localization_report(cropper.fit(data.images[:4]), data.images[:4],
    ...                              data.boxes[:4], layers=[10, 11])
    >>> report[["layer", "image", "hit"]].shape
    (8, 3)
    >>> bool(((report.mass_in_box >= 0) & (report.mass_in_box <= 1)).all())
    True
    """
    check_is_fitted(cropper)
    sources = as_sources(X)
    n = len(sources)
    box_list = check_boxes(boxes, n)
    check_boxes(box_list, n, read_image_sizes(sources))
    vm = cropper.map_source().vm
    layer_idx = _resolve_layers(layers, cropper.layer, vm.num_layers)
    out = cropper.layer_maps(sources, layer_idx)
    maps, shares, hws = out["map"], out["shares"], out["image_size"]
    cols = {k: [] for k in (*METRICS, *TOKEN_SHARES)}
    for li in range(len(layer_idx)):
        mass, hit = _box_stats(maps[li], box_list, hws, cropper.image_size)
        for name, values in zip(cols, (mass, hit, normalized_entropy(maps[li]),
                                       top_mass(maps[li], 0.10), top_mass(maps[li], 0.25),
                                       *shares[li].T)):
            cols[name].append(values)
    L = len(layer_idx)
    head = {
        "model": np.full(L * n, _model_name(cropper.model, cropper.weights), dtype=object),
        "head_aggregation": np.full(L * n, cropper.head_aggregation, dtype=object),
        "n_params": np.full(L * n, _n_params(vm), dtype=np.int64),
        "layer": np.repeat(np.asarray([layer_label(i, vm.num_layers) for i in layer_idx],
                                      dtype=np.int64), n),
        "image": np.tile(np.arange(n, dtype=np.int64), L),
    }
    return _table({**head, **{k: np.concatenate(v) for k, v in cols.items()}})


def summarize_report(report):
    """Mean ± standard deviation of every metric per (model, head aggregation, layer).

    Parameters
    ----------
    report : DataFrame or Bunch, or a list of them
        One or several :func:`localization_report` results (several models: concatenated).

    Returns
    -------
    pandas.DataFrame or sklearn.utils.Bunch
        One row per (model, head_aggregation, layer) in order of first appearance, with
        ``n_params``, ``n_images`` and ``<metric>_mean`` / ``<metric>_std`` (sample standard
        deviation, ``ddof=1``; 0 for one image) for the metrics and token shares.

    Examples
    --------
    >>> import pandas as pd
    >>> from sk_a2.localization import METRICS, TOKEN_SHARES, summarize_report
    >>> report = pd.DataFrame({"model": "vit", "head_aggregation": "mean", "n_params": 10**7,
    ...                        "layer": [0, 0, 1, 1], "image": [0, 1, 0, 1]})
    >>> for column in METRICS + TOKEN_SHARES:
    ...     report[column] = [0.2, 0.4, 0.6, 0.6]
    >>> summary = summarize_report(report)
    >>> summary[["layer", "n_images", "hit_mean", "hit_std"]].round(3).values.tolist()
    [[0.0, 2.0, 0.3, 0.141], [1.0, 2.0, 0.6, 0.0]]
    """
    cols = report_columns(report)
    names = (*METRICS, *TOKEN_SHARES)
    missing = [k for k in ("model", "head_aggregation", "layer", *names) if k not in cols]
    if missing:
        raise ValueError(f"report lacks the columns {missing}: pass localization_report results")
    keys = list(zip(cols["model"], cols["head_aggregation"], cols["layer"].tolist()))
    groups = list(dict.fromkeys(keys))
    where = {g: [] for g in groups}
    for i, key in enumerate(keys):
        where[key].append(i)
    out = {"model": [], "head_aggregation": [], "layer": [], "n_params": [], "n_images": []}
    out.update({f"{k}_{s}": [] for k in names for s in ("mean", "std")})
    for g in groups:
        idx = np.asarray(where[g])
        for k, v in zip(("model", "head_aggregation", "layer"), g):
            out[k].append(v)
        out["n_params"].append(int(cols["n_params"][idx[0]]) if "n_params" in cols else -1)
        out["n_images"].append(len(idx))
        for k in names:
            values = cols[k][idx].astype(np.float64)
            out[f"{k}_mean"].append(values.mean())
            out[f"{k}_std"].append(values.std(ddof=1) if len(values) > 1 else 0.0)
    return _table({k: np.asarray(v, dtype=object if k in ("model", "head_aggregation") else None)
                   for k, v in out.items()})


# --------------------------------------------------------------------------------------------
# Choosing from evidence
# --------------------------------------------------------------------------------------------


def _candidate_croppers(candidates, base):
    if isinstance(candidates, (dict, AttentionCropper)):
        candidates = [candidates]
    out = []
    for i, cand in enumerate(candidates):
        if isinstance(cand, AttentionCropper):
            out.append(clone(cand))
        elif isinstance(cand, dict):
            template = AttentionCropper() if base is None else base
            unknown = sorted(set(cand) - set(template.get_params()))
            if unknown:
                raise ValueError(f"candidates[{i}] has unknown AttentionCropper parameters "
                                 f"{unknown}")
            out.append(clone(template).set_params(**cand))
        else:
            raise ValueError(f"candidates[{i}] must be a dict of AttentionCropper parameters or "
                             f"an AttentionCropper, got {type(cand).__name__}")
    if not out:
        raise ValueError("candidates is empty: give at least one")
    return out


def _group_key(cropper):
    params = cropper.get_params()
    return tuple((k, id(v) if isinstance(v, torch.nn.Module) else repr(v))
                 for k, v in sorted(params.items()) if k != "layer")


def select_attention(candidates, X, boxes, *, base=None, return_ranking=False):
    """The candidate attention setting that puts the most attention inside the boxes.

    Candidates that differ only in ``layer`` share one forward pass per batch.

    Parameters
    ----------
    candidates : sequence of dict or AttentionCropper
        Each a dict of :class:`~sk_a2.AttentionCropper` parameters (e.g. ``{"model":
        "dinov2_vits14", "layer": -2, "head_aggregation": "max"}``, the others from ``base``) or
        a cropper.
    X : sequence of image sources, or (n, H, W, 3) uint8 array
        A few annotated images, like those the cropper will see.
    boxes : boxes of X, as in :func:`localization_report`
    base : AttentionCropper, optional
        Template for dict candidates (image size, crop sizes, device, cache ...); default
        ``AttentionCropper()``.
    return_ranking : bool, default=False
        Also return the candidates' scores, best first.

    Returns
    -------
    cropper : AttentionCropper
        The best candidate (highest mean mass in box; ties: higher hit rate, then the earlier
        candidate), fitted.
    ranking : DataFrame or Bunch
        Only with ``return_ranking=True``: ``candidate`` (its position), ``model``, ``layer``,
        ``head_aggregation``, ``mass_in_box``, ``hit_rate``.

    Examples
    --------
    >>> from sk_a2.localization import select_attention
    >>> from sk_a2 import AttentionCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> data = make_spurious_images(n_samples=10, image_size=56, random_state=0)
    >>> base = AttentionCropper("imgfocus_vits14", crop_sizes=(28,), image_size=56,
    ...                             device="cpu")
    >>> best = select_attention([{"layer": -1}, {"layer": -2}, {"head_aggregation": "max"}],
    ...                         data.images[:4], data.boxes[:4], base=base)
    >>> type(best).__name__, best.model
    ('AttentionCropper', 'imgfocus_vits14')
    """
    croppers = _candidate_croppers(candidates, base)
    sources = as_sources(X)
    box_list = check_boxes(boxes, len(sources))
    groups = {}
    for i, c in enumerate(croppers):
        groups.setdefault(_group_key(c), []).append(i)
    scores, labels = np.empty((len(croppers), 2)), np.empty(len(croppers), dtype=np.int64)
    for members in groups.values():
        first = clone(croppers[members[0]]).fit()
        report = report_columns(localization_report(
            first, sources, box_list, layers=[croppers[i].layer for i in members]))
        num_layers = first.map_source().vm.num_layers
        for i in members:
            labels[i] = layer_label(croppers[i].layer, num_layers)
            rows = report["layer"] == labels[i]
            scores[i] = report["mass_in_box"][rows].mean(), report["hit"][rows].mean()
    order = sorted(range(len(croppers)), key=lambda i: (-scores[i, 0], -scores[i, 1], i))
    best = clone(croppers[order[0]]).fit()
    if not return_ranking:
        return best
    ranking = _table({
        "candidate": np.asarray(order, dtype=np.int64),
        "model": np.asarray([_model_name(croppers[i].model, croppers[i].weights) for i in order],
                            dtype=object),
        "layer": labels[order],
        "head_aggregation": np.asarray([croppers[i].head_aggregation for i in order],
                                       dtype=object),
        "mass_in_box": scores[order, 0],
        "hit_rate": scores[order, 1],
    })
    return best, ranking
