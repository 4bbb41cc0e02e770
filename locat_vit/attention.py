"""Gaussian-augmented attention (GAug): timm's attention plus LocAtViT's per-query Gaussian bias.

The published parameter names are kept (``attn.gaug.log_var``, ``attn.gaug.log_alpha``) so the
published checkpoints load with ``strict=True``. The attention, with var and alpha made from the
queries by those layers, is ``locat_kernels.locat_attention``.
"""
from __future__ import annotations

import torch.fx
from timm.layers import register_notrace_module
from torch import Tensor, nn

from locat_kernels import gaussian_parameters, locat_attention, locat_attention_qkvpacked

ATTN_BACKENDS = ("auto", "triton", "sdpa", "eager")
GAUSSIAN_MODES = ("published", "exact")


def refuse_masks(attn_mask, is_causal, who: str = "Gaussian-augmented attention") -> None:
    """A ValueError when an attention mask or causal masking is asked of a model that has none. A
    module that calls it registers it with ``torch.fx.wrap("refuse_masks")``, so FX tracing records
    the call instead of evaluating the test on its proxies."""
    if attn_mask is not None or is_causal:
        raise ValueError(f"{who} takes no attn_mask or is_causal")


# torch.fx.symbolic_trace records these as calls instead of running them on its proxies.
torch.fx.wrap("refuse_masks")
torch.fx.wrap("locat_attention")
torch.fx.wrap("locat_attention_qkvpacked")


class GaussianAugmentation(nn.Module):
    """The two per-block layers of the Gaussian, shared by all heads (published names ``log_var``,
    ``log_alpha``). ``forward(qp, grid_size)`` gives var (B, H, Np, 2) and alpha (B, H, Np) by
    ``locat_kernels.gaussian_parameters``; the attention module hands the layers to
    ``locat_attention`` instead, which makes them inside the fused kernels on the triton backend.
    """

    def __init__(self, head_dim: int, init_grid_size: tuple[int, int]):
        super().__init__()
        self.log_var = nn.Linear(head_dim, 2)
        self.log_alpha = nn.Linear(head_dim, 1)
        self.init_grid_size = tuple(init_grid_size)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # timm's ViT init: at init var ~ 1 (one patch) and alpha ~ softplus(0) = 0.693.
        for layer in (self.log_var, self.log_alpha):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.log_var.weight, self.log_var.bias, self.log_alpha.weight, self.log_alpha.bias

    def forward(self, qp: Tensor, grid_size: tuple[int, int], rate: int = 1) -> tuple[Tensor, Tensor]:
        return gaussian_parameters(qp, *self.weights(), grid_size, init_grid_size=self.init_grid_size, rate=rate)


@register_notrace_module  # a leaf for timm's FX tracer (create_feature_extractor, feature_cls="fx")
class GaussianAugmentedAttention(nn.Module):
    """A timm ``Attention`` with the Gaussian bias: adopts its layers (same state-dict keys) and adds ``gaug``.

    Args:
        attn: the timm ``Attention`` whose qkv, norms and projection this module takes over.
        init_grid_size: the patch grid the model was built for (224 px, patch 16: (14, 14)).
        num_prefix_tokens: class and register tokens before the patches.
        backend: "triton" (fused kernel), "sdpa" (dense bias into SDPA, the published path), "eager"
            (the reference), or "auto": triton where the fused kernels take the input
            (``locat_kernels.resolve_backend``), sdpa elsewhere.
        gaussian_mode: "published" uses the rate-2 approximation in training when the build grid's
            first side is >= 32 (docs/method.md section 2); "exact" always uses the exact formula.

    ``grid_size`` (the current grid) is set by the model before each forward when sizes vary.
    """

    def __init__(self, attn: nn.Module, init_grid_size, num_prefix_tokens: int,
                 backend: str = "auto", gaussian_mode: str = "published"):
        super().__init__()
        if gaussian_mode not in GAUSSIAN_MODES:
            raise ValueError(f"gaussian_mode must be one of {GAUSSIAN_MODES}, got {gaussian_mode!r}")
        if getattr(attn, "attn_drop", None) is not None and attn.attn_drop.p > 0:
            raise ValueError("attention dropout is not supported by Gaussian-augmented attention (attn_drop_rate=0)")
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scale
        for name, child in attn.named_children():  # qkv, q_norm, k_norm, norm, proj, (gate), ...
            self.add_module(name, child)
        if "gate" not in self._modules:
            self.gate = None  # a plain attribute: a missing module's lookup costs the host an exception per call
        self.init_grid_size = tuple(init_grid_size)
        self.grid_size = self.init_grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.set_backend(backend)
        self.gaussian_mode = gaussian_mode
        self.gaug = GaussianAugmentation(self.head_dim, self.init_grid_size)

    def set_backend(self, backend: str) -> None:
        if backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {backend!r}")
        self.backend = backend

    def set_build_grid(self, grid_size) -> None:
        """As if built for ``grid_size`` (``LocAtViT.set_input_size``): the build grid and the current one."""
        self.init_grid_size = self.grid_size = self.gaug.init_grid_size = tuple(grid_size)

    def rate(self) -> int:
        """2 in the published training approximation at large build grids, else 1."""
        published = self.gaussian_mode == "published" and self.training and self.init_grid_size[0] >= 32
        return 2 if published else 1

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        refuse_masks(attn_mask, is_causal)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        rate = self.rate()
        if rate == 2 and (self.grid_size[0] % 2 or self.grid_size[1] % 2):
            raise ValueError(f"the published rate-2 training mode needs even grid sides, got {self.grid_size}; "
                             f"use gaussian_mode='exact'")
        kwargs = dict(num_prefix_tokens=self.num_prefix_tokens, init_grid_size=self.init_grid_size, rate=rate,
                      scale=self.scale, backend="reference" if self.backend == "eager" else self.backend)
        if type(self.q_norm) is nn.Identity and type(self.k_norm) is nn.Identity:
            # one tensor in: the kernels write its gradient in the qkv layer's layout (no stack, no copy)
            x = locat_attention_qkvpacked(qkv, *self.gaug.weights(), self.grid_size, **kwargs)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            x = locat_attention(self.q_norm(q), self.k_norm(k), v, *self.gaug.weights(), self.grid_size, **kwargs)
        x = self.norm(x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))
        if gate is not None:
            x = x * gate
        x = self.proj(x)
        return self.proj_drop(x)
