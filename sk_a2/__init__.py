"""sk_a2: Attending on Attention (A²) as scikit-learn estimators.

A small self-supervised ViT says *where to look* (:class:`AttentionCropper`), a larger ViT says
*what it is* (:class:`CropEmbedder`), and a linear head classifies the concatenated crop
embeddings.
"""

from .adapter import AttentionAdapter
from .baselines import CenterCropper, RandomCropper
from .cropper import AttentionCropper
from .cropset import CropSet
from .dfr import DFRClassifier
from .embedder import CropEmbedder
from .metrics import (
    group_accuracy_report,
    worst_class_accuracy,
    worst_class_scorer,
    worst_group_accuracy,
    worst_group_scorer,
)
from .models import list_models
from .zeroshot import ZeroShotCLIPClassifier

__version__ = "0.1.0"

__all__ = [
    "AttentionAdapter",
    "AttentionCropper",
    "CenterCropper",
    "CropEmbedder",
    "CropSet",
    "DFRClassifier",
    "RandomCropper",
    "ZeroShotCLIPClassifier",
    "group_accuracy_report",
    "list_models",
    "worst_class_accuracy",
    "worst_class_scorer",
    "worst_group_accuracy",
    "worst_group_scorer",
]
