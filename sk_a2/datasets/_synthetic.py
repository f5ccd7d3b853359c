"""A small synthetic spurious-correlation benchmark generated on the fly."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import Bunch

from ._common import SPLIT_NAMES, make_rng

TARGET_NAMES = ("disk", "square")
BACKGROUND_NAMES = ("land", "water")
GROUP_NAMES = tuple(
    f"{shape}_on_{background}" for shape in TARGET_NAMES for background in BACKGROUND_NAMES
)

# Object colours: warm or white, shared by both classes, far from the blue and green/brown
# backgrounds (every colour has a red channel above 200, every background one below 140).
_PALETTE = np.array(
    [
        [215, 45, 40],  # red
        [240, 135, 25],  # orange
        [245, 215, 50],  # yellow
        [205, 55, 175],  # magenta
        [240, 240, 235],  # white
        [250, 145, 185],  # pink
    ],
    dtype=np.float32,
)
_WATER_DARK = np.array([15, 55, 130], dtype=np.float32)
_WATER_LIGHT = np.array([105, 180, 235], dtype=np.float32)
_LAND_GREEN = np.array([45, 115, 35], dtype=np.float32)
_LAND_BROWN = np.array([120, 80, 35], dtype=np.float32)
_CHUNK = 50
# Largest half extent of an object relative to its nominal size: a square rotated by 45 deg.
_MAX_HALF_EXTENT = np.sqrt(np.pi) / 4 * np.sqrt(2)

DESCR = """\
Synthetic spurious-correlation images (``make_spurious_images``)
-----------------------------------------------------------------

A Waterbirds-like benchmark that needs no download. Each RGB image shows one small
foreground object on a textured background.

* **Label (target)** -- the object's shape: ``0 = disk``, ``1 = square`` (a square rotated by a
  random angle, with the same area as the disk of the same nominal size). Object colours are
  drawn from a palette shared by both classes, so only the shape tells the classes apart.
  The nominal size (disk diameter) is a random 15-35 % of the image side by default (the box
  of a square rotated by 45 degrees is 1.25 times as wide) and the object sits at a random
  position, fully inside the image.
* **Background (spurious attribute)** -- ``0 = land`` (green/brown blotchy noise) or
  ``1 = water`` (blue wavy stripes). It covers most of the image and is far easier to detect
  than the shape.
* **Groups** -- ``group = 2 * label + background``: ``0 = disk_on_land``,
  ``1 = disk_on_water``, ``2 = square_on_land``, ``3 = square_on_water``.
* **Splits** -- ``train``/``val``/``test`` with ``split_fractions`` (default 60/20/20; pass
  ``(0.408, 0.102, 0.490)`` for the Waterbirds 4795/1199/5794 ratio). Classes are balanced in
  every split. In ``train`` the background agrees with the label (disk-land, square-water) for
  a fraction ``correlation`` (default 95 %) of the images of each class; in ``val`` and
  ``test`` the four groups are balanced, so the background carries no information about the
  label, as in Waterbirds.
* **Boxes** -- the tight pixel box ``(x0, y0, x1, y1)`` of the object (``x1``, ``y1``
  exclusive) of every image: the box of the pixels at least half covered by the object
  (the ``masks`` of ``return_masks=True``).

