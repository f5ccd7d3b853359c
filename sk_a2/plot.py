"""Overlays of chosen crops on their images, in the style of the paper's Figure 4.

Crop regions are shown at full brightness and the rest of the image is faded (darkened), box
outlines are drawn on top, and the attention map can be laid over the image as a heat map.

Needs matplotlib (the ``plot`` extra: ``pip install "sk-a2[plot]"``), imported only when a
function here is called. Figures are built as plain :class:`matplotlib.figure.Figure` objects,
not through ``pyplot``: nothing is registered with a GUI backend, and files are written with the
Agg backend. Save a returned figure with ``fig.savefig(...)``, or let a notebook display it as
a cell's value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .cropset import CropSet
from .images import as_sources, load_rgb

__all__ = [
    "fade_outside",
    "plot_crop_grid",
    "plot_crops",
    "plot_matrix",
    "require_matplotlib",
    "save_figure",
    "save_overlays",
]

_INSTALL_HINT = 'pip install "sk-a2[plot]"'
#: Outline colours of the 1st, 2nd, ... crop (cycled).
BOX_COLORS = ("#00ff66", "#00d0ff", "#ffdd00", "#ff3df5", "#ff7a00", "#ffffff")


def require_matplotlib():
    """matplotlib and the classes used here, or an ImportError saying how to install them.

    Returns
    -------
    tuple
        ``(matplotlib, Figure, FigureCanvasAgg, Rectangle)``: the module and the classes this
        module draws with.

    Raises
    ------
    ImportError
        If matplotlib is not installed, saying ``pip install "sk-a2[plot]"``.

    Examples
    --------
    >>> from sk_a2.plot import require_matplotlib
    >>> matplotlib, Figure, FigureCanvasAgg, Rectangle = require_matplotlib()
    >>> Figure.__module__
    'matplotlib.figure'
    """
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise ImportError(f"plotting needs matplotlib: {_INSTALL_HINT}") from exc
    return matplotlib, Figure, FigureCanvasAgg, Rectangle


def _check_boxes(boxes):
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 1 and boxes.shape == (4,):
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (k, 4) as (x0, y0, x1, y1), got {boxes.shape}")
    return boxes


def fade_outside(image, boxes, fade=0.6):
    """Darken an image outside its boxes.

    Parameters
    ----------
    image : image source
        A path, PIL image or ``(H, W, 3)`` uint8 array.
    boxes : array-like of shape (k, 4)
        ``(x0, y0, x1, y1)`` in pixels of ``image``, ``x1``/``y1`` exclusive. A pixel counts
        as inside when its centre is inside a box.
    fade : float in [0, 1], default=0.6
        Fraction of brightness removed outside the boxes (0: no fading, 1: black).

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        The image unchanged inside the boxes, multiplied by ``1 - fade`` elsewhere. Without
        boxes, the image unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((64, 64, 3), 200, dtype=np.uint8)
    >>> from sk_a2.plot import fade_outside
    >>> faded = fade_outside(image, [[0, 0, 32, 32]], fade=0.5)
    >>> int(faded[0, 0, 0]), int(faded[63, 63, 0])
    (200, 100)
    """
    if not 0.0 <= float(fade) <= 1.0:
        raise ValueError(f"fade must be in [0, 1], got {fade!r}")
    rgb = load_rgb(image)
    boxes = _check_boxes(boxes)
    if not len(boxes):
        return rgb
    h, w = rgb.shape[:2]
    ys = np.arange(h) + 0.5
    xs = np.arange(w) + 0.5
    inside = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside |= ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]
    out = rgb.astype(np.float32)
    out[~inside] *= 1.0 - float(fade)
    return np.round(out).astype(np.uint8)


def plot_crops(image, boxes, attention=None, ax=None, *, fade=0.6, heatmap_alpha=0.45,
               cmap="inferno", linewidth=2.0, numbers=True):
    """Draw one image with its crops: boxes bright, the rest faded, outlines on top.

    Parameters
    ----------
    image : image source
        A path, PIL image or ``(H, W, 3)`` uint8 array.
    boxes : array-like of shape (k, 4)
        ``(x0, y0, x1, y1)`` in pixels of ``image`` (as in :attr:`CropSet.boxes`).
    attention : array-like of shape (h, w), default=None
        An attention map of any resolution (e.g. from
        :meth:`~sk_a2.AttentionCropper.attention_maps`), stretched over the whole image and laid
        over it as a heat map. ``None``: no heat map.
    ax : matplotlib.axes.Axes, default=None
        Where to draw; ``None`` makes a new figure sized to the image.
    fade : float in [0, 1], default=0.6
        Fraction of brightness removed outside the boxes.
    heatmap_alpha : float, default=0.45
        Opacity of the heat map.
    cmap : str, default="inferno"
        Colour map of the heat map.
    linewidth : float, default=2.0
        Width of the box outlines, in points.
    numbers : bool, default=True
        Write the rank of each crop (1 = first) at its top-left corner.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np
    >>> image = np.full((64, 64, 3), 200, dtype=np.uint8)
    >>> from sk_a2.plot import plot_crops
    >>> attention = np.random.default_rng(0).random((4, 4))
    >>> ax = plot_crops(image, [[0, 0, 32, 32], [32, 32, 64, 64]], attention=attention)
    >>> len(ax.patches)  # one outline per box
    2
    """
    _, Figure, _, Rectangle = require_matplotlib()
    rgb = fade_outside(image, boxes, fade)
    boxes = _check_boxes(boxes)
    h, w = rgb.shape[:2]
    if ax is None:
        scale = 4.0 / max(h, w)
        fig = Figure(figsize=(w * scale, h * scale))
        ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(rgb, extent=(0, w, h, 0), interpolation="nearest")
    if attention is not None:
        attention = np.asarray(attention, dtype=np.float64)
        if attention.ndim != 2:
            raise ValueError(f"attention must be a 2-D map, got shape {attention.shape}")
        ax.imshow(attention, extent=(0, w, h, 0), cmap=cmap, alpha=heatmap_alpha,
                  interpolation="bilinear")
    for j, (x0, y0, x1, y1) in enumerate(boxes):
        color = BOX_COLORS[j % len(BOX_COLORS)]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                               linewidth=linewidth))
        if numbers:
            ax.text(x0 + 0.01 * w, y0 + 0.01 * h, str(j + 1), color=color, fontsize=9,
                    fontweight="bold", va="top", ha="left",
                    bbox=dict(facecolor="black", alpha=0.5, pad=1.0, edgecolor="none"))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    return ax


def plot_crop_grid(images, cropset, attention_maps=None, ncols=4, titles=None, *, fade=0.6,
                   heatmap_alpha=0.45, cell_size=2.5):
    """A grid of images with their crops (and optionally attention heat maps).

    Parameters
    ----------
    images : sequence of image sources, (n, H, W, 3) uint8 array, or None
        The images of ``cropset`` (``None``: ``cropset.images``).
    cropset : CropSet
        The boxes of each image, e.g. from :meth:`~sk_a2.AttentionCropper.transform`.
    attention_maps : array-like of shape (n, h, w), default=None
        One attention map per image, drawn as a heat map.
    ncols : int, default=4
        Images per row.
    titles : sequence of str, default=None
        One title per image.
    fade : float in [0, 1], default=0.6
        Fraction of brightness removed outside the boxes.
    heatmap_alpha : float, default=0.45
        Opacity of the heat maps.
    cell_size : float, default=2.5
        Side of one grid cell, in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sk_a2 import CenterCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> from sk_a2.plot import plot_crop_grid
    >>> data = make_spurious_images(n_samples=10, image_size=56, random_state=0)
    >>> crops = CenterCropper(crop_sizes=(28,), image_size=56).fit_transform(data.images[:6])
    >>> fig = plot_crop_grid(None, crops, ncols=3)
    >>> len(fig.axes)
    6
    """
    _, Figure, _, _ = require_matplotlib()
    if not isinstance(cropset, CropSet):
        raise ValueError(f"cropset must be a CropSet, got {type(cropset).__name__}")
    sources = cropset.images if images is None else as_sources(images, name="images")
    n = len(cropset)
    if len(sources) != n:
        raise ValueError(f"images has {len(sources)} images but cropset has {n}")
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols must be a positive int, got {ncols!r}")
    if attention_maps is not None and len(attention_maps) != n:
        raise ValueError(f"attention_maps has {len(attention_maps)} maps but cropset has {n}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles has {len(titles)} entries but cropset has {n}")
    ncols = int(min(ncols, n))
    nrows = -(-n // ncols)
    lines = 0 if titles is None else max(str(t).count("\n") + 1 for t in titles)
    extra = 0.18 * lines
    fig = Figure(figsize=(ncols * cell_size, nrows * (cell_size + extra)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.set_axis_off()
            continue
        attention = None if attention_maps is None else attention_maps[i]
        plot_crops(sources[i], cropset.boxes[i], attention, ax=ax, fade=fade,
                   heatmap_alpha=heatmap_alpha)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    top = 1.0 - (0.01 + extra / (cell_size + extra)) / nrows
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=top, wspace=0.04,
                        hspace=0.04 + extra / cell_size)
    return fig


def save_figure(fig, path, *, dpi=100):
    """Write a figure to ``path`` with the Agg backend (PNG unless the suffix says otherwise).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
        The file to write; its folder is created if needed.
    dpi : float, default=100

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sk_a2.plot import plot_matrix, save_figure
    >>> path = save_figure(plot_matrix([[0.5]], ["a"], ["b"]), Path(tempfile.mkdtemp()) / "m.png")
    >>> path.suffix, path.stat().st_size > 0
    ('.png', True)
    """
    _, _, FigureCanvasAgg, _ = require_matplotlib()
    FigureCanvasAgg(fig)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def _default_names(sources):
    names = []
    for i, source in enumerate(sources):
        if isinstance(source, (str, os.PathLike)):
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(os.fspath(source)).stem) or "image"
        else:
            stem = f"image_{i:04d}"
        names.append(stem)
    if len(set(names)) < len(names):
        width = len(str(len(names) - 1))
        names = [f"{i:0{width}d}_{name}" for i, name in enumerate(names)]
    return names


def save_overlays(cropper, X, out_dir, *, cropset=None, attention_maps=None, heatmap=True,
                  names=None, fade=0.6, dpi=100):
    """Write one PNG per image: its crops over it, with the attention heat map when available.

    Parameters
    ----------
    cropper : AttentionCropper, CenterCropper or RandomCropper
        Chooses the boxes; fitted on the fly (a clone) when it is not fitted yet.
    X : sequence of image sources, or (n, H, W, 3) uint8 array
    out_dir : str or path-like
        Folder for the PNGs, created if needed.
    cropset : CropSet, default=None
        Boxes already chosen for ``X`` (skips ``cropper.transform``).
    attention_maps : array-like of shape (n, h, w), default=None
        Attention maps already computed for ``X``. Otherwise, with ``heatmap=True``, a cropper
        that has ``attention_maps`` (an :class:`~sk_a2.AttentionCropper`) computes them.
    heatmap : bool, default=True
        Lay the attention map over each image.
    names : sequence of str, default=None
        File stems, one per image. Default: the stem of each file path (``image_0000`` ... for
        arrays), prefixed with the index when stems repeat.
    fade : float in [0, 1], default=0.6
        Fraction of brightness removed outside the boxes.
    dpi : int, default=100
        Resolution of the PNGs (each is about 4 inches on its longer side).

    Returns
    -------
    list of pathlib.Path
        The written files, ``<out_dir>/<name>_crops.png``, in the order of ``X``.

    Examples
    --------
    >>> import tempfile
    >>> from sk_a2 import CenterCropper
    >>> from sk_a2.datasets import make_spurious_images
    >>> from sk_a2.plot import save_overlays
    >>> data = make_spurious_images(n_samples=10, image_size=56, random_state=0)
    >>> cropper = CenterCropper(crop_sizes=(28,))
    >>> paths = save_overlays(cropper, data.images[:2], tempfile.mkdtemp())
    >>> [p.name for p in paths]
    ['image_0000_crops.png', 'image_0001_crops.png']
    """
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    require_matplotlib()
    sources = as_sources(X)
    n = len(sources)
    if names is None:
        names = _default_names(sources)
    elif len(names) != n:
        raise ValueError(f"names has {len(names)} entries but X has {n} images")
    if cropset is None or (heatmap and attention_maps is None
                           and hasattr(cropper, "attention_maps")):
        try:
            check_is_fitted(cropper)
        except NotFittedError:
            cropper = clone(cropper).fit(sources)
    if cropset is None:
        cropset = cropper.transform(sources)
    elif len(cropset) != n:
        raise ValueError(f"cropset has {len(cropset)} images but X has {n}")
    if heatmap and attention_maps is None and hasattr(cropper, "attention_maps"):
        attention_maps = cropper.attention_maps(sources)
    if not heatmap:
        attention_maps = None
    elif attention_maps is not None and len(attention_maps) != n:
        raise ValueError(f"attention_maps has {len(attention_maps)} maps but X has {n} images")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        attention = None if attention_maps is None else attention_maps[i]
        ax = plot_crops(sources[i], cropset.boxes[i], attention, fade=fade)
        paths.append(save_figure(ax.figure, out_dir / f"{names[i]}_crops.png", dpi=dpi))
    return paths


def plot_matrix(values, row_labels, col_labels, *, title="", xlabel="embedding model",
                ylabel="attention model", percent=True):
    """A heat map of a matrix (e.g. attention model × embedding model), each cell annotated.

    Parameters
    ----------
    values : array-like of shape (n_rows, n_cols)
        Fractions in [0, 1] with ``percent=True`` (shown as percentages), else any numbers.
    row_labels, col_labels : sequence of str
    title, xlabel, ylabel : str

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> from sk_a2.plot import plot_matrix
    >>> fig = plot_matrix([[0.8, 0.9], [0.7, 0.95]], ["ViT-S", "ViT-B"], ["ViT-S", "ViT-G"],
    ...                   title="worst-group accuracy")
    >>> fig.axes[0].get_title()
    'worst-group accuracy'
    """
    _, Figure, _, _ = require_matplotlib()
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"values has shape {values.shape}, labels give "
                         f"({len(row_labels)}, {len(col_labels)})")
    shown = 100 * values if percent else values
    fig = Figure(figsize=(1.6 + 1.3 * len(col_labels), 1.2 + 0.7 * len(row_labels)))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(shown, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    middle = np.nanmean(shown) if np.isfinite(shown).any() else 0.0
    for (i, j), v in np.ndenumerate(shown):
        ax.text(j, i, f"{v:.1f}", ha="center", va="center",
                color="black" if v > middle else "white")
    fig.tight_layout()
    return fig
