"""Content-addressed caches for attention maps and crop embeddings.

Every estimator with a ``cache`` parameter accepts:

``None``
    No caching (the default).
``"memory"`` (in any case: ``"Memory"``, ``"MEMORY"``)
    One process-wide, size-bounded LRU store (``SK_A2_MEMORY_CACHE_BYTES``, default 2 GiB), shared
    by every estimator of the process, so clones made by ``GridSearchCV`` reuse each other's work.
    A bare word close to it (``"mem"``, ``"memroy"``) and the strings ``"none"`` / ``"None"`` are
    refused with a suggestion; a folder of such a name is given as ``"./memory"`` (or a
    :class:`pathlib.Path`, which is always a folder).
a directory (str or path-like)
    A :class:`DiskCache` there: entries survive the process and are shared between processes.
    The folder is created if needed and must be writable; ``""``, a file, or a folder that
    cannot be created or written is refused when the estimator is fitted and before every
    model pass, not after the work (:func:`check_cache_dir`).

Keys are digests of the image *content* (file bytes, pixels) and of every parameter that changes
the result (model and weights, image size, layer and head aggregation for maps; model, image size
and box for embeddings), so a stale entry cannot be returned.

An image's content key is computed once per image per pass and travels with the data (a
:class:`~sk_a2.CropSet` carries its images' ``image_keys`` from the cropper to the embedder). A
file's key is the BLAKE2b digest of its bytes, as in every earlier version, so disk caches of
files stay valid. An in-memory image's key is XXH3-128 of its pixels (``"xxh3:<hex>"``) where the
``xxhash`` package is installed (the ``fast`` extra), else BLAKE2b as before
(``SK_A2_IMAGE_KEYS=blake2b`` asks for it): the cache is not a security boundary, so a fast
non-cryptographic 128-bit hash is enough; the two kinds of keys never equal each other, so
entries of the other kind are misses, never wrong hits (:func:`memory_image_hash`).

The disk store
--------------
A :class:`DiskCache` keeps every entry in **one SQLite database file** that it alone owns,
``<folder>/sk_a2-cache.sqlite3`` (:data:`STORE_NAME`; SQLite adds ``-wal`` and ``-shm`` files
beside it while it is in use). Each row holds a key, the array's dtype, shape and bytes, a
BLAKE2b checksum of all four, its size and its last-used time. Nothing else in the folder is
read, counted or deleted: not a file of yours, not the ``xx/<key>.npy`` files of earlier
versions' file-per-entry layout (these are ignored; delete them when no earlier version uses the
folder).

* **Damaged entries.** The checksum is checked on every read; an entry that fails it, does not
  parse, or holds NaN or inf is deleted from the store and recomputed, with one
  :class:`CacheWarning` per call. A hit is never a non-finite value. A store that SQLite reports
  damaged (a truncated file) is read as misses, again with one warning, and left in place.
* **Not a store.** A file at the store's path that the cache cannot prove it wrote (another
  program's database, other bytes, a newer store version), a folder there, or a symbolic link
  at the store's path or its side files' is refused with a ``ValueError`` naming ``cache`` when
  the estimator is fitted (and before every model pass), and never deleted nor written through.
* **Concurrency.** Writes are SQLite transactions (atomic: a killed writer leaves no partial
  entry); readers never block in WAL mode. Each process opens its own connection (a forked child
  opens a new one), waits while another process writes (busy timeout) and retries; a
  :class:`DiskCache` pickles as its folder and bound, so it crosses to joblib, multiprocessing or
  Ray workers. WAL needs memory shared by every process using the file, so on a network file
  system (NFS, SMB, Lustre, GPFS, BeeGFS, CephFS, …) the store uses SQLite's rollback journal and
  file locks instead (:func:`is_network_filesystem`), which the file system must support.
* **Size.** ``max_bytes`` bounds the entries' data; past it, the least recently used entries are
  deleted (down to 90 % of it) inside the database, and the freed pages returned to the file
  system.

Measurements (files, hit latency, write throughput, concurrent writers, pruning) against the
file-per-entry layout: ``docs/performance.md`` and ``benchmarks/cache_store.py``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import math
import os
import re
import sqlite3
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .outputs import check_output_dir

__all__ = [
    "STORE_NAME",
    "BytesLRU",
    "CacheWarning",
    "DiskCache",
    "EntryLayout",
    "MemoryCache",
    "cached_rows",
    "check_cache_dir",
    "digest",
    "file_digest",
    "image_key",
    "is_network_filesystem",
    "memory_image_hash",
    "memory_image_key",
    "model_key",
    "resolve_cache",
    "store_rows",
]

#: The one file a :class:`DiskCache` owns in its folder.
STORE_NAME = "sk_a2-cache.sqlite3"
_STORE_MAGIC = "sk_a2 cache"
_STORE_VERSION = "1"
_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
_PAGE_SIZE = 16384  # holds several 3-6 KB entries per page: a compact file, fewer reads
_WAL_PAGES = 256  # checkpoint the write-ahead log at about 4 MiB
_BUSY_TIMEOUT_S = 60.0
_RETRIES = 5
_PRUNE_EVERY = 1024  # entries written by a process between two size checks
_PRUNE_TO = 0.9  # a prune deletes down to this fraction of max_bytes
_TOUCH_AFTER_S = 600.0  # a hit refreshes an entry's last-used time at most this often
_TOUCH_BATCH = 256
_KINDS = "fiub"  # dtypes an entry may have: float, signed and unsigned int, bool
_NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs", "beegfs",
    "ceph", "glusterfs", "ocfs2", "gfs2", "panfs", "wekafs", "orangefs", "pvfs2", "fuse.sshfs",
    "fuse.glusterfs", "fuse.ceph", "fuse.cephfs", "fuse.juicefs", "fuse.s3fs", "fuse.gcsfuse",
    "fuse.rclone", "fuse.lizardfs", "fuse.moosefs", "fuse.mfs",
})


class CacheWarning(UserWarning):
    """Part of a disk cache could not be used (a damaged entry, an unreadable or unwritable
    store): the affected results are recomputed."""


def digest(*parts) -> str:
    """A hex digest of ``repr`` of the parts (strings, numbers, tuples of them)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).hexdigest()


