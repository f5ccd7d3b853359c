"""Hostile inputs to images, ``CropSet`` and ``DFRClassifier``: each row of a table is one input,
the exception it gets and a regex its message must match (naming the input and the fix)."""

import numpy as np
import pytest
from conftest import random_images
from PIL import Image

from sk_a2 import AttentionCropper, CropEmbedder, CropSet, DFRClassifier
from sk_a2.boxes import to_original
from sk_a2.images import as_sources, load_rgb

# --------------------------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------------------------

GOOD = random_images(1, 40, 40)[0]


def closed_image():
    img = Image.fromarray(GOOD)
    img.close()
    return img


def closed_file_image(tmp_path):
    path = tmp_path / "closed.png"
    Image.fromarray(GOOD).save(path)
    with Image.open(path) as img:
        pass
    return img


def nul_path(tmp_path):
    return str(tmp_path / "a\x00b.png")


ONE_IMAGE = r"this looks like one \(H, W, C\) image.*\[img\].*img\[None\]"
EMPTY_PIL = r"X\[1\]: the PIL image has size {}: the image is empty"
NUL = r"X\[1\]: the path .* holds a NUL byte .*remove it"
CLOSED = r"X\[1\]: the PIL image is closed.*before closing"

# (make X from tmp_path, error, message regex)
SOURCE_CASES = [
    pytest.param(lambda tmp: np.zeros((20, 30, 3), np.uint8), ValueError,
                 r"X has shape \(20, 30, 3\): " + ONE_IMAGE, id="one-HxWx3-array"),
    pytest.param(lambda tmp: np.zeros((20, 30, 4), np.uint8), ValueError,
                 r"X has shape \(20, 30, 4\): " + ONE_IMAGE, id="one-HxWx4-array"),
    pytest.param(lambda tmp: np.zeros((3, 20, 3), np.uint16), ValueError,
                 r"X has shape \(3, 20, 3\): " + ONE_IMAGE, id="one-uint16-HxWx3-array"),
    pytest.param(lambda tmp: [GOOD, Image.new("RGB", (0, 0))], ValueError,
                 EMPTY_PIL.format("0x0"), id="pil-0x0"),
    pytest.param(lambda tmp: [GOOD, Image.new("L", (5, 0))], ValueError,
                 EMPTY_PIL.format("5x0"), id="pil-width5-height0"),
    pytest.param(lambda tmp: [GOOD, Image.new("RGB", (0, 7))], ValueError,
                 EMPTY_PIL.format("0x7"), id="pil-width0-height7"),
    pytest.param(lambda tmp: [GOOD, nul_path(tmp)], ValueError, NUL, id="str-path-with-NUL"),
    pytest.param(lambda tmp: [GOOD, tmp / "a\x00b.png"], ValueError, NUL,
                 id="Path-with-NUL"),
    pytest.param(lambda tmp: [GOOD, closed_image()], ValueError, CLOSED, id="closed-pil"),
    pytest.param(lambda tmp: [GOOD, closed_file_image(tmp)], ValueError, CLOSED,
                 id="closed-pil-from-file"),
    pytest.param(lambda tmp: np.zeros((2, 0, 5, 3), np.uint8), ValueError,
                 r"X has shape \(2, 0, 5, 3\): the images are empty", id="stack-of-empty"),
]


@pytest.mark.parametrize("make_X, error, pattern", SOURCE_CASES)
def test_sources_are_refused_up_front(make_X, error, pattern, tmp_path):
    with pytest.raises(error, match=pattern):
        as_sources(make_X(tmp_path))


@pytest.mark.parametrize("make_X, error, pattern", [
    pytest.param(lambda tmp: Image.new("RGB", (0, 0)), ValueError,
                 r"X\[1\]: the PIL image has size 0x0: the image is empty", id="pil-0x0"),
    pytest.param(lambda tmp: nul_path(tmp), ValueError, NUL, id="path-with-NUL"),
    pytest.param(lambda tmp: closed_image(), ValueError, CLOSED, id="closed-pil"),
])
def test_load_rgb_names_the_image(make_X, error, pattern, tmp_path):
    with pytest.raises(error, match=pattern):
        load_rgb(make_X(tmp_path), index=1)


