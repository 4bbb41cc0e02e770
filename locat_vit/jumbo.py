"""LocAt on Jumbo: a ViT whose J class tokens are read as one wide token with its own norm and MLP
(one MLP shared by all blocks), Gaussian-augmented attention in every block, a norm of its own on
the patches and PRR before the head (the published ``locatjumbo_{tiny,base}``; ``jumbo_{tiny,base}``
are the same without LocAt, the published baselines).

Per block: ``x = x + ls1(attn(norm1(x)))`` over all tokens; then the J prefix tokens, flattened to one
(J * dim) vector, get ``+ ls3(mlp_J(norm3(.)))`` and the patches ``+ ls2(mlp(norm2(.)))``. The
features: the flattened prefix normed by ``norm`` (J * dim), the patches by ``norm_patches``; the head
reads the flattened prefix (after PRR with LocAt). State-dict keys as published.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.fx
from timm.layers import LayerScale, Mlp
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from .attention import refuse_masks
from .locatvit import add_gaussian_attention, default_cfg, patch_refinement

__all__ = ["Jumbo", "JumboBlock"]

torch.fx.wrap("refuse_masks")  # FX records the call (see attention.refuse_masks)

# The published head bias: the log of a uniform prediction, rounded as published for its class counts.
_HEAD_BIAS = {100: -4.6, 1000: -6.9, 10450: -9.25}


class JumboBlock(Block):
    """timm's ``Block`` plus the wide prefix token's norm3 / ls3 and the shared ``jumbo_mlp`` (set by
    the model). Takes timm's block keywords and ``J``, the number of prefix tokens."""

    def __init__(self, dim: int, num_heads: int, *, J: int, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        dd = _factory_kwargs(kwargs)
        self.J = J
        self.norm3 = nn.LayerNorm(J * dim, **dd)  # torch's default eps (1e-5), as published
        self.jumbo_mlp = None  # one Mlp shared by every block: assigned by Jumbo
        self.ls3 = LayerScale(J * dim, init_values=kwargs["init_values"], **dd)
        self.drop_path3 = self.drop_path2

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        y = self.norm1(x)
        x = x + self.drop_path1(self.ls1(self.attn(y) if attn_mask is None else self.attn(y, attn_mask=attn_mask)))
        B, _, C = x.shape
        prefix = x[:, :self.J].reshape(B, self.J * C)
        prefix = prefix + self.drop_path3(self.ls3(self.jumbo_mlp(self.norm3(prefix))))
        patches = x[:, self.J:]
        patches = patches + self.drop_path2(self.ls2(self.mlp(self.norm2(patches))))
        return torch.cat([prefix.reshape(B, self.J, C), patches], 1)


def _factory_kwargs(kwargs: dict) -> dict:
    """The device and dtype that timm (versions that take them) asked the model to be built with."""
    return {k: kwargs[k] for k in ("device", "dtype") if kwargs.get(k) is not None}


class _JumboNorm(nn.LayerNorm):
    """The final norm of Jumbo's (B, N, C) tokens: the J prefix tokens flattened to one (J * C) vector
    and normed as one, the patches by ``patch_norm`` (the model's ``norm_patches``, held here by
    reference so its keys stay the published ones). As ``model.norm`` it serves timm's
    ``forward_intermediates`` as ViT's norm does."""

    def __init__(self, J: int, dim: int, patch_norm: nn.Module, **dd):
        super().__init__(J * dim, **dd)  # torch's default eps (1e-5), as published
        self.J = J
        self._patch_norm = (patch_norm,)  # a tuple: not a submodule

    def forward(self, x: Tensor) -> Tensor:
        B, _, C = x.shape
        prefix = super().forward(x[:, :self.J].reshape(B, self.J * C)).reshape(B, self.J, C)
        return torch.cat([prefix, self._patch_norm[0](x[:, self.J:])], 1)


class Jumbo(VisionTransformer):
    """Jumbo on timm's ``VisionTransformer``; with ``locat`` (the ``locatjumbo_*`` models) every
    attention is Gaussian-augmented (``attn_backend``, ``gaussian_mode`` as for ``LocAtViT``), the
    patches get ``norm_patches`` and PRR runs before the head."""

    def __init__(self, J: int = 6, jumbo_mlp_ratio: float = 4.0, locat: bool = False, attn_backend: str = "auto",
                 gaussian_mode: str = "published", **kwargs):
        kwargs.setdefault("init_values", 1e-4)
        super().__init__(block_fn=partial(JumboBlock, J=J), no_embed_class=True, **kwargs)
        dd = _factory_kwargs(kwargs)
        dim, width = self.embed_dim, J * self.embed_dim
        self.J = self.num_prefix_tokens = J
        self.locat = locat
        self.cls_token = nn.Parameter(torch.zeros(1, J, dim, **dd))
        self.norm_patches = nn.LayerNorm(dim, **dd) if locat else nn.Identity()
        self.norm = _JumboNorm(J, dim, self.norm_patches, **dd)
        self.head_hidden_size = width  # the head reads the flattened prefix
        self.jumbo_mlp = Mlp(width, int(width * jumbo_mlp_ratio), act_layer=nn.GELU,
                             drop=kwargs.get("proj_drop_rate", 0.0), **dd)
        for blk in self.blocks:
            blk.jumbo_mlp = self.jumbo_mlp
        self.head = nn.Linear(width, self.num_classes, **dd) if self.num_classes else nn.Identity()
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)
        if self.num_classes:  # zero weights, the bias of a uniform prediction
            nn.init.zeros_(self.head.weight)
            nn.init.constant_(self.head.bias, _HEAD_BIAS.get(self.num_classes, -math.log(self.num_classes)))
        if locat:
            add_gaussian_attention(self, attn_backend, gaussian_mode)

    def _pos_embed(self, x: Tensor) -> Tensor:
        if self.locat and self.dynamic_img_size:  # x is (B, gh, gw, C): the blocks need the current grid
            for blk in self.blocks:
                blk.attn.grid_size = (x.shape[1], x.shape[2])
        return super()._pos_embed(x)

    def forward_features(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        refuse_masks(attn_mask, is_causal, "Jumbo")
        return self.norm(self.blocks(self.norm_pre(self._pos_embed(self.patch_embed(x)))))

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """timm's, and with ``prune_norm`` the patch norm goes with the prefix norm."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if prune_norm:
            self.norm_patches = nn.Identity()
        return take_indices

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head (zero classes: none) on the flattened prefix, J * dim wide; the head always reads
        the prefix tokens, so ``global_pool`` may only be None, "" or "token"."""
        if global_pool not in (None, "", "token"):
            raise ValueError(f"Jumbo's head reads its prefix tokens: global_pool must be 'token', got {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes).to(self.cls_token.device) if num_classes > 0 \
            else nn.Identity()

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.locat:
            x = patch_refinement(x, self.blocks[0].attn.num_heads)
        x = self.head_drop(x[:, :self.J].flatten(1))
        return x if pre_logits else self.head(x)


default_cfgs = generate_default_cfgs({name: default_cfg() for name in (
    "jumbo_tiny", "jumbo_base", "locatjumbo_tiny", "locatjumbo_base")})


def _create(variant: str, pretrained: bool, model_args: dict, **kwargs) -> Jumbo:
    return build_model_with_cfg(Jumbo, variant, pretrained,
                                feature_cfg=dict(out_indices=kwargs.pop("out_indices", 3), feature_cls="getter"),
                                **{**model_args, **kwargs})


_TINY = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
_BASE = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)


@register_model
def jumbo_tiny(pretrained: bool = False, **kwargs) -> Jumbo:
    return _create("jumbo_tiny", pretrained, _TINY, **kwargs)


@register_model
def jumbo_base(pretrained: bool = False, **kwargs) -> Jumbo:
    return _create("jumbo_base", pretrained, _BASE, **kwargs)


@register_model
def locatjumbo_tiny(pretrained: bool = False, **kwargs) -> Jumbo:
    return _create("locatjumbo_tiny", pretrained, dict(_TINY, locat=True), **kwargs)


@register_model
def locatjumbo_base(pretrained: bool = False, **kwargs) -> Jumbo:
    return _create("locatjumbo_base", pretrained, dict(_BASE, locat=True), **kwargs)