def image_key(source) -> str:
    """Digest of an image source's content: a file's bytes, or an in-memory image's
    :func:`~sk_a2.images.image_digest` (by :func:`memory_image_hash`)."""
    from PIL import Image

    from .images import Decoded

    if isinstance(source, Decoded):
        return source.key
    if isinstance(source, (np.ndarray, Image.Image)):
        return memory_image_key(source)
    try:
        return "file:" + file_digest(source)
    except OSError:
        # unreadable: a key that is never stored, so the loader reports the real error
        return "unreadable:" + os.fspath(source)


def memory_image_hash() -> str:
    """The hash of in-memory images' keys: ``"xxh3"`` (XXH3-128, from the ``xxhash`` package)
    where it is installed, else ``"blake2b"``; ``SK_A2_IMAGE_KEYS=blake2b`` asks for BLAKE2b.

    A key only has to tell images apart, not to resist someone crafting two images with the same
    key: the cache is not a security boundary (whoever can write to it can write any entry), so
    a fast non-cryptographic 128-bit hash is enough (a 224 px image: 2.7 µs by XXH3-128, 221 µs
    by BLAKE2b, on a 2-core x86_64 CPU). XXH3 keys are written ``"xxh3:<hex>"`` and BLAKE2b keys as before
    (bare hex), so entries of either kind are only ever found by a key of the same kind: switching
    makes the other kind's entries misses, never wrong hits. Keys of files (BLAKE2b of the file's
    bytes) do not depend on this.
    """
    if os.environ.get("SK_A2_IMAGE_KEYS", "").strip().lower() == "blake2b":
        return "blake2b"
    try:
        import xxhash  # noqa: F401
    except ImportError:
        return "blake2b"
    return "xxh3"