@pytest.mark.parametrize("X, shape", [
    pytest.param(np.zeros((2, 20, 30), np.uint8), (20, 30, 3), id="grayscale-stack-n-H-W"),
    pytest.param(np.zeros((2, 20, 5), np.uint8), (20, 5, 3), id="grayscale-stack-width5"),
    pytest.param(np.zeros((1, 20, 30, 3), np.uint8), (20, 30, 3), id="one-image-leading-axis"),
    pytest.param([np.zeros((20, 30, 3), np.uint8)], (20, 30, 3), id="one-image-in-a-list"),
    pytest.param([Image.new("RGB", (1, 1))], (1, 1, 3), id="pil-1x1"),
])
def test_unambiguous_sources_still_load(X, shape):
    sources = as_sources(X)
    assert load_rgb(sources[0], index=0).shape == shape


@pytest.fixture(scope="module")
def estimators(tiny_vit_file, tiny_vit_file2):
    cropper = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                               crop_sizes=(32,), device="cpu", cache="memory")
    embedder = CropEmbedder("timm:test_vit", weights=tiny_vit_file2, image_size=64,
                            device="cpu", cache="memory")
    return cropper.fit(random_images(1, 64, 64)), embedder


# (estimator name, method, make X from tmp_path, error, regex): through the public estimators,
# with a cache, which keys every source before any pixel is read.
ESTIMATOR_CASES = [
    pytest.param("cropper", "transform", lambda tmp: GOOD, ValueError,
                 r"X has shape \(40, 40, 3\): " + ONE_IMAGE, id="cropper-one-HxWx3-array"),
    pytest.param("embedder", "fit_transform", lambda tmp: GOOD, ValueError,
                 r"X has shape \(40, 40, 3\): " + ONE_IMAGE, id="embedder-one-HxWx3-array"),
    pytest.param("cropper", "transform", lambda tmp: [GOOD, Image.new("RGB", (0, 0))],
                 ValueError, EMPTY_PIL.format("0x0"), id="cropper-pil-0x0"),
    pytest.param("embedder", "fit_transform", lambda tmp: [GOOD, Image.new("RGB", (0, 0))],
                 ValueError, EMPTY_PIL.format("0x0"), id="embedder-pil-0x0"),
    pytest.param("cropper", "transform", lambda tmp: [GOOD, nul_path(tmp)], ValueError, NUL,
                 id="cropper-path-with-NUL"),
    pytest.param("embedder", "fit_transform", lambda tmp: [GOOD, nul_path(tmp)], ValueError,
                 NUL, id="embedder-path-with-NUL"),
    pytest.param("cropper", "transform", lambda tmp: [GOOD, closed_image()], ValueError,
                 CLOSED, id="cropper-closed-pil"),
    pytest.param("embedder", "fit_transform", lambda tmp: [GOOD, closed_image()], ValueError,
                 CLOSED, id="embedder-closed-pil"),
]


@pytest.mark.parametrize("which, method, make_X, error, pattern", ESTIMATOR_CASES)
def test_estimators_refuse_hostile_sources(estimators, which, method, make_X, error, pattern,
                                           tmp_path):
    est = estimators[0] if which == "cropper" else estimators[1]
    with pytest.raises(error, match=pattern):
        getattr(est, method)(make_X(tmp_path))


# --------------------------------------------------------------------------------------------
# CropSet boxes
# --------------------------------------------------------------------------------------------

FRAME = r"boxes must be finite with x0 < x1 and y0 < y1 inside the 0\.\.70 x 0\.\.50 frame"


def crop_set(bad_box, image_sizes=((50, 70), (50, 70))):
    """Two images of 50 x 70 (H x W), two boxes each; ``boxes[1, 1]`` is ``bad_box``."""
    boxes = np.array([[[0, 0, 20, 20], [10, 10, 70, 50]], [[5, 5, 25, 25], bad_box]], float)
    return CropSet(np.zeros((2, 50, 70, 3), np.uint8), boxes, np.zeros((2, 2)), image_sizes)


