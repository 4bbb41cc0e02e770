"""``gaussian_attention``: the public op, its argument checks, backends and the custom op.

Layout: the public function (the contract), then the checks, then the ``torch.library`` custom ops
``locat::gaussian_attention`` / ``locat::gaussian_attention_backward`` with fake implementations
(so ``torch.compile(fullgraph=True)`` traces through them) and the autograd registered on them, which
compiled graphs use; eager calls take a plain ``autograd.Function`` around the same launchers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import configs, triton_attention
from .reference import _pair, gaussian_attention_reference, gaussian_bias, gaussian_clamp, gaussian_eps

__all__ = ["gaussian_attention", "BACKENDS"]

BACKENDS = ("auto", "triton", "reference", "sdpa")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TRITON_HEAD_DIMS = (16, 32, 64, 128)


def gaussian_attention(
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
    backend: str = "auto",
    check_values: bool = False,
) -> Tensor:
    """Self-attention with LocAtViT's per-query Gaussian bias toward nearby patches.

    ``out = softmax(scale * q k^T + bias) v`` with, for patch tokens i, j (prefix rows and columns
    get no bias),
    ``bias[i, j] = alpha_i * exp(c_r(i,j) / (var_i,r + eps) + c_c(i,j) / (var_i,c + eps))`` and
    ``c_r = max(-1/2 (row_i - row_j)^2, cmin)``, likewise for columns (SPEC section 2).

    Args:
        q, k, v: (B, H, N, D), N = num_prefix_tokens + gh * gw. Any strides; the triton backend needs
            a unit stride on the last dimension (timm's q/k/v views of one qkv tensor have it).
        var: (B, H, gh*gw, 2) row and column variances of each patch query (> 0), float32 or q's dtype.
        alpha: (B, H, gh*gw) or (B, H, gh*gw, 1) amplitudes, float32 or q's dtype.
        grid_size: (gh, gw) current patch grid, or an int for a square one; patches are row-major.
        num_prefix_tokens: class/register tokens before the patches.
        init_grid_size: the grid the model was built for; it sets eps and the clamp cmin (default:
            grid_size). Rescaling var for a new grid is the caller's job.
        eps: overrides the eps derived from init_grid_size.
        rate: positions quantized to ``rate * (p // rate)`` for queries and keys (published rate-2
            training mode); must divide both grid sides.
        scale: logit scale, default ``D ** -0.5``.
        backend: "triton" (the fused kernels; CUDA, or CPU under ``TRITON_INTERPRET=1``), "reference"
            (eager, materializes the bias), "sdpa" (dense bias into SDPA, the published path), or
            "auto": triton on CUDA and under the interpreter, the reference elsewhere.
        check_values: also check that var is positive and finite and alpha finite. Off by default:
            it reads the values back to the host, a device synchronization on every call.

    Returns:
        (B, H, N, D) in q's dtype. The triton backend stores it as (B, N, H, D) and returns the
        transposed view, so merging heads afterwards is free. fp32 inputs use exact (non-tf32) dot
        products. Gradients flow to q, k, v, var and alpha. Shapes, dtypes, devices and grids are
        always checked (no device sync); values only with ``check_values=True``.
    """
    gh, gw = _check(q, k, v, var, alpha, grid_size, num_prefix_tokens, rate, backend)
    if check_values:
        _check_values(var, alpha)
    init_grid_size = (gh, gw) if init_grid_size is None else _pair(init_grid_size)
    eps = gaussian_eps(init_grid_size) if eps is None else float(eps)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if backend == "auto":
        backend = "triton" if q.is_cuda or configs.INTERPRET else "reference"
    if backend == "reference":
        return gaussian_attention_reference(
            q, k, v, var, alpha, (gh, gw), num_prefix_tokens=num_prefix_tokens,
            init_grid_size=init_grid_size, eps=eps, rate=rate, scale=scale)
    if backend == "sdpa":
        bias = gaussian_bias(var, alpha, (gh, gw), num_prefix_tokens=num_prefix_tokens,
                             init_grid_size=init_grid_size, eps=eps, rate=rate)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
    _check_triton(q, k, v)
    if alpha.dim() == 4:
        alpha = alpha.squeeze(-1)
    params = (gw, num_prefix_tokens, eps, gaussian_clamp(init_grid_size), rate, scale)
    if torch.compiler.is_compiling():
        return torch.ops.locat.gaussian_attention(q, k, v, var, alpha, *params)[0]
    return _GaussianAttention.apply(q, k, v, var, alpha, *params)


# ----------------------------------------------------------------------------------------------
# Argument checks: shapes, dtypes and devices only, so nothing synchronizes the device.


def _check(q, k, v, var, alpha, grid_size, num_prefix_tokens, rate, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    for name, t in (("q", q), ("k", k), ("v", v), ("var", var), ("alpha", alpha)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D (B, H, N, D), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v), ("var", var), ("alpha", alpha)):
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}")
    for name, t in (("var", var), ("alpha", alpha)):
        if t.dtype not in (torch.float32, q.dtype):
            raise TypeError(f"{name} must be float32 or q's dtype {q.dtype}, got {t.dtype}")
    try:
        gh, gw = _pair(grid_size)
    except (TypeError, ValueError):
        raise ValueError(f"grid_size must be an int or a pair (gh, gw), got {grid_size!r}") from None
    if gh < 1 or gw < 1:
        raise ValueError(f"grid sides must be >= 1, got grid_size={(gh, gw)}")
    if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    if not isinstance(rate, int) or rate < 1 or gh % rate or gw % rate:
        raise ValueError(f"rate must be an int >= 1 dividing both grid sides {(gh, gw)}, got {rate!r}")
    B, H, N, _ = q.shape
    if N != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"q has N={N} tokens but num_prefix_tokens + gh*gw = {num_prefix_tokens} + {gh}*{gw} "
            f"= {num_prefix_tokens + gh * gw}")
    np_ = gh * gw
    if var.shape != (B, H, np_, 2):
        raise ValueError(f"var must have shape (B, H, gh*gw, 2) = {(B, H, np_, 2)}, got {tuple(var.shape)}")
    if alpha.shape not in ((B, H, np_), (B, H, np_, 1)):
        raise ValueError(
            f"alpha must have shape (B, H, gh*gw) = {(B, H, np_)} or {(B, H, np_, 1)}, got {tuple(alpha.shape)}")
    return gh, gw


def _check_values(var, alpha):
    bad_var = int((~(torch.isfinite(var) & (var > 0))).sum())
    bad_alpha = int((~torch.isfinite(alpha)).sum())
    if bad_var or bad_alpha:
        raise ValueError(f"var must be positive and finite and alpha finite: {bad_var} bad var values, "
                         f"{bad_alpha} bad alpha values")


def _check_triton(q, k, v):
    if not (q.is_cuda or (configs.INTERPRET and q.device.type == "cpu")):
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
            f"import); q is on {q.device}. Use backend='reference' or 'sdpa' there.")
    if q.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports dtypes {TRITON_DTYPES}, got {q.dtype}")
    if q.shape[-1] not in TRITON_HEAD_DIMS:
        raise ValueError(f"backend='triton' supports head_dim in {TRITON_HEAD_DIMS}, got {q.shape[-1]}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(
                f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}; "
                f"call .contiguous() on it first")


# ----------------------------------------------------------------------------------------------
# Custom ops: opaque to torch.compile, described to it by the fake implementations.


def _like_out(q: Tensor) -> Tensor:
    B, H, N, D = q.shape
    return q.new_empty(B, N, H, D).transpose(1, 2)


@torch.library.custom_op("locat::gaussian_attention", mutates_args=())
def _attention_op(
    q: Tensor, k: Tensor, v: Tensor, var: Tensor, alpha: Tensor,
    gw: int, num_prefix_tokens: int, eps: float, cmin: float, rate: int, scale: float,
) -> tuple[Tensor, Tensor]:
    return triton_attention.attention_forward(q, k, v, var, alpha, gw, num_prefix_tokens, eps, cmin, rate, scale)


@_attention_op.register_fake
def _(q, k, v, var, alpha, gw, num_prefix_tokens, eps, cmin, rate, scale):
    B, H, N, _ = q.shape
    return _like_out(q), q.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("locat::gaussian_attention_backward", mutates_args=())
def _attention_backward_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, var: Tensor, alpha: Tensor, out: Tensor, lse: Tensor,
    gw: int, num_prefix_tokens: int, eps: float, cmin: float, rate: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return triton_attention.attention_backward(
        do, q, k, v, var, alpha, out, lse, gw, num_prefix_tokens, eps, cmin, rate, scale)


@_attention_backward_op.register_fake
def _(do, q, k, v, var, alpha, out, lse, gw, num_prefix_tokens, eps, cmin, rate, scale):
    return _like_out(q), _like_out(q), _like_out(q), var.new_empty(var.shape), alpha.new_empty(alpha.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, var, alpha, *ctx.params = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, var, alpha, out, lse)


def _backward(ctx, dout, _dlse):
    # lse is an internal output: its gradient is ignored.
    q, k, v, var, alpha, out, lse = ctx.saved_tensors
    grads = _attention_backward_op(dout, q, k, v, var, alpha, out, lse, *ctx.params)
    return (*grads, None, None, None, None, None, None)


_attention_op.register_autograd(_backward, setup_context=_setup_context)


class _GaussianAttention(torch.autograd.Function):
    """Eager mode: the same launchers without the custom-op dispatch. Measured host time per call:
    forward 317 us through the custom op, 123 us this way (H100 machine, tiny shape); forward and
    backward with the kernels stubbed out, 159 us and 71 us (desktop CPU). A large share of a small
    block's time."""

    @staticmethod
    def forward(ctx, q, k, v, var, alpha, *params):
        out, lse = triton_attention.attention_forward(q, k, v, var, alpha, *params)
        ctx.save_for_backward(q, k, v, var, alpha, out, lse)
        ctx.params = params
        return out

    @staticmethod
    def backward(ctx, dout):
        grads = triton_attention.attention_backward(dout, *ctx.saved_tensors, *ctx.params)
        return (*grads,) + (None,) * len(ctx.params)