A classifier on the full image learns the background and fails on the minority groups;
a classifier on a crop around the object learns the shape. The same ``random_state`` and
arguments give byte-identical images.
"""


def _check_params(n_samples, image_size, correlation, split_fractions, object_size):
    if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}.")
    if not isinstance(image_size, numbers.Integral) or image_size < 32:
        raise ValueError(f"image_size must be an int >= 32, got {image_size!r}.")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be in [0, 1], got {correlation!r}.")
    fractions = np.asarray(split_fractions, dtype=float)
    if fractions.shape != (3,) or np.any(fractions < 0) or not np.isclose(fractions.sum(), 1):
        raise ValueError(
            f"split_fractions must be 3 non-negative numbers summing to 1 (train, val, test), "
            f"got {split_fractions!r}."
        )
    low, high = object_size
    if not 0.0 < low <= high <= 0.6:
        raise ValueError(
            f"object_size must be (low, high) with 0 < low <= high <= 0.6, got {object_size!r}."
        )
    return fractions


def _split_sizes(n_samples, fractions):
    n_train = round(fractions[0] * n_samples)
    n_val = min(round(fractions[1] * n_samples), n_samples - n_train)
    return n_train, n_val, n_samples - n_train - n_val


def _balanced_labels(n, rng):
    labels = np.arange(n) % 2
    return rng.permutation(labels)


def _backgrounds(labels, agreement, rng):
    """Backgrounds that agree with the label for a fraction ``agreement`` of each class."""
    background = labels.copy()
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        n_flip = round((1.0 - agreement) * members.size)
        flipped = rng.choice(members, size=n_flip, replace=False)
        background[flipped] = 1 - label
    return background


def _upsample(grid, size):
    """Bilinear upsampling of (B, c, c) grids to (B, size, size), without BLAS."""
    cells = grid.shape[-1]
    pos = (np.arange(size, dtype=np.float32) + 0.5) * cells / size - 0.5
    pos = np.clip(pos, 0, cells - 1)
    left = np.floor(pos).astype(np.intp)
    right = np.minimum(left + 1, cells - 1)
    frac = pos - left
    along_x = grid[:, :, left] * (1 - frac) + grid[:, :, right] * frac
    return along_x[:, left, :] * (1 - frac)[:, None] + along_x[:, right, :] * frac[:, None]


def _render_water(params, grid_y, grid_x):
    """Blue wavy stripes: brightness in [0, 1] of shape (B, H, W)."""
    tilt = params["tilt"][:, None, None]
    cos, sin = np.cos(tilt), np.sin(tilt)
    along = grid_x * cos + grid_y * sin
    across = grid_y * cos - grid_x * sin
    phase = 2 * np.pi * along / params["wavelength"][:, None, None]
    phase += params["phase1"][:, None, None]
    across += params["amplitude"][:, None, None] * np.sin(phase)
    across *= 2 * np.pi / params["period"][:, None, None]
    across += params["phase2"][:, None, None]
    value = np.sin(across)
    value *= 0.5
    value += 0.5
    return value


def _render_land(n, size, rng):
    """Green/brown blotches: brightness in [0, 1] of shape (B, H, W)."""
    value = np.zeros((n, size, size), dtype=np.float32)
    for cells, weight in ((5, 0.6), (14, 0.3), (40, 0.1)):
        grid = rng.random((n, cells, cells), dtype=np.float32)
        grid *= weight
        value += _upsample(grid, size)
    value -= 0.5
    value *= 2.2
    value += 0.5
    return np.clip(value, 0.0, 1.0, out=value)


def _object_geometry(labels, size, object_size, rng):
    """Per-image nominal size, rotation, half extent and centre of the object."""
    n = labels.size
    diameter = rng.uniform(object_size[0], object_size[1], size=n) * size
    angle = rng.uniform(0.0, np.pi / 2, size=n)
    side = diameter * np.sqrt(np.pi) / 2
    half_extent = np.where(
        labels == 0, diameter / 2, side / 2 * (np.abs(np.cos(angle)) + np.abs(np.sin(angle)))
    )
    margin = half_extent + 2.0
    centre_x = margin + rng.random(n) * np.maximum(size - 2 * margin, 0.0)
    centre_y = margin + rng.random(n) * np.maximum(size - 2 * margin, 0.0)
    return diameter, angle, half_extent, centre_x, centre_y


def _render_background(background, size, rng):
    """Backgrounds of a chunk as channel-first float32 RGB of shape (B, 3, H, W)."""
    n = background.size
    grid = np.arange(size, dtype=np.float32) + 0.5
    water = background == 1
    params = {
        "tilt": rng.uniform(-0.35, 0.35, n),
        "period": rng.uniform(0.05, 0.09, n) * size,
        "amplitude": rng.uniform(0.015, 0.04, n) * size,
        "wavelength": rng.uniform(0.25, 0.5, n) * size,
        "phase1": rng.uniform(0, 2 * np.pi, n),
        "phase2": rng.uniform(0, 2 * np.pi, n),
    }
    params = {key: value[water].astype(np.float32) for key, value in params.items()}
    value = np.empty((n, size, size), dtype=np.float32)
    value[water] = _render_water(params, grid[None, :, None], grid[None, None, :])
    value[~water] = _render_land(int((~water).sum()), size, rng)

    low = np.where(water[:, None], _WATER_DARK, _LAND_GREEN)
    high = np.where(water[:, None], _WATER_LIGHT, _LAND_BROWN)
    brightness = rng.uniform(0.85, 1.1, n)[:, None]
    scale = ((high - low) * brightness).astype(np.float32)
    offset = (low * brightness).astype(np.float32)
    rgb = np.empty((n, 3, size, size), dtype=np.float32)
    for channel in range(3):
        np.multiply(value, scale[:, channel, None, None], out=rgb[:, channel])
        rgb[:, channel] += offset[:, channel, None, None]
    return rgb


def _render_objects(labels, geometry, colours, window, size):
    """Objects drawn in a ``window``-pixel square around each centre.

    Returns the window origins (B, 2) as (x, y), the RGB colour (B, w, w, 3) and the
    anti-aliased coverage (B, w, w) of each object.
    """
    diameter, angle, half_extent, centre_x, centre_y = geometry
    origin_x = np.clip(np.floor(centre_x - window / 2), 0, size - window).astype(np.int64)
    origin_y = np.clip(np.floor(centre_y - window / 2), 0, size - window).astype(np.int64)
    offsets = np.arange(window, dtype=np.float32) + 0.5
    dx = offsets[None, None, :] + (origin_x - centre_x).astype(np.float32)[:, None, None]
    dy = offsets[None, :, None] + (origin_y - centre_y).astype(np.float32)[:, None, None]

    cos = np.cos(angle).astype(np.float32)[:, None, None]
    sin = np.sin(angle).astype(np.float32)[:, None, None]
    half_side = (diameter * np.sqrt(np.pi) / 4).astype(np.float32)[:, None, None]
    radius = (diameter / 2).astype(np.float32)[:, None, None]
    square_distance = np.maximum(np.abs(dx * cos + dy * sin), np.abs(dy * cos - dx * sin))
    signed = np.where(
        (labels == 0)[:, None, None],
        np.sqrt(dx * dx + dy * dy) - radius,
        square_distance - half_side,
    )
    coverage = np.clip(0.5 - signed, 0.0, 1.0)

    rim_width = max(1.0, size / 112)
    rim = np.clip(signed + rim_width + 0.5, 0.0, 1.0)
    extent = half_extent.astype(np.float32)[:, None, None]
    shade = np.clip(0.925 - 0.075 * (dx + dy) / (2 * extent), 0.8, 1.0)
    tone = shade * (1.0 - rim) + 0.4 * rim
    rgb = _PALETTE[colours][:, None, None, :] * tone[..., None]
    return np.stack([origin_x, origin_y], axis=1), rgb, coverage


def _render_chunk(background, labels, geometry, colours, window, size, rng, return_masks):
    """Render one chunk; returns uint8 images, boxes and (optionally) boolean masks."""
    n = labels.size
    images = _render_background(background, size, rng)
    origins, rgb, coverage = _render_objects(labels, geometry, colours, window, size)

    steps = np.arange(window)
    batch = np.arange(n)[:, None, None]
    rows = origins[:, 1][:, None, None] + steps[None, :, None]
    cols = origins[:, 0][:, None, None] + steps[None, None, :]
    alpha = coverage[..., None]
    images[batch, :, rows, cols] = images[batch, :, rows, cols] * (1.0 - alpha) + rgb * alpha

    grain = rng.random((n, size, size), dtype=np.float32)
    grain -= 0.5
    grain *= 16.0
    grain += 0.5
    images += grain[:, None]
    np.clip(images, 0, 255, out=images)
    images = images.transpose(0, 2, 3, 1).astype(np.uint8)

    inside = coverage >= 0.5
    rows_any, cols_any = inside.any(axis=2), inside.any(axis=1)
    boxes = np.stack(
        [
            origins[:, 0] + cols_any.argmax(axis=1),
            origins[:, 1] + rows_any.argmax(axis=1),
            origins[:, 0] + window - cols_any[:, ::-1].argmax(axis=1),
            origins[:, 1] + window - rows_any[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    )
    masks = None
    if return_masks:
        masks = np.zeros((n, size, size), dtype=bool)
        masks[batch, rows, cols] = inside
    return images, boxes, masks


def make_spurious_images(
    n_samples=1000,
    *,
    image_size=224,
    correlation=0.95,
    split_fractions=(0.6, 0.2, 0.2),
    object_size=(0.15, 0.35),
    random_state=0,
    return_masks=False,
):
    """Generate a synthetic Waterbirds-like benchmark with a spurious background.

    Each image shows a small disk or square (the label) on a "land" or "water" background
    (the spurious attribute). In the training split the background agrees with the label for
    a fraction ``correlation`` of each class; in validation and test the background is
    independent of the label. See ``DESCR`` of the result for the full description.

    Parameters
    ----------
    n_samples : int, default=1000
        Total number of images over the three splits.
    image_size : int, default=224
        Side of the square images in pixels (at least 32).
    correlation : float, default=0.95
        Fraction of training images of each class whose background agrees with the label
        (disk on land, square on water).
    split_fractions : tuple of 3 floats, default=(0.6, 0.2, 0.2)
        Fractions of ``n_samples`` in train, val and test. ``(0.408, 0.102, 0.490)`` mirrors
        the Waterbirds split sizes.
    object_size : tuple of 2 floats, default=(0.15, 0.35)
        Range of the object's nominal size (disk diameter; the square has the same area) as a
        fraction of ``image_size``.
    random_state : int, numpy.random.Generator or numpy.random.RandomState, default=0
        Seed. The same seed and arguments give byte-identical outputs.
    return_masks : bool, default=False
        Also return the boolean object masks (``masks``, shape ``(n, H, W)``).

    Returns
    -------
    data : sklearn.utils.Bunch
        With the fields

        images : ndarray of shape (n_samples, image_size, image_size, 3), dtype uint8
            RGB images.
        target : ndarray of shape (n_samples,), dtype int64
            Label: 0 = disk, 1 = square.
        spurious : ndarray of shape (n_samples,), dtype int64
            Background: 0 = land, 1 = water.
        groups : ndarray of shape (n_samples,), dtype int64
            ``2 * target + spurious``.
        split : ndarray of shape (n_samples,), dtype str
            ``"train"``, ``"val"`` or ``"test"``; the splits are interleaved.
        boxes : ndarray of shape (n_samples, 4), dtype int64
            Tight object box ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive.
        masks : ndarray of shape (n_samples, image_size, image_size), dtype bool
            Only with ``return_masks=True``: pixels covered at least half by the object.
        target_names, spurious_names, group_names : ndarray of str
            ``["disk", "square"]``, ``["land", "water"]`` and
            ``["disk_on_land", "disk_on_water", "square_on_land", "square_on_water"]``.
        DESCR : str
            Description of the benchmark.

    Examples
    --------
    >>> from sk_a2.datasets import make_spurious_images
    >>> data = make_spurious_images(100, image_size=64, random_state=0)
    >>> data.images.shape, data.images.dtype
    ((100, 64, 64, 3), dtype('uint8'))
    >>> sorted(set(data.split.tolist()))
    ['test', 'train', 'val']
    >>> bool((data.groups == 2 * data.target + data.spurious).all())
    True
    """
    fractions = _check_params(n_samples, image_size, correlation, split_fractions, object_size)
    rng = make_rng(random_state)
    size = int(image_size)

    labels, background, split = [], [], []
    for name, n_split in zip(SPLIT_NAMES, _split_sizes(n_samples, fractions)):
        split_labels = _balanced_labels(n_split, rng)
        agreement = correlation if name == "train" else 0.5
        labels.append(split_labels)
        background.append(_backgrounds(split_labels, agreement, rng))
        split.append(np.full(n_split, name))
    order = rng.permutation(n_samples)
    labels = np.concatenate(labels)[order].astype(np.int64)
    background = np.concatenate(background)[order].astype(np.int64)
    split = np.concatenate(split)[order]

    geometry = _object_geometry(labels, size, object_size, rng)
    colours = rng.integers(0, len(_PALETTE), size=n_samples)
    pixel_seed = int(rng.integers(0, 2**63 - 1))
    window = min(size, int(np.ceil(2 * _MAX_HALF_EXTENT * object_size[1] * size)) + 6)

    images = np.empty((n_samples, size, size, 3), dtype=np.uint8)
    boxes = np.empty((n_samples, 4), dtype=np.int64)
    masks = np.empty((n_samples, size, size), dtype=bool) if return_masks else None
    for start in range(0, n_samples, _CHUNK):
        index = slice(start, min(start + _CHUNK, n_samples))
        chunk_images, chunk_boxes, chunk_masks = _render_chunk(
            background[index],
            labels[index],
            tuple(values[index] for values in geometry),
            colours[index],
            window,
            size,
            np.random.default_rng([pixel_seed, start]),
            return_masks,
        )
        images[index] = chunk_images
        boxes[index] = chunk_boxes
        if masks is not None:
            masks[index] = chunk_masks

    data = Bunch(
        images=images,
        target=labels,
        spurious=background,
        groups=2 * labels + background,
        split=split.astype("<U5"),
        boxes=boxes,
        target_names=np.array(TARGET_NAMES),
        spurious_names=np.array(BACKGROUND_NAMES),
        group_names=np.array(GROUP_NAMES),
        DESCR=DESCR,
    )
    if masks is not None:
        data.masks = masks
    return data