BOX_CASES = [
    pytest.param([np.nan, 0, 10, 10], r"boxes\[1, 1\] = \[nan, 0\.0, 10\.0, 10\.0\] is not "
                 r"finite; " + FRAME, id="nan"),
    pytest.param([0, 0, np.inf, 10], r"boxes\[1, 1\] = .* is not finite", id="inf"),
    pytest.param([30, 0, 10, 10], r"boxes\[1, 1\] = \[30\.0, 0\.0, 10\.0, 10\.0\] has "
                 r"x0 >= x1; " + FRAME, id="inverted-x"),
    pytest.param([0, 30, 10, 10], r"boxes\[1, 1\] = .* has y0 >= y1", id="inverted-y"),
    pytest.param([10, 0, 10, 10], r"boxes\[1, 1\] = .* has x0 >= x1", id="zero-width"),
    pytest.param([50, 0, 80, 10], r"boxes\[1, 1\] = \[50\.0, 0\.0, 80\.0, 10\.0\] lies "
                 r"outside the frame; " + FRAME, id="x1-beyond-width"),
    pytest.param([0, 40, 10, 51], r"boxes\[1, 1\] = .* lies outside the frame", id="y1-beyond"),
    pytest.param([-1, 0, 10, 10], r"boxes\[1, 1\] = .* lies outside the frame", id="negative"),
    pytest.param([75, 0, 90, 15], r"boxes\[1, 1\] = .* lies outside the frame",
                 id="wholly-outside"),
]


@pytest.mark.parametrize("bad_box, pattern", BOX_CASES)
def test_cropset_refuses_bad_boxes(bad_box, pattern):
    with pytest.raises(ValueError, match=pattern):
        crop_set(bad_box)


@pytest.mark.parametrize("image_sizes, pattern", [
    pytest.param([[50, 70], [0, 70]], r"image_sizes\[1\] = \[0, 70\]: .* at least 1",
                 id="zero-height"),
    pytest.param([[50, 70], [50, -3]], r"image_sizes\[1\] = \[50, -3\]: .* at least 1",
                 id="negative-width"),
])
def test_cropset_refuses_empty_image_sizes(image_sizes, pattern):
    with pytest.raises(ValueError, match=pattern):
        crop_set([0, 0, 10, 10], image_sizes)


@pytest.mark.parametrize("make_source, pattern", [
    pytest.param(nul_path, r"images\[1\]: the path .* holds a NUL byte", id="path-with-NUL"),
    pytest.param(lambda tmp: closed_image(), r"images\[1\]: the PIL image is closed",
                 id="closed-pil"),
    pytest.param(lambda tmp: Image.new("RGB", (0, 0)), r"images\[1\]: the PIL image has size "
                 "0x0", id="pil-0x0"),
])
def test_cropset_refuses_hostile_images(make_source, pattern, tmp_path):
    """A CropSet built by hand reaches the embedders without going through ``as_sources``."""
    images = [GOOD, make_source(tmp_path)]
    boxes = np.tile([0.0, 0.0, 20.0, 20.0], (2, 1, 1))
    with pytest.raises(ValueError, match=pattern):
        CropSet(images, boxes, np.zeros((2, 1)), [[40, 40], [40, 40]])


def test_cropset_accepts_boxes_on_the_frame_edges():
    cs = crop_set([0, 0, 70, 50])
    assert cs.boxes[1, 1].tolist() == [0, 0, 70, 50]


@pytest.mark.parametrize("h, w", [(97, 131), (3, 1000), (1999, 7), (50, 70)])
def test_frame_boxes_mapped_to_the_original_are_accepted(h, w):
    """Every integer box of the 224 frame, mapped to original pixels in float32 the way croppers
    map them, is inside the original frame (float rounding is tolerated)."""
    size = 224
    lo, hi = np.meshgrid(np.arange(0, size), np.arange(1, size + 1))
    keep = lo < hi
    x0, x1 = lo[keep].astype(float), hi[keep].astype(float)
    frame = np.stack([x0, x0, x1, x1], axis=-1)[None]
    boxes = to_original(frame, [[h, w]], size)
    cs = CropSet(np.zeros((1, h, w, 3), np.uint8), boxes, np.zeros(boxes.shape[:2]), [[h, w]])
    assert cs.n_crops == len(x0)


def test_cropset_with_bad_boxes_never_reaches_the_model(tiny_vit_file2):
    """The refusal comes from the constructor, so no estimator sees these boxes."""
    with pytest.raises(ValueError, match=r"boxes\[1, 1\] = .* is not finite"):
        crop_set([np.nan, np.nan, np.nan, np.nan])


# --------------------------------------------------------------------------------------------
# DFRClassifier
# --------------------------------------------------------------------------------------------

