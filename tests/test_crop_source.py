"""CropEmbedder(crop_source=...) and ZeroShotCLIPClassifier(crop_source=...)."""

import numpy as np
import pytest
import torch
from conftest import make_clip, random_images
from PIL import Image
from sklearn.base import clone
from test_original_crops import pil_crop_resize, smooth_image

from sk_a2 import AttentionCropper, CropEmbedder, CropSet, ZeroShotCLIPClassifier
from sk_a2.models import load_model


@pytest.fixture
def cropper(tiny_vit_file):
    return AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                            crop_sizes=(32, 16), device="cpu")


def embedder(weights, **kw):
    return CropEmbedder("timm:test_vit", weights=weights, image_size=64, device="cpu", **kw)


def both_sources(weights, X, **kw):
    return [embedder(weights, crop_source=s, **kw).fit_transform(X) for s in ("resized",
                                                                            "original")]


def test_originals_of_image_size_give_the_same_embeddings(cropper, tiny_vit_file2):
    X = random_images(4, 64, 64, seed=3)
    cs = cropper.fit_transform(X)
    resized, original = both_sources(tiny_vit_file2, cs, include_full_image=True)
    np.testing.assert_allclose(original, resized, atol=1e-5, rtol=0)
    plain = both_sources(tiny_vit_file2, X)
    np.testing.assert_array_equal(plain[0], plain[1])


def test_larger_originals_equal_pil_crop_and_resize(cropper, tiny_vit_file2):
    X = [smooth_image(150, 110, seed=1), smooth_image(96, 200, seed=2)]
    cs = cropper.fit_transform(X)
    resized, original = both_sources(tiny_vit_file2, cs, batch_size=3)
    vm = load_model("timm:test_vit", weights=tiny_vit_file2, image_size=64, device="cpu")
    for i, rgb in enumerate(X):
        crops = [pil_crop_resize(rgb, np.round(box), 64) for box in cs.boxes[i].astype(float)]
        with torch.no_grad():
            ref = vm.embed(vm.normalize(torch.as_tensor(np.stack(crops), dtype=torch.float32)))
        np.testing.assert_allclose(original[i], ref.flatten().numpy(), atol=1e-4, rtol=0)
    assert not np.allclose(original, resized, atol=1e-3)  # more detail: another embedding


def _input_variants(tmp_path):
    """(file, equivalent RGB array) pairs: EXIF-rotated, grayscale, 16-bit, non-square."""
    raw = smooth_image(60, 100, seed=7)
    exif = Image.Exif()
    exif[0x0112] = 8  # displayed rotated 90 degrees counter-clockwise
    Image.fromarray(raw).save(tmp_path / "rot.png", exif=exif)
    gray16 = smooth_image(90, 70, seed=8)[..., 0].astype(np.uint16) * 257 + 100
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    gray = smooth_image(80, 130, seed=9)[..., 1]
    Image.fromarray(gray, mode="L").save(tmp_path / "g8.png")
    as8 = np.round(gray16 / 257.0).astype(np.uint8)
    return [str(tmp_path / n) for n in ("rot.png", "g16.png", "g8.png")], [
        np.ascontiguousarray(np.rot90(raw, k=1)),
        np.repeat(as8[..., None], 3, axis=-1),
        np.repeat(gray[..., None], 3, axis=-1),
    ]


def test_exif_grayscale_16_bit_files_same_boxes_and_crops(cropper, tiny_vit_file2, tmp_path):
    files, arrays = _input_variants(tmp_path)
    cs_files = cropper.fit_transform(files)
    cs_arrays = cropper.transform(arrays)
    np.testing.assert_array_equal(cs_files.boxes, cs_arrays.boxes)
    np.testing.assert_array_equal(cs_files.image_sizes, [a.shape[:2] for a in arrays])
    for source in ("resized", "original"):
        emb = embedder(tiny_vit_file2, crop_source=source, include_full_image=True).fit(cs_files)
        np.testing.assert_allclose(emb.transform(cs_files), emb.transform(cs_arrays), atol=1e-6)
    # the original-source crops of the files are PIL crops of the oriented, converted pixels
    vm = load_model("timm:test_vit", weights=tiny_vit_file2, image_size=64, device="cpu")
    E = embedder(tiny_vit_file2, crop_source="original").fit_transform(cs_files)
    for i, rgb in enumerate(arrays):
        crops = [pil_crop_resize(rgb, np.round(b), 64) for b in cs_files.boxes[i].astype(float)]
        with torch.no_grad():
            ref = vm.embed(vm.normalize(torch.as_tensor(np.stack(crops), dtype=torch.float32)))
        np.testing.assert_allclose(E[i], ref.flatten().numpy(), atol=1e-4, rtol=0)


