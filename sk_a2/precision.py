"""Numeric precision of the model forwards: the ``precision`` parameter of every model estimator.

``precision`` takes three values:

``"float32"``
    Every forward in float32. On CUDA this is IEEE float32: TF32 (matrix products and
    convolutions with a 10-bit mantissa, which PyTorch may allow on Ampere and newer GPUs) is
    switched off for the package's forwards and the caller's settings are restored after, so
    float32 results agree with the CPU's to float32 rounding.
``"bfloat16"``
    Every forward runs a bf16 copy of the model: weights and activations in bfloat16, made once
    per loaded model (:meth:`sk_a2.backends.VisionModel.to_dtype`) and kept beside the float32
    one, so it costs half the model's float32 memory more. What A² reads from a forward comes
    back in float32: the embeddings are cast, and the CLS attention row is computed from the
    block's query and keys in float32. On a CPU without native bf16 this is emulated and slower
    than float32 (a warning says so), but it works.
``"auto"`` (default)
    The *embedding* forwards run the bf16 copy on CUDA, and on a CPU with native bf16
    arithmetic (x86 AVX-512 BF16 or AMX-BF16, ARM BF16); the *attention* forwards that choose
    the boxes stay float32 everywhere. Crop embeddings feed a linear head, where bf16's relative
    error of about 1e-3 is harmless (cosine to float32 ≥ 0.999), while the boxes come from an
    argmax over attention, where a small perturbation can move a box far: with bf16 attention,
    the boxes of 22 % of images changed on an H100 and 26 % on a CPU, for no measurable speed-up
    on the GPU (the attention model is the small one; see ``docs/performance.md``). On a CPU
    without native bf16, every forward is float32.

Why a bf16 copy and not ``torch.autocast``: autocast keeps the weights in float32, casts them at
every forward and runs norms and softmax in float32; a model held in bf16 does none of that, and
on a 2-core AVX-512 BF16 CPU its ViT-S/14 forward is 1.84-1.93x float32's where autocast's is
1.67-1.85x, for crop embeddings at cosine ≥ 0.9993 to float32 (``docs/performance.md``).

:func:`native_bf16` is the capability check; it reads torch's own CPU feature report
(``torch.cpu.get_capabilities()``), or ``/proc/cpuinfo`` on a torch that lacks it.

A resolved precision (``"float32"`` or ``"bfloat16"``) is part of every cache key
(:func:`precision_key`), so results computed at different precisions never mix.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

__all__ = [
    "PRECISIONS",
    "SlowPrecisionWarning",
    "at_precision",
    "check_precision",
    "has_native_bf16",
    "native_bf16",
    "precision_key",
    "resolve_precision",
    "warn_if_slow",
]

PRECISIONS = ("auto", "float32", "bfloat16")
ROLES = ("attention", "embedding")

#: CPU feature flags that mean bf16 arithmetic in hardware.
_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


class SlowPrecisionWarning(UserWarning):
    """``precision="bfloat16"`` on a CPU that emulates bf16: slower than float32."""


def _cpu_flags() -> dict:
    caps = getattr(getattr(torch, "cpu", None), "get_capabilities", None)
    if caps is not None:
        try:
            return dict(caps())
        except RuntimeError:  # pragma: no cover - cpuinfo failed to initialise
            pass
    try:  # pragma: no cover - torch without get_capabilities
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f
                          if ln.startswith(("flags", "Features"))), [])
    except OSError:  # pragma: no cover
        flags = []
    return dict.fromkeys(flags, True)


def has_native_bf16(flags) -> bool:
    """Whether CPU feature ``flags`` (a mapping of flag names to True/False, as
    ``torch.cpu.get_capabilities()`` gives) include bf16 arithmetic in hardware."""
    return any(flags.get(f) is True for f in _NATIVE_FLAGS)


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16, AMX-BF16 or ARM BF16)."""
    return has_native_bf16(_cpu_flags())


def check_precision(precision) -> str:
    """Validate a ``precision`` parameter."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}"
        )
    return precision


def resolve_precision(precision, device, role="embedding") -> str:
    """The precision a forward actually runs at: ``"float32"`` or ``"bfloat16"``.

    Parameters
    ----------
    precision : {"auto", "float32", "bfloat16"}
    device : torch.device
    role : {"attention", "embedding"}
        ``"attention"`` for forwards whose attention chooses boxes, ``"embedding"`` for forwards
        whose output is an embedding.
    """
    check_precision(precision)
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if precision != "auto" or role == "attention":
        return "float32" if precision == "auto" else precision
    if device.type == "cuda" or (device.type == "cpu" and native_bf16()):
        return "bfloat16"
    return "float32"


def warn_if_slow(precision, device) -> None:
    """Warn when ``precision="bfloat16"`` is asked for on a CPU without native bf16."""
    if precision == "bfloat16" and device.type == "cpu" and not native_bf16():
        warnings.warn(
            "precision='bfloat16' on a CPU without native bf16 (no AVX-512 BF16, AMX or ARM "
            "BF16): bf16 is emulated there and will be slower than float32; "
            "precision='auto' picks float32 on this CPU",
            SlowPrecisionWarning,
            stacklevel=3,
        )


@contextlib.contextmanager
def _ieee_float32():
    """TF32 off for CUDA matrix products and cuDNN convolutions; the previous flags restored."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = (matmul.allow_tf32, cudnn.allow_tf32)
    matmul.allow_tf32, cudnn.allow_tf32 = False, False
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


#: The torch dtype of each resolved precision.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

#: What a resolved precision stands for in cache keys: how the forward computes, so that a
#: change of scheme (bf16 autocast, used before, against a bf16 copy of the model) never reads
#: back the other's results.
_KEYS = {"float32": "float32", "bfloat16": "bfloat16 model copy"}


def precision_key(resolved: str) -> str:
    """The part of a cache key that names a resolved precision."""
    return _KEYS[resolved]


@contextlib.contextmanager
def at_precision(vm, resolved: str):
    """Run forwards of ``vm`` at a resolved precision: yields the model to call.

    ``"bfloat16"`` yields ``vm``'s bf16 copy (:meth:`~sk_a2.backends.VisionModel.to_dtype`);
    ``"float32"`` yields ``vm`` itself, with TF32 switched off on CUDA for the duration.
    """
    if resolved not in DTYPES:
        raise ValueError(f"a resolved precision is one of {tuple(DTYPES)}, got {resolved!r}")
    model = vm.to_dtype(DTYPES[resolved])
    ieee = resolved == "float32" and vm.device.type == "cuda"
    with _ieee_float32() if ieee else contextlib.nullcontext():
        yield model