RNG = np.random.RandomState(0)
X_DFR = RNG.randn(40, 3)
Y_DFR = np.tile([0, 1], 20)


def with_entry(value, index=3, dtype=None):
    groups = list(Y_DFR)
    groups[index] = value
    return groups if dtype is None else np.array(groups, dtype=dtype)


# (DFRClassifier params, groups, error, regex)
DFR_CASES = [
    pytest.param({}, with_entry(None), ValueError, r"groups\[3\] is None: every sample needs a "
                 "group label", id="groups-None-in-list"),
    pytest.param({}, with_entry(None, 7, object), ValueError, r"groups\[7\] is None",
                 id="groups-None-in-object-array"),
    pytest.param({}, with_entry(np.nan, 5), ValueError, r"groups\[5\] is nan",
                 id="groups-nan"),
    pytest.param({}, with_entry("a"), ValueError, r"groups mixes strings and numbers: "
                 r"groups\[0\] = 0 and groups\[3\] = 'a'", id="groups-str-and-int-list"),
    pytest.param({}, with_entry("a", 0, object), ValueError, r"groups mixes strings and "
                 r"numbers: groups\[0\] = 'a' and groups\[1\] = 1",
                 id="groups-str-and-int-object-array"),
    pytest.param({}, with_entry({"g": 1}, 2), ValueError, r"groups\[2\] is a dict: group "
                 "labels must be ints or strings", id="groups-dict-entry"),
    pytest.param({"C_grid": [1.0, np.inf]}, Y_DFR, ValueError,
                 r"'C_grid' parameter of DFRClassifier must be a non-empty sequence of C > 0, each "
                 r"finite\. Got \[1\.0, inf\] instead",
                 id="C_grid-inf"),
    pytest.param({"C_grid": [float("nan")]}, Y_DFR, ValueError,
                 r"'C_grid' parameter of DFRClassifier must be",
                 id="C_grid-nan"),
    pytest.param({"class_weight_grid": [None, {5: 2.0}]}, Y_DFR, ValueError,
                 r"class_weight_grid\[1\] = \{5: 2\.0\} names class 5, which is not in y; "
                 r"the classes seen are \[0, 1\]", id="class_weight-unknown-class"),
    pytest.param({"class_weight_grid": [{"1": 2.0}]}, Y_DFR, ValueError,
                 r"class_weight_grid\[0\] = .* names class '1', which is not in y",
                 id="class_weight-str-for-int-class"),
    pytest.param({"class_weight_grid": [{0: 1.0, 1: -2.0}]}, Y_DFR, ValueError,
                 r"class_weight_grid\[0\] = .* gives class 1 the weight -2\.0: weights must be "
                 r"finite numbers > 0", id="class_weight-negative"),
    pytest.param({"class_weight_grid": [{0: np.inf}]}, Y_DFR, ValueError,
                 r"class_weight_grid\[0\] = .* gives class 0 the weight inf",
                 id="class_weight-inf"),
]


@pytest.mark.parametrize("params, groups, error, pattern", DFR_CASES)
def test_dfr_refuses_before_fitting(params, groups, error, pattern, monkeypatch):
    import sk_a2.dfr

    def no_model(*args, **kwargs):
        raise AssertionError("a model was fitted before the input was refused")

    monkeypatch.setattr(sk_a2.dfr, "LogisticRegression", no_model)
    with pytest.raises(error, match=pattern):
        DFRClassifier(random_state=0, **params).fit(X_DFR, Y_DFR, groups=groups)


@pytest.mark.parametrize("params, groups", [
    pytest.param({}, ["a", "b"] * 20, id="string-groups"),
    pytest.param({}, np.array(["a", "b"] * 20, dtype=object), id="string-object-groups"),
    pytest.param({}, np.tile([0.0, 1.0], 20), id="float-groups"),
    pytest.param({"class_weight_grid": [None, {0: 1.0, 1: 3.0}, "balanced"]}, Y_DFR,
                 id="known-class-weights"),
    pytest.param({"C_grid": np.array([0.5, 1e6])}, Y_DFR, id="finite-C-array"),
])
def test_dfr_accepts_valid_inputs(params, groups):
    clf = DFRClassifier(random_state=0, n_retrains=2, **params).fit(X_DFR, Y_DFR, groups=groups)
    assert len(clf.groups_) == 2
