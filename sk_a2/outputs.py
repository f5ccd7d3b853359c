"""Outputs written to memory-mapped ``.npy`` files, for results larger than memory."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

__all__ = ["open_output", "write_file_rows", "write_rows"]


def open_output(output_dir, shape, dtype, prefix="embeddings") -> np.memmap:
    """A new ``.npy`` file of ``shape`` and ``dtype`` in ``output_dir`` (created if missing),
    opened as a writable :class:`numpy.memmap`; its path is ``result.filename``.

    Each call makes a new file (``<prefix>-<random hex>.npy``), so runs never overwrite each
    other's outputs; removing old ones is the caller's business.
    """
    directory = Path(output_dir)
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"output_dir {str(directory)!r} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{prefix}-{uuid.uuid4().hex}.npy"
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(shape))


def write_rows(out, idx, rows) -> None:
    """``out[idx] = rows``; into a memory-mapped ``.npy`` (``out`` from :func:`open_output`)
    through file writes (:func:`write_file_rows`), so the written pages stay out of this
    process's resident memory (stores through the mapping would keep them resident)."""
    if isinstance(out, np.memmap) and out.filename:
        write_file_rows(out.filename, out.offset, out.dtype, idx, rows)
    else:
        out[idx] = rows


def write_file_rows(filename, offset, dtype, idx, rows) -> None:
    """Write ``rows`` (of ``dtype``) at row positions ``idx`` of the array stored from byte
    ``offset`` of ``filename``; each run of consecutive positions in one write."""
    idx = np.asarray(idx, dtype=np.int64)
    rows = np.ascontiguousarray(rows, dtype=dtype).reshape(len(idx), -1)
    row_bytes = rows.shape[1] * np.dtype(dtype).itemsize
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1
    fd = os.open(filename, os.O_WRONLY)
    try:
        for run in np.split(np.arange(len(idx)), breaks):
            if len(run):
                os.pwrite(fd, rows[run[0]:run[-1] + 1].tobytes(),
                          offset + int(idx[run[0]]) * row_bytes)
    finally:
        os.close(fd)
