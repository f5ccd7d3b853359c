"""Content cache: identical results, stale entries impossible, one pass over the models."""

import sqlite3
from contextlib import closing

import numpy as np
import pytest
from conftest import blob_images, make_clip, random_images
from joblib import Parallel, delayed
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.cache import (
    STORE_NAME,
    CacheWarning,
    DiskCache,
    MemoryCache,
    image_key,
    memory_cache,
    model_key,
)
from sk_a2.models import load_model


def cropper(weights, **kw):
    params = dict(weights=weights, image_size=64, crop_sizes=(32, 16), device="cpu")
    return AttentionCropper("timm:test_vit", **{**params, **kw})


def embedder(weights, **kw):
    return CropEmbedder("timm:test_vit", weights=weights, image_size=64, device="cpu", **kw)


@pytest.fixture(autouse=True)
def fresh_memory_cache():
    memory_cache().clear()
    yield
    memory_cache().clear()


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_results_identical_with_and_without_cache(kind, tiny_vit_file, tiny_vit_file2, tmp_path):
    cache = "memory" if kind == "memory" else tmp_path / "cache"
    X = random_images(6, 50, 70, seed=1)
    ref_cs = cropper(tiny_vit_file).fit(X).transform(X)
    ref_e = embedder(tiny_vit_file2, include_full_image=True).fit(ref_cs).transform(ref_cs)
    for _ in range(2):  # cold, then warm
        c = cropper(tiny_vit_file, cache=cache).fit(X)
        cs = c.transform(X)
        e = embedder(tiny_vit_file2, include_full_image=True, cache=cache).fit(cs).transform(cs)
        np.testing.assert_array_equal(cs.boxes, ref_cs.boxes)
        np.testing.assert_array_equal(cs.scores, ref_cs.scores)
        np.testing.assert_array_equal(e, ref_e)
        np.testing.assert_array_equal(c.attention_maps(X),
                                      cropper(tiny_vit_file).fit(X).attention_maps(X))


class ForwardCounter:
    """Counts images entering a loaded model (hook on its patch embedding)."""

    def __init__(self, weights):
        self.vm = load_model("timm:test_vit", weights=weights, image_size=64, device="cpu")
        self.count = 0
        self.handle = self.vm.module.patch_embed.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.count += args[0].shape[0]

    def close(self):
        self.handle.remove()


def test_grid_search_runs_each_model_once_per_image_and_box(tiny_vit_file, tiny_vit_file2):
    X, y = blob_images(24, seed=3)
    attn, emb = ForwardCounter(tiny_vit_file), ForwardCounter(tiny_vit_file2)
    try:
        pipe = Pipeline([
            ("crop", cropper(tiny_vit_file, crop_sizes=(32, 16), cache="memory")),
            ("emb", embedder(tiny_vit_file2, cache="memory")),
            ("lr", LogisticRegression(max_iter=300)),
        ])
        grid = {"crop__n_crops": [1, 2, 3], "lr__C": [0.1, 1.0, 10.0]}
        GridSearchCV(pipe, grid, cv=3, error_score="raise").fit(X, y)
        # one fit of the largest setting: every image once through the attention model, and
        # its 3 crops once through the embedding model
        assert attn.count == len(X)
        assert emb.count == 3 * len(X)
    finally:
        attn.close()
        emb.close()


def test_changed_parameters_or_pixels_are_never_stale(tiny_vit_file):
    X = random_images(3, 64, 64, seed=4)
    cached = cropper(tiny_vit_file, cache="memory").fit(X)
    cached.transform(X)
    for params in ({"layer": 0}, {"head_aggregation": "max"}):
        c = cropper(tiny_vit_file, cache="memory", **params).fit(X)
        ref = cropper(tiny_vit_file, **params).fit(X)
        np.testing.assert_array_equal(c.attention_maps(X), ref.attention_maps(X))
    X2 = X.copy()
    X2[0, :32] = 255 - X2[0, :32]
    np.testing.assert_array_equal(cached.attention_maps(X2),
                                  cropper(tiny_vit_file).fit(X2).attention_maps(X2))


def test_image_key_follows_content(tmp_path):
    rgb = random_images(1, 20, 20)[0]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rgb).save(a)
    Image.fromarray(rgb).save(b)
    assert image_key(a) == image_key(b) == image_key(str(a))
    assert image_key(rgb) == image_key(rgb.copy()) != image_key(rgb[:, ::-1])
    assert image_key(rgb) != image_key(rgb.astype(np.uint16))
    assert image_key(Image.fromarray(rgb)) != image_key(Image.fromarray(rgb).convert("L"))


def test_module_key_covers_every_tensor_even_0d():
    import torch

    a, b, c = make_clip(seed=3), make_clip(seed=3), make_clip(seed=3)
    assert a.logit_scale.dim() == 0  # a 0-d parameter, as open_clip's CLIP models have
    with torch.no_grad():
        c.logit_scale += 1  # the only difference from a
    assert model_key(a, None) == model_key(b, None)
    assert model_key(a, None).startswith("module:")
    assert model_key(c, None) != model_key(a, None)
    # a CLIP module passed in, with a cache and the shared full-image embedding (both key it)
    X = random_images(2, 70, 60, seed=1)
    cs = AttentionCropper(a, crop_sizes=(32,), image_size=64, device="cpu",
                          embed_full_image=True, cache="memory").fit().transform(X)
    assert cs.full_embeddings.shape == (2, a.visual.output_dim)
    memory_cache().clear()


