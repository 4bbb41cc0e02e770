"""The Gaussian-augmented attention of LocAtViT in eager PyTorch: the one reference.

Everything else (the Triton kernels, the SDPA path, tests, benchmarks) is checked against these
functions. They compute in the precision of their inputs (float64 stays float64) and are
differentiable in every tensor argument. The formulas are in docs/method.md; the published constants
live in ``locat_kernels.gaussian``.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from .gaussian import gaussian_clamp, gaussian_eps, grid_positions, variance_scale, variance_shift

__all__ = ["gaussian_parameters", "gaussian_bias", "gaussian_attention_reference", "extra_bias"]


def gaussian_parameters(
    q_patches: Tensor,
    log_var_weight: Tensor,
    log_var_bias: Tensor,
    log_alpha_weight: Tensor,
    log_alpha_bias: Tensor,
    grid_size,
    *,
    init_grid_size=None,
    rate: int = 1,
) -> tuple[Tensor, Tensor]:
    """Per-query variances and amplitudes from the patch queries, as the published model makes them.

    ``var = coef * sigmoid(log_var(qp) - shift) * min(gh, gw) / min(gh0, gw0)`` (B, H, gh*gw, 2) and
    ``alpha = softplus(log_alpha(qp))`` (B, H, gh*gw), computed in float32 or better also under
    autocast. With ``rate`` > 1 (the published rate-2 training mode) qp is first averaged over
    rate x rate patch blocks and every patch of a block gets its block's values.

    Args:
        q_patches: (B, H, gh*gw, D) the patch queries (after q-norm), row-major.
        log_var_weight, log_var_bias: (2, D), (2): the block's ``gaug.log_var`` layer.
        log_alpha_weight, log_alpha_bias: (1, D), (1): the block's ``gaug.log_alpha`` layer.
        grid_size: (gh, gw) the current grid; init_grid_size: the build grid (default: grid_size).
    """
    B, H, NP, D = q_patches.shape
    gh, gw = grid_size
    init_grid_size = grid_size if init_grid_size is None else init_grid_size
    dtype = torch.promote_types(q_patches.dtype, torch.float32)
    with _no_autocast(q_patches.device):
        qp = q_patches.to(dtype)
        if rate > 1:
            qp = qp.reshape(B, H, gh // rate, rate, gw // rate, rate, D).mean(dim=(3, 5))
        log_var = F.linear(qp, log_var_weight.to(dtype), log_var_bias.to(dtype))
        log_alpha = F.linear(qp, log_alpha_weight.to(dtype), log_alpha_bias.to(dtype))
    var = torch.sigmoid(log_var - variance_shift(init_grid_size)) * variance_scale(grid_size, init_grid_size)
    alpha = F.softplus(log_alpha).squeeze(-1)
    if rate > 1:  # each block's values at its rate x rate patches
        var, alpha = (t.reshape(B, H, gh // rate, 1, gw // rate, 1, -1).expand(-1, -1, -1, rate, -1, rate, -1)
                      .reshape(B, H, NP, -1) for t in (var, alpha.unsqueeze(-1)))
        alpha = alpha.squeeze(-1)
    return var, alpha


def _no_autocast(device: torch.device):
    """Autocast off on ``device`` (the Gaussian layers run in float32 as published); a no-op where
    autocast has no such device type (meta)."""
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def gaussian_bias(
    var: Tensor,
    alpha: Tensor,
    grid_size,
    *,
    num_prefix_tokens: int = 0,
    init_grid_size=None,
    eps: float | None = None,
    rate: int = 1,
) -> Tensor:
    """The dense (B, H, N, N) Gaussian bias, N = num_prefix_tokens + gh*gw.

    ``bias[i, j] = alpha_i * exp(c_r / (var_i,r + eps) + c_c / (var_i,c + eps))`` for patch tokens
    ``i, j``, with ``c = max(-1/2 delta^2, cmin)`` per axis; zero on prefix rows and columns.

    Args:
        var: (B, H, gh*gw, 2) row and column variances of each patch query.
        alpha: (B, H, gh*gw) or (B, H, gh*gw, 1) amplitudes.
        grid_size: (gh, gw), the current patch grid (positions come from it).
        num_prefix_tokens: class/register tokens before the patches.
        init_grid_size: the grid the model was built for; sets eps and cmin. Defaults to grid_size.
        eps: overrides the eps derived from init_grid_size.
        rate: positions quantized to ``rate * (p // rate)`` (the published rate-2 training mode).
    """
    init_grid_size = grid_size if init_grid_size is None else init_grid_size
    eps = gaussian_eps(init_grid_size) if eps is None else eps
    cmin = gaussian_clamp(init_grid_size)
    if alpha.dim() == 4:
        alpha = alpha.squeeze(-1)
    dtype = torch.promote_types(var.dtype, alpha.dtype)
    pos = grid_positions(grid_size, rate, device=var.device, dtype=dtype)
    delta = pos[:, None, :] - pos[None, :, :]  # (Np, Np, 2)
    c = (-0.5 * delta * delta).clamp(min=cmin)
    var = var.to(dtype)
    exponent = c[..., 0] / (var[..., 0, None] + eps) + c[..., 1] / (var[..., 1, None] + eps)
    bias = alpha.to(dtype)[..., None] * torch.exp(exponent)
    p = num_prefix_tokens
    return torch.nn.functional.pad(bias, (p, 0, p, 0)) if p else bias


def gaussian_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    var: Tensor,
    alpha: Tensor,
    grid_size,
    *,
    num_prefix_tokens: int = 0,
    init_grid_size=None,
    eps: float | None = None,
    rate: int = 1,
    scale: float | None = None,
    attn_bias: Tensor | None = None,
    window_mask: Tensor | None = None,
) -> Tensor:
    """``softmax(scale * q k^T + gaussian_bias(...) + attn_bias + window_mask) v`` for q, k, v of
    shape (B, H, N, D).

    ``attn_bias`` (H, N, N) is added for every batch element (Swin's relative position bias);
    ``window_mask`` (nW, N, N) is added for batch element b as ``window_mask[b % nW]`` (Swin's shift
    mask, one per window position). Computed as eager PyTorch would in q's dtype (the bias in var's
    precision, then cast), so with float64 inputs it is the float64 truth and with bf16 inputs it is
    the eager baseline.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias = gaussian_bias(
        var, alpha, grid_size, num_prefix_tokens=num_prefix_tokens,
        init_grid_size=init_grid_size, eps=eps, rate=rate,
    )
    extra = extra_bias(attn_bias, window_mask, q.shape[0])
    if extra is not None:
        bias = bias + extra.to(bias.dtype)
    logits = (q * scale) @ k.transpose(-2, -1) + bias.to(q.dtype)
    return logits.softmax(dim=-1) @ v


def extra_bias(attn_bias: Tensor | None, window_mask: Tensor | None, batch: int) -> Tensor | None:
    """``attn_bias`` (H, N, N) plus ``window_mask`` (nW, N, N) repeated over the batch, as a
    (1 or B, 1 or H, N, N) tensor to add to the logits (None when both are None)."""
    if window_mask is None:
        return None if attn_bias is None else attn_bias[None]
    mask = window_mask.repeat(batch // window_mask.shape[0], 1, 1)[:, None]
    return mask if attn_bias is None else attn_bias[None] + mask
