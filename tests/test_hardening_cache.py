"""Hostile caches: the disk cache touches only its own store, never trusts a damaged entry, never
follows a symbolic link, and reads the ``cache=`` keywords in any case.

Each table below is one rule; its rows are the hostile cases (ids say which).
"""

import hashlib
import multiprocessing
import os
import pickle
import sqlite3
import warnings
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from conftest import random_images

import sk_a2._base
import sk_a2.cache
import sk_a2.cropper
from sk_a2 import AttentionCropper, CropEmbedder
from sk_a2.cache import STORE_NAME, CacheWarning, DiskCache, MemoryCache, resolve_cache


def _key(i):
    return f"{i:040x}"


def _snapshot(folder, store=False):
    """Every file under ``folder`` (links not followed) with its bytes; the store's own files
    only with ``store``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and not p.is_symlink() and (store or not p.name.startswith(STORE_NAME))}


def _legacy_entry(path, key, value):
    """A file of the earlier file-per-entry layout: magic, key, then the .npy bytes."""
    import io

    buf = io.BytesIO()
    np.save(buf, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"SKA2CACHE1" + key.encode() + buf.getvalue())


def _checksum(key, dtype, shape, data):
    """The store's documented entry checksum: BLAKE2b-128 of the length-prefixed key, dtype and
    shape texts, then the data."""
    h = hashlib.blake2b(digest_size=16)
    for part in (key.encode(), dtype.encode(), shape.encode()):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    h.update(data)
    return h.digest()


def _no_model_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded or run")

    monkeypatch.setattr(sk_a2._base, "load_model", fail)
    monkeypatch.setattr("sk_a2.attention.layer_cls_attention", fail)


def _cache_warnings(record):
    return [w for w in record if issubclass(w.category, CacheWarning)]


# --------------------------------------------------------------------------------------------
# The cache reads, counts and deletes only its own store: files of yours survive
# --------------------------------------------------------------------------------------------

FOREIGN_FILES = [
    pytest.param("features/train_embeddings.npy", id="user-npy-in-a-subfolder"),
    pytest.param("ab/" + "ab" + "0" * 38 + ".npy", id="user-npy-named-like-an-old-entry"),
    pytest.param("notes.txt", id="user-text-file"),
    pytest.param(".hidden/x.npy", id="hidden-folder"),
]


@pytest.mark.parametrize("name", FOREIGN_FILES)
def test_files_of_yours_in_the_cache_folder_survive_puts_reads_and_prune(tmp_path, name):
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"mine" * 1000)
    before = _snapshot(tmp_path)
    cache = DiskCache(tmp_path, max_bytes=2000)
    for i in range(10):
        cache.put(_key(i), np.full(100, i, dtype=np.float32))
        cache.get(_key(i))
    cache.prune()
    assert cache.size_bytes() <= 2000  # the folder's other files are not counted
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# A store path that the cache cannot prove it wrote is refused at fit, before model work, and
# left as it is; symbolic links are never followed
# --------------------------------------------------------------------------------------------


def _garbage(store, outside):
    store.write_bytes(os.urandom(5000))


def _other_database(store, outside):
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")


def _newer_store(store, outside):
    DiskCache(store.parent).open().close()
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("UPDATE sk_a2_meta SET value = '99' WHERE name = 'version'")


def _folder(store, outside):
    (store / "inside").mkdir(parents=True)


def _link_to_a_file(store, outside):
    (outside / "precious.db").write_bytes(b"not yours")
    store.symlink_to(outside / "precious.db")


def _link_to_a_valid_store(store, outside):
    DiskCache(outside).open().close()
    store.symlink_to(outside / STORE_NAME)


def _linked_wal(store, outside):
    (outside / "precious").write_bytes(b"not yours")
    store.with_name(STORE_NAME + "-wal").symlink_to(outside / "precious")


BAD_STORES = [
    pytest.param(_garbage, "not an sk_a2 cache database", id="garbage-bytes"),
    pytest.param(_other_database, "holds no sk_a2 cache metadata", id="another-programs-db"),
    pytest.param(_newer_store, "store version '99'", id="newer-store-version"),
    pytest.param(_folder, "is not a file", id="folder-at-the-store-path"),
    pytest.param(_link_to_a_file, "symbolic link", id="store-linked-to-a-file"),
    pytest.param(_link_to_a_valid_store, "symbolic link", id="store-linked-to-another-store"),
    pytest.param(_linked_wal, "symbolic link", id="wal-file-linked-outside"),
]


@pytest.mark.parametrize(("make", "message"), BAD_STORES)
def test_a_store_path_that_is_not_the_caches_is_refused_and_kept(tmp_path, tiny_vit_file,
                                                                  monkeypatch, make, message):
    folder, outside = tmp_path / "cache", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    make(folder / STORE_NAME, outside)
    before = _snapshot(tmp_path, store=True)
    _no_model_work(monkeypatch)
    for est in (AttentionCropper("timm:test_vit", weights=tiny_vit_file, image_size=64,
                                 device="cpu", cache=folder),
                CropEmbedder("timm:test_vit", weights=tiny_vit_file, image_size=64, device="cpu",
                             cache=str(folder))):
        with pytest.raises(ValueError, match=rf"^cache: '.*{STORE_NAME}.*{message}.*cache=") \
                as info:
            est.fit(random_images(1))
        assert "pass another folder" in str(info.value)
    assert _snapshot(tmp_path, store=True) == before


def test_a_symlinked_old_shard_folder_is_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.npy").write_bytes(b"not yours")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "ab").symlink_to(outside, target_is_directory=True)
    cache = DiskCache(folder, max_bytes=100)
    for i in range(5):
        cache.put("ab" + _key(i)[2:], np.zeros(50, np.float32))
        assert cache.get("ab" + _key(i)[2:]) is not None
    cache.prune()
    assert sorted(os.listdir(outside)) == ["precious.npy"]
    assert (outside / "precious.npy").read_bytes() == b"not yours"


# --------------------------------------------------------------------------------------------
# Damaged entries: dropped, recomputed, one warning per call; a hit is never NaN or inf
# --------------------------------------------------------------------------------------------


def _bit_flip(row):
    data = bytearray(row["data"])
    data[3] ^= 0x10
    return {"data": bytes(data)}


def _valued(value, checksum_ok):
    def change(row):
        n = len(row["data"]) // np.dtype(row["dtype"]).itemsize
        data = np.full(n, value, dtype=row["dtype"]).tobytes()
        out = {"data": data}
        if checksum_ok:  # a writer that bypassed the cache: data and checksum agree
            out["checksum"] = _checksum(row["key"], row["dtype"], row["shape"], data)
        return out
    return change


DAMAGE = [
    pytest.param(_bit_flip, id="bit-flip"),
    pytest.param(lambda row: {"data": row["data"][:-4]}, id="truncated-data"),
    pytest.param(lambda row: {"shape": "7"}, id="wrong-shape"),
    pytest.param(_valued(np.nan, checksum_ok=True), id="nan-with-valid-checksum"),
    pytest.param(_valued(np.inf, checksum_ok=True), id="inf-with-valid-checksum"),
    pytest.param(_valued(1e30, checksum_ok=False), id="1e30-map"),
    pytest.param(_valued(-1e9, checksum_ok=False), id="minus-1e9-boxes"),
]


def _damage(folder, change, where="1 = 1"):
    """Apply ``change`` (row dict → changed columns) to the store's rows matching ``where``;
    returns the keys changed."""
    with closing(sqlite3.connect(Path(folder) / STORE_NAME)) as db, db:
        db.row_factory = sqlite3.Row
        rows = db.execute(f"SELECT * FROM sk_a2_entries WHERE {where} ORDER BY key").fetchall()
        for row in rows:
            for column, value in change(dict(row)).items():
                db.execute(f"UPDATE sk_a2_entries SET {column} = ? WHERE key = ?",
                           (value, row["key"]))
    return [row["key"] for row in rows]


@pytest.mark.parametrize("change", DAMAGE)
def test_a_damaged_entry_is_a_miss_deleted_with_one_warning(tmp_path, change):
    cache = DiskCache(tmp_path)
    values = {_key(i): np.arange(8, dtype=np.float32) + i for i in range(4)}
    cache.put_many(values.items())
    damaged = _damage(tmp_path, change, f"key IN ('{_key(1)}', '{_key(2)}')")
    with pytest.warns(CacheWarning, match="do not match their checksum, or hold NaN or inf") \
            as record:
        got = cache.get_many(values)
    assert len(_cache_warnings(record)) == 1  # one per call, not one per entry
    for key, value in zip(values, got):
        if key in damaged:
            assert value is None
        else:
            np.testing.assert_array_equal(value, values[key])
    assert len(cache) == 2  # the damaged rows were deleted


def _cropper(weights, **kw):
    return AttentionCropper("timm:test_vit", weights=weights, image_size=64,
                            crop_sizes=(32, 16), device="cpu", **kw)


END_TO_END = [  # (what is damaged, how, the call that reads it)
    pytest.param("boxes", _valued(-1e9, checksum_ok=False), "transform", id="boxes-minus-1e9"),
    pytest.param("map", _valued(1e30, checksum_ok=False), "attention_maps", id="map-1e30"),
    pytest.param("map", _valued(np.nan, checksum_ok=True), "attention_maps",
                 id="map-nan-valid-checksum"),
]


@pytest.mark.parametrize(("entry", "change", "call"), END_TO_END)
def test_cropper_recomputes_a_damaged_entry_like_a_run_without_cache(tmp_path, tiny_vit_file,
                                                                     entry, change, call):
    X = random_images(3, 64, 64, seed=12)
    # block 0: the forward stores the maps of no other block, so every map entry is read back
    ref = getattr(_cropper(tiny_vit_file, layer=0).fit(X), call)(X)
    cropper = _cropper(tiny_vit_file, cache=tmp_path, layer=0).fit(X)
    cropper.transform(X)
    size = {"boxes": 2 + 2 * 4 + 2, "map": 2 + 4 * 4 + 3}[entry]  # the two entry layouts' sizes
    first = _damage(tmp_path, lambda row: {}, f"shape = '{size}'")[0]
    _damage(tmp_path, change, f"key = '{first}'")
    with pytest.warns(CacheWarning) as record:
        got = getattr(cropper, call)(X)
    assert len(_cache_warnings(record)) == 1
    if call == "transform":
        np.testing.assert_array_equal(got.boxes, ref.boxes)
        np.testing.assert_array_equal(got.scores, ref.scores)
    else:
        np.testing.assert_array_equal(got, ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # rewritten: no damage left
        again = getattr(cropper, call)(X)
    np.testing.assert_array_equal(again if call == "attention_maps" else again.boxes,
                                  ref if call == "attention_maps" else ref.boxes)


def test_a_memory_cache_hit_holding_nan_is_recomputed(tiny_vit_file):
    X = random_images(2, 64, 64, seed=13)
    ref = _cropper(tiny_vit_file).fit(X).attention_maps(X)
    class Poisoned(MemoryCache):  # every hit turned into NaN after the first pass
        def get(self, key):
            value = super().get(key)
            return None if value is None else np.full_like(value, np.nan)

    cropper = _cropper(tiny_vit_file, cache=Poisoned(2**30)).fit(X)
    cropper.attention_maps(X)
    with pytest.warns(CacheWarning, match="NaN or inf") as record:
        np.testing.assert_array_equal(cropper.attention_maps(X), ref)
    assert len(_cache_warnings(record)) == 1


def test_a_truncated_store_is_recomputed_and_kept(tmp_path, tiny_vit_file):
    X = random_images(3, 64, 64, seed=14)
    ref = _cropper(tiny_vit_file).fit(X).attention_maps(X)
    cache = DiskCache(tmp_path)
    cache.put_many((_key(i), np.ones(4000, np.float32)) for i in range(40))
    cropper = _cropper(tiny_vit_file, cache=tmp_path).fit(X)
    cropper.attention_maps(X)
    cache.close()  # checkpoints the write-ahead log into the file
    store = tmp_path / STORE_NAME
    store.write_bytes(store.read_bytes()[:8192 * 12])
    kept = store.read_bytes()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            got = cropper.attention_maps(X)
        except ValueError as exc:  # damage reaching the metadata: refused at the start
            assert str(exc).startswith("cache: ") and "cache=" in str(exc)
        else:
            np.testing.assert_array_equal(got, ref)
            assert len(_cache_warnings(record)) <= 1
    assert store.read_bytes()[:8192] == kept[:8192]  # never deleted nor replaced


# --------------------------------------------------------------------------------------------
# Keywords: "memory" in any case; near-misses refused with a suggestion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", ["memory", "Memory", "MEMORY", " memory "])
def test_memory_keyword_in_any_case_makes_no_folder(tmp_path, monkeypatch, word, tiny_vit_file):
    monkeypatch.chdir(tmp_path)
    assert resolve_cache(word) is sk_a2.cache.memory_cache()
    _cropper(tiny_vit_file, cache=word).fit().attention_maps(random_images(1))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("word", ["mem", "Memroy", "memor", "None", "none"])
def test_near_miss_keywords_are_refused_with_a_suggestion(tmp_path, monkeypatch, word):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=rf"^cache='{word}'.*'\./{word}'"):
        resolve_cache(word)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("given", ["./memory", "./Memory", Path("memory"), "memory1", "cache"])
def test_folders_named_like_keywords_are_given_as_paths(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    assert isinstance(resolve_cache(given), DiskCache)
    assert os.listdir(tmp_path) == [os.path.basename(os.fspath(given))]


# --------------------------------------------------------------------------------------------
# Caches of the earlier file-per-entry layout: ignored, never deleted
# --------------------------------------------------------------------------------------------


def test_an_old_layout_cache_folder_is_ignored_and_kept(tmp_path, tiny_vit_file):
    X = random_images(2, 64, 64, seed=15)
    ref = _cropper(tiny_vit_file).fit(X).attention_maps(X)
    cropper = _cropper(tiny_vit_file, cache=tmp_path).fit(X)
    cropper.attention_maps(X)
    keys = _damage(tmp_path, lambda row: {})
    DiskCache(tmp_path).close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / (STORE_NAME + suffix)).unlink(missing_ok=True)
    for key in keys:  # old entries of the same keys, with wrong values
        _legacy_entry(tmp_path / key[:2] / f"{key}.npy", key, np.zeros(66, np.float32))
    before = _snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        np.testing.assert_array_equal(cropper.attention_maps(X), ref)
    DiskCache(tmp_path, max_bytes=0).prune()
    assert len(DiskCache(tmp_path)) == 0
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------
# Concurrent processes: consistent, no errors, no lost entries
# --------------------------------------------------------------------------------------------


def _worker(payload):
    cache, seed = pickle.loads(payload)  # as it crosses to joblib, multiprocessing or Ray
    rng = np.random.default_rng(seed)
    wrong, caught = 0, []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in rng.permutation(120):
            cache.put(_key(i), np.full(300, i, dtype=np.float32))
            j = int(rng.integers(120))
            got = cache.get(_key(j))
            wrong += got is not None and not np.array_equal(got, np.full(300, j, np.float32))
        caught = [str(w.message) for w in record]
    return wrong, caught


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_writers_in_four_processes_lose_nothing(tmp_path):
    cache = DiskCache(tmp_path)
    cache.put(_key(0), np.full(300, 0, dtype=np.float32))  # the parent holds a connection
    payloads = [pickle.dumps((cache, seed)) for seed in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_worker, payloads)
    assert results == [(0, [])] * 4
    assert len(cache) == 120
    got = cache.get_many(_key(i) for i in range(120))
    for i, value in enumerate(got):
        np.testing.assert_array_equal(value, np.full(300, i, np.float32))
