"""sk_a2: Attending on Attention (A²) as scikit-learn estimators.

A small self-supervised ViT says *where to look* (:class:`AttentionCropper`), a larger ViT says
*what it is* (:class:`CropEmbedder`), and a linear head classifies the concatenated crop
embeddings.

The names below are imported on first use (PEP 562), so that ``import sk_a2`` and the ``sk-a2``
command's help do not load PyTorch; ``from sk_a2 import AttentionCropper`` works as usual.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

#: Public name -> the submodule that defines it. Add a line here to export a name.
_EXPORTS = {
    "AttentionAdapter": "adapter",
    "AttentionCropper": "cropper",
    "CenterCropper": "baselines",
    "CropEmbedder": "embedder",
    "CropSet": "cropset",
    "DFRClassifier": "dfr",
    "RandomCropper": "baselines",
    "ZeroShotCLIPClassifier": "zeroshot",
    "group_accuracy_report": "metrics",
    "list_models": "models",
    "report_from_estimators": "report",
    "worst_class_accuracy": "metrics",
    "worst_class_scorer": "metrics",
    "worst_group_accuracy": "metrics",
    "worst_group_scorer": "metrics",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    """An exported name, imported from its submodule on first use (then cached here); else a
    submodule of the package (``sk_a2.datasets``)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name.isidentifier() and not name.startswith("__") \
            and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