def test_cache_keys_distinguish_the_sources(cropper, tiny_vit_file2):
    X = [smooth_image(120, 90, seed=4), smooth_image(100, 100, seed=5)]
    cs = cropper.fit_transform(X)
    plain = both_sources(tiny_vit_file2, cs)
    cached = both_sources(tiny_vit_file2, cs, cache="memory")
    np.testing.assert_array_equal(cached[0], plain[0])
    np.testing.assert_array_equal(cached[1], plain[1])
    again = embedder(tiny_vit_file2, crop_source="original", cache="memory").fit_transform(cs)
    np.testing.assert_array_equal(again, plain[1])


def test_boxes_are_rounded_inside_the_original(tiny_vit_file2):
    X = [smooth_image(50, 70, seed=6)]
    with pytest.raises(ValueError, match=r"boxes\[0, 0\] = .* lies outside the frame"):
        CropSet(X, [[[50.4, 30.0, 80.0, 60.0]]], [[np.nan]], [[50, 70]])
    cs = CropSet(X, [[[50.4, 29.6, 70.0, 50.0]]], [[np.nan]], [[50, 70]])
    E = embedder(tiny_vit_file2, crop_source="original").fit_transform(cs)
    whole_pixels = CropSet(X, [[[50.0, 30.0, 70.0, 50.0]]], [[np.nan]], [[50, 70]])
    np.testing.assert_array_equal(
        E, embedder(tiny_vit_file2, crop_source="original").fit_transform(whole_pixels))
    sliver = CropSet(X, [[[69.6, 0.0, 70.0, 15.0]]], [[np.nan]], [[50, 70]])
    with pytest.raises(ValueError, match=r"X\[0\]: box 0 .* outside the 50x70"):
        embedder(tiny_vit_file2, crop_source="original").fit_transform(sliver)


def test_parameter_rule_and_contract(tiny_vit_file2):
    emb = embedder(tiny_vit_file2, crop_source="original")
    assert emb.get_params()["crop_source"] == "original"
    assert clone(emb).crop_source == "original"
    X = random_images(2, 64, 64)
    for bad in ("Original", None, 1):
        with pytest.raises(ValueError, match=r"'crop_source' parameter of CropEmbedder must be a "
                                             r"str among \{'resized', 'original'\}\. Got"):
            embedder(tiny_vit_file2, crop_source=bad).fit(X)


def test_zero_shot_shares_the_crop_path(tiny_vit_file):
    clip = make_clip(seed=3)
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                               crop_sizes=(32,), device="cpu")
    X, y = random_images(4, 64, 64, seed=1), np.array([0, 1, 0, 1])
    same = cropper.fit_transform(X)
    zs = [ZeroShotCLIPClassifier(clip, classnames=["a", "b"], image_size=64, device="cpu",
                                 crop_source=s).fit(same, y) for s in ("resized", "original")]
    np.testing.assert_allclose(zs[0].predict_proba(same), zs[1].predict_proba(same), atol=1e-5)
    big = [smooth_image(130, 90, seed=i) for i in range(4)]
    cs = cropper.transform(big)
    assert not np.allclose(zs[0].predict_proba(cs), zs[1].predict_proba(cs), atol=1e-6)
    with pytest.raises(ValueError, match=r"'crop_source' parameter of ZeroShotCLIPClassifier must "
                                         r"be a str among \{'resized', 'original'\}"):
        ZeroShotCLIPClassifier(clip, classnames=["a", "b"], crop_source="raw").fit(same, y)
