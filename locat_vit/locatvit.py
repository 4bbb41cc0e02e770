"""LocAtViT: timm's VisionTransformer with Gaussian-augmented attention in every block and PRR.

``import locat_vit`` registers ``locatvit_tiny``, ``locatvit_small`` and ``locatvit_base`` with timm.
Extra keywords: ``attn_backend`` ("auto", "triton", "sdpa", "eager") and ``gaussian_mode``
("published", "exact"); everything else is timm's (``img_size``, ``dynamic_img_size``,
``reg_tokens``, ``class_token``, ``num_classes``, ``features_only``, ...), and
``model.set_input_size(img_size=...)`` rebuilds every layer's grids for a new resolution.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import Tensor, nn

from .attention import GaussianAugmentedAttention

__all__ = ["LocAtViT", "patch_refinement", "load_checkpoint", "read_checkpoint", "state_dict_misfit",
           "add_gaussian_attention"]


def patch_refinement(x: Tensor, num_heads: int) -> Tensor:
    """PRR: parameter-free multi-head self-attention over all tokens, ``softmax(x x^T / sqrt(d)) x`` per head."""
    B, N, C = x.shape
    x = x.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)
    return F.scaled_dot_product_attention(x, x, x).transpose(1, 2).reshape(B, N, C)


def add_gaussian_attention(model: VisionTransformer, attn_backend: str, gaussian_mode: str) -> None:
    """Replace each block's attention by a Gaussian-augmented one that keeps its weights."""
    grid = tuple(model.patch_embed.grid_size)
    for blk in model.blocks:
        ref = blk.attn.qkv.weight
        blk.attn = GaussianAugmentedAttention(
            blk.attn, grid, model.num_prefix_tokens, attn_backend, gaussian_mode).to(ref.device)


