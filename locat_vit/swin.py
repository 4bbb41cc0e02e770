"""LocAt on Swin: timm's ``SwinTransformer`` with the Gaussian bias in every window attention and PRR
before the head (the published ``locatswin_tiny``, ``locatswin_base``).

Each window is its own patch grid: var and alpha come from the window's queries, the Gaussian is over
window-local positions with the window as the build grid (7 x 7: eps 0.1, variance range 49, never the
rate-2 mode) and no prefix tokens, and it is added to Swin's relative position bias and, in shifted
blocks, the shift mask, before the softmax. PRR runs over all tokens of the final (normed) feature
map with the last stage's heads. The state-dict keys are Swin's plus ``layers.i.blocks.j.attn.gaug.*``.

``attn_backend``: "triton" (the window kernel, ``locat_kernels.fused.window``: the relative position
bias and the shift mask read per tile, never expanded per window), "sdpa" (the three biases summed
into one dense mask for SDPA, the published path), "eager" (the softmax written out) or "auto" (triton
on CUDA where the kernel takes the window: at most 64 tokens).
"""
from __future__ import annotations

from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.swin_transformer import SwinTransformer, WindowAttention, checkpoint_filter_fn
from torch import Tensor, nn

from locat_kernels import locat_attention

from .attention import GaussianAugmentation
from .locatvit import default_cfg, patch_refinement

__all__ = ["LocAtSwin", "GaussianAugmentedWindowAttention", "add_gaussian_window_attention"]

SWIN_BACKENDS = ("auto", "triton", "sdpa", "eager")


@register_notrace_module
class GaussianAugmentedWindowAttention(nn.Module):
    """timm's ``WindowAttention`` with the Gaussian bias over each window: adopts its layers, its
    relative position bias table and index (same state-dict keys) and adds ``gaug``.

    ``forward(x, mask)``: x (num_windows * B, N, C) with N the window's area; mask (num_windows, N, N)
    of Swin's shifted blocks (0 / -100), or None.
    """

    def __init__(self, attn: WindowAttention, backend: str = "auto"):
        super().__init__()
        if attn.attn_drop.p > 0:
            raise ValueError("attention dropout is not supported by Gaussian-augmented attention (attn_drop_rate=0)")
        self.num_heads = attn.num_heads
        self.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        self.scale = attn.scale
        self.window_size, self.window_area = attn.window_size, attn.window_area
        for name, child in attn.named_children():  # qkv, attn_drop, proj, proj_drop, softmax
            self.add_module(name, child)
        self.relative_position_bias_table = attn.relative_position_bias_table
        self.register_buffer("relative_position_index", attn.relative_position_index, persistent=False)
        self.set_backend(backend)
        self.gaug = GaussianAugmentation(self.head_dim, self.window_size)

    # timm's own: the (1, H, N, N) bias from the table, and the resize that resamples the table
    _get_rel_pos_bias = WindowAttention._get_rel_pos_bias

    def set_window_size(self, window_size) -> None:
        """timm's resize of the window (and its table); the Gaussian's build grid follows the window."""
        WindowAttention.set_window_size(self, window_size)
        self.gaug.init_grid_size = tuple(self.window_size)

    def set_backend(self, backend: str) -> None:
        if backend not in SWIN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {SWIN_BACKENDS}, got {backend!r}")
        self.backend = backend

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B_, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B_, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # var and alpha from the window's queries (on the triton backend by their own kernel), the relative
        # position bias (H, N, N) shared by every window, the shift mask (nW, N, N) one per window position
        # with the batch running over the positions: locat_attention's attn_bias and window_mask
        backend = "reference" if self.backend == "eager" else self.backend
        x = locat_attention(q, k, v, *self.gaug.weights(), tuple(self.window_size),
                            init_grid_size=self.gaug.init_grid_size, scale=self.scale, backend=backend,
                            attn_bias=self._get_rel_pos_bias()[0], window_mask=mask)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))


def add_gaussian_window_attention(model: SwinTransformer, attn_backend: str) -> None:
    """Replace each block's window attention by a Gaussian-augmented one that keeps its weights."""
    for stage in model.layers:
        for blk in stage.blocks:
            ref = blk.attn.qkv.weight
            blk.attn = GaussianAugmentedWindowAttention(blk.attn, attn_backend).to(ref.device)


class LocAtSwin(SwinTransformer):
    """timm's ``SwinTransformer`` with Gaussian-augmented window attention in every block and PRR
    before the head. Keywords: Swin's, plus ``attn_backend`` ("auto", "triton", "sdpa", "eager")."""

    def __init__(self, attn_backend: str = "auto", **kwargs):
        super().__init__(**kwargs)
        add_gaussian_window_attention(self, attn_backend)

    def set_attn_backend(self, backend: str) -> None:
        for stage in self.layers:
            for blk in stage.blocks:
                blk.attn.set_backend(backend)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """PRR over all positions of the normed (B, H, W, C) features with the last stage's heads, then
        Swin's head."""
        B, H, W, C = x.shape
        x = patch_refinement(x.reshape(B, H * W, C), self.layers[-1].blocks[0].attn.num_heads).view(B, H, W, C)
        return super().forward_head(x, pre_logits=pre_logits)


default_cfgs = generate_default_cfgs({name: default_cfg(pool_size=(7, 7), classifier="head.fc")
                                      for name in ("locatswin_tiny", "locatswin_base")})


def _create(variant: str, pretrained: bool, model_args: dict, **kwargs) -> LocAtSwin:
    kwargs = {**model_args, **kwargs}
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs["depths"]))))
    return build_model_with_cfg(LocAtSwin, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)


@register_model
def locatswin_tiny(pretrained: bool = False, **kwargs) -> LocAtSwin:
    return _create("locatswin_tiny", pretrained,
                   dict(patch_size=4, window_size=7, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
                   **kwargs)


@register_model
def locatswin_base(pretrained: bool = False, **kwargs) -> LocAtSwin:
    return _create("locatswin_base", pretrained,
                   dict(patch_size=4, window_size=7, embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
                   **kwargs)
