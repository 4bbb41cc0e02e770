"""``locatify``: add LocAt to an existing timm ViT, Swin or RoPE-ViT (Eva), pretrained or not, keeping its weights."""
from __future__ import annotations

from timm.models.eva import Eva
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .jumbo import Jumbo
from .locatvit import LocAtViT, add_gaussian_attention
from .ropevit import LocAtRoPEViT, add_gaussian_attention_rope
from .swin import LocAtSwin, add_gaussian_window_attention

__all__ = ["locatify"]

_LOCAT = (LocAtViT, LocAtSwin, LocAtRoPEViT)


def locatify(model: nn.Module, *, attn_backend: str = "auto", gaussian_mode: str = "published") -> nn.Module:
    """Add LocAt to ``model`` in place and return it: a timm ``VisionTransformer`` becomes a
    ``LocAtViT``, a ``SwinTransformer`` a ``LocAtSwin`` (attention backends "auto", "sdpa", "eager";
    ``gaussian_mode`` does not apply: a window never takes the rate-2 mode), an ``Eva`` (RoPE-ViT) a
    ``LocAtRoPEViT``.

    Every existing weight is kept under its name; each attention gains ``gaug.log_var`` and
    ``gaug.log_alpha`` at the published init (var ~ 1, alpha ~ 0.69), and PRR (no weights) runs
    between the final norm and the head.
    """
    if isinstance(model, _LOCAT) or getattr(model, "locat", False):
        raise ValueError(f"model is already a LocAt model ({type(model).__name__})")
    if isinstance(model, Jumbo):  # LocAt Jumbo also has a norm of its own on the patches: new weights
        raise TypeError("locatify does not take a Jumbo (LocAt Jumbo adds a patch norm with weights of its own); "
                        "build locatjumbo_* and load the Jumbo's weights with strict=False")
    if isinstance(model, SwinTransformer):
        add_gaussian_window_attention(model, attn_backend)
        model.__class__ = LocAtSwin
    elif isinstance(model, Eva):
        add_gaussian_attention_rope(model, attn_backend, gaussian_mode)
        model.__class__ = LocAtRoPEViT
    elif isinstance(model, VisionTransformer):
        if not hasattr(model.blocks[0].attn, "qkv"):
            raise TypeError(f"locatify needs blocks with timm's Attention, got {type(model.blocks[0].attn).__name__}")
        add_gaussian_attention(model, attn_backend, gaussian_mode)
        model.__class__ = LocAtViT
    else:
        raise TypeError(f"locatify takes a timm VisionTransformer, SwinTransformer or Eva, got {type(model).__name__}")
    return model