def memory_image_key(source) -> str:
    """The cache key of an in-memory image (array or PIL image): its
    :func:`~sk_a2.images.image_digest` by :func:`memory_image_hash`."""
    from .images import image_digest

    if memory_image_hash() == "xxh3":
        import xxhash

        return "xxh3:" + image_digest(source, xxhash.xxh3_128).hex()
    return image_digest(source).hex()


_FILE_DIGESTS: dict = {}  # grows with the files seen: one short string each
_MODULE_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def file_digest(path) -> str:
    """Digest of a file's bytes, read once per (path, inode, size, mtime) in this process; of a
    folder, the digest of the names and digests of the files directly inside it."""
    if os.path.isdir(path):
        files = sorted((e for e in os.scandir(path) if e.is_file()), key=lambda e: e.name)
        return digest("folder", *[(e.name, file_digest(e.path)) for e in files])
    st = os.stat(path)
    stamp = (os.fspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if stamp not in _FILE_DIGESTS:
        h = hashlib.blake2b(digest_size=20)
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_DIGESTS[stamp] = h.hexdigest()
    return _FILE_DIGESTS[stamp]


def model_key(model, weights) -> str:
    """Identity of a model: its name and the content of its weights file, or a module's weights.

    A module passed in is fingerprinted from its parameters and buffers once per process.
    """
    import torch

    if isinstance(model, torch.nn.Module):
        if model not in _MODULE_DIGESTS:
            h = hashlib.blake2b(digest_size=20)
            for name, t in model.state_dict().items():
                flat = t.detach().cpu().contiguous().reshape(-1)  # 0-d ones too (a scalar)
                h.update(name.encode())
                h.update(flat.view(torch.uint8).numpy().data)
            _MODULE_DIGESTS[model] = "module:" + h.hexdigest()
        return _MODULE_DIGESTS[model]
    weights_id = None if weights is None else file_digest(weights)
    return digest("model", str(model), weights_id)


class BytesLRU:
    """A thread-safe least-recently-used map bounded in bytes: past ``max_bytes``, the oldest
    entries are dropped (the newest one is always kept). ``size(value)`` gives a value's bytes."""

    def __init__(self, max_bytes: int, size):
        self.max_bytes = int(max_bytes)
        self._size = size
        self._data: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._data)

    @property
    def nbytes(self) -> int:
        """Bytes of the values kept."""
        return self._bytes

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= self._size(old)
            self._data[key] = value
            self._bytes += self._size(value)
            while self._bytes > self.max_bytes and len(self._data) > 1:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= self._size(dropped)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class MemoryCache(BytesLRU):
    """A thread-safe LRU of NumPy arrays bounded in bytes (each stored as a read-only copy)."""

    def __init__(self, max_bytes: int):
        super().__init__(max_bytes, lambda array: array.nbytes)

    def put(self, key, value: np.ndarray) -> None:
        value = np.array(value, copy=True)
        value.setflags(write=False)
        super().put(key, value)


_SCHEMA = (
    "CREATE TABLE sk_a2_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE sk_a2_size (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL)",
    "INSERT INTO sk_a2_size VALUES (0, 0)",
    "CREATE TABLE sk_a2_entries (key TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL,"
    " checksum BLOB NOT NULL, size INTEGER NOT NULL, used REAL NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX sk_a2_entries_used ON sk_a2_entries (used, size)",
    "CREATE TRIGGER sk_a2_added AFTER INSERT ON sk_a2_entries"
    " BEGIN UPDATE sk_a2_size SET bytes = bytes + NEW.size; END",
    "CREATE TRIGGER sk_a2_removed AFTER DELETE ON sk_a2_entries"
    " BEGIN UPDATE sk_a2_size SET bytes = bytes - OLD.size; END",
    "CREATE TRIGGER sk_a2_resized AFTER UPDATE OF size ON sk_a2_entries"
    " BEGIN UPDATE sk_a2_size SET bytes = bytes - OLD.size + NEW.size; END",
)
_UPSERT = (
    "INSERT INTO sk_a2_entries (key, dtype, shape, checksum, size, used, data)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET dtype = excluded.dtype,"
    " shape = excluded.shape, checksum = excluded.checksum, size = excluded.size,"
    " used = excluded.used, data = excluded.data"
)
# the newest entries whose sizes sum to at most the target are kept
_PRUNE = (
    "DELETE FROM sk_a2_entries WHERE rowid IN (SELECT rowid FROM (SELECT rowid, SUM(size) OVER"
    " (ORDER BY used DESC, rowid DESC) AS kept FROM sk_a2_entries) WHERE kept > ?)"
)


