"""The data path: decoding threads started once, each image decoded and digested once per pass,
the bounded pixel store, the decoder parameter and its device path (run on the CPU here)."""

import hashlib
import multiprocessing.process
import threading

import numpy as np
import pytest
import torch
from conftest import blob_images
from PIL import Image
from sklearn.pipeline import Pipeline

import sk_a2._data
import sk_a2.images
from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.cache import DiskCache, image_key, memory_cache
from sk_a2.models import clear_model_cache
from sk_a2.pixel_store import PixelStore, pixel_store


def _kw(weights, **extra):
    return dict(weights=weights, image_size=64, device="cpu", batch_size=4, **extra)


def _cropper(weights, **extra):
    return AttentionCropper("timm:test_vit", crop_sizes=(32, 16), **_kw(weights, **extra))


def _embedder(weights, **extra):
    return CropEmbedder("timm:test_vit", **_kw(weights, **extra))


def _files(tmp_path, n=6, fmt="png", size=80):
    X = blob_images(n, size=size, seed=3)[0]
    paths = []
    for i, img in enumerate(X):
        p = tmp_path / f"{i}.{fmt}"
        Image.fromarray(img).save(p, quality=95) if fmt == "jpg" else Image.fromarray(img).save(p)
        paths.append(str(p))
    return paths


@pytest.fixture(autouse=True)
def _empty_pixel_store():
    pixel_store().clear()
    yield
    pixel_store().clear()


def _count_starts(monkeypatch):
    started = []
    for cls in (threading.Thread, multiprocessing.process.BaseProcess):
        original = cls.start
        monkeypatch.setattr(cls, "start", lambda self, _o=original: (started.append(self),
                                                                      _o(self))[1])
    return started


def test_second_transform_starts_no_thread_or_process(tiny_vit_file, monkeypatch):
    X = blob_images(10, seed=1)[0]
    cropper = _cropper(tiny_vit_file, num_workers=2).fit()
    embedder = _embedder(tiny_vit_file, num_workers=2)
    first = cropper.transform(X)
    emb = embedder.fit(first).transform(first)
    started = _count_starts(monkeypatch)
    second = cropper.transform(X)
    np.testing.assert_array_equal(embedder.transform(second), emb)
    assert started == []
    np.testing.assert_array_equal(second.boxes, first.boxes)


def test_clear_model_cache_stops_the_decoding_threads(tiny_vit_file):
    _cropper(tiny_vit_file, num_workers=2).fit().transform(blob_images(9, seed=1)[0])
    assert any(t.name.startswith("sk_a2-decode") for t in threading.enumerate())
    clear_model_cache()
    assert not any(t.name.startswith("sk_a2-decode") for t in threading.enumerate())


@pytest.mark.parametrize("num_workers", [0, 1, 3])
def test_results_do_not_depend_on_threads(tiny_vit_file, tmp_path, num_workers):
    paths = _files(tmp_path, n=9)
    ref = _cropper(tiny_vit_file, num_workers=0).fit().transform(paths)
    pixel_store().clear()
    got = _cropper(tiny_vit_file, num_workers=num_workers).fit().transform(paths)
    np.testing.assert_array_equal(got.boxes, ref.boxes)
    np.testing.assert_array_equal(got.scores, ref.scores)


def _count_decodes(monkeypatch):
    counts = {}
    original = sk_a2.images.load_resized

    def counting(source, size, index=None):
        counts[str(source)] = counts.get(str(source), 0) + 1
        return original(source, size, index)

    monkeypatch.setattr(sk_a2.images, "load_resized", counting)
    return counts


def test_pipeline_decodes_each_image_once(tiny_vit_file, tmp_path, monkeypatch):
    paths = _files(tmp_path)
    pipe = Pipeline([("crop", _cropper(tiny_vit_file)), ("emb", _embedder(tiny_vit_file))])
    reference = pipe.fit_transform(paths)  # fills the store
    pixel_store().clear()
    counts = _count_decodes(monkeypatch)
    out = pipe.fit_transform(paths)
    assert counts == {p: 1 for p in paths}
    np.testing.assert_array_equal(out, reference)
    # the same without the store: every image decoded by both stages, same embeddings
    monkeypatch.setattr(pixel_store(), "max_bytes", 0)
    counts.clear()
    np.testing.assert_array_equal(pipe.fit_transform(paths), reference)
    assert counts == {p: 2 for p in paths}


def test_other_embedder_size_decodes_again(tiny_vit_file, tmp_path, monkeypatch):
    paths = _files(tmp_path, n=4)
    counts = _count_decodes(monkeypatch)
    cs = _cropper(tiny_vit_file).fit().transform(paths)
    CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=48, device="cpu").fit(
        cs).transform(cs)
    assert counts == {p: 2 for p in paths}


def test_changed_file_is_not_taken_from_the_store(tiny_vit_file, tmp_path, monkeypatch):
    paths = _files(tmp_path, n=3)
    cs = _cropper(tiny_vit_file).fit().transform(paths)
    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(paths[0])  # same name, new content
    counts = _count_decodes(monkeypatch)
    cs2 = _cropper(tiny_vit_file).fit().transform(paths)
    assert counts == {paths[0]: 1}
    assert cs2.image_keys[0] != cs.image_keys[0]


def test_pixel_store_is_bounded_lru():
    px = torch.zeros(8, 8, 3, dtype=torch.uint8)
    store = PixelStore(max_bytes=3 * px.numel())
    for key in "abcd":
        store.put(key, 8, px, (10, 12))
    assert len(store) == 3 and store.nbytes == 3 * px.numel()
    assert store.get("a", 8) is None  # least recently used, dropped
    assert store.get("b", 8)[1] == (10, 12)
    store.put("e", 8, px, (1, 1))
    assert store.get("c", 8) is None and store.get("b", 8) is not None
    assert PixelStore(max_bytes=0).get("x", 8) is None


