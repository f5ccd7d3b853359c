"""Crops cut from the original pixels: geometry, conversions, draft decoding, workers."""

import numpy as np
import pytest
import torch
from PIL import Image

from sk_a2.boxes import crop_resize
from sk_a2.original_crops import (
    OriginalCrops,
    clip_boxes,
    cut_resize,
    draft_scale,
    iter_original_crop_batches,
    load_original_crops,
)


def pil_crop_resize(rgb, box, size):
    """Oracle: PIL's float ('F') bilinear crop-and-resize, channel by channel, in [0, 1]."""
    x0, y0, x1, y1 = (int(v) for v in box)
    chans = []
    for c in range(3):
        img = Image.fromarray(rgb[..., c].astype(np.float32), mode="F")
        chans.append(np.asarray(img.crop((x0, y0, x1, y1)).resize((size, size), Image.BILINEAR)))
    return np.stack(chans) / 255.0


def smooth_image(h, w, seed=0):
    """Smooth random content (so resampling differences stay small but non-trivial)."""
    rng = np.random.RandomState(seed)
    small = rng.randint(0, 256, size=(max(2, h // 8), max(2, w // 8), 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


@pytest.mark.parametrize("hw", [(90, 130), (150, 70), (40, 40)])
def test_cut_resize_equals_pil_crop_resize(hw):
    rgb = np.random.RandomState(1).randint(0, 256, size=(*hw, 3), dtype=np.uint8)
    h, w = hw
    boxes = np.array([[0, 0, w, h], [3, 5, 3 + 37, 5 + 20], [w - 11, h - 9, w, h],
                      [1, 2, 1 + 14, 2 + 14]])  # shrink, anisotropic, enlarge
    got = cut_resize(rgb, boxes, 24).numpy()
    assert got.shape == (4, 3, 24, 24) and got.dtype == np.float32
    for j, box in enumerate(boxes):
        np.testing.assert_allclose(got[j], pil_crop_resize(rgb, box, 24), atol=2e-5)


def test_same_size_original_matches_resized_path():
    """An original of exactly ``size`` pixels: both paths compute the same crop."""
    rgb = np.random.RandomState(2).randint(0, 256, size=(48, 48, 3), dtype=np.uint8)
    boxes = np.array([[4, 6, 20, 22], [30, 1, 46, 17], [0, 0, 48, 48], [10, 10, 43, 43]])
    images = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    resized = crop_resize(images, torch.as_tensor(boxes)[None], 48)[0]
    torch.testing.assert_close(cut_resize(rgb, boxes, 48), resized, atol=1e-5, rtol=0)


def test_clip_boxes_rounds_and_clips_never_pads():
    boxes = np.array([[-3.4, 2.6, 20.5, 41.2], [10.2, -0.4, 33.0, 30.0]])
    got = clip_boxes(boxes, (40, 30))
    np.testing.assert_array_equal(got, [[0, 3, 20, 40], [10, 0, 30, 30]])
    assert got.dtype == np.int64
    with pytest.raises(ValueError, match=r"X\[7\]: box 1 .* outside the 40x30"):
        clip_boxes(np.array([[0, 0, 5, 5], [31, 2, 40, 9]]), (40, 30), where="X[7]")


def test_box_outside_is_clipped_in_the_crop():
    rgb = smooth_image(50, 60)
    got = load_original_crops(rgb, [[40, 30, 70, 60]], 16).numpy()[0]
    np.testing.assert_allclose(got, pil_crop_resize(rgb, (40, 30, 60, 50), 16), atol=2e-5)


def test_exif_rotated_file(tmp_path):
    """Boxes are in the EXIF-oriented frame; the cut comes from the oriented pixels."""
    raw = smooth_image(40, 64, seed=3)  # stored 40 x 64, displayed 64 x 40 (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.png"
    Image.fromarray(raw).save(path, exif=exif)
    oriented = np.rot90(raw, k=-1)  # orientation 6: rotate 90 degrees clockwise
    assert oriented.shape[:2] == (64, 40)
    box = [5, 30, 35, 60]
    got = load_original_crops(str(path), [box], 20, image_size=(64, 40)).numpy()[0]
    np.testing.assert_allclose(got, pil_crop_resize(oriented, box, 20), atol=2e-5)
    with pytest.raises(ValueError, match=r"X\[3\] is 64x40 pixels .* 40x64 image"):
        load_original_crops(str(path), [box], 20, image_size=(40, 64), index=3)


def test_grayscale_and_16_bit_files(tmp_path):
    gray16 = (smooth_image(36, 52, seed=4)[..., 0].astype(np.uint16) * 257
              + np.random.RandomState(0).randint(0, 257, size=(36, 52)).astype(np.uint16))
    as8 = np.round(gray16 / 257.0).astype(np.uint8)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    Image.fromarray(as8, mode="L").save(tmp_path / "g8.png")
    rgb8 = np.repeat(as8[..., None], 3, axis=-1)
    box = [7, 3, 40, 30]
    for name in ("g16.png", "g8.png"):
        got = load_original_crops(str(tmp_path / name), [box], 12).numpy()[0]
        np.testing.assert_allclose(got, pil_crop_resize(rgb8, box, 12), atol=2e-5)


def test_full_box_is_the_resized_image():
    from sk_a2.images import resize_rgb

    rgb = smooth_image(70, 50, seed=5)
    got = load_original_crops(rgb, [[0, 0, 50, 70], [0, 0, 50, 70]], 32,
                              full=np.array([True, False])).numpy()
    np.testing.assert_allclose(got[0], resize_rgb(rgb, 32).transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert not np.allclose(got[0], got[1])  # the non-full box uses the antialiased bilinear


def test_draft_scale():
    assert draft_scale([[0, 0, 200, 200]], 50) == 2
    assert draft_scale([[0, 0, 200, 200], [0, 0, 199, 800]], 50) == 1
    assert draft_scale([[0, 0, 800, 900]], 50) == 8
    assert draft_scale([[0, 0, 500, 410]], 50) == 4
    assert draft_scale(np.zeros((0, 4)), 50) == 1


def test_jpeg_draft_decoding_is_close_to_full_decode(tmp_path):
    rgb = smooth_image(512, 384, seed=6)
    path = tmp_path / "big.jpg"
    Image.fromarray(rgb).save(path, quality=95)
    # smallest side 160: r = 4 for size 20; edges on multiples of 4 map to whole draft pixels
    boxes = [[12, 20, 332, 340], [40, 100, 200, 260]]
    assert draft_scale(boxes, 20) == 4
    draft = load_original_crops(str(path), boxes, 20, image_size=(512, 384)).numpy()
    full = load_original_crops(str(path), boxes, 20, image_size=(512, 384), draft=False).numpy()
    diff = np.abs(draft - full)
    assert 0 < diff.mean() < 2 / 255 and diff.max() < 12 / 255
    # other edges round to the nearest draft pixel (a fraction of an output pixel away)
    shifted = [[13, 19, 331, 341], [39, 99, 201, 261]]
    assert draft_scale(shifted, 20) == 4
    np.testing.assert_array_equal(load_original_crops(str(path), shifted, 20).numpy(), draft)
    # boxes too small for any reduction: the draft path decodes in full, identically
    small = [[10, 20, 60, 70]]
    np.testing.assert_array_equal(
        load_original_crops(str(path), small, 20).numpy(),
        load_original_crops(str(path), small, 20, draft=False).numpy(),
    )


def test_unreadable_file_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"X\[2\]: cannot read image file"):
        load_original_crops(str(bad), [[0, 0, 400, 400]], 16, index=2)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_worker_dataset_batches(num_workers):
    images = [smooth_image(40 + 10 * i, 60, seed=i) for i in range(3)]
    boxes = [np.array([[0, 0, 20, 20], [5, 5, 60, 35]]), np.array([[1, 2, 30, 40]]),
             np.array([[0, 0, 60, 60], [3, 3, 9, 9], [10, 0, 50, 40]])]
    full = [np.zeros(len(b), bool) for b in boxes]
    ds = OriginalCrops(images, boxes, full, [im.shape[:2] for im in images], 16,
                       indices=[5, 6, 7])
    batches = list(iter_original_crop_batches(ds, batch_size=2, num_workers=num_workers,
                                              device=torch.device("cpu")))
    assert [(s, c) for s, _, c in batches] == [(0, [2, 1]), (2, [3])]
    crops = torch.cat([b for _, b, _ in batches]).numpy()
    expected = [pil_crop_resize(im, bx, 16) for im, bs in zip(images, boxes) for bx in bs]
    np.testing.assert_allclose(crops, np.stack(expected), atol=2e-5)
