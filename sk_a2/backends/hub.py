"""Offline handling: a clear error, fast, instead of a network time-out.

Before a backend downloads a pretrained checkpoint it asks here whether the checkpoint is in the
local cache or the hub can be reached; if neither, :class:`WeightsUnavailableError` says how to
pass a local file instead.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

__all__ = [
    "HF_FILES",
    "WeightsUnavailableError",
    "hf_cache_dir",
    "hf_cached",
    "hf_reachable",
    "host_reachable",
    "unavailable",
]


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be found locally nor downloaded."""


HF_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin",
            "open_clip_model.safetensors")


def hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return os.path.expanduser("~/.cache/huggingface/hub")


def hf_cached(repo_id: str, filenames=HF_FILES) -> bool:
    """Whether one of ``filenames`` of the Hugging Face repository is in the local cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return True
    return False


def host_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens (never, with ``HF_HUB_OFFLINE`` set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(model_name: str, checkpoint: str, looked: str) -> WeightsUnavailableError:
    """The error for a checkpoint neither cached in ``looked`` nor downloadable."""
    return WeightsUnavailableError(
        f"Pretrained weights for model {model_name!r} (checkpoint {checkpoint}) are not "
        f"available: not in the local cache ({looked}) and the hub cannot be reached. Download "
        f"the checkpoint on a machine with network access and pass its state-dict file as "
        f"weights='path/to/file.safetensors' (or .pth/.bin), or copy the hub cache over."
    )


def hf_reachable(model_name: str, repo_id: str) -> None:
    """Return if the Hugging Face repository is cached or the hub answers, else raise."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if hf_cached(repo_id) or host_reachable(endpoint):
        return
    raise unavailable(model_name, f"hf-hub:{repo_id}", hf_cache_dir())