def _rows(folder):
    """(key, dtype, data) of every entry of the store in ``folder``, by key."""
    with closing(sqlite3.connect(folder / STORE_NAME)) as db:
        return db.execute("SELECT key, dtype, data FROM sk_a2_entries ORDER BY key").fetchall()


def test_disk_cache_ignores_corrupt_and_foreign_entries(tiny_vit_file, tmp_path):
    X = random_images(4, 64, 64, seed=5)
    # block 0: a forward to block L stores the maps of blocks 0..L, one entry each
    ref = cropper(tiny_vit_file, layer=0).fit(X).attention_maps(X)
    c = cropper(tiny_vit_file, cache=tmp_path, layer=0).fit(X)
    c.attention_maps(X)
    rows = _rows(tmp_path)
    assert len(rows) == 4
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) \
        == [STORE_NAME]
    changes = [rows[0][2][:20],  # truncated
               rows[2][2],  # another key's entry
               b"garbage"]
    with closing(sqlite3.connect(tmp_path / STORE_NAME)) as db, db:
        for (key, _, _), data in zip([rows[0], rows[1], rows[3]], changes):
            db.execute("UPDATE sk_a2_entries SET data = ? WHERE key = ?", (data, key))
    with pytest.warns(CacheWarning, match="checksum") as record:
        np.testing.assert_array_equal(c.attention_maps(X), ref)
    assert len([w for w in record if issubclass(w.category, CacheWarning)]) == 1
    np.testing.assert_array_equal(c.attention_maps(X), ref)  # rewritten entries are valid
    assert _rows(tmp_path) == rows


def test_disk_cache_roundtrip_and_size_bound(tmp_path):
    cache = DiskCache(tmp_path, max_bytes=3000)
    for i in range(10):  # 400 bytes each, written oldest first
        cache.put(f"{i:040x}", np.full(100, i, dtype=np.float32))
    np.testing.assert_array_equal(cache.get(f"{9:040x}"), np.full(100, 9, np.float32))
    assert cache.size_bytes() == 4000 and len(cache) == 10
    cache.prune()
    assert cache.size_bytes() <= 3000
    assert cache.get(f"{0:040x}") is None and cache.get(f"{9:040x}") is not None


def test_memory_cache_is_bounded():
    cache = MemoryCache(max_bytes=1000)
    for i in range(10):
        cache.put(str(i), np.zeros(100, np.float32))
    assert len(cache) == 2 and cache.get("9") is not None and cache.get("0") is None


def _transform_in_process(weights, cache_dir, X):
    return cropper(weights, cache=cache_dir, layer=0).fit(X).attention_maps(X)


def test_concurrent_processes_share_a_disk_cache(tiny_vit_file, tmp_path):
    X = random_images(8, 64, 64, seed=6)
    ref = cropper(tiny_vit_file, layer=0).fit(X).attention_maps(X)  # one entry per image
    results = Parallel(n_jobs=2)(
        delayed(_transform_in_process)(tiny_vit_file, tmp_path, X) for _ in range(4)
    )
    for r in results:
        np.testing.assert_array_equal(r, ref)
    assert len(DiskCache(tmp_path)) == 8
    np.testing.assert_array_equal(_transform_in_process(tiny_vit_file, tmp_path, X), ref)


def test_bad_cache_value(tiny_vit_file):
    with pytest.raises(ValueError, match="'cache' parameter of AttentionCropper must be"):
        cropper(tiny_vit_file, cache=3).fit(random_images(1)).transform(random_images(1))


def test_partial_hits_give_identical_embeddings(tiny_vit_file, tiny_vit_file2):
    X = random_images(7, 64, 64, seed=7)
    cs = cropper(tiny_vit_file, n_crops=3).fit(X).transform(X)
    ref = embedder(tiny_vit_file2, include_full_image=True).fit(cs).transform(cs)
    embedder(tiny_vit_file2, cache="memory").fit(cs[2:5].first(1)).transform(cs[2:5].first(1))
    got = embedder(tiny_vit_file2, include_full_image=True, cache="memory").fit(cs).transform(cs)
    np.testing.assert_array_equal(got, ref)


def test_disk_cache_pickles_and_clones_as_its_folder(tmp_path, tiny_vit_file):
    import pickle

    from sklearn.base import clone

    cache = DiskCache(tmp_path, max_bytes=10**6)
    cache.put("k", np.arange(4, dtype=np.float32))
    copy = pickle.loads(pickle.dumps(cache))
    assert (copy.directory, copy.max_bytes) == (tmp_path, 10**6)
    np.testing.assert_array_equal(copy.get("k"), [0, 1, 2, 3])
    est = clone(cropper(tiny_vit_file, cache=cache))
    assert est.cache.directory == tmp_path and est.cache is not cache


def test_threads_share_one_connection_safely(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cache = DiskCache(tmp_path)

    def work(t):
        for i in range(50):
            cache.put(f"{t}-{i}", np.full(20, i, np.float32))
            assert cache.get(f"{t}-{i}")[0] == i
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(4)))
    assert len(cache) == 200


def test_network_file_systems_use_the_rollback_journal(tmp_path, monkeypatch):
    import sk_a2.cache

    monkeypatch.setattr(sk_a2.cache, "is_network_filesystem", lambda path: True)
    cache = DiskCache(tmp_path / "nfs").open()
    cache.put("k", np.ones(3, np.float32))
    with closing(sqlite3.connect(cache.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    np.testing.assert_array_equal(cache.get("k"), [1, 1, 1])
    cache.close()
    monkeypatch.undo()
    local = DiskCache(tmp_path / "local").open()
    with closing(sqlite3.connect(local.path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
