"""``locatify``: turn an existing timm ViT (pretrained or not) into a LocAtViT, keeping its weights."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer

from .locatvit import LocAtViT, add_gaussian_attention

__all__ = ["locatify"]


def locatify(model: VisionTransformer, *, attn_backend: str = "auto", gaussian_mode: str = "published") -> LocAtViT:
    """Add LocAtViT to ``model`` in place and return it.

    Every existing weight is kept under its name; each block gains ``attn.gaug.log_var`` and
    ``attn.gaug.log_alpha`` at the published init (var ~ 1, alpha ~ 0.69), and PRR (no weights) runs
    between the final norm and the head. The model becomes a ``LocAtViT`` (``forward_dense`` etc.).
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"locatify needs a timm VisionTransformer, got {type(model).__name__}")
    if isinstance(model, LocAtViT):
        raise ValueError("model is already a LocAtViT")
    if not hasattr(model.blocks[0].attn, "qkv"):
        raise TypeError(f"locatify needs blocks with timm's Attention, got {type(model.blocks[0].attn).__name__}")
    add_gaussian_attention(model, attn_backend, gaussian_mode)
    model.__class__ = LocAtViT
    return model
