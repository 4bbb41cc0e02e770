"""Gaussian attention over small windows with an additive bias (LocAt Swin), forward and backward.

``window_forward(q, k, v, var, alpha, bias, mask, gw, eps, cmin, scale) -> (out, lse)``: q, k, v
(Bw, H, N, D) with a unit last stride, N = gh * gw <= MAX_WINDOW tokens of one window's grid (no
prefix tokens); var (Bw, H, N, 2), alpha (Bw, H, N); ``bias`` (H, N, N), shared by every window
(Swin's relative position bias); ``mask`` (nW, N, N) or None, window b taking ``mask[b % nW]``
(Swin's shift mask, one per window position; the batch runs over the positions). out (Bw, H, N, D)
stored as (Bw, N, H, D) like ``attention_forward``'s; lse (Bw, H, N) float32 in log2 units. The
logits are ``scale q k^T + bias + mask + G`` with G the Gaussian of ``gaussian_bias``.

``window_backward(do, q, k, v, var, alpha, bias, mask, out, lse, ...) -> (dq, dk, dv, dvar, dalpha,
dbias)``: a window's whole attention is one tile, so one launch does it all: ``dS = P (dP - delta)``,
dq, dk, dv, the row sums that give dvar and dalpha (as the dq kernel does), and ``dbias = sum over
windows of dS``. A program owns a group of WINDOWS_PER_PROGRAM windows of one head and sums their dS
in registers; its (N, N) partial goes to a (groups, H, N, N) buffer that one ``sum`` finishes: no
atomics, deterministic. The mask gets no gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .tiles import LOG2E, _LOG2E, exponents, load_rows, positions, row_coefficients, store_rows

MAX_WINDOW = 64  # tokens per window: a window is one tile (Swin's 7 x 7 = 49)
WINDOWS_PER_PROGRAM = 16  # windows of one head per program: the bias tile loaded once, dbias summed once


def window_forward(q, k, v, var, alpha, bias, mask, gw, eps, cmin, scale, traced=False, plan=None):
    """out (Bw, H, N, D) as a transposed (Bw, N, H, D) tensor, lse (Bw, H, N) float32. ``plan``: an eager
    call's launch plan (``configs.Plans``)."""
    Bw, H, N, D = q.shape
    out = configs.empty((Bw, N, H, D), q).transpose(1, 2)
    lse = configs.empty((Bw, H, N), q, torch.float32)
    tensors = (q, k, v, var, alpha, bias, mask if mask is not None else bias, out, lse)
    configs.prepared(plan, "window_forward", lambda: configs.Launch(
        _window_forward_kernel, _grid(Bw, H),
        (*_strides(q, k, v, out, var, alpha, bias, mask), Bw, H, N, gw, _windows(mask), scale * LOG2E, scale, eps,
         cmin),
        _meta(q, gw, cmin, mask)))(tensors, traced)
    return out, lse


def window_backward(do, q, k, v, var, alpha, bias, mask, out, lse, gw, eps, cmin, scale, traced=False, plan=None):
    """dq, dk, dv like q (stored as (Bw, N, H, D)); dvar, dalpha float32 like var, alpha; dbias
    (H, N, N) float32."""
    Bw, H, N, D = q.shape
    if do.stride(-1) != 1:
        do = do.contiguous()
    dq, dk, dv = (configs.empty((Bw, N, H, D), q).transpose(1, 2) for _ in range(3))
    dvar = configs.empty(var.shape, q, torch.float32)
    dalpha = configs.empty(alpha.shape, q, torch.float32)
    partial = configs.empty((_grid(Bw, H)[0], H, N, N), q, torch.float32)
    tensors = (q, k, v, var, alpha, bias, mask if mask is not None else bias, out, lse, do, dq, dk, dv, dvar, dalpha,
               partial)
    configs.prepared(plan, "window_backward", lambda: configs.Launch(
        _window_backward_kernel, _grid(Bw, H),
        (*_strides(q, k, v, out, var, alpha, bias, mask), *do.stride()[:3], *dq.stride()[:3], *dk.stride()[:3],
         *dv.stride()[:3], *dvar.stride(), *dalpha.stride(), Bw, H, N, gw, _windows(mask), scale * LOG2E, scale, eps,
         cmin),
        _meta(q, gw, cmin, mask)))(tensors, traced)
    return dq, dk, dv, dvar, dalpha, partial.sum(0)


def _strides(q, k, v, out, var, alpha, bias, mask):
    """The strides both kernels take first: q, k, v, out (batch, head, token), var, alpha, bias, mask (or zeros)."""
    return (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *var.stride(), *alpha.stride(),
            *bias.stride(), *(mask.stride() if mask is not None else (0, 0, 0)))


def _windows(mask):
    """Window positions of the shift mask (one without a mask)."""
    return mask.shape[0] if mask is not None else 1


def _windows_per_program():
    return 2 if configs.INTERPRET else WINDOWS_PER_PROGRAM


def _grid(Bw, H):
    return (configs.cdiv(Bw, _windows_per_program()), H)