def _count_digests(monkeypatch):
    calls = []
    original = sk_a2.images.image_digest

    def counting(source, new_hash=None):
        calls.append(id(source))
        return original(source, new_hash)

    monkeypatch.setattr(sk_a2.images, "image_digest", counting)
    return calls


def test_in_memory_images_are_digested_once_per_pass(tiny_vit_file, monkeypatch):
    X = list(blob_images(8, seed=2)[0])
    memory_cache().clear()
    pipe = Pipeline([("crop", _cropper(tiny_vit_file, cache="memory")),
                     ("emb", _embedder(tiny_vit_file, cache="memory"))])
    calls = _count_digests(monkeypatch)
    first = pipe.fit_transform(X)
    assert sorted(calls) == sorted(id(x) for x in X)  # one per image, not 1 + one per box
    calls.clear()
    np.testing.assert_array_equal(pipe.transform(X), first)  # all cache hits
    assert len(calls) == len(X)


def test_memory_image_keys(monkeypatch):
    img = blob_images(1, seed=0)[0][0]
    pytest.importorskip("xxhash")
    monkeypatch.delenv("SK_A2_IMAGE_KEYS", raising=False)
    fast = image_key(img)
    monkeypatch.setenv("SK_A2_IMAGE_KEYS", "blake2b")
    slow = image_key(img)
    # BLAKE2b keys are the earlier versions' keys; XXH3 keys live in their own namespace
    h = hashlib.blake2b(digest_size=16)
    h.update(b"array" + repr((img.shape, img.dtype.str)).encode())
    h.update(img.tobytes())
    assert slow == h.hexdigest()
    assert fast.startswith("xxh3:") and fast[5:] != slow and len(fast) == 5 + 32
    other = img.copy()
    other[0, 0, 0] ^= 1
    monkeypatch.delenv("SK_A2_IMAGE_KEYS")
    assert image_key(other) != fast


def test_file_keys_are_unchanged(tmp_path):
    path = _files(tmp_path, n=1)[0]
    expected = hashlib.blake2b(open(path, "rb").read(), digest_size=20).hexdigest()
    assert image_key(path) == "file:" + expected


def test_entries_under_old_keys_are_misses_not_hits(tiny_vit_file, tmp_path, monkeypatch):
    pytest.importorskip("xxhash")
    X = blob_images(4, seed=4)[0]
    monkeypatch.setenv("SK_A2_IMAGE_KEYS", "blake2b")
    old = _cropper(tiny_vit_file, cache=tmp_path / "c").fit().transform(X)
    n_old = len(DiskCache(tmp_path / "c").open())
    monkeypatch.delenv("SK_A2_IMAGE_KEYS")
    new = _cropper(tiny_vit_file, cache=tmp_path / "c").fit().transform(X)
    assert len(DiskCache(tmp_path / "c").open()) == 2 * n_old  # recomputed, stored anew
    np.testing.assert_array_equal(new.boxes, old.boxes)


def test_errors_from_threads_name_the_image(tiny_vit_file, tmp_path):
    paths = _files(tmp_path, n=6)
    paths[4] = str(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=r"X\[4\].*does not exist"):
        _cropper(tiny_vit_file, num_workers=3).fit().transform(paths)


def test_decoder_parameter(tiny_vit_file):
    with pytest.raises(ValueError, match="decoder"):
        _cropper(tiny_vit_file, decoder="nvjpeg").fit()
    with pytest.raises(ValueError, match=r"decoder='cuda'.*device is 'cpu'"):
        _embedder(tiny_vit_file, decoder="cuda").fit(blob_images(2)[0])
    assert _cropper(tiny_vit_file, decoder="cpu").get_params()["decoder"] == "cpu"


def test_device_decode_path_gives_the_cpu_path_pixels(tmp_path, monkeypatch):
    """The device path (batched torchvision decode, PIL-exact resize on the device), run here on
    the CPU, against PIL: JPEG files, a PNG, a progressive and a CMYK JPEG (CPU fallbacks)."""
    pytest.importorskip("torchvision")
    paths = _files(tmp_path, n=5, fmt="jpg", size=90) + _files(tmp_path, n=1, fmt="png")
    img = Image.open(paths[0])
    img.save(tmp_path / "progressive.jpg", progressive=True)
    img.convert("CMYK").save(tmp_path / "cmyk.jpg")
    paths += [str(tmp_path / "progressive.jpg"), str(tmp_path / "cmyk.jpg")]

    def batches(decoder):
        return list(sk_a2._data.iter_image_batches(paths, 64, batch_size=3, num_workers=2,
                                                   device=torch.device("cpu"),
                                                   decoder=decoder))

    expected = batches("cpu")
    counts = _count_decodes(monkeypatch)
    monkeypatch.setattr(sk_a2._data, "resolve_decoder", lambda decoder, device: "cuda")
    got = batches("cuda")
    assert set(counts) == {paths[5], paths[6], paths[7]}  # the CPU fallbacks only
    for (s0, x0, hw0), (s1, x1, hw1) in zip(expected, got):
        assert s0 == s1
        torch.testing.assert_close(x1, x0, rtol=0, atol=0)
        np.testing.assert_array_equal(hw1, hw0)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(open(paths[0], "rb").read()[:200])
    with pytest.raises(ValueError, match=r"X\[1\].*broken.jpg"):
        list(sk_a2._data.iter_image_batches([paths[0], str(broken)], 64, batch_size=2,
                                            num_workers=1, device=torch.device("cpu"),
                                            decoder="cuda"))
