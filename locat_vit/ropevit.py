"""LocAt on RoPE-ViT: timm's ``Eva`` with mixed rotary position embeddings, every attention given the
Gaussian bias, and PRR before the head (the published ``locatvit_{tiny,base}_rope_mixed``).

As published, var and alpha come from the patch queries *before* the rotary embedding (the Gaussian
is about positions on the grid, which the rotation would scramble), and the attention uses the
rotated queries and keys. The state-dict keys are Eva's plus ``blocks.i.attn.gaug.*``.
"""
from __future__ import annotations

import inspect

import torch
import torch.fx
from timm.layers import apply_rot_embed_cat, register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import Tensor

from locat_kernels import locat_attention

from .attention import GaussianAugmentedAttention, refuse_masks
from .locatvit import default_cfg, patch_refinement

__all__ = ["LocAtRoPEViT", "GaussianAugmentedAttentionRope", "add_gaussian_attention_rope"]

torch.fx.wrap("refuse_masks")  # FX records the call (see attention.refuse_masks)


@register_notrace_module
class GaussianAugmentedAttentionRope(GaussianAugmentedAttention):
    """timm's ``AttentionRope`` with the Gaussian bias: adopts its layers (same keys) and adds ``gaug``.

    ``forward(x, rope)``: ``locat_attention`` on the rotated patch queries and keys (prefix tokens
    are not rotated), var and alpha from the normed queries before the rotation (its
    ``gaussian_queries``: on the triton backend one kernel each way, as for ViT's layers).
    Arguments as for ``GaussianAugmentedAttention``.
    """

    def __init__(self, attn, init_grid_size, num_prefix_tokens: int, backend: str = "auto",
                 gaussian_mode: str = "published"):
        if getattr(attn, "qkv", None) is None:
            raise ValueError("LocAt RoPE attention needs a fused qkv layer (qkv_fused=True)")
        half = getattr(attn, "rotate_half", False)  # timm's rotation layout (newer timm: an option)
        super().__init__(attn, init_grid_size, num_prefix_tokens, backend, gaussian_mode)
        self.rotate_half = half

    def forward(self, x: Tensor, rope: Tensor | None = None, attn_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        refuse_masks(attn_mask, is_causal)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        P, rate = self.num_prefix_tokens, self.rate()
        q_unrotated = None
        if rope is not None:  # var and alpha from the queries before the rotation, as published
            q_unrotated = q.type_as(v)
            q = torch.cat([q[:, :, :P], apply_rot_embed_cat(q[:, :, P:], rope, half=self.rotate_half)], 2).type_as(v)
            k = torch.cat([k[:, :, :P], apply_rot_embed_cat(k[:, :, P:], rope, half=self.rotate_half)], 2).type_as(v)
        backend = "reference" if self.backend == "eager" else self.backend
        x = locat_attention(q, k, v, *self.gaug.weights(), self.grid_size, num_prefix_tokens=P,
                            init_grid_size=self.init_grid_size, rate=rate, scale=self.scale, backend=backend,
                            gaussian_queries=q_unrotated)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def add_gaussian_attention_rope(model: Eva, attn_backend: str, gaussian_mode: str) -> None:
    """Replace each block's attention by a Gaussian-augmented one that keeps its weights."""
    grid = tuple(model.patch_embed.grid_size)
    for blk in model.blocks:
        attn = GaussianAugmentedAttentionRope(blk.attn, grid, model.num_prefix_tokens, attn_backend, gaussian_mode)
        blk.attn = attn.to(attn.qkv.weight.device)  # the new layers where the adopted ones live


class LocAtRoPEViT(Eva):
    """timm's ``Eva`` (mixed RoPE) with Gaussian-augmented attention in every block and PRR before
    the head. Keywords: Eva's, plus ``attn_backend`` and ``gaussian_mode`` as for ``LocAtViT``."""

    def __init__(self, attn_backend: str = "auto", gaussian_mode: str = "published", **kwargs):
        super().__init__(**kwargs)
        add_gaussian_attention_rope(self, attn_backend, gaussian_mode)

    def _pos_embed(self, x: Tensor):
        if self.dynamic_img_size:  # (B, gh, gw, C): the grid of this input
            grid = tuple(x.shape[1:3])
            for blk in self.blocks:
                blk.attn.grid_size = grid
        return super()._pos_embed(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """PRR over all tokens of the normalized features (as ``LocAtViT``), then Eva's head."""
        return super().forward_head(patch_refinement(x, self.blocks[0].attn.num_heads), pre_logits=pre_logits)


default_cfgs = generate_default_cfgs({name: default_cfg() for name in ("locatvit_tiny_rope_mixed", "locatvit_base_rope_mixed")})

# The published RoPE-ViT configuration (mixed, learnable per-depth frequencies; no absolute position
# embedding), as timm's vit_*_patch16_rope_mixed_224 have it; timm names the mixed mode by version.
_ROPE_MIXED = dict(mlp_ratio=4, qkv_bias=True, attn_type="rope", init_values=1e-5, class_token=True,
                   global_pool="token", use_abs_pos_emb=False, use_rot_pos_emb=True, rope_grid_indexing="xy",
                   rope_temperature=10.0,
                   **(dict(rope_type="mixed") if "rope_type" in inspect.signature(Eva).parameters
                      else dict(rope_mixed_mode=True)))


def _create(variant: str, pretrained: bool, model_args: dict, **kwargs) -> LocAtRoPEViT:
    return build_model_with_cfg(
        LocAtRoPEViT, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
        **{**model_args, **_ROPE_MIXED, **kwargs})


@register_model
def locatvit_tiny_rope_mixed(pretrained: bool = False, **kwargs) -> LocAtRoPEViT:
    return _create("locatvit_tiny_rope_mixed", pretrained, dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
                   **kwargs)


@register_model
def locatvit_base_rope_mixed(pretrained: bool = False, **kwargs) -> LocAtRoPEViT:
    return _create("locatvit_base_rope_mixed", pretrained, dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
                   **kwargs)
