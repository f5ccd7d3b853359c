"""AttentionCropper and CropEmbedder: the scikit-learn contract."""

import pickle

import joblib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import blob_images, make_clip, random_images
from PIL import Image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CropEmbedder, CropSet
from sk_a2.boxes import crop_resize
from sk_a2.images import load_resized
from sk_a2.models import load_model


@pytest.fixture
def cropper(tiny_vit_file):
    return AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                            crop_sizes=(32, 16), device="cpu")


@pytest.fixture
def embedder(tiny_vit_file2):
    return CropEmbedder("timm:test_vit", weights=tiny_vit_file2, image_size=64, device="cpu")


def make_pipe(cropper, embedder, **lr):
    return Pipeline([("crop", cropper), ("emb", embedder),
                     ("lr", LogisticRegression(max_iter=500, **lr))])


def test_cropset_boxes_in_original_pixels(cropper):
    X = random_images(4, h=80, w=100)
    cs = cropper.fit(X).transform(X)
    assert isinstance(cs, CropSet) and len(cs) == 4 and cs.n_crops == 2
    assert cs.boxes.dtype == np.float32 and cs.boxes.shape == (4, 2, 4)
    assert cs.scores.shape == (4, 2) and np.all(cs.scores > 0) and np.all(cs.scores <= 1)
    widths = cs.boxes[..., 2] - cs.boxes[..., 0]
    heights = cs.boxes[..., 3] - cs.boxes[..., 1]
    np.testing.assert_allclose(widths, [[32 * 100 / 64, 16 * 100 / 64]] * 4, rtol=1e-6)
    np.testing.assert_allclose(heights, [[32 * 80 / 64, 16 * 80 / 64]] * 4, rtol=1e-6)
    assert cs.boxes[..., [0, 2]].max() <= 100 and cs.boxes[..., [1, 3]].max() <= 80
    assert cropper.crop_sizes_ == [32, 16] and cropper.grid_size_ == (4, 4)


def test_boxes_follow_the_attention_map(cropper):
    """The boxes are greedy_boxes of the upsampled attention_maps (independent recomputation)."""
    from sk_a2.boxes import greedy_boxes

    X = random_images(3, h=64, w=64, seed=3)
    cropper.fit(X)
    maps = cropper.attention_maps(X)
    assert maps.shape == (3, 4, 4) and maps.dtype == np.float32
    np.testing.assert_allclose(maps.sum((1, 2)), 1, atol=1e-5)
    up = F.interpolate(torch.tensor(maps)[:, None], size=(64, 64), mode="bilinear",
                       align_corners=False)[:, 0]
    ref = greedy_boxes(up.double().numpy(), [32, 16])
    np.testing.assert_array_equal(cropper.transform(X).boxes, ref)


def test_n_crops_semantics(tiny_vit_file):
    X = random_images(2, 64, 64)
    kw = dict(weights=tiny_vit_file, image_size=64, device="cpu")
    a = AttentionCropper("timm:test_vit", crop_sizes=(8, 24, 16), **kw).fit(X)
    assert a.crop_sizes_ == [24, 16, 8]
    b = AttentionCropper("timm:test_vit", crop_sizes=(24, 16), n_crops=4, **kw).fit(X)
    assert b.crop_sizes_ == [24, 16, 16, 16]
    c = AttentionCropper("timm:test_vit", crop_sizes=(24, 16), n_crops=1, **kw).fit(X)
    assert c.crop_sizes_ == [24]
    full, first = b.transform(X), c.transform(X)
    np.testing.assert_array_equal(full.boxes[:, :1], first.boxes)  # crop k is stable in k


def test_bad_parameters(tiny_vit_file):
    X = random_images(1)
    kw = dict(weights=tiny_vit_file, image_size=64, device="cpu")
    with pytest.raises(ValueError, match="larger than image_size=64"):
        AttentionCropper("timm:test_vit", crop_sizes=(65,), **kw).fit(X)
    with pytest.raises(ValueError, match="n_crops"):
        AttentionCropper("timm:test_vit", n_crops=0, **kw).fit(X)
    with pytest.raises(ValueError, match="head_aggregation"):
        AttentionCropper("timm:test_vit", head_aggregation="median", **kw).fit(X)
    with pytest.raises(ValueError, match="out of range"):
        AttentionCropper("timm:test_vit", layer=7, **kw).fit(X)
    with pytest.raises(ValueError, match="Unknown model"):
        AttentionCropper("dinov7_vits14", **kw).fit(X)


