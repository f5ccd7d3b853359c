"""Outputs written to memory-mapped ``.npy`` files, for results larger than memory."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

__all__ = ["open_output"]


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