def _checksum(key: str, dtype: str, shape: str, data: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (key.encode(), dtype.encode(), shape.encode()):
        h.update(len(part).to_bytes(4, "little"))
        h.update(part)
    h.update(data)
    return h.digest()


def _encode(key: str, value) -> tuple | None:
    """A store row for ``value``; None (not stored) if it holds NaN or inf."""
    a = np.ascontiguousarray(value)
    if a.dtype.kind not in _KINDS:
        raise TypeError(f"a disk cache stores numeric arrays, not dtype {a.dtype}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return None
    dtype, shape, data = a.dtype.str, ",".join(map(str, a.shape)), a.tobytes()
    return key, dtype, shape, _checksum(key, dtype, shape, data), len(data), time.time(), data


def _decode(key, dtype, shape, checksum, data):
    """The array of a store row, or None where anything about it is wrong."""
    if not all(isinstance(v, str) for v in (key, dtype, shape)) or not isinstance(data, bytes):
        return None
    if checksum != _checksum(key, dtype, shape, data):
        return None
    try:
        dt = np.dtype(dtype)
        dims = tuple(int(s) for s in shape.split(",")) if shape else ()
    except (TypeError, ValueError):
        return None
    if dt.kind not in _KINDS or min(dims, default=0) < 0 or dt.itemsize * math.prod(dims) != len(
            data):
        return None
    value = np.frombuffer(data, dtype=dt).reshape(dims)
    if dt.kind == "f" and not np.isfinite(value).all():
        return None
    return value


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def is_network_filesystem(path) -> bool:
    """Whether ``path`` lies on a network or cluster file system (Linux: from
    ``/proc/self/mountinfo``; False where that cannot be read)."""
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    best, fstype = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = _unescape(fields[4])
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > best:
            best, fstype = len(mount), right.split()[0]
    return fstype in _NETWORK_FILESYSTEMS


class _Store:
    """This process's connection to one store file."""

    def __init__(self, path: Path, conn):
        self.path, self.conn, self.pid = path, conn, os.getpid()
        self.ident = _file_identity(path)
        self.lock = threading.RLock()
        self.writes = 0
        self.touched: dict = {}
        self.closed = False

    def close(self):
        with self.lock:
            self.closed = True
            self.conn.close()


_STORES: dict = {}  # (pid, path) -> _Store; a forked child never uses (nor closes) its parent's
_STORES_LOCK = threading.Lock()


def _reset_after_fork():
    global _STORES_LOCK
    _STORES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _file_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _refuse_links(path: Path) -> None:
    """ValueError if the store's file or a side file of it is a symbolic link, or if something
    other than a file is where the store belongs."""
    for p in (path, *(path.with_name(path.name + s) for s in _SIDE_SUFFIXES)):
        if p.is_symlink():
            raise ValueError(
                f"cache: {str(p)!r} is a symbolic link; the cache never reads or writes through "
                "one. Remove the link (the cache creates its own file there), or pass another "
                "folder as cache="
            )
    if path.exists() and not path.is_file():
        raise ValueError(
            f"cache: {str(path)!r}, where the cache keeps its database, is not a file; the "
            "cache never deletes what it did not write: move it away, or pass another folder "
            "as cache="
        )


def _not_a_store(path: Path, why) -> ValueError:
    return ValueError(
        f"cache: {str(path)!r} is not an sk_a2 cache database ({why}); the cache never deletes "
        "a file it cannot prove it wrote: move or remove that file, or pass another folder as "
        "cache="
    )


def _tables(conn) -> set:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@contextlib.contextmanager
def _write(conn):
    """One write transaction (taken at once, so two writers never deadlock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _prepare(conn, path: Path) -> None:
    """Create the schema in an empty database, check that a non-empty one is a store of this
    version, and set the journal mode."""
    if not _tables(conn):
        conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        with _write(conn):
            if not _tables(conn):  # another process may have made it meanwhile
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany("INSERT INTO sk_a2_meta VALUES (?, ?)",
                                 [("magic", _STORE_MAGIC), ("version", _STORE_VERSION)])
    try:
        meta = dict(conn.execute("SELECT name, value FROM sk_a2_meta").fetchall())
    except sqlite3.OperationalError:
        meta = {}
    if meta.get("magic") != _STORE_MAGIC:
        raise _not_a_store(path, "it holds no sk_a2 cache metadata")
    if meta.get("version") != _STORE_VERSION:
        raise ValueError(
            f"cache: {str(path)!r} is an sk_a2 cache of store version {meta.get('version')!r}, "
            f"which this version of sk_a2 (store version {_STORE_VERSION}) cannot use; pass "
            "another folder as cache="
        )
    mode = "DELETE" if is_network_filesystem(path.parent) else "WAL"
    conn.execute(f"PRAGMA journal_mode = {mode}").fetchall()
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_PAGES}").fetchall()


def _open_store(path: Path) -> _Store:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise ValueError(
            f"cache: {str(path)!r} cannot be opened ({getattr(exc, 'strerror', None) or exc}); "
            "pass a writable folder as cache= (or None)"
        ) from None
    try:
        _prepare(conn, path)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.OperationalError) and _busy(exc):
            raise ValueError(
                f"cache: {str(path)!r} stayed locked by another process for "
                f"{_BUSY_TIMEOUT_S:.0f} s; retry, or pass another folder as cache="
            ) from None
        if isinstance(exc, sqlite3.Error):
            raise _not_a_store(path, f"SQLite: {exc}") from None
        raise
    return _Store(path, conn)


def _store_for(path: Path) -> _Store:
    """This process's open, checked connection to the store at ``path`` (opened again when the
    file was replaced or removed)."""
    _refuse_links(path)
    key = (os.getpid(), str(path))
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is not None and not store.closed and store.ident is not None \
                and store.ident == _file_identity(path):
            return store
        fresh = _open_store(path)
        if store is not None:
            store.close()
        _STORES[key] = fresh
        return fresh


def _busy(exc) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class DiskCache:
    """Arrays in one SQLite database in ``directory``, checksummed, bounded in total size.

    Parameters
    ----------
    directory : str or path-like
        The folder of the store, ``directory / STORE_NAME``; nothing else in it is touched.
    max_bytes : int, default=10 GiB
        When the entries' data grow past it, the least recently used entries are deleted.

    Notes
    -----
    See the module's documentation: one database file the cache alone owns, a checksum per
    entry checked on every read (damaged entries are deleted and recomputed with one
    :class:`CacheWarning`), atomic concurrent writes, one connection per process, LRU pruning
    inside the database. :meth:`open` (called by :func:`resolve_cache`) refuses, with a
    ``ValueError``, a file at the store's path that is not a store, and symbolic links.
    """

    def __init__(self, directory, max_bytes: int = 10 * 2**30):
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        self._store = None
        self._warned: set = set()

    @property
    def path(self) -> Path:
        """The store's database file."""
        return self.directory / STORE_NAME

    def __getstate__(self):
        return {"directory": self.directory, "max_bytes": self.max_bytes}

    def __setstate__(self, state):
        self.__init__(state["directory"], state["max_bytes"])

    def __repr__(self):
        return f"DiskCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def open(self) -> DiskCache:
        """Open (creating it if needed) and check the store; returns ``self``.

        Raises
        ------
        ValueError
            If a file at :attr:`path` is not an sk_a2 store (or of another store version),
            something other than a file is there, or it or a side file is a symbolic link.
        """
        self._store = _store_for(self.path)
        return self

    def close(self) -> None:
        """Close this process's connection to the store (a later use opens it again)."""
        with _STORES_LOCK:
            store = _STORES.pop((os.getpid(), str(self.path)), None)
        if store is not None:
            store.close()
        self._store = None

    def _connection(self) -> _Store:
        store = self._store
        if store is None or store.closed or store.pid != os.getpid():
            store = self._store = _store_for(self.path)
        return store

    def _run(self, fn, default):
        """``fn(store)`` under the connection's lock, retried while another process holds the
        database; an SQLite error gives ``default`` (and one :class:`CacheWarning`)."""
        store = self._connection()
        for attempt in range(_RETRIES):
            try:
                with store.lock:
                    return fn(store)
            except sqlite3.OperationalError as exc:
                if _busy(exc) and attempt + 1 < _RETRIES:
                    time.sleep(0.05 * 2**attempt)
                    continue
                self._warn("store", exc)
            except sqlite3.Error as exc:
                self._warn("store", exc)
            return default
        return default

    def _warn(self, kind, detail=None) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        text = {
            "damaged": "entries whose data do not match their checksum, or hold NaN or inf, were "
                       "deleted from it and are recomputed",
            "store": f"cannot be used (SQLite: {detail}); results are recomputed and may not "
                     "be stored. The file is left in place: delete it to start an empty cache, "
                     "or pass another folder as cache=",
        }[kind]
        warnings.warn(f"cache {str(self.path)!r}: {text}", CacheWarning, stacklevel=4)

    def __len__(self):
        return self._run(lambda s: s.conn.execute(
            "SELECT COUNT(*) FROM sk_a2_entries").fetchone()[0], 0)

    def get(self, key):
        """The array stored under ``key`` (read-only), or None."""
        return self.get_many([key])[0]

    def get_many(self, keys) -> list:
        """The arrays stored under ``keys`` (None where missing or damaged), in order."""
        keys = list(keys)
        return self._run(lambda store: self._fetch(store, keys), [None] * len(keys))

    def _fetch(self, store, keys) -> list:
        found, bad, now = {}, [], time.time()
        for i in range(0, len(keys), 500):
            chunk = list(dict.fromkeys(keys[i:i + 500]))
            query = ("SELECT key, dtype, shape, checksum, used, data FROM sk_a2_entries "
                     f"WHERE key IN ({', '.join('?' * len(chunk))})")
            for key, dtype, shape, checksum, used, data in store.conn.execute(query, chunk):
                value = _decode(key, dtype, shape, checksum, data)
                if value is None:
                    bad.append((key, checksum))
                    continue
                found[key] = value
                if not isinstance(used, (int, float)) or used < now - _TOUCH_AFTER_S:
                    store.touched[key] = now
        if bad:
            self._warn("damaged")
            with contextlib.suppress(sqlite3.Error), _write(store.conn) as conn:
                conn.executemany("DELETE FROM sk_a2_entries WHERE key = ? AND checksum IS ?", bad)
        if len(store.touched) >= _TOUCH_BATCH:
            with contextlib.suppress(sqlite3.Error), _write(store.conn) as conn:
                _flush_touches(store, conn)
        return [found.get(k) for k in keys]

    def put(self, key, value: np.ndarray) -> None:
        """Store ``value`` under ``key`` (not stored if it holds NaN or inf)."""
        self.put_many([(key, value)])

    def put_many(self, items) -> None:
        """Store each ``(key, value)`` of ``items``, all in one transaction."""
        rows = [row for row in (_encode(k, v) for k, v in items) if row is not None]
        if not rows:
            return

        def write(store):
            with _write(store.conn) as conn:
                conn.executemany(_UPSERT, rows)
                _flush_touches(store, conn)
            store.writes += len(rows)
            if store.writes < _PRUNE_EVERY:
                return False
            store.writes = 0
            return True

        if self._run(write, False):
            self.prune()

    def size_bytes(self) -> int:
        """Bytes of the entries' data (the database file is somewhat larger: keys, index)."""
        return self._run(lambda s: int(s.conn.execute(
            "SELECT bytes FROM sk_a2_size").fetchone()[0]), 0)

    def prune(self) -> None:
        """Past ``max_bytes``, delete the least recently used entries down to 90 % of it.

        Only rows of the store are deleted; no other file is ever touched.
        """
        def run(store):
            total = store.conn.execute("SELECT bytes FROM sk_a2_size").fetchone()[0]
            if total <= self.max_bytes:
                return
            with _write(store.conn) as conn:
                conn.execute(_PRUNE, (int(self.max_bytes * _PRUNE_TO),))
            store.conn.execute("PRAGMA incremental_vacuum").fetchall()

        self._run(run, None)


def _flush_touches(store, conn) -> None:
    """Write the last-used times of the entries hit since the last write."""
    if store.touched:
        touched, store.touched = store.touched, {}
        conn.executemany("UPDATE sk_a2_entries SET used = ? WHERE key = ?",
                         [(t, k) for k, t in touched.items()])


def check_cache_dir(directory) -> Path:
    """Check that ``directory`` can hold a disk cache (creating it) and return it: the package's
    one path rule for the folders it writes (:func:`sk_a2.outputs.check_output_dir`).

    Raises
    ------
    ValueError
        If the path is empty, is a file, cannot be created or is not writable.
    """
    return check_output_dir(directory, "cache", otherwise=("'memory'", "None"))


_MEMORY: MemoryCache | None = None
_MEMORY_LOCK = threading.Lock()


def memory_cache() -> MemoryCache:
    """The process-wide memory cache."""
    global _MEMORY
    with _MEMORY_LOCK:
        if _MEMORY is None:
            _MEMORY = MemoryCache(int(os.environ.get("SK_A2_MEMORY_CACHE_BYTES", 2 * 2**30)))
        return _MEMORY


class EntryLayout:
    """How one row of a cached computation is packed into one flat cache entry.

    Parameters
    ----------
    dtype : numpy dtype
        dtype of the stored entry.
    **fields : (shape, dtype)
        The row's fields, in storage order: each ``name=(shape, dtype)``, where ``dtype`` is the
        dtype the field is read back as.

    Examples
    --------
    >>> layout = EntryLayout(np.float32, size=((2,), np.int64), value=((3,), np.float32))
    >>> layout.pack(size=[4, 5], value=[0.5, 1, 2]).tolist()
    [4.0, 5.0, 0.5, 1.0, 2.0]
    """

    def __init__(self, dtype, **fields):
        self.dtype = np.dtype(dtype)
        self.fields = {name: (tuple(shape), np.dtype(dt)) for name, (shape, dt) in fields.items()}
        self.size = sum(int(np.prod(shape)) for shape, _ in self.fields.values())

    def empty(self, n: int) -> dict:
        """Uninitialised arrays for ``n`` rows, one per field."""
        return {name: np.empty((n, *shape), dtype=dt) for name, (shape, dt) in self.fields.items()}

    def pack(self, **values) -> np.ndarray:
        """One row's fields (by name) as a flat entry."""
        parts = [np.asarray(values[name]).ravel() for name in self.fields]
        return np.concatenate(parts).astype(self.dtype)

    def unpack_into(self, entry, out: dict, row: int) -> bool:
        """Write ``entry`` into row ``row`` of ``out``; False (nothing written) if it does not fit
        this layout."""
        if entry is None or entry.shape != (self.size,):
            return False
        start = 0
        for name, (shape, _) in self.fields.items():
            stop = start + int(np.prod(shape))
            out[name][row] = entry[start:stop].reshape(shape)
            start = stop
        return True


def cached_rows(layout: EntryLayout, n: int, compute, cache=None, keys=None) -> dict:
    """Rows ``0..n-1`` of a computation, read from ``cache`` where known, else computed and stored.

    Parameters
    ----------
    layout : EntryLayout
        The fields of one row and how an entry packs them.
    n : int
        Number of rows.
    compute : callable
        ``compute(todo)`` gets the int64 indices of the rows not found in the cache (all rows
        without a cache) and yields ``(rows, values)`` pairs, ``values`` a dict of arrays with one
        leading entry per index of ``rows``; each pair is stored as soon as it is yielded.
    cache : cache object or None
        As returned by :func:`resolve_cache`.
    keys : sequence of str, optional
        The cache key of each row (needed with a cache).

    Returns
    -------
    dict
        Each field of ``layout``, an array with ``n`` rows.
    """
    out = layout.empty(n)
    todo = np.arange(n, dtype=np.int64)
    if cache is not None:
        found = [layout.unpack_into(e, out, i) for i, e in enumerate(_read(cache, keys))]
        todo = np.flatnonzero(~np.asarray(found, dtype=bool).reshape(n)).astype(np.int64)
    if not len(todo):
        return out
    for rows, values in compute(todo):
        for name in layout.fields:
            out[name][rows] = values[name]
        if cache is not None:
            store_rows(layout, cache, [keys[r] for r in rows], values)
    return out


def store_rows(layout: EntryLayout, cache, keys, values) -> None:
    """Store rows computed alongside a :func:`cached_rows` computation, without reading first.

    For rows that one computation yields for free beside those asked for (the maps of the
    blocks a forward passed on its way to the block asked for): packed as :func:`cached_rows`
    packs them, in one write.

    Parameters
    ----------
    layout : EntryLayout
    cache : cache object
    keys : sequence of str
        One per row.
    values : dict
        Each field of ``layout``, one leading entry per key.
    """
    items = [(key, layout.pack(**{name: v[j] for name, v in values.items()}))
             for j, key in enumerate(keys)]
    put_many = getattr(cache, "put_many", None)
    if put_many is not None:
        put_many(items)
    else:
        for key, entry in items:
            cache.put(key, entry)


def _read(cache, keys) -> list:
    """The entries of ``keys`` (None where missing); an entry holding NaN or inf is a miss, with
    one :class:`CacheWarning`."""
    get_many = getattr(cache, "get_many", None)
    entries = get_many(keys) if get_many is not None else [cache.get(key) for key in keys]
    bad = [i for i, e in enumerate(entries)
           if e is not None and e.dtype.kind == "f" and not np.isfinite(e).all()]
    for i in bad:
        entries[i] = None
    if bad:
        warnings.warn(f"cache: {len(bad)} entries holding NaN or inf were ignored; they are "
                      "recomputed", CacheWarning, stacklevel=3)
    return entries


def _cache_keyword(text: str):
    """``"memory"`` for the keyword in any case; ValueError for a bare word that looks like a
    mistyped keyword (a folder of that name is given as ``"./word"``); else None (a folder)."""
    word = text.strip().lower()
    if word == "memory":
        return "memory"
    if not word.isalpha():
        return None
    folder = repr("./" + text.strip())
    if word in ("none", "null"):
        raise ValueError(f"cache={text!r} is a string: pass None (not a string) for no cache, "
                         f"or {folder} for a folder of that name")
    if (len(word) >= 3 and "memory".startswith(word)) or \
            difflib.SequenceMatcher(None, word, "memory").ratio() >= 0.8:
        raise ValueError(f"cache={text!r}: did you mean 'memory' (the in-process cache)? For a "
                         f"folder of that name, pass {folder}")
    return None


def resolve_cache(cache):
    """``None``, ``"memory"`` (any case) or a directory → a cache object (or None).

    A directory is checked (and created) here and its store opened and checked, so that a bad
    location is reported before any model work: see :func:`check_cache_dir` and
    :meth:`DiskCache.open`.
    """
    if cache is None:
        return None
    if isinstance(cache, str) and _cache_keyword(cache) == "memory":
        return memory_cache()
    if isinstance(cache, (str, os.PathLike)):
        return DiskCache(check_cache_dir(cache)).open()
    if isinstance(cache, DiskCache):
        check_cache_dir(cache.directory)
        return cache.open()
    if isinstance(cache, MemoryCache):
        return cache
    raise ValueError(f"cache must be None, 'memory' or a directory path, got {cache!r}")