def test_embeddings_equal_direct_crop_resize_forward(cropper, embedder, tiny_vit_file2):
    X = random_images(3, h=70, w=50, seed=5)
    cs = cropper.fit(X).transform(X)
    emb = CropEmbedder("timm:test_vit", weights=tiny_vit_file2, image_size=64, device="cpu",
                       include_full_image=True, batch_size=4)
    E = emb.fit(cs).transform(cs)
    assert E.shape == (3, 3 * 64) and E.dtype == np.float32
    vm = load_model("timm:test_vit", weights=tiny_vit_file2, image_size=64, device="cpu")
    mean = torch.tensor(vm.mean).view(3, 1, 1)
    std = torch.tensor(vm.std).view(3, 1, 1)
    for i in range(3):
        pixels, (h, w) = load_resized(X[i], 64)
        img = torch.tensor(pixels).permute(2, 0, 1).float() / 255
        refs = []
        for box in cs.boxes[i]:
            x0, y0, x1, y1 = np.round(box * [64 / w, 64 / h, 64 / w, 64 / h]).astype(int)
            crop = F.interpolate(img[None, :, y0:y1, x0:x1], size=(64, 64), mode="bilinear",
                                 align_corners=False)[0]
            refs.append(crop)
        refs.append(img)
        with torch.no_grad():
            ref = vm.module.forward_features((torch.stack(refs) - mean) / std)[:, 0]
        np.testing.assert_allclose(E[i], ref.flatten().numpy(), atol=1e-4, rtol=0)
    names = emb.get_feature_names_out()
    assert len(names) == E.shape[1] and names[0] == "crop0_0" and names[-1] == "full_63"


def test_plain_images_give_full_image_embedding(embedder):
    X = random_images(2, 64, 64)
    E = embedder.fit(X).transform(X)
    vm = load_model(embedder.model, weights=embedder.weights, image_size=64, device="cpu")
    x = torch.tensor(X).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = vm.embed(vm.normalize(x))
    np.testing.assert_allclose(E, ref.numpy(), atol=1e-5)
    assert list(embedder.get_feature_names_out()[:2]) == ["full_0", "full_1"]
    with pytest.raises(ValueError, match="fitted on plain images"):
        cs = CropSet(X, np.zeros((2, 1, 4)) + [0, 0, 8, 8], np.zeros((2, 1)), [[64, 64]] * 2)
        embedder.transform(cs)


def test_crop_resize_is_batched_over_boxes():
    images = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[[0, 0, 32, 32], [32, 32, 64, 64]], [[10, 5, 26, 21], [0, 40, 8, 48]]])
    out = crop_resize(images, boxes, 64)
    assert out.shape == (2, 2, 3, 64, 64)


def test_pipeline_fit_predict_clone_params(cropper, embedder):
    X, y = blob_images(24)
    pipe = make_pipe(cropper, embedder)
    pipe.fit(X, y)
    pred = pipe.predict(X)
    assert pred.shape == (24,) and set(pred) <= {0, 1}
    params = pipe.get_params()
    assert params["crop__crop_sizes"] == (32, 16) and params["emb__image_size"] == 64
    cloned = clone(pipe)
    assert cloned.get_params()["crop__model"] == "timm:test_vit"
    assert not hasattr(cloned.named_steps["crop"], "crop_sizes_")
    cloned.set_params(crop__n_crops=1, lr__C=0.5)
    cloned.fit(X, y)
    assert cloned.named_steps["emb"].n_features_out_ == 64
    assert cloned.named_steps["lr"].coef_.shape == (1, 64)


def test_grid_search(cropper, embedder):
    X, y = blob_images(30, seed=1)
    grid = {"crop__n_crops": [1, 2], "crop__crop_sizes": [(32, 16), (24,)], "lr__C": [0.1, 1.0]}
    search = GridSearchCV(make_pipe(cropper, embedder), grid, cv=2, n_jobs=1, error_score="raise")
    search.fit(X, y)
    assert len(search.cv_results_["params"]) == 8
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_grid_search_two_processes(cropper, embedder):
    X, y = blob_images(20, seed=2)
    grid = {"crop__n_crops": [1, 2], "lr__C": [1.0]}
    one = GridSearchCV(make_pipe(cropper, embedder), grid, cv=2, n_jobs=1, error_score="raise")
    two = GridSearchCV(make_pipe(cropper, embedder), grid, cv=2, n_jobs=2, error_score="raise")
    one.fit(X, y)
    two.fit(X, y)
    np.testing.assert_allclose(one.cv_results_["mean_test_score"],
                               two.cv_results_["mean_test_score"])


def test_pickle_is_small_and_predicts_identically(cropper, embedder, tmp_path):
    X, y = blob_images(16, seed=4)
    pipe = make_pipe(cropper, embedder).fit(X, y)
    path = tmp_path / "model.joblib"
    joblib.dump(pipe, path)
    assert path.stat().st_size < 1_000_000
    raw = pickle.dumps(pipe)
    assert b"torch" not in raw  # no tensors, modules or devices inside
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


