"""Outputs written to memory-mapped ``.npy`` files, for results larger than memory.

A result file is written under a name that says it is partial, ``<prefix>-<hex>.npy.partial``,
and renamed (``os.replace``, atomic) to ``<prefix>-<hex>.npy`` only once every row is written;
any failure (Ctrl-C included) removes it, so a file with the final name is always complete and a
killed process leaves only a partial name behind. :func:`check_output_dir` is the one rule for
the folders the package writes into (``output_dir``, a disk ``cache``, the CLI's ``--out``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

import numpy as np

__all__ = ["PARTIAL_SUFFIX", "OutputFile", "check_output_dir", "open_output", "write_file_rows",
           "write_rows"]

#: Suffix of a result file still being written (or left by a killed process).
PARTIAL_SUFFIX = ".partial"


def check_output_dir(path, name="output_dir", *, otherwise=()) -> Path:
    """Check that ``path`` can be a folder the package writes into, create it and return it.

    The rule: ``~`` is expanded; an empty or blank path is refused (it would write into the
    working directory); an existing file is refused; a missing folder is created (with its
    parents); the folder must be writable (a probe file is made and removed).

    Parameters
    ----------
    path : str or path-like
    name : str, default="output_dir"
        What the user set, for the messages: a parameter (``"output_dir"``, ``"cache"``) or a
        command-line option (``"--out"``, starting with ``-``).
    otherwise : sequence of str, default=()
        The other accepted values named in the messages' advice, e.g. ``("None",)``.

    Returns
    -------
    pathlib.Path
        The folder, ``~`` expanded.

    Raises
    ------
    ValueError
        If the path is empty, is a file, cannot be created or is not writable.
    """
    text = os.fsdecode(path)
    alternatives = _advice(otherwise)
    if not text.strip():
        given = f"{name} {text!r}" if name.startswith("-") else f"{name}={text!r}"
        raise ValueError(f"{given} names no folder (it would write into the current directory); "
                         f"pass a folder path{alternatives}")
    folder = Path(text).expanduser()
    where = f"{name} folder {str(folder)!r}"
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{where} is a file, not a folder; pass a folder path{alternatives}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
    except OSError as exc:
        raise ValueError(f"{where} cannot be written ({exc.strerror or exc}); pass a writable "
                         f"folder{alternatives}") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def _advice(otherwise):
    """``" or None"``, ``", 'memory', or None"``: the alternatives after "a folder path"."""
    otherwise = list(otherwise)
    if not otherwise:
        return ""
    if len(otherwise) == 1:
        return f" or {otherwise[0]}"
    return ", " + ", ".join(otherwise[:-1]) + f", or {otherwise[-1]}"


class OutputFile:
    """A new result file in a folder, filled under a partial name; a context manager.

    Inside the ``with`` block, ``array`` is a writable :class:`numpy.memmap` of
    ``<prefix>-<hex>.npy.partial``. Leaving the block normally flushes it, renames it to
    ``path`` (``<prefix>-<hex>.npy``, atomically) and sets ``result``, the final file opened
    ``r+``; leaving on any exception (``KeyboardInterrupt`` too) removes the partial file.
    """

    def __init__(self, folder, shape, dtype, prefix="embeddings"):
        self.path = Path(folder) / f"{prefix}-{uuid.uuid4().hex}.npy"
        self.partial = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.shape, self.dtype = tuple(shape), dtype
        self.array = self.result = None

    def __enter__(self):
        try:
            self.array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=self.dtype,
                                                   shape=self.shape)
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._discard()
            return False
        try:
            self.array.flush()
            self.array = None  # the partial file's mapping, dropped before the rename
            os.replace(self.partial, self.path)
        except BaseException:
            self._discard()
            raise
        self.result = np.load(self.path, mmap_mode="r+")
        return False

    def _discard(self):
        self.array = None
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


def open_output(output_dir, shape, dtype, prefix="embeddings") -> OutputFile:
    """A new :class:`OutputFile` of ``shape`` and ``dtype`` in ``output_dir`` (checked and
    created by :func:`check_output_dir`); use it as a context manager::

        with open_output(folder, shape, np.float32) as file:
            file.array[...] = rows  # or write_rows(file.array, idx, rows)
        result = file.result        # np.memmap of the complete file; result.filename: its path

    Each call makes a new file (``<prefix>-<random hex>.npy``), so runs never overwrite each
    other's outputs; removing old ones is the caller's business.
    """
    return OutputFile(check_output_dir(output_dir), shape, dtype, prefix)


def write_rows(out, idx, rows) -> None:
    """``out[idx] = rows``; into a memory-mapped ``.npy`` (``out`` an :class:`OutputFile`'s
    ``array``) through file writes (:func:`write_file_rows`), so the written pages stay out of
    this process's resident memory (stores through the mapping would keep them resident)."""
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
