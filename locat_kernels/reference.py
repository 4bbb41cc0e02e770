"""The Gaussian-augmented attention of LocAtViT in eager PyTorch: the one reference.

Everything else (the Triton kernels, the SDPA path, tests, benchmarks) is checked against these
functions. They compute in the precision of their inputs (float64 stays float64) and are
differentiable in every tensor argument. See SPEC section 2 for the formulas.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "gaussian_eps",
    "gaussian_clamp",
    "grid_positions",
    "gaussian_bias",
    "gaussian_attention_reference",
]

# float16's largest finite value is 65504; the published eps keeps the exponent's magnitude under it.
_EPS_LIMIT = 32500.0
_CLAMP_LIMIT = -6550.0


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    gh, gw = size
    return int(gh), int(gw)


def gaussian_eps(init_grid_size) -> float:
    """The eps added to the variances: 0.1, doubled while 0.5 * (max side - 1)^2 / eps^2 > 32500."""
    m = max(_pair(init_grid_size))
    eps = 0.1
    while 0.5 * (m - 1) ** 2 / eps**2 > _EPS_LIMIT:
        eps *= 2
    return eps


def gaussian_clamp(init_grid_size) -> float:
    """The lower clamp ``cmin`` of ``-1/2 delta^2``: ``max(-1/2 (max side - 1)^2, -6550)``."""
    m = max(_pair(init_grid_size))
    return max(-0.5 * (m - 1) ** 2, _CLAMP_LIMIT)


def grid_positions(grid_size, rate: int = 1, *, device=None, dtype=torch.float32) -> Tensor:
    """(gh*gw, 2) row and column of each patch in row-major order, quantized to ``rate * (p // rate)``."""
    gh, gw = _pair(grid_size)
    p = torch.arange(gh * gw, device=device)
    rows, cols = p // gw, p % gw
    pos = torch.stack((rows // rate * rate, cols // rate * rate), dim=-1)
    return pos.to(dtype)


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
) -> Tensor:
    """``softmax(scale * q k^T + gaussian_bias(...)) v`` for q, k, v of shape (B, H, N, D).

    Computed as eager PyTorch would in q's dtype (the bias in var's precision, then cast), so
    with float64 inputs it is the float64 truth and with bf16 inputs it is the eager baseline.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    bias = gaussian_bias(
        var, alpha, grid_size, num_prefix_tokens=num_prefix_tokens,
        init_grid_size=init_grid_size, eps=eps, rate=rate,
    )
    logits = (q * scale) @ k.transpose(-2, -1) + bias.to(q.dtype)
    return logits.softmax(dim=-1) @ v
