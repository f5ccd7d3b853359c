"""sk_a2: Attending on Attention (A²) as scikit-learn estimators.

A small self-supervised ViT says *where to look* (:class:`AttentionCropper`), a larger ViT says
*what it is* (:class:`CropEmbedder`), and a linear head classifies the concatenated crop
embeddings.
"""

from .cropper import AttentionCropper, CropSet
from .embedder import CropEmbedder
from .models import list_models

__version__ = "0.1.0"

__all__ = [
    "AttentionCropper",
    "CropEmbedder",
    "CropSet",
    "list_models",
]
