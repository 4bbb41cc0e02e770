"""LocAtViT on timm: ``import locat_vit`` registers locatvit_tiny / _small / _base and
locatvit_tiny_rope_mixed / locatvit_base_rope_mixed, locatjumbo_tiny / locatjumbo_base (and the
Jumbo baselines jumbo_tiny / jumbo_base), locatswin_tiny / locatswin_base with timm."""
from .attention import GaussianAugmentation, GaussianAugmentedAttention
from .convert import locatify
from .locatvit import LocAtViT, load_checkpoint, patch_refinement
from .jumbo import Jumbo, JumboBlock
from .ropevit import GaussianAugmentedAttentionRope, LocAtRoPEViT
from .swin import GaussianAugmentedWindowAttention, LocAtSwin

__all__ = [
    "GaussianAugmentation",
    "GaussianAugmentedAttention",
    "GaussianAugmentedAttentionRope",
    "GaussianAugmentedWindowAttention",
    "Jumbo",
    "JumboBlock",
    "LocAtRoPEViT",
    "LocAtSwin",
    "LocAtViT",
    "load_checkpoint",
    "locatify",
    "patch_refinement",
]
