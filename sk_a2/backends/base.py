"""The backend interface, the model specification and the loaded-model wrapper.

A *backend* is everything sk_a2 knows about one model library: how its names look, how a
checkpoint is built and checked, and where a ViT keeps its patch grid, attention modules and
embedding. :class:`VisionModel` is what the estimators use; it asks its backend for the rest.
"""

from __future__ import annotations

import copy
import itertools
import threading
from dataclasses import dataclass

import torch

__all__ = ["Backend", "ModelSpec", "VisionModel", "cast_copy", "per_image", "square_side",
           "state_dict_mismatch"]


def square_side(size) -> int | None:
    """The side of a square size given as an int or an ``(h, w)`` pair (None stays None)."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"only square patches and inputs are supported, got {tuple(size)}")
        size = size[0]
    return int(size)


def state_dict_mismatch(state, own) -> str:
    """How the tensors ``state`` fail to fit a model's state dict ``own`` (missing and unexpected
    keys, other shapes; the first three and a count), or ``""`` when they fit."""
    problems = [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k} has shape {tuple(v.shape)}, the model's is {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return f"{'; '.join(problems[:3])}{more}" if problems else ""


def per_image(project, xq: torch.Tensor) -> torch.Tensor:
    """``project(xq)``; a lone CLS row is projected image by image, so that its value does not
    depend on the batch size (a matrix product over few rows may take another kernel)."""
    if xq.shape[1] != 1:
        return project(xq)
    return torch.cat([project(xq[i:i + 1].clone()) for i in range(xq.shape[0])])


@dataclass(frozen=True)
class ModelSpec:
    """Where a named model comes from.

    Attributes
    ----------
    name : str
        The name the user gave.
    library : str
        The name of the backend that builds the model (``"timm"``, ``"open_clip"``,
        ``"imgfocus"``; see :func:`sk_a2.backends.list_backends`).
    arch : str
        timm model name (with pretrained tag) or open_clip architecture.
    pretrained : str or None
        open_clip pretrained tag; for timm, the name of a released checkpoint outside the hubs
        that must come through ``weights=`` (``"ibot"``).
    """

    name: str
    library: str
    arch: str
    pretrained: str | None = None


class Backend:
    """One model library. Subclasses are registered with :func:`sk_a2.backends.register_backend`.

    Attributes
    ----------
    name : str
        Registry name; also the ``"<name>:"`` prefix of model names this backend parses.
    name_hint : str or None
        How to name any model of the library, for error messages (None: no prefix form).
    has_text_tower : bool
        Whether its models encode text (needed by :class:`~sk_a2.ZeroShotCLIPClassifier`).
    extra : str or None
        The optional dependency group (``pip install "sk-a2[<extra>]"``) its models need; None
        when the base install has the library.
    weights_folders : bool
        Whether ``weights=`` may also be a saved model folder (``config.json`` and weights).
    """

    name: str = ""
    name_hint: str | None = None
    has_text_tower = False
    extra: str | None = None
    weights_folders = False

    # -- names ---------------------------------------------------------------------------------
    def parse(self, model: str, rest: str) -> ModelSpec | None:
        """The spec of ``model`` = ``"<name>:<rest>"``, or None if this backend has no such form."""
        return None

    # -- loading a named model -----------------------------------------------------------------
    def resolve_weights(self, spec: ModelSpec, weights, image_size: int):
        """The weights file to load (``weights`` itself unless the backend supplies one)."""
        return weights

    def load(self, spec: ModelSpec, weights, image_size: int, device) -> VisionModel:
        """Build ``spec`` at ``image_size`` with ``weights`` (or its pretrained checkpoint)."""
        raise NotImplementedError

    def patch_size(self, spec: ModelSpec) -> int | None:
        """The patch side of ``spec``, found without weights or downloads (None: unknown, e.g.
        an architecture the library does not have -- :meth:`load` reports that)."""
        return None

    # -- a module passed in --------------------------------------------------------------------
    def claims(self, module: torch.nn.Module) -> bool:
        """Whether ``module`` is a model of this library."""
        return False

    def module_name(self, module) -> str:
        return type(module).__name__

    def native_image_size(self, module) -> int:
        raise NotImplementedError

    def module_patch_size(self, module) -> int | None:
        """The patch side of ``module`` (None: unknown)."""
        return None

    def set_image_size(self, module, image_size: int) -> None:
        """Rebuild ``module`` (a private copy) in place for ``image_size`` input, or raise."""
        raise ValueError(
            f"the {self.name} model passed in takes {self.native_image_size(module)}px input; "
            f"set image_size={self.native_image_size(module)}"
        )

    def mean_std(self, module, spec: ModelSpec | None = None):
        """Input normalisation ``(mean, std)`` of the checkpoint."""
        raise NotImplementedError

    # -- anatomy and forward passes ------------------------------------------------------------
    def is_vit(self, module) -> bool:
        """Whether ``module`` is a ViT with per-block attention modules A² can hook."""
        raise NotImplementedError

    def anatomy(self, module) -> dict:
        """``num_prefix_tokens``, ``grid_size``, ``attn_modules`` and ``embed_dim`` of a ViT."""
        raise NotImplementedError

    def forward_tokens(self, vm: VisionModel, x: torch.Tensor):
        """Run the transformer on normalised input (used to reach a block's attention)."""
        raise NotImplementedError

    def embed(self, vm: VisionModel, x: torch.Tensor) -> torch.Tensor:
        """One embedding per normalised input image."""
        raise NotImplementedError

    def cls_query_keys(self, attn, args, kwargs):
        """The CLS query and all keys of a block, as (B, H, 1, d) and (B, H, N, d), and the
        logit scale (a float), from the inputs of its attention module ``attn`` (as a forward
        pre-hook registered ``with_kwargs=True`` receives them).

        Only the CLS row is projected as a query, image by image (:func:`per_image`), so that
        it does not depend on the batch size."""
        raise TypeError(
            f"attention module {type(attn).__name__} is not supported: expected a timm attention "
            "with qkv or q_proj/k_proj, an open_clip block's attention, or a transformers ViT's"
        )

    def image_tower(self, module):
        """The image part of ``module`` (a CLIP model's visual tower; the module itself else)."""
        return module

    def meta_module(self, spec: ModelSpec):
        """``spec``'s architecture on PyTorch's ``meta`` device: shapes only, no weights, no
        download (None where the library cannot build it that way)."""
        return None

    # -- text (CLIP-like models) -----------------------------------------------------------------
    def encodes_text(self, module) -> bool:
        """Whether ``module`` has a text tower and a logit scale."""
        return False

    def text_encoder(self, vm: VisionModel):
        """A function mapping a list of texts to their (unnormalised) embeddings (n, d)."""
        raise ValueError(f"model {vm.name!r} ({self.name}) has no text tower")

    def similarity_scale(self, vm: VisionModel) -> torch.Tensor:
        """The factor of the image-text cosine similarities (0-d tensor)."""
        raise ValueError(f"model {vm.name!r} ({self.name}) has no image-text similarity scale")

    # -- shared ----------------------------------------------------------------------------------
    def check_vit(self, module, name: str) -> None:
        if not self.is_vit(module):
            raise ValueError(
                f"model {name!r} is not a vision transformer with CLS attention "
                "(A² needs a timm ViT, an open_clip CLIP model with a ViT image tower or a "
                "transformers DINOv2 / DINOv3 model)"
            )

    def finish(self, module, spec: ModelSpec, image_size: int, device, mean, std) -> VisionModel:
        """Check a freshly built module, move it to ``device`` in eval mode and wrap it."""
        self.check_vit(module, spec.name)
        module = module.to(device).eval().requires_grad_(False)
        return VisionModel(module, self, spec.name, image_size, mean, std, arch=spec.arch)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


_COPY_LOCK = threading.Lock()


def cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of ``module`` with every floating-point parameter and buffer in ``dtype``.

    The tensors are cast while copying, so the float32 originals are never duplicated first.
    """
    memo = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            cast = t.detach().to(dtype)
            if isinstance(t, torch.nn.Parameter):
                cast = torch.nn.Parameter(cast, requires_grad=t.requires_grad)
            memo[id(t)] = cast
    return copy.deepcopy(module, memo).to(dtype)


class VisionModel:
    """A loaded ViT and what A² needs from it.

    Parameters
    ----------
    module : torch.nn.Module
        A vision transformer of the backend's library, in eval mode on its device.
    library : Backend or str
        Its backend (or the backend's registry name).
    name : str
        A readable name for messages.
    image_size : int
        Input side length the model was built for.
    mean, std : tuple of 3 floats
        Normalisation of the checkpoint.
    arch : str, optional
        Architecture name (an open_clip one selects its tokenizer); None for a module passed in.
    """

    def __init__(self, module, library, name, image_size, mean, std, arch=None):
        if isinstance(library, str):
            from . import get_backend

            library = get_backend(library)
        self.backend = library
        self.module = module
        self.arch = arch
        self.name = name
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        first = next(module.parameters())
        self.device, self.dtype = first.device, first.dtype
        parts = self.backend.anatomy(module)
        self.num_prefix_tokens = int(parts["num_prefix_tokens"])
        self.grid_size = tuple(parts["grid_size"])
        self.attn_modules = list(parts["attn_modules"])
        self.embed_dim = int(parts["embed_dim"])
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        self._copies = {}

    @property
    def library(self) -> str:
        """The backend's registry name."""
        return self.backend.name

    def __repr__(self):
        return f"VisionModel({self.name!r}, image_size={self.image_size}, device={self.device})"

    @property
    def num_layers(self) -> int:
        return len(self.attn_modules)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1], shape (B, 3, S, S), to the model's input space (and dtype)."""
        return ((images - self._mean_t) / self._std_t).to(self.dtype)

    def to_dtype(self, dtype: torch.dtype) -> VisionModel:
        """This model with its floating-point weights and buffers in ``dtype``: itself when they
        already are, else a copy made on the first call and kept (the original is unchanged)."""
        if dtype == self.dtype:
            return self
        with _COPY_LOCK:
            if dtype not in self._copies:
                module = cast_copy(self.module, dtype)
                self._copies[dtype] = VisionModel(module, self.backend, self.name,
                                                  self.image_size, self.mean, self.std,
                                                  arch=self.arch)
            return self._copies[dtype]

    def forward_tokens(self, x: torch.Tensor):
        """Run the transformer on normalised input (used to reach a block's attention)."""
        return self.backend.forward_tokens(self, x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """CLS embedding after the final norm (timm) or the image embedding (open_clip)."""
        return self.backend.embed(self, x)

    def cls_query_keys(self, attn, args, kwargs):
        """The CLS query, the keys and the logit scale of the block whose attention module
        ``attn`` received ``args`` and ``kwargs`` (see :meth:`Backend.cls_query_keys`)."""
        return self.backend.cls_query_keys(attn, args, kwargs)

    @property
    def image_tower(self) -> torch.nn.Module:
        """The image part of the module (a CLIP model's visual tower)."""
        return self.backend.image_tower(self.module)

    @property
    def encodes_text(self) -> bool:
        """Whether the model also encodes text (a CLIP model)."""
        return self.backend.encodes_text(self.module)

    def text_encoder(self):
        """A function mapping a list of texts to their text-tower embeddings (n, d)."""
        return self.backend.text_encoder(self)

    def similarity_scale(self) -> torch.Tensor:
        """The factor of the image-text cosine similarities (0-d tensor)."""
        return self.backend.similarity_scale(self)
