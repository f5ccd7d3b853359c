"""A small, process-wide store of decoded and resized images, so that each image is decoded once
per pass.

When :class:`~sk_a2.AttentionCropper` and :class:`~sk_a2.CropEmbedder` run back to back on the
same sources (a :class:`~sklearn.pipeline.Pipeline`, the ``sk-a2`` command, the protocol), the
cropper's loader puts every image it decodes here, resized to its ``image_size``, under the
image's content key (:func:`sk_a2.cache.image_key`, which travels with the
:class:`~sk_a2.CropSet` as ``image_keys``); the embedder's loader takes the pixels back instead of
decoding the file again when it needs the same size.

The store is bounded in bytes (``SK_A2_PIXEL_STORE_BYTES``, default 128 MiB: about 870 images at
224 px; ``0`` turns it off) and drops the least recently used images past it, so memory does not
grow with the number of images: a pass over more images than fit decodes the older ones again.
Keys are content keys, so an image changed between the two estimators is a miss, never stale
pixels. Pixels stay where they were made (host memory, or the GPU for images decoded there).
"""

from __future__ import annotations

import os
import threading

from .cache import BytesLRU

__all__ = ["PixelStore", "pixel_store"]

#: Default bound of the process-wide store, in bytes.
DEFAULT_BYTES = 128 * 2**20


class PixelStore:
    """A thread-safe LRU of ``(pixels, hw)`` pairs keyed by ``(content key, size)``, bounded in
    bytes.

    Parameters
    ----------
    max_bytes : int
        Bound on the bytes of the pixels kept; ``0`` keeps nothing.

    Examples
    --------
    >>> import torch
    >>> store = PixelStore(max_bytes=2 * 224 * 224 * 3)
    >>> store.put("key-a", 224, torch.zeros(224, 224, 3, dtype=torch.uint8), (480, 640))
    >>> store.get("key-a", 224)[1]
    (480, 640)
    >>> store.get("key-a", 112) is None  # another size is another entry
    True
    """

    def __init__(self, max_bytes: int):
        self._lru = BytesLRU(max_bytes, lambda value: value[0].numel() * value[0].element_size())

    def __len__(self):
        return len(self._lru)

    @property
    def max_bytes(self) -> int:
        """The bound, in bytes (``0``: the store keeps nothing)."""
        return self._lru.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._lru.max_bytes = int(value)

    @property
    def nbytes(self) -> int:
        """Bytes of the pixels kept."""
        return self._lru.nbytes

    def get(self, key, size):
        """The ``(pixels, hw)`` stored for ``key`` at ``size``, or None."""
        return self._lru.get((key, size))

    def put(self, key, size, pixels, hw) -> None:
        """Keep ``pixels`` (a ``(size, size, 3)`` uint8 tensor, not copied: it must not be
        written to afterwards) and the original ``hw`` of the image of ``key``; an image larger
        than the bound is not kept."""
        if pixels.numel() * pixels.element_size() <= self.max_bytes:
            self._lru.put((key, size), (pixels, tuple(int(v) for v in hw)))

    def clear(self) -> None:
        """Drop every image."""
        self._lru.clear()


_STORE: PixelStore | None = None
_STORE_LOCK = threading.Lock()


def pixel_store() -> PixelStore:
    """The process-wide store, bounded by ``SK_A2_PIXEL_STORE_BYTES`` (read when first used)."""
    global _STORE
    with _STORE_LOCK:
        if _STORE is None:
            _STORE = PixelStore(int(os.environ.get("SK_A2_PIXEL_STORE_BYTES", DEFAULT_BYTES)))
        return _STORE
