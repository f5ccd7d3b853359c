"""Two objects in one image: a large salient photo (the distractor) and a small digit (the label).

Everything is cut from data the installed wheels ship: scikit-learn's two sample photographs
(``china.jpg``: a pagoda, trees, water; ``flower.jpg``: a dahlia on dark leaves) and its
handwritten digits (``load_digits``), so the benchmark needs no download.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np
from PIL import Image
from sklearn.utils import Bunch

from ._common import make_rng

#: Distractor identities: (sample photo, square box (x0, y0, x1, y1) around the object).
DISTRACTORS = (("china.jpg", (30, 20, 400, 390)), ("flower.jpg", (125, 40, 485, 400)))
DISTRACTOR_NAMES = ("pagoda", "dahlia")
TARGET_NAMES = ("digit_0", "digit_1")
GROUP_NAMES = tuple(f"{t}_with_{d}" for t in TARGET_NAMES for d in DISTRACTOR_NAMES)
#: Texture regions (photo, box) outside the two objects: foliage, water, blurred leaves.
TEXTURES = (
    ("china.jpg", (380, 280, 640, 427)),
    ("china.jpg", (400, 235, 545, 300)),
    ("china.jpg", (540, 130, 640, 300)),
    ("flower.jpg", (0, 0, 160, 427)),
    ("flower.jpg", (470, 0, 640, 330)),
)
#: Layout, as fractions of the image side.
DISTRACTOR_SIZE = (0.40, 0.50)
DISTRACTOR_BOTTOM = 0.55
DIGIT_SIZE = 48 / 224
DIGIT_TOP = 0.62

DESCR = """\
Two-object images (``make_two_object``)
---------------------------------------

