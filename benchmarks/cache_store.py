"""The disk cache's two shapes side by side: one file per entry against one SQLite database.

    python benchmarks/cache_store.py [--n-images 1350] [--processes 4] [--dir DIR]
                                     [--json out.json]

The workload has the shape of a tuning run's cache (two attention layers, 64 candidate boxes
over the images): per image 38 entries written straight through the cache API, no model run:
two 37×37 and two 16×16 float32 attention maps (with the image size, as the cropper stores
them), two float64 box entries (8 boxes with scores) and 32 crop embeddings, 24 of 768 and 8 of
384 float32 values. The two shapes:

``files``
    The file-per-entry layout (``xx/<key>.npy`` with a magic and key header, written to a
    temporary file and renamed into place, pruned by file modification time), as the package
    stored entries before the database; a copy of it is kept here for this comparison.
``sqlite``
    :class:`sk_a2.cache.DiskCache`: one SQLite database in WAL mode.

Measured, each shape in a new folder of ``--dir`` every time, the two interleaved, best of 3:

* ``files_per_1000_images``: files in the cache folder after the fill (the database's side
  files counted: it is still open), per 1,000 images; ``disk_bytes``: the space they take once
  closed (``disk_bytes_open``: while open, with the write-ahead log), ``data_bytes``: the
  arrays' own bytes;
* ``put``: entries per second filling the cache from empty, as the estimators write: one
  image's entries at a time (``put_many`` for the database, whose entries then share one
  transaction; the files have no batching), and ``put_one``: one entry per call (one
  transaction each);
* ``hit_us``: microseconds per hit reading every entry back once, one ``get`` each, in random
  order, and ``hit_batch_us`` with one ``get_many`` per image (the database only);
* ``concurrent``: ``--processes`` processes (fork) writing the images' entries at once, each a
  share of the images, and each reading entries back while the others write; checked: no error
  or warning, no entry lost, every value read back equal to the one written; ``concurrent_s``
  is the wall time of all;
* ``prune_s``: pruning the filled cache to half its data (LRU; by modification time for the
  files).

Timings are best of 3 with their ``spread``, (worst - best) / best. The page cache is warm for
both shapes (the reads follow the writes).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

SHAPES = ("files", "sqlite")
_MAGIC = b"SKA2CACHE1"
ENTRIES: list = []  # per image, its (key, value) entries: made once, before any timing


class FileStore:
    """The file-per-entry layout: ``<dir>/<key[:2]>/<key>.npy``, magic and key header, atomic
    rename, pruned by modification time."""

    def __init__(self, directory, max_bytes=10 * 2**30):
        self.directory = Path(directory)
        self.max_bytes = int(max_bytes)

    def _path(self, key):
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key):
        try:
            with open(self._path(key), "rb") as f:
                if f.read(len(_MAGIC)) != _MAGIC or f.read(len(key)).decode("ascii") != key:
                    return None
                return np.load(f, allow_pickle=False)
        except (OSError, ValueError, UnicodeDecodeError, EOFError):
            return None

    def put(self, key, value):
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        buf.write(_MAGIC + key.encode("ascii"))
        np.save(buf, np.asarray(value), allow_pickle=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)

    def put_many(self, items):
        for key, value in items:
            self.put(key, value)

    def get_many(self, keys):
        return [self.get(k) for k in keys]

    def __len__(self):
        return sum(1 for _ in self.directory.glob("*/*.npy"))

    def prune(self):
        entries = []
        for p in self.directory.glob("*/*.npy"):
            st = p.stat()
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            p.unlink()
            total -= size


def image_entries(i):
    """The 38 (key, value) entries of image ``i`` (values a function of the key)."""
    rng = np.random.default_rng(i)
    out = []
    for layer, grid in ((10, 37), (11, 37), (10, 16), (11, 16)):
        out.append((f"map-{i}-{layer}-{grid}", rng.random(2 + grid * grid, dtype=np.float32)))
    for k in (4, 8):
        out.append((f"boxes-{i}-{k}", rng.random(2 + 8 * 5).astype(np.float64)))
    for j in range(32):
        out.append((f"emb-{i}-{j}", rng.standard_normal(768 if j < 24 else 384,
                                                        dtype=np.float32)))
    from sk_a2.cache import digest

    return [(digest(name), value) for name, value in out]


def make_store(shape, folder, max_bytes=10 * 2**30):
    if shape == "files":
        return FileStore(folder, max_bytes)
    from sk_a2.cache import DiskCache

    return DiskCache(folder, max_bytes).open()


def files_and_bytes(folder):
    n = used = 0
    for root, _, names in os.walk(folder):
        for name in names:
            n += 1
            used += os.stat(os.path.join(root, name)).st_blocks * 512
    return n, used


def fill(shape, folder, images):
    store = make_store(shape, folder)
    start = time.perf_counter()
    for i in images:
        store.put_many(ENTRIES[i])
    return store, time.perf_counter() - start


def _fill_and_read(job):
    """One concurrent process: write a share of the images, read entries of all of them."""
    shape, folder, share, n_images, seed = job
    rng = np.random.default_rng(seed)
    store = make_store(shape, folder)
    wrong = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in share:
            store.put_many(ENTRIES[i])
            for key, value in ENTRIES[int(rng.integers(n_images))]:
                got = store.get(key)
                wrong += got is not None and not np.array_equal(got, value)
    return wrong, [str(w.message) for w in caught]


def concurrent(shape, folder, n_images, processes):
    shares = [list(range(p, n_images, processes)) for p in range(processes)]
    jobs = [(shape, str(folder), share, n_images, p) for p, share in enumerate(shares)]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        results = pool.map(_fill_and_read, jobs)
    seconds = time.perf_counter() - start
    store = make_store(shape, folder)
    lost = wrong = 0
    for i in range(n_images):
        for key, value in ENTRIES[i]:
            got = store.get(key)
            lost += got is None
            wrong += got is not None and not np.array_equal(got, value)
    return {"seconds": seconds, "lost": lost, "wrong": wrong + sum(w for w, _ in results),
            "warnings": sum(len(m) for _, m in results)}


def one_run(shape, base, args):
    """Every measurement of one shape, in fresh folders under ``base``."""
    n = args.n_images
    keys = [key for i in range(n) for key, _ in ENTRIES[i]]
    store, put_s = fill(shape, base / "fill", range(n))
    files, used_open = files_and_bytes(base / "fill")
    if hasattr(store, "close"):  # the database's side files go with its last connection
        store.close()
    used = files_and_bytes(base / "fill")[1]
    order = np.random.default_rng(0).permutation(len(keys))
    start = time.perf_counter()
    hits = sum(store.get(keys[j]) is not None for j in order)
    hit_s = time.perf_counter() - start
    assert hits == len(keys), (shape, hits, len(keys))
    start = time.perf_counter()
    for i in np.random.default_rng(1).permutation(n):
        store.get_many(keys[38 * i:38 * (i + 1)])
    batch_s = time.perf_counter() - start
    one = make_store(shape, base / "one")
    m = min(n, 100)
    start = time.perf_counter()
    for i in range(m):
        for key, value in ENTRIES[i]:
            one.put(key, value)
    put_one_s = time.perf_counter() - start
    data = sum(v.nbytes for i in range(n) for _, v in ENTRIES[i])
    store.max_bytes = data // 2
    start = time.perf_counter()
    store.prune()
    prune_s = time.perf_counter() - start
    left = len(store)
    if hasattr(store, "close"):
        store.close()
        one.close()
    conc = concurrent(shape, base / "concurrent", n, args.processes)
    return {"put_s": put_s, "put_one_s": put_one_s, "put_one_entries": 38 * m,
            "hit_s": hit_s, "hit_batch_s": batch_s, "prune_s": prune_s,
            "entries": len(keys), "data_bytes": data, "files": files, "disk_bytes": used,
            "disk_bytes_open": used_open,
            "entries_after_prune": left, "concurrent": conc}


def summarise(runs, n_images):
    best = lambda k: min(r[k] for r in runs)  # noqa: E731
    spread = lambda k: (max(r[k] for r in runs) - best(k)) / best(k)  # noqa: E731
    conc = [r["concurrent"] for r in runs]
    entries = runs[0]["entries"]
    return {
        "files_per_1000_images": runs[0]["files"] * 1000 / n_images,
        "disk_bytes": runs[0]["disk_bytes"], "disk_bytes_open": runs[0]["disk_bytes_open"],
        "data_bytes": runs[0]["data_bytes"],
        "put_entries_per_s": entries / best("put_s"), "put_spread": spread("put_s"),
        "put_one_entries_per_s": runs[0]["put_one_entries"] / best("put_one_s"),
        "put_one_spread": spread("put_one_s"),
        "hit_us": best("hit_s") / entries * 1e6, "hit_spread": spread("hit_s"),
        "hit_batch_us": best("hit_batch_s") / entries * 1e6,
        "hit_batch_spread": spread("hit_batch_s"),
        "prune_s": best("prune_s"), "prune_spread": spread("prune_s"),
        "entries_after_prune": runs[0]["entries_after_prune"],
        "concurrent_s": min(c["seconds"] for c in conc),
        "concurrent_spread": (max(c["seconds"] for c in conc) - min(c["seconds"] for c in conc))
        / min(c["seconds"] for c in conc),
        "concurrent_lost": max(c["lost"] for c in conc),
        "concurrent_wrong": max(c["wrong"] for c in conc),
        "concurrent_warnings": max(c["warnings"] for c in conc),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-images", type=int, default=1350)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the caches are made (default: TMPDIR)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    import sqlite3

    from sk_a2.cache import is_network_filesystem

    ENTRIES[:] = [image_entries(i) for i in range(args.n_images)]
    runs = {shape: [] for shape in SHAPES}
    for _ in range(args.repeats):
        for shape in SHAPES:
            base = Path(tempfile.mkdtemp(prefix=f"cache-{shape}-", dir=args.dir))
            try:
                runs[shape].append(one_run(shape, base, args))
            finally:
                shutil.rmtree(base, ignore_errors=True)
    result = {"n_images": args.n_images, "entries_per_image": 38, "processes": args.processes,
              "repeats": args.repeats, "sqlite_version": sqlite3.sqlite_version,
              "platform": platform.platform(), "cpus": os.cpu_count(),
              "network_filesystem": is_network_filesystem(args.dir or tempfile.gettempdir())}
    result.update({shape: summarise(runs[shape], args.n_images) for shape in SHAPES})
    f, s = result["files"], result["sqlite"]
    result["sqlite_vs_files"] = {
        "files": s["files_per_1000_images"] / f["files_per_1000_images"],
        "disk_bytes": s["disk_bytes"] / f["disk_bytes"],
        "put_throughput": s["put_entries_per_s"] / f["put_entries_per_s"],
        "put_one_throughput": s["put_one_entries_per_s"] / f["put_one_entries_per_s"],
        "hit_latency": s["hit_us"] / f["hit_us"],
        "prune_time": s["prune_s"] / f["prune_s"],
        "concurrent_time": s["concurrent_s"] / f["concurrent_s"],
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
