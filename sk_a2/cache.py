"""Content-addressed caches for attention maps and crop embeddings.

Every estimator with a ``cache`` parameter accepts:

``None``
    No caching (the default).
``"memory"``
    One process-wide, size-bounded LRU store (``SK_A2_MEMORY_CACHE_BYTES``, default 2 GiB), shared
    by every estimator of the process, so clones made by ``GridSearchCV`` reuse each other's work.
a directory (str or path-like)
    A :class:`DiskCache` there: entries survive the process and are shared between processes.
    The folder is created if needed and must be writable; ``""``, a file, or a folder that
    cannot be created or written is refused when the estimator is fitted and before every
    model pass, not after the work (:func:`check_cache_dir`).

Keys are digests of the image *content* (file bytes, pixels) and of every parameter that changes
the result (model and weights, image size, layer and head aggregation for maps; model, image size
and box for embeddings), so a stale entry cannot be returned. Entries carry their own key: a
corrupt or foreign file is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

__all__ = [
    "DiskCache",
    "EntryLayout",
    "MemoryCache",
    "cached_rows",
    "check_cache_dir",
    "digest",
    "file_digest",
    "image_key",
    "model_key",
    "resolve_cache",
]

_MAGIC = b"SKA2CACHE1"


def digest(*parts) -> str:
    """A hex digest of ``repr`` of the parts (strings, numbers, tuples of them)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).hexdigest()


def image_key(source) -> str:
    """Digest of an image source's content: a file's bytes, or an in-memory image's
    :func:`~sk_a2.images.image_digest`."""
    from PIL import Image

    from .images import Decoded, image_digest

    if isinstance(source, Decoded):
        return source.key
    if isinstance(source, (np.ndarray, Image.Image)):
        return image_digest(source).hex()
    try:
        return "file:" + file_digest(source)
    except OSError:
        # unreadable: a key that is never stored, so the loader reports the real error
        return "unreadable:" + os.fspath(source)


_FILE_DIGESTS: dict = {}  # grows with the files seen: one short string each
_MODULE_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def file_digest(path) -> str:
    """Digest of a file's bytes, read once per (path, inode, size, mtime) in this process."""
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
                flat = t.detach().cpu().contiguous().reshape(-1)  # 0-d ones too (logit_scale)
                h.update(name.encode())
                h.update(flat.view(torch.uint8).numpy().data)
            _MODULE_DIGESTS[model] = "module:" + h.hexdigest()
        return _MODULE_DIGESTS[model]
    weights_id = None if weights is None else file_digest(weights)
    return digest("model", str(model), weights_id)


class MemoryCache:
    """A thread-safe LRU of NumPy arrays bounded in bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._data)

    def get(self, key):
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key, value: np.ndarray) -> None:
        value = np.array(value, copy=True)
        value.setflags(write=False)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._data[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes and len(self._data) > 1:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


class DiskCache:
    """Arrays in files under ``directory``, written atomically, bounded in total size.

    Parameters
    ----------
    directory : str or path-like
    max_bytes : int, default=10 GiB
        When the directory grows past it, the least recently written entries are removed.

    Notes
    -----
    An entry is written to a temporary file in the same directory and moved into place with
    :func:`os.replace`, so a killed writer leaves no partial entry and concurrent processes see
    either nothing or a whole entry. Each file starts with a magic string and its own key; a file
    that fails to parse or carries another key is ignored (and recomputed).
    """

    def __init__(self, directory, max_bytes: int = 10 * 2**30):
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        self._writes = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, key):
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                if f.read(len(_MAGIC)) != _MAGIC or f.read(len(key)).decode("ascii") != key:
                    return None
                value = np.load(f, allow_pickle=False)
        except (OSError, ValueError, UnicodeDecodeError, EOFError):
            return None
        return value

    def put(self, key, value: np.ndarray) -> None:
        path = self._path(key)
        _clear_corrupt_slot(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        buf.write(_MAGIC)
        buf.write(key.encode("ascii"))
        np.save(buf, np.asarray(value), allow_pickle=False)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(buf.getvalue())
            os.replace(tmp, path)
        except IsADirectoryError:  # a folder came back in the entry's place: leave it unstored
            os.unlink(tmp)
            return
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._writes += 1
        if self._writes % 256 == 0:
            self.prune()

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob("*/*.npy"))

    def prune(self) -> None:
        """Remove the oldest entries until the directory is within ``max_bytes``."""
        entries = []
        for p in self.directory.glob("*/*.npy"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in entries)
        for _, size, p in sorted(entries):
            if total <= self.max_bytes:
                break
            try:
                p.unlink()
                total -= size
            except OSError:
                pass


def _clear_corrupt_slot(path: Path) -> None:
    """Remove what cannot be an entry where one belongs: a folder at the entry's path, a file at
    its sub-folder's path (like a corrupt entry, it is recomputed and replaced)."""
    if path.parent.exists() and not path.parent.is_dir():
        path.parent.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def check_cache_dir(directory) -> Path:
    """Check that ``directory`` can hold a disk cache (creating it) and return it.

    Raises
    ------
    ValueError
        If the path is empty, is a file, cannot be created or is not writable.
    """
    text = os.fspath(directory)
    if not str(text).strip():
        raise ValueError(
            "cache='' names no folder (it would fill the current directory); pass None for no "
            "cache, 'memory', or a folder path"
        )
    path = Path(text).expanduser()
    where = f"cache folder {str(path)!r}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{where} is a file, not a folder; pass a folder path (or None)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
    except OSError as exc:
        raise ValueError(
            f"{where} cannot be written ({exc.strerror or exc}); pass a writable folder, "
            "'memory', or None"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


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
        found = [layout.unpack_into(cache.get(key), out, i) for i, key in enumerate(keys)]
        todo = np.flatnonzero(~np.asarray(found, dtype=bool).reshape(n)).astype(np.int64)
    if not len(todo):
        return out
    for rows, values in compute(todo):
        for name in layout.fields:
            out[name][rows] = values[name]
        if cache is not None:
            for j, r in enumerate(rows):
                cache.put(keys[r], layout.pack(**{name: v[j] for name, v in values.items()}))
    return out


def resolve_cache(cache):
    """``None``, ``"memory"`` or a directory → a cache object (or None).

    A directory is checked (and created) here, so that a bad location is reported before any
    model work: see :func:`check_cache_dir`.
    """
    if cache is None:
        return None
    if isinstance(cache, str) and cache == "memory":
        return memory_cache()
    if isinstance(cache, (str, os.PathLike)):
        return DiskCache(check_cache_dir(cache))
    if isinstance(cache, (MemoryCache, DiskCache)):
        return cache
    raise ValueError(f"cache must be None, 'memory' or a directory path, got {cache!r}")
