"""Local weights files (``weights=``): checked before any model is built, and fingerprinted.

A weights file is a state dict: a mapping of parameter names to tensors, saved as

* ``.safetensors`` (read with :mod:`safetensors`), or
* ``.pth`` / ``.pt`` / ``.bin`` with :func:`torch.save`, read back with
  ``torch.load(weights_only=True)`` -- so a pickle never runs code. The mapping may also sit under
  a ``"state_dict"``, ``"model"``, ``"state_dict_ema"``, ``"model_ema"`` or ``"teacher"`` (DINO,
  iBOT) key of a training checkpoint, which may also hold its ``argparse`` arguments.

:func:`check_weights_file` refuses anything else (a missing path, a folder, a device such as
``/dev/null``, an unreadable, empty or truncated file, text, a pickled list ...) with an error
naming the file and what was expected, before a model library reads it. The check opens the
file's header (safetensors) or memory-maps it (torch), so it is cheap, and is done once per file
version in a process.

:func:`weights_fingerprint` is the digest of the file's bytes that an estimator stores at
``fit`` time (``weights_digest_``), so that a pickled estimator notices when the file it names
was replaced: :func:`check_fingerprint` then refuses to run.

A backend that builds its models from a saved model folder (``hf:`` models, see
:mod:`sk_a2.backends.transformers`) also takes such a folder: ``config.json`` beside its weights
(``*.safetensors``, or ``pytorch_model.bin``), as ``save_pretrained`` writes it. Its
fingerprint covers every file directly inside it.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .cache import file_digest

__all__ = [
    "WEIGHTS_SUFFIXES",
    "check_fingerprint",
    "check_weights_file",
    "is_model_folder",
    "read_weights_file",
    "weights_fingerprint",
]

#: File name endings accepted for ``weights=``.
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "teacher")
_EXPECTED = "a state-dict file (a mapping of parameter names to tensors)"
_CHECKED: dict = {}  # (path, inode, size, mtime) of files whose content passed the check


def _stamp(path: Path, st) -> tuple:
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def is_model_folder(path) -> bool:
    """Whether ``path`` is a saved model folder: ``config.json`` and a weights file in it."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and any(
        p.is_file() and (p.suffix == ".safetensors" or p.name == "pytorch_model.bin")
        for p in path.iterdir()
    )


def _check_model_folder(path: Path, where: str) -> Path:
    if not is_model_folder(path):
        raise ValueError(
            f"{where} is a folder; expected {_EXPECTED}, or a saved model folder (config.json "
            "beside model.safetensors, as save_pretrained writes it) for an 'hf:' model"
        )
    for file in sorted(path.glob("*.safetensors")):
        _check_safetensors(file, f"weights file {str(file)!r}")
    return path.resolve()


def check_weights_file(weights) -> Path:
    """Check that ``weights`` names a readable state-dict file and return its absolute path.

    A saved model folder (``config.json`` beside ``*.safetensors``) is accepted too, for the
    backends that build a model from one; the model loader refuses it for the others.

    Parameters
    ----------
    weights : str or path-like
        The ``weights=`` parameter.

    Returns
    -------
    pathlib.Path
        The resolved path.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``weights``.
    ValueError
        If it is not a regular file (a folder, a device), has another suffix than
        :data:`WEIGHTS_SUFFIXES`, cannot be read, is empty, or does not hold a state dict.
    """
    if not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"weights must be None or a file path, got {type(weights).__name__}")
    path = Path(os.fspath(weights)).expanduser()
    where = f"weights file {str(path)!r}"
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{where} does not exist") from None
    except OSError as exc:
        raise ValueError(f"{where} cannot be accessed ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        return _check_model_folder(path, where)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{where} is not a regular file (a device or pipe); expected {_EXPECTED}")
    if path.suffix not in WEIGHTS_SUFFIXES:
        raise ValueError(f"{where}: expected a .safetensors, .pth, .pt or .bin state dict")
    path = path.resolve()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if st.st_size == 0:
        raise ValueError(f"{where} is empty; expected {_EXPECTED}")
    stamp = _stamp(path, st)
    if stamp not in _CHECKED:
        if path.suffix == ".safetensors":
            _check_safetensors(path, where)
        else:
            _check_torch(path, where)
        _CHECKED[stamp] = True
    return path


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_safetensors(path: Path, where: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
    except Exception as exc:  # SafetensorError and friends: the header does not parse
        raise ValueError(
            f"{where} is not a valid safetensors file ({_first_line(exc)}); expected {_EXPECTED} "
            "saved with safetensors.torch.save_file"
        ) from None
    if not keys:
        raise ValueError(f"{where} holds no tensors; expected {_EXPECTED}")


def read_weights_file(path):
    """What a weights file holds: a safetensors file's tensors, or the object a torch file holds
    (read with ``weights_only=True``, memory-mapped where its format allows; besides tensors and
    plain containers, only ``argparse.Namespace`` is allowed, as training checkpoints keep their
    arguments in one)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format


def _check_torch(path: Path, where: str) -> None:
    import torch

    try:
        obj = read_weights_file(path)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError ...: not a checkpoint
        raise ValueError(
            f"{where} cannot be read as a torch checkpoint with weights_only=True "
            f"({type(exc).__name__}: {_first_line(exc)}); expected {_EXPECTED} saved with "
            "torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, Mapping):
        nested = [obj[k] for k in _NESTED_KEYS if isinstance(obj.get(k), Mapping)]
        state = nested[0] if nested else obj
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return
    raise ValueError(
        f"{where} holds a {type(obj).__name__} that is not a state dict (a mapping of parameter "
        "names to tensors); save one with torch.save(model.state_dict(), path)"
    )


def weights_fingerprint(weights):
    """The digest of a checked weights file's bytes, or of a model folder's files (``None`` for
    ``weights=None``)."""
    if weights is None:
        return None
    return file_digest(check_weights_file(weights))


def check_fingerprint(weights, expected, owner) -> None:
    """Refuse a weights file whose content is no longer the one seen at ``fit`` time.

    Parameters
    ----------
    weights : str or path-like or None
        The ``weights=`` parameter of the fitted estimator.
    expected : str or None
        The :func:`weights_fingerprint` stored at ``fit`` (``None``: nothing to compare).
    owner : str
        The estimator, for the message.

    Raises
    ------
    ValueError
        If the file's digest differs from ``expected`` (or the file is gone).
    """
    if weights is None or expected is None:
        return
    path = check_weights_file(weights)
    if file_digest(path) != expected:
        raise ValueError(
            f"weights file {str(path)!r} has changed since {owner} was fitted (its content "
            "digest differs); results would silently differ from the fitted ones. Restore the "
            "original file, or refit the estimator on the new weights."
        )