class LocAtViT(VisionTransformer):
    """Locality-Attending ViT: GAug attention in every block, PRR between the final norm and the head.

    ``forward_dense(x)`` returns the refined patch features (B, C, gh, gw) for dense prediction.
    """

    def __init__(self, *, attn_backend: str = "auto", gaussian_mode: str = "published", **kwargs):
        _check_patch_multiple(kwargs.get("img_size", 224), kwargs.get("patch_size", 16), kwargs.get("dynamic_img_pad"))
        super().__init__(**kwargs)
        add_gaussian_attention(self, attn_backend, gaussian_mode)

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """timm's resize (patch embedding, resampled position embedding), then every attention layer
        as if the model had been built at the new size: its build grid and current grid are the new
        patch grid, as in the published code, which builds the model at the fine-tuning resolution
        (eps, the clamp, the variance's range and the rate-2 mode follow the build grid)."""
        _check_patch_multiple(img_size if img_size is not None else self.patch_embed.img_size,
                              patch_size if patch_size is not None else self.patch_embed.patch_size,
                              self.patch_embed.dynamic_img_pad)
        super().set_input_size(img_size=img_size, patch_size=patch_size)
        for blk in self.blocks:
            blk.attn.set_build_grid(self.patch_embed.grid_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        """The patch grid of the last forward (the build grid before any)."""
        return self.blocks[0].attn.grid_size

    def set_attn_backend(self, backend: str) -> None:
        """Switch every block to another attention backend; the weights stay."""
        for blk in self.blocks:
            blk.attn.set_backend(backend)

    def _pos_embed(self, x: Tensor) -> Tensor:
        if self.dynamic_img_size:  # x is (B, gh, gw, C): the blocks need the current grid
            grid = (x.shape[1], x.shape[2])
            for blk in self.blocks:
                blk.attn.grid_size = grid
        return super()._pos_embed(x)

    def refine(self, x: Tensor) -> Tensor:
        """PRR over all tokens of the normalized features."""
        return patch_refinement(x, self.blocks[0].attn.num_heads)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return super().forward_head(self.refine(x), pre_logits=pre_logits)

    def forward_dense(self, x: Tensor) -> Tensor:
        """Refined patch tokens (after the final norm and PRR) as a (B, C, gh, gw) feature map."""
        x = self.refine(self.forward_features(x))[:, self.num_prefix_tokens:]
        gh, gw = self.grid_size
        return x.transpose(1, 2).reshape(x.shape[0], -1, gh, gw)


def _check_patch_multiple(img_size, patch_size, dynamic_img_pad) -> None:
    img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if not dynamic_img_pad and any(i % p for i, p in zip(img, patch)):
        raise ValueError(
            f"img_size {img} is not a multiple of patch_size {patch}: the patch grid would drop the last "
            f"pixels of each side. Use a multiple of the patch size, or dynamic_img_pad=True to pad.")


def load_checkpoint(model: nn.Module, path, *, filter_fn=checkpoint_filter_fn) -> None:
    """Load a local ``.pth``/``.pt`` or ``.safetensors`` checkpoint strictly.

    The state dict may be wrapped in ``{"model": ...}`` or ``{"state_dict": ...}``; timm's filter
    resamples position embeddings to the model's grid. Keys that do not fit (missing, unexpected,
    mis-shaped) raise a ValueError naming them, and the model is left unchanged.
    """
    path = Path(path)
    state = read_checkpoint(path)
    if isinstance(state, dict):
        state = state.get("model", state.get("state_dict", state))
    state = filter_fn(state, model) if filter_fn is not None else state
    misfit = state_dict_misfit(model, state)
    if misfit:
        raise ValueError(f"checkpoint {path} does not fit {type(model).__name__}; {misfit}")
    model.load_state_dict(state, strict=True)


def read_checkpoint(path) -> dict:
    """What a local ``.pth``/``.pt`` (tensors and plain containers only: nothing else is unpickled) or
    ``.safetensors`` file holds. A missing file raises FileNotFoundError, an unreadable one (corrupt,
    truncated, empty) a one-line ValueError; both name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable checkpoint ({reason}); only state dicts of tensors are "
                         f"loaded, and nothing else in the file is unpickled") from None


def state_dict_misfit(model: nn.Module, state: dict) -> str | None:
    """None if ``state`` loads into ``model`` strictly; else one line: how many keys are missing,
    unexpected and mis-shaped, and the first few of each."""
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    misshaped = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in sorted(own.keys() & state.keys()) if state[k].shape != own[k].shape]
    parts = [f"{name} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
             for name, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    return "; ".join(parts) or None


def default_cfg(**kwargs):
    """The pretrained cfg of a LocAt model (ImageNet-1k at 224 px), ``kwargs`` added."""
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.9,
        "interpolation": "bicubic", "fixed_input_size": True, "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.proj", "classifier": "head", **kwargs,
    }


# The published weights are on the Hugging Face hub (tiny and base): pretrained=True fetches them where
# there is a network. A local file instead: pretrained_cfg_overlay=dict(file=PATH), or load_checkpoint().
PUBLISHED_HUB_IDS = {"locatvit_tiny": "sinahmr/locatvit_tiny", "locatvit_base": "sinahmr/locatvit_base"}
default_cfgs = generate_default_cfgs({
    name: default_cfg(hf_hub_id=PUBLISHED_HUB_IDS[name]) if name in PUBLISHED_HUB_IDS else default_cfg()
    for name in ("locatvit_tiny", "locatvit_small", "locatvit_base")})


def _create(variant: str, pretrained: bool, model_args: dict, **kwargs) -> LocAtViT:
    file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    if pretrained and file and not Path(file).is_file():  # timm raises an empty FileNotFoundError here
        raise FileNotFoundError(f"pretrained file {file} does not exist (pretrained_cfg_overlay['file'])")
    # features_only=True: timm's ViT feature getter, the outputs of the blocks ``out_indices`` (default:
    # the last 3) as (B, C, gh, gw) maps, before the final norm and PRR.
    feature_cfg = dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter")
    return build_model_with_cfg(LocAtViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=feature_cfg, **dict(model_args, **kwargs))


@register_model
def locatvit_tiny(pretrained: bool = False, **kwargs) -> LocAtViT:
    return _create("locatvit_tiny", pretrained, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3), **kwargs)


@register_model
def locatvit_small(pretrained: bool = False, **kwargs) -> LocAtViT:
    return _create("locatvit_small", pretrained, dict(patch_size=16, embed_dim=384, depth=12, num_heads=6), **kwargs)


@register_model
def locatvit_base(pretrained: bool = False, **kwargs) -> LocAtViT:
    return _create("locatvit_base", pretrained, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12), **kwargs)
