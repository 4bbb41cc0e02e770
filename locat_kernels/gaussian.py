"""The published constants of LocAtViT's Gaussian and the helpers that derive them: one home, imported
by the reference and the fused path alike.

Formulas (docs/method.md): for patch tokens i, j on a (gh, gw) grid,
``bias[i, j] = alpha_i * exp(c_r(i,j) / (var_i,r + eps) + c_c(i,j) / (var_i,c + eps))`` with
``c = max(-1/2 delta^2, cmin)`` per axis, and per query
``var = coef * sigmoid(log_var(q) - shift) * min(gh, gw) / min(gh0, gw0)``,
``alpha = softplus(log_alpha(q))``, ``coef = max(gh0, gw0)^2``, ``shift = log(coef - 1)`` (0 if coef <= 2).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "EPS_LIMIT",
    "CLAMP_LIMIT",
    "as_pair",
    "gaussian_eps",
    "gaussian_clamp",
    "variance_coef",
    "variance_shift",
    "variance_scale",
    "grid_positions",
]

# float16's largest finite value is 65504. eps is doubled until the largest exponent magnitude,
# 1/2 (side - 1)^2 / eps^2 (the derivative in var at var = 0), stays under half of it (two axes add).
EPS_LIMIT = 32500.0
# The clamp of -1/2 delta^2: with the smallest eps (0.1) a term of -6550 / 0.1 stays inside float16.
# It bites only when the current grid is larger than the build grid (1/2 (side - 1)^2 > 6550 or the
# current side exceeds the build side).
CLAMP_LIMIT = -6550.0


def as_pair(size) -> tuple[int, int]:
    """(gh, gw) from an int (square) or a pair."""
    if isinstance(size, int):
        return size, size
    gh, gw = size
    return int(gh), int(gw)


def gaussian_eps(init_grid_size) -> float:
    """The eps added to the variances: 0.1, doubled while 0.5 * (max side - 1)^2 / eps^2 > EPS_LIMIT."""
    m = max(as_pair(init_grid_size))
    eps = 0.1
    while 0.5 * (m - 1) ** 2 / eps**2 > EPS_LIMIT:
        eps *= 2
    return eps


def gaussian_clamp(init_grid_size) -> float:
    """The lower clamp ``cmin`` of ``-1/2 delta^2``: ``max(-1/2 (max side - 1)^2, CLAMP_LIMIT)``."""
    m = max(as_pair(init_grid_size))
    return max(-0.5 * (m - 1) ** 2, CLAMP_LIMIT)


def variance_coef(init_grid_size) -> float:
    """``coef = max(gh0, gw0)^2``: the largest variance (sigmoid -> 1) at the build grid."""
    return float(max(as_pair(init_grid_size)) ** 2)


def variance_shift(init_grid_size) -> float:
    """``shift = log(coef - 1)`` (0 if coef <= 2), so that a zero input gives var = 1."""
    coef = variance_coef(init_grid_size)
    return math.log(coef - 1) if coef > 2 else 0.0


def variance_scale(grid_size, init_grid_size) -> float:
    """``coef * min(gh, gw) / min(gh0, gw0)``: the factor on the sigmoid, with the published linear
    rescale for a grid other than the build grid."""
    return variance_coef(init_grid_size) * min(as_pair(grid_size)) / min(as_pair(init_grid_size))


def grid_positions(grid_size, rate: int = 1, *, device=None, dtype=torch.float32) -> Tensor:
    """(gh*gw, 2) row and column of each patch in row-major order, quantized to ``rate * (p // rate)``."""
    gh, gw = as_pair(grid_size)
    p = torch.arange(gh * gw, device=device)
    rows, cols = p // gw, p % gw
    pos = torch.stack((rows // rate * rate, cols // rate * rate), dim=-1)
    return pos.to(dtype)
