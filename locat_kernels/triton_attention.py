"""Triton kernels of the fused Gaussian attention, and their launchers.

The bias ``alpha_i * exp(c_r / (var_i,r + eps) + c_c / (var_i,c + eps))`` is computed in registers
from per-row coefficients and the key index: no (N, N) tensor exists anywhere. Everything runs in
log2 units (``exp2``, with log2(e) folded into the scale, the coefficients and the amplitude).

Launchers (top of this file; shapes as in ``locat_kernels.attention.gaussian_attention``):

- ``attention_forward(...) -> (out, lse)``: out (B, H, N, D), stored as (B, N, H, D) and returned
  transposed, so the caller's ``out.transpose(1, 2).reshape(B, N, H * D)`` is free; lse (B, H, N)
  float32, the row log-sum-exp in log2 units.
- ``attention_backward(...) -> (dq, dk, dv, dvar, dalpha)``: two launches. The dq kernel owns query
  rows: it writes ``delta = rowsum(dO * O)``, dq, and the row reductions dvar and dalpha, so no
  atomics are needed and the result is deterministic. The dk/dv kernel owns key columns.

Kernels say their grid in their docstrings. Variants are constexpr flags: ``HAS_PREFIX``,
``RATE`` (position quantization), ``EVEN_N`` (no bounds masks), ``DOT_PRECISION``; block sizes
come from ``configs.launch_config``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the same, for use inside kernels

# Tests set this: every output starts as NaN, so an element a kernel fails to write shows.
POISON_OUTPUTS = False


def attention_forward(q, k, v, var, alpha, gw, num_prefix_tokens, eps, cmin, rate, scale):
    """Fused forward. q, k, v (B, H, N, D) with unit last stride; var (B, H, Np, 2); alpha (B, H, Np)."""
    B, H, N, D = q.shape
    out = _empty((B, N, H, D), q).transpose(1, 2)
    lse = _empty((B, H, N), q, torch.float32)
    cfg = configs.launch_config("forward", D, N, q.dtype)
    _forward_kernel[(triton.cdiv(N, cfg["BLOCK_M"]) * B * H,)](
        q, k, v, var, alpha, out, lse,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        *var.stride(), *alpha.stride(),
        H, N, gw, num_prefix_tokens, scale * LOG2E, eps, cmin,
        **_variant(q, num_prefix_tokens, rate, cfg), **cfg,
    )
    return out, lse


def attention_backward(do, q, k, v, var, alpha, out, lse, gw, num_prefix_tokens, eps, cmin, rate, scale):
    """Gradients of the fused attention: dq, dk, dv like q (same layout as out), dvar like var, dalpha like alpha."""
    B, H, N, D = q.shape
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = _empty((B, H, N), q, torch.float32)
    dq = _empty((B, N, H, D), q).transpose(1, 2)
    dk = _empty((B, N, H, D), q).transpose(1, 2)
    dv = _empty((B, N, H, D), q).transpose(1, 2)
    dvar = _empty(var.shape, q, torch.float32)
    dalpha = _empty(alpha.shape, q, torch.float32)
    cfg = configs.launch_config("backward_dq", D, N, q.dtype)
    _backward_dq_kernel[(triton.cdiv(N, cfg["BLOCK_M"]) * B * H,)](
        q, k, v, var, alpha, out, do, lse, delta, dq, dvar, dalpha,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *do.stride()[:3],
        *dq.stride()[:3], *var.stride(), *alpha.stride(), *dvar.stride(), *dalpha.stride(),
        H, N, gw, num_prefix_tokens, scale * LOG2E, scale, eps, cmin,
        **_variant(q, num_prefix_tokens, rate, cfg), **cfg,
    )
    cfg = configs.launch_config("backward_dkdv", D, N, q.dtype)
    _backward_dkdv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]) * B * H,)](
        q, k, v, var, alpha, do, lse, delta, dk, dv,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dk.stride()[:3], *dv.stride()[:3], *var.stride(), *alpha.stride(),
        H, N, gw, num_prefix_tokens, scale * LOG2E, scale, eps, cmin,
        **_variant(q, num_prefix_tokens, rate, cfg), **cfg,
    )
    return dq, dk, dv, dvar.to(var.dtype), dalpha.to(alpha.dtype)


def _empty(shape, like, dtype=None):
    out = torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _variant(q, num_prefix_tokens, rate, cfg) -> dict:
    """The constexpr flags of one launch."""
    return dict(
        D=q.shape[-1], HAS_PREFIX=num_prefix_tokens > 0, RATE=rate, EVEN_N=configs.even_n(q.shape[2], cfg),
        # fp32 inputs get exact products (no tf32); the flag is ignored for fp16/bf16 operands.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )


# ----------------------------------------------------------------------------------------------
# Shared pieces, inlined into each kernel.


@triton.jit
def _positions(offs, N, GW, P, RATE: tl.constexpr):
    """Row and column (float32) of tokens ``offs``, quantized to RATE, and whether each is a patch."""
    p = offs - P
    is_patch = (p >= 0) & (offs < N)
    p = tl.where(is_patch, p, 0)
    row = (p // GW) // RATE * RATE
    col = (p % GW) // RATE * RATE
    return row.to(tl.float32), col.to(tl.float32), is_patch


@triton.jit
def _row_coefficients(var, alpha, offs_m, N, GW, eps,
                      stride_varn, stride_varc, stride_an, P, RATE: tl.constexpr):
    """Per query row: position, ``inv = log2(e) / (var + eps)`` per axis, and alpha (0 off patches).

    ``var`` and ``alpha`` point at this program's (batch, head).
    """
    row, col, is_patch = _positions(offs_m, N, GW, P, RATE)
    p = tl.where(is_patch, offs_m - P, 0)
    p_var = var + p * stride_varn
    inv_r = _LOG2E / (tl.load(p_var, mask=is_patch, other=1.0).to(tl.float32) + eps)
    inv_c = _LOG2E / (tl.load(p_var + stride_varc, mask=is_patch, other=1.0).to(tl.float32) + eps)
    a = tl.load(alpha + p * stride_an, mask=is_patch, other=0.0).to(tl.float32)
    return row, col, inv_r, inv_c, a, is_patch


@triton.jit
def _gauss_exponents(row_q, col_q, inv_r, inv_c, row_k, col_k, cmin):
    """``e = max(-1/2 d^2, cmin) * inv`` per axis, in log2 units; inputs broadcast to one tile."""
    dr = row_q - row_k
    dc = col_q - col_k
    e_r = tl.maximum(-0.5 * dr * dr, cmin) * inv_r
    e_c = tl.maximum(-0.5 * dc * dc, cmin) * inv_c
    return e_r, e_c


# ----------------------------------------------------------------------------------------------
# Forward.


@triton.jit
def _forward_kernel(
    q, k, v, var, alpha, o, lse,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    H, N, GW, P, qk_scale, eps, cmin,
    D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
):
    """grid: (cdiv(N, BLOCK_M) * B * H,), query tiles fastest so neighbours share K/V in L2.

    One pass over the keys: logits, Gaussian bias, online softmax, P @ V. Stores out and lse.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_m = offs_m < N

    p_q = q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    b_q = tl.load(p_q) if EVEN_N else tl.load(p_q, mask=m_m[:, None], other=0.0)
    row_q, col_q, inv_r, inv_c, a, _ = _row_coefficients(
        var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah,
        offs_m, N, GW, eps, stride_varn, stride_varc, stride_an, P, RATE)
    amp = a * _LOG2E

    k_base = k + b * stride_kb + h * stride_kh
    v_base = v + b * stride_vb + h * stride_vh
    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        m_n = offs_n < N
        p_k = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        p_v = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if EVEN_N:
            b_k = tl.load(p_k)
            b_v = tl.load(p_v)
        else:
            b_k = tl.load(p_k, mask=m_n[:, None], other=0.0)
            b_v = tl.load(p_v, mask=m_n[:, None], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale

        row_k, col_k, is_patch_k = _positions(offs_n, N, GW, P, RATE)
        e_r, e_c = _gauss_exponents(row_q[:, None], col_q[:, None], inv_r[:, None], inv_c[:, None],
                                    row_k[None, :], col_k[None, :], cmin)
        b_bias = amp[:, None] * tl.exp2(e_r + e_c)
        if HAS_PREFIX:
            b_bias = tl.where(is_patch_k[None, :], b_bias, 0.0)
        b_s += b_bias
        if not EVEN_N:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))

        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_corr = tl.exp2(b_m - b_m_new)
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_corr + tl.sum(b_p, 1)
        b_acc = b_acc * b_corr[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
        b_m = b_m_new

    b_acc = b_acc / b_l[:, None]
    p_o = o + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    p_lse = lse + bh.to(tl.int64) * N + offs_m
    if EVEN_N:
        tl.store(p_o, b_acc.to(o.dtype.element_ty))
        tl.store(p_lse, b_m + tl.log2(b_l))
    else:
        tl.store(p_o, b_acc.to(o.dtype.element_ty), mask=m_m[:, None])
        tl.store(p_lse, b_m + tl.log2(b_l), mask=m_m)


# ----------------------------------------------------------------------------------------------
# Backward: dS = P * (dP - delta), dP = dO V^T, delta = rowsum(dO * O).


@triton.jit
def _backward_dq_kernel(
    q, k, v, var, alpha, o, do, lse, delta, dq, dvar, dalpha,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    stride_dvarb, stride_dvarh, stride_dvarn, stride_dvarc, stride_dab, stride_dah, stride_dan,
    H, N, GW, P, qk_scale, scale, eps, cmin,
    D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
):
    """grid: (cdiv(N, BLOCK_M) * B * H,), one program per (query tile, batch*head).

    Owns its query rows: writes delta, then loops over all keys for dq and the row reductions
    ``dalpha_i = sum_j dS_ij g_ij`` and ``dvar_i = -alpha_i / (var_i + eps)^2 sum_j dS_ij g_ij c_ij``.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_m = offs_m < N

    p_q = q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
    p_o = o + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_on + offs_d[None, :]
    p_do = do + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_don + offs_d[None, :]
    p_lse = lse + bh.to(tl.int64) * N + offs_m
    if EVEN_N:
        b_q = tl.load(p_q)
        b_o = tl.load(p_o)
        b_do = tl.load(p_do)
        b_lse = tl.load(p_lse)
    else:
        b_q = tl.load(p_q, mask=m_m[:, None], other=0.0)
        b_o = tl.load(p_o, mask=m_m[:, None], other=0.0)
        b_do = tl.load(p_do, mask=m_m[:, None], other=0.0)
        b_lse = tl.load(p_lse, mask=m_m, other=0.0)
    b_delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), 1)
    tl.store(delta + bh.to(tl.int64) * N + offs_m, b_delta, mask=m_m)

    row_q, col_q, inv_r, inv_c, a, is_patch_q = _row_coefficients(
        var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah,
        offs_m, N, GW, eps, stride_varn, stride_varc, stride_an, P, RATE)
    amp = a * _LOG2E

    k_base = k + b * stride_kb + h * stride_kh
    v_base = v + b * stride_vb + h * stride_vh
    b_dq = tl.zeros([BLOCK_M, D], tl.float32)
    b_dalpha = tl.zeros([BLOCK_M], tl.float32)  # sum_j dS g
    b_sum_r = tl.zeros([BLOCK_M], tl.float32)  # sum_j dS g e_r
    b_sum_c = tl.zeros([BLOCK_M], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        m_n = offs_n < N
        p_k = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
        p_v = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
        if EVEN_N:
            b_k = tl.load(p_k)
            b_v = tl.load(p_v)
        else:
            b_k = tl.load(p_k, mask=m_n[:, None], other=0.0)
            b_v = tl.load(p_v, mask=m_n[:, None], other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale

        row_k, col_k, is_patch_k = _positions(offs_n, N, GW, P, RATE)
        e_r, e_c = _gauss_exponents(row_q[:, None], col_q[:, None], inv_r[:, None], inv_c[:, None],
                                    row_k[None, :], col_k[None, :], cmin)
        b_g = tl.exp2(e_r + e_c)
        if HAS_PREFIX:
            b_g = tl.where(is_patch_k[None, :], b_g, 0.0)
        b_p = tl.exp2(b_s + amp[:, None] * b_g - b_lse[:, None])
        if not EVEN_N:
            b_p = tl.where(m_n[None, :], b_p, 0.0)

        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dsg = b_ds * b_g
        b_dalpha += tl.sum(b_dsg, 1)
        b_sum_r += tl.sum(b_dsg * e_r, 1)
        b_sum_c += tl.sum(b_dsg * e_c, 1)
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)

    p_dq = dq + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    tl.store(p_dq, (b_dq * scale).to(dq.dtype.element_ty), mask=m_m[:, None])

    # e = c * inv, inv = log2(e) / (var + eps)  =>  c / (var + eps)^2 = e * inv / log2(e)^2.
    p = tl.where(is_patch_q, offs_m - P, 0)
    p_dvar = dvar + b * stride_dvarb + h * stride_dvarh + p * stride_dvarn
    scale_r = -a * inv_r / (_LOG2E * _LOG2E)
    scale_c = -a * inv_c / (_LOG2E * _LOG2E)
    tl.store(p_dvar, b_sum_r * scale_r, mask=is_patch_q)
    tl.store(p_dvar + stride_dvarc, b_sum_c * scale_c, mask=is_patch_q)
    tl.store(dalpha + b * stride_dab + h * stride_dah + p * stride_dan, b_dalpha, mask=is_patch_q)


@triton.jit
def _backward_dkdv_kernel(
    q, k, v, var, alpha, do, lse, delta, dk, dv,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    H, N, GW, P, qk_scale, scale, eps, cmin,
    D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr,
):
    """grid: (cdiv(N, BLOCK_N) * B * H,), one program per (key tile, batch*head).

    Owns its key rows and loops over all queries, in the transposed orientation (keys x queries):
    ``dv = P^T dO``, ``dk = scale * dS^T q``. Needs the delta written by the dq kernel.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    bh = pid // num_n
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_n = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    m_n = offs_n < N

    p_k = k + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
    p_v = v + b * stride_vb + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    if EVEN_N:
        b_k = tl.load(p_k)
        b_v = tl.load(p_v)
    else:
        b_k = tl.load(p_k, mask=m_n[:, None], other=0.0)
        b_v = tl.load(p_v, mask=m_n[:, None], other=0.0)
    row_k, col_k, is_patch_k = _positions(offs_n, N, GW, P, RATE)

    q_base = q + b * stride_qb + h * stride_qh
    do_base = do + b * stride_dob + h * stride_doh
    var_base = var + b * stride_varb + h * stride_varh
    alpha_base = alpha + b * stride_ab + h * stride_ah
    row_base = bh.to(tl.int64) * N
    b_dk = tl.zeros([BLOCK_N, D], tl.float32)
    b_dv = tl.zeros([BLOCK_N, D], tl.float32)
    for start_m in range(0, N, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_m = offs_m < N
        p_q = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
        p_do = do_base + offs_m[:, None] * stride_don + offs_d[None, :]
        if EVEN_N:
            b_q = tl.load(p_q)
            b_do = tl.load(p_do)
            b_lse = tl.load(lse + row_base + offs_m)
            b_delta = tl.load(delta + row_base + offs_m)
        else:
            b_q = tl.load(p_q, mask=m_m[:, None], other=0.0)
            b_do = tl.load(p_do, mask=m_m[:, None], other=0.0)
            b_lse = tl.load(lse + row_base + offs_m, mask=m_m, other=0.0)
            b_delta = tl.load(delta + row_base + offs_m, mask=m_m, other=0.0)
        row_q, col_q, inv_r, inv_c, a, _ = _row_coefficients(
            var_base, alpha_base, offs_m, N, GW, eps, stride_varn, stride_varc, stride_an, P, RATE)

        b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION) * qk_scale
        e_r, e_c = _gauss_exponents(row_q[None, :], col_q[None, :], inv_r[None, :], inv_c[None, :],
                                    row_k[:, None], col_k[:, None], cmin)
        b_bias = (a * _LOG2E)[None, :] * tl.exp2(e_r + e_c)
        if HAS_PREFIX:
            b_bias = tl.where(is_patch_k[:, None], b_bias, 0.0)
        b_pt = tl.exp2(b_st + b_bias - b_lse[None, :])
        if not EVEN_N:
            b_pt = tl.where(m_m[None, :], b_pt, 0.0)

        b_dv += tl.dot(b_pt.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk += tl.dot(b_dst.to(b_q.dtype), b_q, input_precision=DOT_PRECISION)

    p_dk = dk + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    p_dv = dv + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(p_dk, (b_dk * scale).to(dk.dtype.element_ty), mask=m_n[:, None])
    tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=m_n[:, None])