def test_reruns_are_bit_identical(cropper, embedder):
    X, y = blob_images(12, seed=6)
    a = make_pipe(cropper, embedder).fit(X, y)
    b = make_pipe(clone(cropper), clone(embedder)).fit(X, y)
    cs1, cs2 = a[:-1].transform(X), b[:-1].transform(X)
    np.testing.assert_array_equal(cs1, cs2)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


def test_same_model_one_copy(tiny_vit_file):
    X = random_images(2, 64, 64)
    c = AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                         device="cpu").fit(X)
    e = CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu")
    e.fit(c.transform(X))
    assert c._load() is e._load()


def test_open_clip_attention_and_embedding():
    model = make_clip()
    X = random_images(3, 64, 64)
    cs = AttentionCropper(model, image_size=64, crop_sizes=(32,), device="cpu").fit_transform(X)
    E = CropEmbedder(model, image_size=64, device="cpu").fit_transform(cs)
    assert E.shape == (3, 32)


# ------------------------------------------------------------------ inputs


def _pil_variants():
    rgb = np.random.RandomState(0).randint(0, 256, (40, 30, 3), dtype=np.uint8)
    return rgb, {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(rgb).convert("L"),
        "RGBA": Image.fromarray(rgb).convert("RGBA"),
        "P": Image.fromarray(rgb).convert("P"),
        "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
    }


def test_input_kinds_give_the_same_result(cropper, tmp_path):
    rgb, pil = _pil_variants()
    path = tmp_path / "img.png"
    pil["RGB"].save(path)
    cropper.fit([rgb])
    ref = cropper.transform([rgb]).boxes
    for X in ([path], [str(path)], [pil["RGB"]], rgb[None], [pil["RGBA"]],
              [np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])]):
        np.testing.assert_array_equal(cropper.transform(X).boxes, ref)


def test_documented_conversions():
    from sk_a2.images import load_rgb

    rgb, pil = _pil_variants()
    gray = load_rgb(pil["L"])
    assert gray.shape == (40, 30, 3) and np.all(gray[..., 0] == gray[..., 2])
    np.testing.assert_array_equal(load_rgb(pil["P"]), np.asarray(pil["P"].convert("RGB")))
    np.testing.assert_array_equal(load_rgb(pil["I;16"])[..., 1], rgb[..., 0])
    np.testing.assert_array_equal(load_rgb(rgb[..., 0].astype(np.uint16) * 257)[..., 2],
                                  rgb[..., 0])
    np.testing.assert_array_equal(load_rgb(rgb[..., :1]), load_rgb(rgb[..., 0]))


def test_exif_rotation_is_applied(tmp_path):
    from sk_a2.images import load_rgb

    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :5] = 255
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    out = load_rgb(path)
    assert out.shape == (40, 20, 3)
    assert out[:5].mean() > 200 and out[-5:].mean() < 50


def test_bad_inputs_name_the_index(cropper, tmp_path):
    good = random_images(1)[0]
    cropper.fit([good])
    bad_file = tmp_path / "broken.png"
    bad_file.write_bytes(b"not an image")
    cases = [
        ([good, bad_file], r"X\[1\]: cannot read image file"),
        ([good, good, tmp_path / "missing.png"], r"X\[2\]: image file .* does not exist"),
        ([good, good.astype(np.float32)], r"X\[1\] has dtype float32"),
        ([good, np.zeros((4, 4, 2), np.uint8)], r"X\[1\] has shape"),
        ([good, 3], r"X\[1\] is a int"),
        ([], "X is empty"),
        (np.zeros((0, 8, 8, 3), np.uint8), "X is empty"),
        ("img.png", "single str"),
    ]
    for X, match in cases:
        with pytest.raises(ValueError, match=match):
            cropper.transform(X)


def test_inputs_are_not_mutated(cropper, embedder):
    X = random_images(3, 64, 64)
    before = X.copy()
    cs = cropper.fit(X).transform(X)
    boxes = cs.boxes.copy()
    embedder.fit(cs).transform(cs)
    np.testing.assert_array_equal(X, before)
    np.testing.assert_array_equal(cs.boxes, boxes)


def test_cropset_indexing(cropper):
    X = random_images(5, 64, 64)
    cs = cropper.fit(X).transform(X)
    sub = cs[np.array([4, 1])]
    assert len(sub) == 2 and np.array_equal(sub.boxes, cs.boxes[[4, 1]])
    assert np.array_equal(sub.images, X[[4, 1]])
    assert len(cs[1:3]) == 2 and len(cs[np.arange(5) > 2]) == 2 and len(cs[0]) == 1
    assert cs.first(1).n_crops == 1