def _meta(q, gw, cmin, mask):
    _, _, N, D = q.shape
    gh = N // gw
    return dict(
        D=D, D_PAD=configs.padded_head_dim(D), BLOCK=configs.dot_width(N),
        WINDOWS=_windows_per_program(), HAS_MASK=mask is not None,
        CLAMP=0.5 * (max(gh, gw) - 1) ** 2 > -cmin,
        DOT_PRECISION=configs.dot_precision(q.dtype),
        num_warps=1 if configs.INTERPRET else 4, num_stages=1,
    )


@triton.jit
def _window_logits(
    b_q, b_k, b_bias, mask_base, var_base, alpha_base, offs, N, GW, qk_scale, eps, cmin,
    stride_mi, stride_mj, stride_varn, stride_varc, stride_an,
    HAS_MASK: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """A window's (BLOCK, BLOCK) logits in log2 units, ``scale q k^T + bias + mask + alpha g``
    (-inf in the padding columns), with what the backward needs of the Gaussian: the factor g, its
    row and column exponents and the query rows' alpha and ``nh`` (tiles.row_coefficients)."""
    m_n = offs < N
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = row_coefficients(
        var_base, alpha_base, offs, N, GW, 0, eps, cmin, stride_varn, stride_varc, stride_an, 1)
    row_k, col_k, _, _ = positions(offs, N, GW, 0, 1, False)
    b_er, b_ec = exponents(row_q[:, None], col_q[:, None], nh_r[:, None], nh_c[:, None], lo_r[:, None],
                           lo_c[:, None], row_k[None, :], col_k[None, :], CLAMP)
    b_g = tl.exp2(b_er + b_ec)  # (BLOCK, BLOCK): the Gaussian's factor without alpha
    b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale + (a * _LOG2E)[:, None] * b_g
    b_s += b_bias
    if HAS_MASK:
        p_m = mask_base + offs[:, None] * stride_mi + offs[None, :] * stride_mj
        b_s += tl.load(p_m, mask=m_n[:, None] & m_n[None, :], other=0.0).to(tl.float32) * _LOG2E
    b_s = tl.where(m_n[None, :], b_s, float("-inf"))
    return b_s, b_g, b_er, b_ec, a, nh_r, nh_c


@triton.jit
def _window_forward_kernel(
    q, k, v, var, alpha, bias, mask, o, lse,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_varb, stride_varh, stride_varn, stride_varc,
    stride_ab, stride_ah, stride_an, stride_bh, stride_bi, stride_bj, stride_mw, stride_mi, stride_mj,
    Bw, H, N, GW, NW, qk_scale, scale, eps, cmin,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, WINDOWS: tl.constexpr, HAS_MASK: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """grid: (cdiv(Bw, WINDOWS), H). A program owns WINDOWS consecutive windows of head
    ``program_id(1)``: loads the head's bias tile once, then per window its whole attention (one
    tile each way), storing out and lse."""
    qk_scale, eps, cmin = tl.cast(qk_scale, tl.float32), tl.cast(eps, tl.float32), tl.cast(cmin, tl.float32)
    g, h = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m_n = offs < N
    p_b = bias + h * stride_bh + offs[:, None] * stride_bi + offs[None, :] * stride_bj
    b_bias = tl.load(p_b, mask=m_n[:, None] & m_n[None, :], other=0.0).to(tl.float32) * _LOG2E
    for w in range(WINDOWS):
        b = (g * WINDOWS + w).to(tl.int64)
        if b < Bw:
            b_q = load_rows(q + b * stride_qb + h * stride_qh, offs, stride_qn, m_n, D, D_PAD, True)
            b_k = load_rows(k + b * stride_kb + h * stride_kh, offs, stride_kn, m_n, D, D_PAD, True)
            b_v = load_rows(v + b * stride_vb + h * stride_vh, offs, stride_vn, m_n, D, D_PAD, True)
            b_s, _, _, _, _, _, _ = _window_logits(
                b_q, b_k, b_bias, mask + (b % NW) * stride_mw, var + b * stride_varb + h * stride_varh,
                alpha + b * stride_ab + h * stride_ah, offs, N, GW, qk_scale, eps, cmin,
                stride_mi, stride_mj, stride_varn, stride_varc, stride_an, HAS_MASK, CLAMP, DOT_PRECISION)
            b_m = tl.max(b_s, 1)
            b_p = tl.exp2(b_s - b_m[:, None])
            b_l = tl.sum(b_p, 1)
            b_o = tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION) / b_l[:, None]
            store_rows(o + b * stride_ob + h * stride_oh, offs, stride_on, b_o, m_n, D, D_PAD)
            tl.store(lse + (b * H + h) * N + offs, b_m + tl.log2(b_l), mask=m_n)


@triton.jit
def _window_backward_kernel(
    q, k, v, var, alpha, bias, mask, o, lse, do, dq, dk, dv, dvar, dalpha, partial,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, stride_varb, stride_varh, stride_varn, stride_varc,
    stride_ab, stride_ah, stride_an, stride_bh, stride_bi, stride_bj, stride_mw, stride_mi, stride_mj,
    stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn, stride_dkb, stride_dkh, stride_dkn,
    stride_dvb, stride_dvh, stride_dvn, stride_dvarb, stride_dvarh, stride_dvarn, stride_dvarc,
    stride_dab, stride_dah, stride_dan,
    Bw, H, N, GW, NW, qk_scale, scale, eps, cmin,
    D: tl.constexpr, D_PAD: tl.constexpr, BLOCK: tl.constexpr, WINDOWS: tl.constexpr, HAS_MASK: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """grid: (cdiv(Bw, WINDOWS), H), as the forward. Per window: the logits again, P from lse,
    ``dS = P (dO V^T - delta)``, dq, dk, dv, dvar and dalpha; dS summed over the program's windows
    is stored as its (N, N) partial of dbias at ``partial[program_id(0), h]``."""
    qk_scale, scale = tl.cast(qk_scale, tl.float32), tl.cast(scale, tl.float32)
    eps, cmin = tl.cast(eps, tl.float32), tl.cast(cmin, tl.float32)
    g, h = tl.program_id(0), tl.program_id(1).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    m_n = offs < N
    m_nn = m_n[:, None] & m_n[None, :]
    p_b = bias + h * stride_bh + offs[:, None] * stride_bi + offs[None, :] * stride_bj
    b_bias = tl.load(p_b, mask=m_nn, other=0.0).to(tl.float32) * _LOG2E
    b_dbias = tl.zeros([BLOCK, BLOCK], tl.float32)
    for w in range(WINDOWS):
        b = (g * WINDOWS + w).to(tl.int64)
        if b < Bw:
            b_q = load_rows(q + b * stride_qb + h * stride_qh, offs, stride_qn, m_n, D, D_PAD, True)
            b_k = load_rows(k + b * stride_kb + h * stride_kh, offs, stride_kn, m_n, D, D_PAD, True)
            b_v = load_rows(v + b * stride_vb + h * stride_vh, offs, stride_vn, m_n, D, D_PAD, True)
            b_o = load_rows(o + b * stride_ob + h * stride_oh, offs, stride_on, m_n, D, D_PAD, True)
            b_do = load_rows(do + b * stride_dob + h * stride_doh, offs, stride_don, m_n, D, D_PAD, True)
            b_lse = tl.load(lse + (b * H + h) * N + offs, mask=m_n, other=0.0)
            b_s, b_g, b_er, b_ec, a, nh_r, nh_c = _window_logits(
                b_q, b_k, b_bias, mask + (b % NW) * stride_mw, var + b * stride_varb + h * stride_varh,
                alpha + b * stride_ab + h * stride_ah, offs, N, GW, qk_scale, eps, cmin,
                stride_mi, stride_mj, stride_varn, stride_varc, stride_an, HAS_MASK, CLAMP, DOT_PRECISION)
            b_p = tl.exp2(b_s - b_lse[:, None])  # (BLOCK, BLOCK), 0 in the padding columns
            b_delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), 1)  # 0 in the padding rows
            b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
            b_ds = b_p * (b_dp - b_delta[:, None])  # d loss / d logit, natural units; 0 in padding rows
            b_dbias += b_ds
            b_dv = tl.dot(tl.trans(b_p.to(b_do.dtype)), b_do, input_precision=DOT_PRECISION)
            b_dk = tl.dot(tl.trans(b_ds.to(b_q.dtype)), b_q, input_precision=DOT_PRECISION) * scale
            b_dq = tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION) * scale
            store_rows(dq + b * stride_dqb + h * stride_dqh, offs, stride_dqn, b_dq, m_n, D, D_PAD)
            store_rows(dk + b * stride_dkb + h * stride_dkh, offs, stride_dkn, b_dk, m_n, D, D_PAD)
            store_rows(dv + b * stride_dvb + h * stride_dvh, offs, stride_dvn, b_dv, m_n, D, D_PAD)
            # dalpha_i = sum_j dS g; dvar_i = alpha_i sum_j dS g e / ... (as the dq kernel: backward.py)
            b_dsg = b_ds * b_g
            p_dvar = dvar + b * stride_dvarb + h * stride_dvarh + offs * stride_dvarn
            tl.store(p_dvar, tl.sum(b_dsg * b_er, 1) * (2.0 * a * nh_r / (_LOG2E * _LOG2E)), mask=m_n)
            tl.store(p_dvar + stride_dvarc, tl.sum(b_dsg * b_ec, 1) * (2.0 * a * nh_c / (_LOG2E * _LOG2E)),
                     mask=m_n)
            tl.store(dalpha + b * stride_dab + h * stride_dah + offs * stride_dan, tl.sum(b_dsg, 1), mask=m_n)
    p_part = partial + ((g * H + h) * N + offs[:, None]) * N + offs[None, :]
    tl.store(p_part, b_dbias, mask=m_nn)