A benchmark for attention that looks at the wrong object. Each RGB image shows, on a real
texture (foliage, water or blurred leaves cut from scikit-learn's sample photographs):

* **Distractor (spurious attribute)** -- a large photograph in the upper part of the image
  (40-50 % of the side, bottom edge above 55 % of the height): ``0 = pagoda`` (from
  ``china.jpg``) or ``1 = dahlia`` (from ``flower.jpg``), randomly mirrored. It is the most
  salient thing in the image, so a self-supervised ViT's attention goes to it.
* **Label (target)** -- a handwritten digit (scikit-learn's ``load_digits``, 8 x 8, upsampled to
  48/224 of the side with crisp strokes) drawn in white (in black on a light texture) anywhere in
  the bottom strip (below 62 % of the height): ``0 = digit 0``, ``1 = digit 1``. ``boxes`` holds
  its square box.
* **Correlation** -- the distractor agrees with the label (pagoda with 0, dahlia with 1) in a
  fraction ``correlation`` of the images of each class (rounded per class); ``0.5`` makes it
  independent of the label.
* **Groups** -- ``group = 2 * target + spurious``: ``0 = digit_0_with_pagoda``,
  ``1 = digit_0_with_dahlia``, ``2 = digit_1_with_pagoda``, ``3 = digit_1_with_dahlia``.

A classifier of the whole image, or of a crop on the distractor, learns the distractor and fails
on the groups where it disagrees with the label; a classifier of a crop on the digit does not.
The same ``random_state`` and arguments give identical images.
"""


@functools.lru_cache(maxsize=1)
def _sources():
    """The sample photos (by file name) and the 8 x 8 digits 0 and 1 (ink in [0, 1])."""
    from sklearn.datasets import load_digits, load_sample_images

    photos = load_sample_images()
    by_name = {name.replace("\\", "/").rsplit("/", 1)[-1]: image
               for name, image in zip(photos.filenames, photos.images)}
    digits = load_digits()
    ink = (digits.images / 16.0).astype(np.float32)
    return by_name, (ink[digits.target == 0], ink[digits.target == 1])


def _check_params(n_samples, correlation, image_size):
    if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) \
            or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}.")
    if not isinstance(correlation, numbers.Real) or not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must be a number in [0, 1], got {correlation!r}.")
    if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool) \
            or image_size < 56:
        raise ValueError(f"image_size must be an int >= 56, got {image_size!r}.")


def _resize(array, size):
    """Bilinear (antialiased when shrinking) resize of an (h, w, 3) uint8 array: (s, s, 3)."""
    return np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR),
                      dtype=np.float32)


def _texture(photos, rng, size):
    name, (x0, y0, x1, y1) = TEXTURES[rng.integers(len(TEXTURES))]
    side = int(rng.integers(min(x1 - x0, y1 - y0) // 2, min(x1 - x0, y1 - y0) + 1))
    left = int(rng.integers(x0, x1 - side + 1))
    top = int(rng.integers(y0, y1 - side + 1))
    patch = photos[name][top:top + side, left:left + side]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return _resize(np.ascontiguousarray(patch), size)


def _distractor(photos, identity, rng, size):
    name, (x0, y0, x1, y1) = DISTRACTORS[identity]
    patch = photos[name][y0:y1, x0:x1]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    return _resize(np.ascontiguousarray(patch), size)


def _digit(ink, rng, size):
    """One digit's ink coverage (size, size) in [0, 1]: bicubically upsampled, then its
    contrast raised so that strokes have crisp edges."""
    glyph = ink[rng.integers(len(ink))]
    image = np.asarray(Image.fromarray(glyph).resize((size, size), Image.BICUBIC))
    return np.clip((image.astype(np.float32) - 0.3) / 0.4, 0.0, 1.0)


def _render(photos, inks, label, identity, rng, size):
    """One image and its digit and distractor boxes."""
    image = _texture(photos, rng, size)
    side = int(round(rng.uniform(*DISTRACTOR_SIZE) * size))
    dx = int(rng.integers(0, size - side + 1))
    dy = int(rng.integers(0, int(DISTRACTOR_BOTTOM * size) - side + 1))
    image[dy:dy + side, dx:dx + side] = _distractor(photos, identity, rng, side)
    d = max(8, int(round(DIGIT_SIZE * size)))
    gx = int(rng.integers(0, size - d + 1))
    gy = int(rng.integers(int(np.ceil(DIGIT_TOP * size)), size - d + 1))
    alpha = _digit(inks[label], rng, d)[..., None]
    region = image[gy:gy + d, gx:gx + d]
    ink = 15.0 if region.mean() > 120 else 250.0  # dark ink on a light texture
    image[gy:gy + d, gx:gx + d] = region * (1.0 - alpha) + ink * alpha
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image, (gx, gy, gx + d, gy + d), (dx, dy, dx + side, dy + side)


def _assign(n_samples, correlation, rng):
    """Balanced labels, and distractors agreeing with them at rate ``correlation`` per class."""
    target = rng.permutation(np.arange(n_samples) % 2)
    spurious = target.copy()
    for label in (0, 1):
        members = np.flatnonzero(target == label)
        n_flip = int(round((1.0 - correlation) * members.size))
        spurious[rng.choice(members, size=n_flip, replace=False)] = 1 - label
    return target.astype(np.int64), spurious.astype(np.int64)


def make_two_object(n_samples=200, *, correlation=0.9, image_size=224, random_state=0):
    """Generate images where a salient photo draws the attention and a small digit is the label.

    Each image shows a large photograph (a pagoda or a dahlia, the spurious attribute) in its
    upper part and a handwritten 0 or 1 (the label) anywhere in the bottom strip, on a real
    texture; all cut from data scikit-learn ships. The distractor agrees with the label in a
    fraction ``correlation`` of the images of each class. See ``DESCR`` of the result.

    Parameters
    ----------
    n_samples : int, default=200
        Number of images (at least 2); the two classes are balanced.
    correlation : float, default=0.9
        Fraction of the images of each class whose distractor agrees with the label (pagoda
        with 0, dahlia with 1). ``0.5``: independent of the label.
    image_size : int, default=224
        Side of the square images in pixels (at least 56). The digit is 48/224 of it.
    random_state : int, numpy.random.Generator or numpy.random.RandomState, default=0
        Seed. The same seed and arguments give identical images.

    Returns
    -------
    data : sklearn.utils.Bunch
        With the fields

        images : ndarray of shape (n_samples, image_size, image_size, 3), dtype uint8
            RGB images.
        target : ndarray of shape (n_samples,), dtype int64
            The digit: 0 or 1.
        spurious : ndarray of shape (n_samples,), dtype int64
            The distractor: 0 = pagoda, 1 = dahlia.
        groups : ndarray of shape (n_samples,), dtype int64
            ``2 * target + spurious``.
        boxes : ndarray of shape (n_samples, 4), dtype int64
            The digit's square box ``(x0, y0, x1, y1)``, ``x1`` and ``y1`` exclusive.
        distractor_boxes : ndarray of shape (n_samples, 4), dtype int64
            The photograph's box.
        target_names, spurious_names, group_names : tuple of str
            The names of the digits, of the photographs and of the four groups.
        DESCR : str
            Description of the benchmark.

    Examples
    --------
    >>> from sk_a2.datasets import make_two_object
    >>> data = make_two_object(8, correlation=0.5, image_size=112, random_state=0)
    >>> data.images.shape, data.boxes.shape
    ((8, 112, 112, 3), (8, 4))
    >>> int((data.target == data.spurious).sum())  # independent: half agree
    4
    """
    _check_params(n_samples, correlation, image_size)
    rng = make_rng(random_state)
    photos, inks = _sources()
    target, spurious = _assign(int(n_samples), float(correlation), rng)
    images = np.empty((n_samples, image_size, image_size, 3), dtype=np.uint8)
    boxes = np.empty((n_samples, 4), dtype=np.int64)
    distractor_boxes = np.empty((n_samples, 4), dtype=np.int64)
    for i in range(n_samples):
        images[i], boxes[i], distractor_boxes[i] = _render(
            photos, inks, target[i], spurious[i], rng, image_size)
    return Bunch(
        images=images, target=target, spurious=spurious, groups=2 * target + spurious,
        boxes=boxes, distractor_boxes=distractor_boxes, target_names=TARGET_NAMES,
        spurious_names=DISTRACTOR_NAMES, group_names=GROUP_NAMES, DESCR=DESCR,
    )
