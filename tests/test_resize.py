"""sk_a2.resize against PIL itself: byte-identical bicubic resizes of real photographs and of
noise, up and down, on the CPU (tests/test_cuda.py runs the same on a GPU)."""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from sk_a2.resize import pass_order, pil_bicubic, resize_weights

PHOTOS = [p.copy() for p in load_sample_images().images]  # china (427x640) and flower (427x640), real JPEG photos
SIZES = [224, 64, 37, (100, 333), (300, 120), (427, 700), (600, 640), (900, 1000), (427, 50)]


def _pil(rgb, size):
    h, w = (size, size) if isinstance(size, int) else size
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("size", SIZES)
def test_photographs_byte_identical_to_pil(size):
    for photo in PHOTOS:
        np.testing.assert_array_equal(pil_bicubic(torch.from_numpy(photo), size).numpy(),
                                      _pil(photo, size))


def test_photograph_views_byte_identical_to_pil():
    """Square and odd views of the photographs (as benchmarks/bf16_boxes.py takes them) down
    to 224 px and up from small crops."""
    rng = np.random.default_rng(0)
    for k in range(12):
        photo = PHOTOS[k % 2]
        side = int(rng.integers(20, 420))
        y, x = (int(rng.integers(0, s - side + 1)) for s in photo.shape[:2])
        view = np.ascontiguousarray(photo[y:y + side, x:x + side + k])
        for size in (224, 96):
            np.testing.assert_array_equal(pil_bicubic(torch.from_numpy(view), size).numpy(),
                                          _pil(view, size))


def test_noise_and_extremes_byte_identical_to_pil():
    rng = np.random.default_rng(1)
    for h, w, size in [(1, 1, 5), (3, 700, 224), (700, 3, 224), (2, 2, 1), (57, 91, (13, 200)),
                       (250, 250, 224), (224, 500, 224)]:
        noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        np.testing.assert_array_equal(pil_bicubic(torch.from_numpy(noise), size).numpy(),
                                      _pil(noise, size))


def test_same_size_is_returned_unchanged():
    t = torch.from_numpy(PHOTOS[0])
    assert pil_bicubic(t, tuple(t.shape[:2])) is t


def test_weights_and_pass_order():
    w = resize_weights(640, 224)
    assert w.shape == (224, 640)
    # every row sums to 1 in 22-bit fixed point, up to the rounding of each weight
    assert np.abs(w.sum(1) - 2**22).max() <= w.shape[1]
    assert pass_order(427, 640, 224, 224) in ("wh", "hw")
