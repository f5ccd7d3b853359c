"""The batched data path: a process-lifetime pool of decoding threads, batches prefetched ahead
of the model, uint8 transfers from pinned memory.

* **Threads, started once.** PIL's decoding and resizing release the GIL, so decoding runs in a
  thread pool that lives as long as the process (until :func:`sk_a2.models.clear_model_cache`
  shuts it down): a second ``transform`` starts no thread and no process. ``num_workers``
  counts those threads; ``"auto"`` is ``min(8, CPU cores)`` on CUDA and 1 on the CPU (one
  thread decoding while the model's own threads compute); 0 decodes in the calling thread.
* **Prefetching.** While the model runs on batch ``i``, batches ``i + 1`` and ``i + 2`` are
  being decoded (:data:`PREFETCH`).
* **Transfers.** Batches travel as uint8 (a quarter of float32's bytes), from pinned memory on
  CUDA, and become float on the device.
* **Decoded once.** With the images' content keys, pixels already in the
  :mod:`~sk_a2.pixel_store` (put there by an earlier stage of the same pass) are taken from it
  instead of being decoded again, and what is decoded is put there.
* **Device decoding.** With ``decoder="cuda"`` (:mod:`sk_a2.decode`), the threads only read the
  bytes of JPEG files, which are decoded and resized on the device in one batched call.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from . import images
from .decode import decode_jpeg_batch, device_jpeg, resolve_decoder
from .images import position
from .pixel_store import pixel_store

#: Batches decoded ahead of the one the model is computing.
PREFETCH = 2

_POOLS: dict = {}  # threads -> ThreadPoolExecutor, for the life of the process
_POOLS_LOCK = threading.Lock()


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` decoding threads (made on first use, then kept)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads,
                                                        thread_name_prefix="sk_a2-decode")
        return pool


def shutdown_pools() -> None:
    """Stop every decoding thread (a later pass starts new ones)."""
    with _POOLS_LOCK:
        pools = list(_POOLS.values())
        _POOLS.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _forget_pools_after_fork():
    global _POOLS_LOCK
    _POOLS_LOCK = threading.Lock()
    _POOLS.clear()  # a forked child has none of its parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def resolve_num_workers(num_workers, device, n_images=None, batch_size=None) -> int:
    """Decoding threads for ``num_workers``: ``"auto"`` is ``min(8, CPU cores)`` on CUDA and 1
    on the CPU; an int is taken as is (0: decode in the calling thread)."""
    if num_workers != "auto":
        return int(num_workers)
    if device.type == "cuda":
        return max(1, min(8, os.cpu_count() or 1))
    return 1


def prefetched(jobs, threads, ahead=PREFETCH):
    """Run ``jobs`` (an iterable of batches, each a list of zero-argument callables) in the
    decoding pool and yield each batch's list of results, in order, with ``ahead`` more batches
    in flight. ``threads=0`` runs them here, one batch at a time. An exception of a callable is
    raised here, and the batches still queued are cancelled."""
    if threads <= 0:
        for job in jobs:
            yield [fn() for fn in job]
        return
    pool = decode_pool(threads)
    jobs = iter(jobs)
    window = deque()

    def submit():
        job = next(jobs, None)
        if job is not None:
            window.append([pool.submit(fn) for fn in job])

    try:
        for _ in range(ahead + 1):
            submit()
        while window:
            futures = window.popleft()
            results = [f.result() for f in futures]
            submit()
            yield results
    finally:
        for futures in window:
            for f in futures:
                f.cancel()


def _host_image(sources, i, size, key, store):
    """Decode and resize ``sources[i]`` on the CPU (or take it from ``store``)."""
    if store is not None and key is not None:
        hit = store.get(key, size)
        if hit is not None:
            return hit
    pixels, hw = images.load_resized(sources[i], size, index=position(sources, i))
    value = (torch.from_numpy(np.array(pixels, copy=True)), tuple(int(v) for v in hw))
    if store is not None and key is not None:
        store.put(key, size, *value)
    return value


def _read_jpeg(sources, i, size, key, store):
    """What the device decoder needs of ``sources[i]``: stored pixels, the bytes of a JPEG
    file it can decode, or (not such a file) the CPU decode."""
    if store is not None and key is not None:
        hit = store.get(key, size)
        if hit is not None:
            return hit
    data = device_jpeg(sources[i], size)
    return data if data is not None else _host_image(sources, i, size, key, store)


def _batch_job(sources, rows, size, keys, store, decoder):
    read = _read_jpeg if decoder == "cuda" else _host_image
    return [lambda i=i: read(sources, i, size, None if keys is None else keys[i], store)
            for i in rows]


def _finish_device(results, sources, rows, size, keys, store, device):
    """Decode on ``device`` the entries of ``results`` that are JPEG bytes (in one batch); the
    ones it fails on are decoded on the CPU."""
    todo = [j for j, r in enumerate(results) if isinstance(r, bytes)]
    if not todo:
        return results
    decoded = decode_jpeg_batch([results[j] for j in todo], size, device)
    for j, value in zip(todo, decoded):
        key = None if keys is None else keys[rows[j]]
        if value is None:
            value = _host_image(sources, rows[j], size, key, store)
        elif store is not None and key is not None:
            store.put(key, size, *value)
        results[j] = value
    return results


def _to_device(results, size, device):
    """The batch as a float32 ``(B, 3, size, size)`` tensor in [0, 1] on ``device``: host
    pixels travel as uint8 (from pinned memory on CUDA)."""
    if device.type != "cuda":
        batch = torch.stack([p for p, _ in results]).to(device)
    else:
        batch = torch.empty((len(results), size, size, 3), dtype=torch.uint8, device=device)
        host = [j for j, (p, _) in enumerate(results) if p.device.type == "cpu"]
        if host:
            pinned = torch.empty((len(host), size, size, 3), dtype=torch.uint8, pin_memory=True)
            for k, j in enumerate(host):
                pinned[k] = results[j][0]
            batch[host] = pinned.to(device, non_blocking=True)
        for j, (p, _) in enumerate(results):
            if p.device.type != "cpu":
                batch[j] = p
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def iter_image_batches(sources, size, *, batch_size, num_workers, device, verbose=False, desc="",
                       keys=None, decoder="cpu"):
    """Yield ``(start, pixels, hw)`` batches.

    ``pixels`` is a float32 tensor (B, 3, size, size) in [0, 1] on ``device``; ``hw`` an int64
    array (B, 2) of original heights and widths. Decoding and resizing run in the process's
    decoding threads (``num_workers``, see :func:`resolve_num_workers`), up to :data:`PREFETCH`
    batches ahead of the model. With ``keys`` (each source's content key), images are taken from
    and put in the :func:`~sk_a2.pixel_store.pixel_store`. ``decoder`` is a ``decoder``
    parameter (:mod:`sk_a2.decode`).
    """
    n = len(sources)
    decoder = resolve_decoder(decoder, device)
    store = pixel_store() if keys is not None and pixel_store().max_bytes > 0 else None
    starts = range(0, n, batch_size)
    jobs = (_batch_job(sources, range(s, min(s + batch_size, n)), size, keys, store, decoder)
            for s in starts)
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=desc, unit="img", disable=not verbose) as progress:
        for start, results in zip(starts, prefetched(jobs, resolve_num_workers(num_workers,
                                                                               device))):
            rows = range(start, start + len(results))
            if decoder == "cuda":
                results = _finish_device(results, sources, rows, size, keys, store, device)
            hw = np.asarray([r[1] for r in results], dtype=np.int64).reshape(-1, 2)
            yield start, _to_device(results, size, device), hw
            progress.update(len(results))
