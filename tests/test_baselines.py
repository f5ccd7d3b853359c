"""CenterCropper and RandomCropper: the paper's center-crop and random-crop baselines."""

import warnings

import numpy as np
import pytest
from conftest import blob_images, random_images
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sk_a2.baselines import CenterCropper, RandomCropper
from sk_a2.boxes import CropOverlapWarning
from sk_a2.cropset import CropSet
from sk_a2.embedder import CropEmbedder
from sk_a2.images import image_sizes, load_rgb

CROPPERS = [CenterCropper, RandomCropper]


def _inside(cs):
    b = cs.boxes
    h = cs.image_sizes[:, None, 0]
    w = cs.image_sizes[:, None, 1]
    tol = 1e-3
    return bool(
        np.all(b[..., 0] >= -tol) and np.all(b[..., 1] >= -tol)
        and np.all(b[..., 2] <= w + tol) and np.all(b[..., 3] <= h + tol)
        and np.all(b[..., 2] > b[..., 0]) and np.all(b[..., 3] > b[..., 1])
    )


def _intersect(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize("cls", CROPPERS)
def test_shapes_scores_and_sizes(cls):
    X = random_images(5, h=48, w=40)
    cs = cls(crop_sizes=(16, 32), image_size=64).fit_transform(X)
    assert isinstance(cs, CropSet)
    assert cs.boxes.shape == (5, 2, 4) and cs.boxes.dtype == np.float32
    assert cs.scores.shape == (5, 2) and np.isnan(cs.scores).all()
    assert cs.image_sizes.tolist() == [[48, 40]] * 5
    frame = cs.frame_boxes(64)
    # largest first, integer boxes in the image_size frame
    assert (frame[:, 0, 2] - frame[:, 0, 0] == 32).all()
    assert (frame[:, 1, 2] - frame[:, 1, 0] == 16).all()
    assert np.array_equal(frame, np.round(frame))
    assert _inside(cs)


@pytest.mark.parametrize("cls", CROPPERS)
def test_n_crops_repeats_last_size(cls):
    X = random_images(2, h=64, w=64)
    cs = cls(crop_sizes=(24, 16), n_crops=3, image_size=64).fit_transform(X)
    widths = cs.frame_boxes(64)[..., 2] - cs.frame_boxes(64)[..., 0]
    assert widths.tolist() == [[24, 16, 16]] * 2
    assert cls(crop_sizes=(24, 16), n_crops=1, image_size=64).fit_transform(X).n_crops == 1


@pytest.mark.parametrize("cls", CROPPERS)
def test_boxes_inside_images_of_mixed_sizes(cls, tmp_path):
    rng = np.random.RandomState(0)
    X = [rng.randint(0, 256, size=(h, w, 3), dtype=np.uint8)
         for h, w in [(30, 90), (120, 17), (64, 64), (9, 9)]]
    paths = []
    for i, arr in enumerate(X):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(arr).save(paths[-1])
    for src in (X, paths, [Image.fromarray(a) for a in X]):
        cs = cls(crop_sizes=(48, 24, 8), image_size=96).fit_transform(src)
        assert cs.image_sizes.tolist() == [list(a.shape[:2]) for a in X]
        assert _inside(cs)


def test_center_boxes_are_centered_and_nested():
    X = random_images(3, h=50, w=80)
    cs = CenterCropper(crop_sizes=(20, 40, 60), image_size=64).fit_transform(X)
    cx = (cs.boxes[..., 0] + cs.boxes[..., 2]) / 2
    cy = (cs.boxes[..., 1] + cs.boxes[..., 3]) / 2
    np.testing.assert_allclose(cx, 40.0, atol=1e-4)
    np.testing.assert_allclose(cy, 25.0, atol=1e-4)
    b = cs.boxes[0]
    for outer, inner in ((b[0], b[1]), (b[1], b[2])):  # largest first, each inside the previous
        assert outer[0] <= inner[0] and outer[1] <= inner[1]
        assert outer[2] >= inner[2] and outer[3] >= inner[3]
    # odd margin: offset (image_size - s) // 2 in the frame
    odd = CenterCropper(crop_sizes=(31,), image_size=64).fit_transform(random_images(1, 64, 64))
    assert odd.boxes[0, 0].tolist() == [16, 16, 47, 47]


def test_center_cropper_docstring_example():
    X = np.zeros((2, 100, 200, 3), dtype=np.uint8)
    cs = CenterCropper(crop_sizes=(112,)).fit_transform(X)
    assert cs.boxes[0].tolist() == [[50.0, 25.0, 150.0, 75.0]]


def test_random_boxes_do_not_overlap_when_room():
    X = random_images(30, h=64, w=64)
    cs = RandomCropper(crop_sizes=(24, 16, 16, 8), image_size=64, random_state=0).fit_transform(X)
    frame = cs.frame_boxes(64)
    for boxes in frame:
        for i in range(len(boxes)):
            for j in range(i):
                assert not _intersect(boxes[i], boxes[j])
    # the positions are spread over the frame, not stuck at a corner
    assert len({tuple(b) for b in frame[:, 0]}) > 20


def test_random_overlap_fallback_warns():
    X = random_images(4, h=32, w=32)
    with pytest.warns(CropOverlapWarning, match="4 random crop"):
        cs = RandomCropper(crop_sizes=(48, 48), image_size=64, random_state=0).fit_transform(X)
    assert _inside(cs)


def test_random_position_is_uniform():
    X = random_images(400, h=8, w=8, seed=1)
    cs = RandomCropper(crop_sizes=(3,), image_size=5, random_state=0).fit_transform(X)
    x0 = cs.frame_boxes(5)[:, 0, 0].astype(int)
    counts = np.bincount(x0, minlength=3)
    assert counts.tolist() and counts.min() > 90  # 3 positions, ~133 each


def test_random_is_deterministic_and_independent_of_the_batch(tmp_path):
    X = random_images(12, h=40, w=56)
    cropper = RandomCropper(crop_sizes=(32, 16), image_size=64, random_state=7).fit()
    a = cropper.transform(X)
    assert np.array_equal(a.boxes, cropper.transform(X).boxes)
    # same image, same boxes, whatever else is in X and in whatever order
    order = np.array([5, 3, 11, 0])
    assert np.array_equal(cropper.transform(X[order]).boxes, a.boxes[order])
    assert np.array_equal(cropper.transform(list(X[order])).boxes, a.boxes[order])
    # a new fit with the same int seed agrees; another seed does not
    assert np.array_equal(clone(cropper).fit().transform(X).boxes, a.boxes)
    other = RandomCropper(crop_sizes=(32, 16), image_size=64, random_state=8).fit_transform(X)
    assert not np.array_equal(other.boxes, a.boxes)
    # paths: keyed by the file path
    paths = []
    for i, arr in enumerate(X[:4]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(arr).save(paths[-1])
    p = cropper.transform(paths)
    assert np.array_equal(cropper.transform(paths[::-1]).boxes, p.boxes[::-1])
    # random_state=None: a fitted cropper still repeats itself
    free = RandomCropper(crop_sizes=(16,), image_size=64).fit()
    assert np.array_equal(free.transform(X).boxes, free.transform(X).boxes)


def test_exif_orientation_swaps_size(tmp_path):
    arr = np.random.RandomState(0).randint(0, 256, size=(20, 50, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif.tobytes())
    assert image_sizes([path]).tolist() == [list(load_rgb(path).shape[:2])] == [[50, 20]]


def test_image_sizes_reads_no_pixels(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(random_images(1, 30, 20)[0]).save(path)

    def no_load(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", no_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_load)
    assert image_sizes([path, str(path)]).tolist() == [[30, 20], [30, 20]]


@pytest.mark.parametrize("cls", CROPPERS)
def test_errors(cls, tmp_path):
    X = random_images(2)
    with pytest.raises(ValueError, match="larger than image_size"):
        cls(crop_sizes=(80,), image_size=64).fit()
    with pytest.raises(ValueError, match="crop_sizes"):
        cls(crop_sizes=(0,)).fit()
    with pytest.raises(ValueError, match="n_crops"):
        cls(n_crops=0).fit()
    with pytest.raises(ValueError, match="image_size"):
        cls(image_size=0).fit()
    with pytest.raises(NotFittedError):
        cls().transform(X)
    with pytest.raises(ValueError, match="does not exist"):
        cls(crop_sizes=(8,), image_size=16).fit().transform([tmp_path / "missing.png"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read"):
        cls(crop_sizes=(8,), image_size=16).fit().transform([bad])
    with pytest.raises(ValueError, match="empty"):
        cls(crop_sizes=(8,), image_size=16).fit().transform([])


@pytest.mark.parametrize("cls", CROPPERS)
def test_clone_and_params(cls):
    est = cls(crop_sizes=(32, 16), n_crops=3, image_size=64)
    params = est.get_params()
    assert params["crop_sizes"] == (32, 16) and params["n_crops"] == 3
    assert params["image_size"] == 64
    copy = clone(est)
    assert copy.get_params() == params and copy is not est
    copy.set_params(n_crops=1)
    assert copy.n_crops == 1 and est.n_crops == 3
    if cls is RandomCropper:
        assert params["random_state"] is None
        assert clone(cls(random_state=3)).random_state == 3


@pytest.mark.parametrize("cls", CROPPERS)
def test_pipeline_with_embedder(cls, tiny_vit_file):
    X, y = blob_images(12, size=64)
    kwargs = {"random_state": 0} if cls is RandomCropper else {}
    pipe = Pipeline([
        ("crop", cls(crop_sizes=(32, 16), image_size=64, **kwargs)),
        ("emb", CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64,
                             device="cpu")),
        ("lr", LogisticRegression(max_iter=500)),
    ])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CropOverlapWarning)
        pipe.fit(X, y)
    pred = pipe.predict(X)
    assert pred.shape == (12,) and set(pred) <= {0, 1}
    assert pipe.named_steps["emb"].n_crops_ == 2
    assert clone(pipe).set_params(crop__n_crops=1).get_params()["crop__n_crops"] == 1
