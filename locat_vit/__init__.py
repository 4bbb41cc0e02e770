"""LocAtViT on timm: ``import locat_vit`` registers locatvit_tiny / _small / _base and
locatvit_tiny_rope_mixed / locatvit_base_rope_mixed, locatjumbo_tiny / locatjumbo_base (and the
Jumbo baselines jumbo_tiny / jumbo_base), locatswin_tiny / locatswin_base with timm."""
import warnings

import timm

# The families are checked against the published function with this timm (pyproject's floor); older
# ones build Swin's stages on odd feature maps differently and cannot run RoPE-ViT in float64.
TESTED_TIMM = (1, 0, 31)
if tuple(int(x) for x in timm.__version__.split(".")[:3] if x.isdigit()) < TESTED_TIMM:
    warnings.warn(f"locat_vit is tested with timm >= {'.'.join(map(str, TESTED_TIMM))}, found {timm.__version__}: "
                  f"LocAt Swin on odd feature maps and RoPE-ViT in float64 may differ (pip install -U timm)",
                  stacklevel=2)

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
