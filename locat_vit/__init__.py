"""LocAtViT on timm: ``import locat_vit`` registers locatvit_tiny / _small / _base with timm."""
from .attention import GaussianAugmentation, GaussianAugmentedAttention
from .convert import locatify
from .locatvit import LocAtViT, load_checkpoint, patch_refinement

__all__ = [
    "GaussianAugmentation",
    "GaussianAugmentedAttention",
    "LocAtViT",
    "load_checkpoint",
    "locatify",
    "patch_refinement",
]
