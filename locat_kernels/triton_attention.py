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

Key tiles come in two shapes. **Grid tiles** (forward and dq kernels, when a grid row fits a key
tile): the prefix keys first as token tiles without a bias, then the patch keys as tiles of
ROWS grid rows of COLS = next_pow2(gw) slots (slots past gw are padding). Every grid tile then
has the same columns, so the Gaussian splits into a column table ``exp2(e_c)`` (BLOCK_M x BLOCK_N)
computed once per program, and one row factor ``exp2(e_r + log2(alpha log2(e)))`` per query row
and grid row: the bias costs a select per extra grid row, a multiply and an FMA per logit, and no
exp2 (the softmax keeps its one). **Token tiles** (the dk/dv kernel, and grids too wide for a key
tile): the bias is computed per logit, ``e = nh_r dr^2 + nh_c dc^2 + log2(alpha log2(e))`` with
``nh = -1/2 log2(e) / (var + eps)`` per query row, then ``logit += exp2(e)``; non-patch keys sit at
position +inf, so their bias is exactly zero without a mask.

Keys whose grid rows are so far from a query tile's rows that every bias is below 2^-25 (a relative
change of the softmax weights under 2e-8, beneath float32 resolution) skip the Gaussian entirely:
the row radius comes from the widest row variance and the largest alpha of the (batch, head), read
by each program, and each loop over keys (or queries) runs as three ranges, far / near / far, with
the Gaussian only in the near one (as causal flash attention splits its masked tiles).

Kernels say their grid in their docstrings. Variants are constexpr flags: ``HAS_PREFIX``,
``RATE`` (position quantization), ``EVEN_N`` (no bounds masks), ``CLAMP`` (the grid exceeds the
build grid: clamp the exponent, no skipping), ``DOT_PRECISION``, and for grid tiles ``ROWS``
(0: token tiles), ``COLS``, ``FULL_TILES`` (no padding slot); block sizes come from
``configs.launch_config`` and ``configs.grid_rows``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the same, for use inside kernels
# A tile pair whose every bias (and Gaussian factor) is below 2^SKIP_LOG2 skips the Gaussian.
_SKIP_LOG2 = tl.constexpr(-25.0)
_BOUNDS_BLOCK = tl.constexpr(512)  # patches per step when a program reads its (batch, head)'s var and alpha maxima

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
        **_variant(q, gw, num_prefix_tokens, cmin, rate, cfg, grid_tiles=True), **cfg,
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
        **_variant(q, gw, num_prefix_tokens, cmin, rate, cfg, grid_tiles=True), **cfg,
    )
    cfg = configs.launch_config("backward_dkdv", D, N, q.dtype)
    _backward_dkdv_kernel[(triton.cdiv(N, cfg["BLOCK_N"]) * B * H,)](
        q, k, v, var, alpha, do, lse, delta, dk, dv,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3],
        *dk.stride()[:3], *dv.stride()[:3], *var.stride(), *alpha.stride(),
        H, N, gw, num_prefix_tokens, scale * LOG2E, scale, eps, cmin,
        **_variant(q, gw, num_prefix_tokens, cmin, rate, cfg), **cfg,
    )
    return dq, dk, dv, dvar.to(var.dtype), dalpha.to(alpha.dtype)


def _empty(shape, like, dtype=None):
    out = torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def _variant(q, gw, num_prefix_tokens, cmin, rate, cfg, grid_tiles=False) -> dict:
    """The constexpr flags of one launch; ``grid_tiles`` for the kernels that loop over key tiles."""
    N = q.shape[2]
    gh = (N - num_prefix_tokens) // gw
    flags = dict(
        D=q.shape[-1], HAS_PREFIX=num_prefix_tokens > 0, RATE=rate, EVEN_N=configs.even_n(N, cfg),
        # The clamp of -1/2 d^2 at cmin only bites when the grid is larger than the build grid.
        CLAMP=0.5 * (max(gh, gw) - 1) ** 2 > -cmin,
        # fp32 inputs get exact products (no tf32); the flag is ignored for fp16/bf16 operands.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    if grid_tiles:
        rows = configs.grid_rows(gw, cfg["BLOCK_N"])
        cols = cfg["BLOCK_N"] // rows if rows else 1
        # ROWS = 0: token tiles. FULL_TILES: no padding slot (gw = COLS) and no partial last tile.
        flags.update(ROWS=rows, COLS=cols, FULL_TILES=bool(rows) and gw == cols and gh % rows == 0)
    return flags


# ----------------------------------------------------------------------------------------------
# Shared pieces, inlined into each kernel.


@triton.jit
def _positions(offs, N, GW, P, RATE: tl.constexpr, FAR: tl.constexpr):
    """Row and column (float32) of tokens ``offs``, quantized to RATE, and whether each is a patch.

    With FAR, non-patch tokens (prefix, or beyond N) sit at +inf: their Gaussian factor is exactly 0.
    """
    p = offs - P
    is_patch = (p >= 0) & (offs < N)
    p = tl.where(is_patch, p, 0)
    row = ((p // GW) // RATE * RATE).to(tl.float32)
    col = ((p % GW) // RATE * RATE).to(tl.float32)
    if FAR:
        row = tl.where(is_patch, row, float("inf"))
        col = tl.where(is_patch, col, float("inf"))
    return row, col, is_patch


@triton.jit
def _row_coefficients(var, alpha, offs_m, N, GW, eps, cmin,
                      stride_varn, stride_varc, stride_an, P, RATE: tl.constexpr):
    """Per query row, in log2 units: position; ``nh = -1/2 inv`` and ``lo = cmin inv`` per axis, with
    ``inv = log2(e) / (var + eps)``, so the exponent is ``max(nh d^2, lo)``; alpha (0 off patches).

    ``var`` and ``alpha`` point at this program's (batch, head).
    """
    row, col, is_patch = _positions(offs_m, N, GW, P, RATE, False)
    p = tl.where(is_patch, offs_m - P, 0)
    p_var = var + p * stride_varn
    inv_r = _LOG2E / (tl.load(p_var, mask=is_patch, other=1.0).to(tl.float32) + eps)
    inv_c = _LOG2E / (tl.load(p_var + stride_varc, mask=is_patch, other=1.0).to(tl.float32) + eps)
    a = tl.load(alpha + p * stride_an, mask=is_patch, other=0.0).to(tl.float32)
    return row, col, -0.5 * inv_r, -0.5 * inv_c, cmin * inv_r, cmin * inv_c, a, is_patch


@triton.jit
def _exponents(row_q, col_q, nh_r, nh_c, lo_r, lo_c, row_k, col_k, CLAMP: tl.constexpr):
    """``e = max(nh d^2, lo)`` per axis (the max only with CLAMP); inputs broadcast to one tile."""
    dr = row_q - row_k
    dc = col_q - col_k
    e_r = nh_r * (dr * dr)
    e_c = nh_c * (dc * dc)
    if CLAMP:
        e_r = tl.maximum(e_r, lo_r)
        e_c = tl.maximum(e_c, lo_c)
    return e_r, e_c


@triton.jit
def _log2_bias(row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, row_k, col_k, is_patch_k,
               CLAMP: tl.constexpr, HAS_PREFIX: tl.constexpr):
    """log2 of the bias in log2 units, ``e_r + e_c + log2(alpha log2(e))``; -inf where there is none.

    Without CLAMP the key positions must be FAR (non-patch keys at +inf give -inf, no mask).
    """
    if CLAMP:
        e_r, e_c = _exponents(row_q, col_q, nh_r, nh_c, lo_r, lo_c, row_k, col_k, True)
        e = e_r + e_c + log2_amp
        if HAS_PREFIX:
            e = tl.where(is_patch_k, e, float("-inf"))
    else:
        dr = row_q - row_k
        dc = col_q - col_k
        e = tl.fma(nh_r, dr * dr, tl.fma(nh_c, dc * dc, log2_amp))
    return e


@triton.jit
def _radius(var, alpha, stride_varn, stride_an, NP, eps, GH, CLAMP: tl.constexpr):
    """Row distance beyond which every bias (and Gaussian factor) of this (batch, head) is below
    2^SKIP_LOG2: ``nh_max d^2 + max(log2(alpha_max log2(e)), 0) < SKIP_LOG2``, from the widest row
    variance and the largest alpha of the NP patches (``var``, ``alpha`` point at this (batch, head);
    each program reads them, cheaper than a launch). GH with CLAMP, or with NaNs."""
    if CLAMP:  # the clamp keeps far biases at their floor: no skipping
        return GH
    b_var = tl.zeros([_BOUNDS_BLOCK], tl.float32)
    b_alpha = tl.zeros([_BOUNDS_BLOCK], tl.float32)
    for start in range(0, NP, _BOUNDS_BLOCK):
        offs = start + tl.arange(0, _BOUNDS_BLOCK)
        m = offs < NP
        b_var = tl.maximum(b_var, tl.load(var + offs * stride_varn, mask=m, other=0.0).to(tl.float32),
                           propagate_nan=tl.PropagateNan.ALL)
        b_alpha = tl.maximum(b_alpha, tl.load(alpha + offs * stride_an, mask=m, other=0.0).to(tl.float32),
                             propagate_nan=tl.PropagateNan.ALL)
    # tl.max drops NaNs: the sum of x * 0 brings them back (and turns an inf into NaN: all rows near).
    var_max = tl.max(b_var, 0) + tl.sum(b_var * 0.0, 0)
    alpha_max = tl.max(b_alpha, 0) + tl.sum(b_alpha * 0.0, 0)
    amp_bound = tl.maximum(tl.log2(alpha_max * _LOG2E), 0.0)
    r2 = (amp_bound - _SKIP_LOG2) * (var_max + eps) / (0.5 * _LOG2E)
    r = tl.sqrt(tl.minimum(r2, (GH * GH).to(tl.float32)))
    return tl.where(r == r, r, GH).to(tl.int32)  # floor; a NaN input keeps every row near


@triton.jit
def _near_rows(start, size, radius, N, GW, P, RATE: tl.constexpr):
    """Grid rows [lo, hi) (not clipped to the grid) holding every patch within ``radius`` grid rows
    of the patches among tokens [start, start + size); the rest are far. Rows quantized to RATE."""
    p_lo = tl.maximum(start - P, 0)
    p_hi = tl.maximum(tl.minimum(start + size, N) - 1 - P, 0)
    row_lo = (p_lo // GW) // RATE * RATE - radius
    row_hi = (p_hi // GW) // RATE * RATE + radius + RATE  # a token's quantized row is <= RATE - 1 below its row
    return row_lo, row_hi


@triton.jit
def _near_range(start, size, radius, N, GW, P, RATE: tl.constexpr, BLOCK: tl.constexpr):
    """The near rows as tokens [lo, hi), aligned to BLOCK (token tiles)."""
    row_lo, row_hi = _near_rows(start, size, radius, N, GW, P, RATE)
    lo = (P + tl.maximum(row_lo, 0) * GW) // BLOCK * BLOCK
    hi = tl.minimum(tl.cdiv(P + tl.maximum(row_hi, 0) * GW, BLOCK) * BLOCK, N)
    return lo, tl.maximum(hi, lo)


@triton.jit
def _near_tiles(start, size, radius, N, GW, P, RATE: tl.constexpr, ROWS: tl.constexpr, T):
    """The near rows as grid tiles [lo, hi) of ROWS rows each, out of T."""
    row_lo, row_hi = _near_rows(start, size, radius, N, GW, P, RATE)
    lo = tl.maximum(row_lo, 0) // ROWS
    hi = tl.minimum(tl.cdiv(tl.maximum(row_hi, 0), ROWS), T)
    return lo, tl.maximum(hi, lo)


@triton.jit
def _load_rows(base, offs, stride, mask, D: tl.constexpr, MASKED: tl.constexpr):
    """Rows ``offs`` of a (rows, D) matrix with row stride ``stride``: (len(offs), D); with MASKED,
    rows outside ``mask`` read as 0."""
    ptrs = base + offs[:, None] * stride + tl.arange(0, D)[None, :]
    if MASKED:
        x = tl.load(ptrs, mask=mask[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _grid_keys(t, GH, GW, P, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key tile ``t`` in grid layout: slot s holds the patch at grid row ``t ROWS + s // COLS``,
    column ``s % COLS``. Returns the slots' token offsets and which slots hold a patch (columns
    >= GW and rows >= GH are padding)."""
    s = tl.arange(0, BLOCK_N)
    row = t * ROWS + s // COLS
    col = s % COLS
    return P + row * GW + col, (col < GW) & (row < GH)


@triton.jit
def _grid_col_exponents(col_q, nh_c, lo_c, RATE: tl.constexpr, CLAMP: tl.constexpr, COLS: tl.constexpr,
                        BLOCK_N: tl.constexpr):
    """(BLOCK_M, BLOCK_N) column exponents ``e_c`` of each query row against each slot: the same in
    every grid tile, so a program computes them (and their exp2) once."""
    col = ((tl.arange(0, BLOCK_N) % COLS) // RATE * RATE).to(tl.float32)
    dc = col_q[:, None] - col[None, :]
    e = nh_c[:, None] * (dc * dc)
    if CLAMP:
        e = tl.maximum(e, lo_c[:, None])
    return e


@triton.jit
def _grid_row_exponent(row_q, nh_r, lo_r, row, RATE: tl.constexpr, CLAMP: tl.constexpr):
    """(BLOCK_M,) row exponents ``e_r`` of each query row against grid row ``row``."""
    dr = row_q - (row // RATE * RATE)  # row: an int or int32 scalar (the loop index), promoted
    e = nh_r * (dr * dr)
    if CLAMP:
        e = tl.maximum(e, lo_r)
    return e


@triton.jit
def _grid_row_terms(t, slot_row, row_q, nh_r, lo_r, shift, RATE: tl.constexpr, CLAMP: tl.constexpr,
                    ROWS: tl.constexpr):
    """Row exponent ``e_r`` and factor ``exp2(e_r + shift)`` of every slot of grid tile ``t``: one
    exp2 per query row and grid row, not per logit. (BLOCK_M, 1) when a tile is one grid row, else
    (BLOCK_M, BLOCK_N) by a select per extra row."""
    e = _grid_row_exponent(row_q, nh_r, lo_r, t * ROWS, RATE, CLAMP)
    b_e = e[:, None]
    b_f = tl.exp2(e + shift)[:, None]
    for j in tl.static_range(1, ROWS):
        e = _grid_row_exponent(row_q, nh_r, lo_r, t * ROWS + j, RATE, CLAMP)
        in_row = (slot_row == j)[None, :]
        b_e = tl.where(in_row, e[:, None], b_e)
        b_f = tl.where(in_row, tl.exp2(e + shift)[:, None], b_f)
    return b_e, b_f


@triton.jit
def _online_softmax(b_s, b_v, b_m, b_l, b_acc, DOT_PRECISION: tl.constexpr):
    """One key tile's logits ``b_s`` (log2 units) into the running max, sum and ``acc = sum_j p_j v_j``."""
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_corr = tl.exp2(b_m - b_m_new)
    b_p = tl.exp2(b_s - b_m_new[:, None])
    b_l = b_l * b_corr + tl.sum(b_p, 1)
    b_acc = b_acc * b_corr[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
    return b_m_new, b_l, b_acc


# ----------------------------------------------------------------------------------------------
# Forward.


@triton.jit
def _forward_tiles(
    b_q, k_base, v_base, stride_kn, stride_vn, lo, hi, end, N, GW, P, qk_scale,
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc,
    BIAS: tl.constexpr, D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, MASKED: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Online softmax over token tiles [lo, hi) of the keys before ``end``; with BIAS the Gaussian
    is computed per logit."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        m_n = offs_n < end
        b_k = _load_rows(k_base, offs_n, stride_kn, m_n, D, MASKED)
        b_v = _load_rows(v_base, offs_n, stride_vn, m_n, D, MASKED)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        if BIAS:
            row_k, col_k, is_patch_k = _positions(offs_n, N, GW, P, RATE, not CLAMP)
            e = _log2_bias(row_q[:, None], col_q[:, None], nh_r[:, None], nh_c[:, None], lo_r[:, None],
                           lo_c[:, None], log2_amp[:, None], row_k[None, :], col_k[None, :], is_patch_k[None, :],
                           CLAMP, HAS_PREFIX)
            b_s = tl.fma(b_s, qk_scale, tl.exp2(e))
        else:
            b_s = b_s * qk_scale
        if MASKED:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m, b_l, b_acc = _online_softmax(b_s, b_v, b_m, b_l, b_acc, DOT_PRECISION)
    return b_m, b_l, b_acc


@triton.jit
def _forward_grid_tiles(
    b_q, k_base, v_base, stride_kn, stride_vn, t_lo, t_hi, GH, GW, P, qk_scale,
    row_q, nh_r, lo_r, log2_amp, b_c, b_m, b_l, b_acc,
    BIAS: tl.constexpr, D: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr, FULL_TILES: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Online softmax over grid tiles [t_lo, t_hi) of the patch keys; with BIAS the Gaussian is the
    tile's row factor (amplitude folded in) times the column table ``b_c``: no exp2 per logit."""
    slot_row = tl.arange(0, BLOCK_N) // COLS
    for t in range(t_lo, t_hi):
        offs_n, m_n = _grid_keys(t, GH, GW, P, ROWS, COLS, BLOCK_N)
        b_k = _load_rows(k_base, offs_n, stride_kn, m_n, D, not FULL_TILES)
        b_v = _load_rows(v_base, offs_n, stride_vn, m_n, D, not FULL_TILES)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        if BIAS:
            _, b_f = _grid_row_terms(t, slot_row, row_q, nh_r, lo_r, log2_amp, RATE, CLAMP, ROWS)
            b_s = tl.fma(b_s, qk_scale, b_f * b_c)
        else:
            b_s = b_s * qk_scale
        if not FULL_TILES:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m, b_l, b_acc = _online_softmax(b_s, b_v, b_m, b_l, b_acc, DOT_PRECISION)
    return b_m, b_l, b_acc


@triton.jit
def _forward_kernel(
    q, k, v, var, alpha, o, lse,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    H, N, GW, P, qk_scale, eps, cmin,
    D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, EVEN_N: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
    FULL_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """grid: (cdiv(N, BLOCK_M) * B * H,), query tiles fastest so neighbours share K/V in L2.

    One pass over the keys: logits, Gaussian bias, online softmax, P @ V; stores out and lse. With
    ROWS, the prefix keys as token tiles, then the patches as grid tiles (far, near, far); else
    token tiles (far, near, far) with the Gaussian per logit.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    start_m = (pid % num_m) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_m = offs_m < N

    b_q = _load_rows(q + b * stride_qb + h * stride_qh, offs_m, stride_qn, m_m, D, not EVEN_N)
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = _row_coefficients(
        var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah,
        offs_m, N, GW, eps, cmin, stride_varn, stride_varc, stride_an, P, RATE)
    log2_amp = tl.log2(a * _LOG2E)  # -inf off patches
    GH = (N - P) // GW
    radius = _radius(var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah,
                     stride_varn, stride_an, N - P, eps, GH, CLAMP)

    k_base = k + b * stride_kb + h * stride_kh
    v_base = v + b * stride_vb + h * stride_vh
    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, D], tl.float32)
    # Far keys, then near keys with the Gaussian, then far keys: no branch inside a loop.
    if ROWS:
        if HAS_PREFIX:
            b_m, b_l, b_acc = _forward_tiles(
                b_q, k_base, v_base, stride_kn, stride_vn, 0, P, P, N, GW, P, qk_scale,
                row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc,
                False, D, HAS_PREFIX, RATE, True, CLAMP, DOT_PRECISION, BLOCK_N)
        T = tl.cdiv(GH, ROWS)
        t_lo, t_hi = _near_tiles(start_m, BLOCK_M, radius, N, GW, P, RATE, ROWS, T)
        b_c = tl.exp2(_grid_col_exponents(col_q, nh_c, lo_c, RATE, CLAMP, COLS, BLOCK_N))
        b_m, b_l, b_acc = _forward_grid_tiles(
            b_q, k_base, v_base, stride_kn, stride_vn, 0, t_lo, GH, GW, P, qk_scale,
            row_q, nh_r, lo_r, log2_amp, b_c, b_m, b_l, b_acc,
            False, D, RATE, CLAMP, FULL_TILES, DOT_PRECISION, ROWS, COLS, BLOCK_N)
        b_m, b_l, b_acc = _forward_grid_tiles(
            b_q, k_base, v_base, stride_kn, stride_vn, t_lo, t_hi, GH, GW, P, qk_scale,
            row_q, nh_r, lo_r, log2_amp, b_c, b_m, b_l, b_acc,
            True, D, RATE, CLAMP, FULL_TILES, DOT_PRECISION, ROWS, COLS, BLOCK_N)
        b_m, b_l, b_acc = _forward_grid_tiles(
            b_q, k_base, v_base, stride_kn, stride_vn, t_hi, T, GH, GW, P, qk_scale,
            row_q, nh_r, lo_r, log2_amp, b_c, b_m, b_l, b_acc,
            False, D, RATE, CLAMP, FULL_TILES, DOT_PRECISION, ROWS, COLS, BLOCK_N)
    else:
        near_lo, near_hi = _near_range(start_m, BLOCK_M, radius, N, GW, P, RATE, BLOCK_N)
        b_m, b_l, b_acc = _forward_tiles(
            b_q, k_base, v_base, stride_kn, stride_vn, 0, near_lo, N, N, GW, P, qk_scale,
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc,
            False, D, HAS_PREFIX, RATE, not EVEN_N, CLAMP, DOT_PRECISION, BLOCK_N)
        b_m, b_l, b_acc = _forward_tiles(
            b_q, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, N, N, GW, P, qk_scale,
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc,
            True, D, HAS_PREFIX, RATE, not EVEN_N, CLAMP, DOT_PRECISION, BLOCK_N)
        b_m, b_l, b_acc = _forward_tiles(
            b_q, k_base, v_base, stride_kn, stride_vn, near_hi, N, N, N, GW, P, qk_scale,
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc,
            False, D, HAS_PREFIX, RATE, not EVEN_N, CLAMP, DOT_PRECISION, BLOCK_N)

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
def _backward_dq_tiles(
    b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, lo, hi, end, N, GW, P, qk_scale,
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dalpha, b_sum_r, b_sum_c,
    BIAS: tl.constexpr, D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, MASKED: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq over token tiles [lo, hi) of the keys before ``end``; with BIAS also the row sums of
    dS g, dS g e_r and dS g e_c, the Gaussian computed per logit."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        m_n = offs_n < end
        b_k = _load_rows(k_base, offs_n, stride_kn, m_n, D, MASKED)
        b_v = _load_rows(v_base, offs_n, stride_vn, m_n, D, MASKED)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale - b_lse[:, None]
        if BIAS:
            row_k, col_k, is_patch_k = _positions(offs_n, N, GW, P, RATE, False)
            e_r, e_c = _exponents(row_q[:, None], col_q[:, None], nh_r[:, None], nh_c[:, None], lo_r[:, None],
                                  lo_c[:, None], row_k[None, :], col_k[None, :], CLAMP)
            b_g = tl.exp2(e_r + e_c)
            if HAS_PREFIX:
                b_g = tl.where(is_patch_k[None, :], b_g, 0.0)
            b_s = tl.fma(amp[:, None], b_g, b_s)
        b_p = tl.exp2(b_s)
        if MASKED:
            b_p = tl.where(m_n[None, :], b_p, 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if BIAS:
            b_dsg = b_ds * b_g
            b_dalpha += tl.sum(b_dsg, 1)
            b_sum_r += tl.sum(b_dsg * e_r, 1)
            b_sum_c += tl.sum(b_dsg * e_c, 1)
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)
    return b_dq, b_dalpha, b_sum_r, b_sum_c


@triton.jit
def _backward_dq_grid_tiles(
    b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, t_lo, t_hi, GH, GW, P, qk_scale,
    row_q, nh_r, lo_r, amp, b_ec, b_c, b_dq, b_dalpha, b_sum_r, b_sum_c,
    BIAS: tl.constexpr, D: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr, FULL_TILES: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dq over grid tiles [t_lo, t_hi) of the patch keys; with BIAS the row sums as in
    ``_backward_dq_tiles``, the Gaussian from the tile's row terms and the column tables
    ``b_ec`` (e_c) and ``b_c`` (its exp2)."""
    slot_row = tl.arange(0, BLOCK_N) // COLS
    for t in range(t_lo, t_hi):
        offs_n, m_n = _grid_keys(t, GH, GW, P, ROWS, COLS, BLOCK_N)
        b_k = _load_rows(k_base, offs_n, stride_kn, m_n, D, not FULL_TILES)
        b_v = _load_rows(v_base, offs_n, stride_vn, m_n, D, not FULL_TILES)
        b_s = tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION) * qk_scale - b_lse[:, None]
        if BIAS:
            b_er, b_fr = _grid_row_terms(t, slot_row, row_q, nh_r, lo_r, 0.0, RATE, CLAMP, ROWS)
            b_g = b_fr * b_c
            b_s = tl.fma(amp[:, None], b_g, b_s)
        b_p = tl.exp2(b_s)
        if not FULL_TILES:
            b_p = tl.where(m_n[None, :], b_p, 0.0)
        b_dp = tl.dot(b_do, tl.trans(b_v), input_precision=DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if BIAS:
            b_dsg = b_ds * b_g
            b_dalpha += tl.sum(b_dsg, 1)
            b_sum_r += tl.sum(b_dsg * b_er, 1)
            b_sum_c += tl.sum(b_dsg * b_ec, 1)
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)
    return b_dq, b_dalpha, b_sum_r, b_sum_c


@triton.jit
def _backward_dq_kernel(
    q, k, v, var, alpha, o, do, lse, delta, dq, dvar, dalpha,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    stride_dvarb, stride_dvarh, stride_dvarn, stride_dvarc, stride_dab, stride_dah, stride_dan,
    H, N, GW, P, qk_scale, scale, eps, cmin,
    D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, EVEN_N: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
    FULL_TILES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """grid: (cdiv(N, BLOCK_M) * B * H,), one program per (query tile, batch*head).

    Owns its query rows: writes delta, then loops over all keys (as the forward does) for dq and the
    row reductions ``dalpha_i = sum_j dS_ij g_ij`` and ``dvar_i = -alpha_i / (var_i + eps)^2 sum_j dS_ij g_ij c_ij``.
    """
    pid = tl.program_id(0)
    num_m = tl.cdiv(N, BLOCK_M)
    bh = pid // num_m
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    start_m = (pid % num_m) * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    m_m = offs_m < N

    b_q = _load_rows(q + b * stride_qb + h * stride_qh, offs_m, stride_qn, m_m, D, not EVEN_N)
    b_o = _load_rows(o + b * stride_ob + h * stride_oh, offs_m, stride_on, m_m, D, not EVEN_N)
    b_do = _load_rows(do + b * stride_dob + h * stride_doh, offs_m, stride_don, m_m, D, not EVEN_N)
    p_lse = lse + bh.to(tl.int64) * N + offs_m
    b_lse = tl.load(p_lse) if EVEN_N else tl.load(p_lse, mask=m_m, other=0.0)
    b_delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), 1)
    tl.store(delta + bh.to(tl.int64) * N + offs_m, b_delta, mask=m_m)

    row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, is_patch_q = _row_coefficients(
        var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah,
        offs_m, N, GW, eps, cmin, stride_varn, stride_varc, stride_an, P, RATE)
    GH = (N - P) // GW
    radius = _radius(var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah,
                     stride_varn, stride_an, N - P, eps, GH, CLAMP)

    k_base = k + b * stride_kb + h * stride_kh
    v_base = v + b * stride_vb + h * stride_vh
    b_dq = tl.zeros([BLOCK_M, D], tl.float32)
    b_dalpha = tl.zeros([BLOCK_M], tl.float32)  # sum_j dS g
    b_sum_r = tl.zeros([BLOCK_M], tl.float32)  # sum_j dS g e_r
    b_sum_c = tl.zeros([BLOCK_M], tl.float32)
    amp = a * _LOG2E
    # Far keys, then near keys with the Gaussian, then far keys: no branch inside a loop.
    if ROWS:
        if HAS_PREFIX:
            b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_tiles(
                b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, 0, P, P, N, GW, P, qk_scale,
                row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dalpha, b_sum_r, b_sum_c,
                False, D, HAS_PREFIX, RATE, True, CLAMP, DOT_PRECISION, BLOCK_N)
        T = tl.cdiv(GH, ROWS)
        t_lo, t_hi = _near_tiles(start_m, BLOCK_M, radius, N, GW, P, RATE, ROWS, T)
        b_ec = _grid_col_exponents(col_q, nh_c, lo_c, RATE, CLAMP, COLS, BLOCK_N)
        b_c = tl.exp2(b_ec)
        b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_grid_tiles(
            b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, 0, t_lo, GH, GW, P, qk_scale,
            row_q, nh_r, lo_r, amp, b_ec, b_c, b_dq, b_dalpha, b_sum_r, b_sum_c,
            False, D, RATE, CLAMP, FULL_TILES, DOT_PRECISION, ROWS, COLS, BLOCK_N)
        b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_grid_tiles(
            b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, t_lo, t_hi, GH, GW, P, qk_scale,
            row_q, nh_r, lo_r, amp, b_ec, b_c, b_dq, b_dalpha, b_sum_r, b_sum_c,
            True, D, RATE, CLAMP, FULL_TILES, DOT_PRECISION, ROWS, COLS, BLOCK_N)
        b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_grid_tiles(
            b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, t_hi, T, GH, GW, P, qk_scale,
            row_q, nh_r, lo_r, amp, b_ec, b_c, b_dq, b_dalpha, b_sum_r, b_sum_c,
            False, D, RATE, CLAMP, FULL_TILES, DOT_PRECISION, ROWS, COLS, BLOCK_N)
    else:
        near_lo, near_hi = _near_range(start_m, BLOCK_M, radius, N, GW, P, RATE, BLOCK_N)
        b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_tiles(
            b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, 0, near_lo, N, N, GW, P, qk_scale,
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dalpha, b_sum_r, b_sum_c,
            False, D, HAS_PREFIX, RATE, not EVEN_N, CLAMP, DOT_PRECISION, BLOCK_N)
        b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_tiles(
            b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, N, N, GW, P,
            qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dalpha, b_sum_r, b_sum_c,
            True, D, HAS_PREFIX, RATE, not EVEN_N, CLAMP, DOT_PRECISION, BLOCK_N)
        b_dq, b_dalpha, b_sum_r, b_sum_c = _backward_dq_tiles(
            b_q, b_do, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_hi, N, N, N, GW, P, qk_scale,
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dalpha, b_sum_r, b_sum_c,
            False, D, HAS_PREFIX, RATE, not EVEN_N, CLAMP, DOT_PRECISION, BLOCK_N)

    p_dq = dq + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqn + offs_d[None, :]
    tl.store(p_dq, (b_dq * scale).to(dq.dtype.element_ty), mask=m_m[:, None])

    # e = c * inv with inv = log2(e) / (var + eps) = -2 nh, so c / (var + eps)^2 = e * inv / log2(e)^2.
    p = tl.where(is_patch_q, offs_m - P, 0)
    p_dvar = dvar + b * stride_dvarb + h * stride_dvarh + p * stride_dvarn
    tl.store(p_dvar, b_sum_r * (2.0 * a * nh_r / (_LOG2E * _LOG2E)), mask=is_patch_q)
    tl.store(p_dvar + stride_dvarc, b_sum_c * (2.0 * a * nh_c / (_LOG2E * _LOG2E)), mask=is_patch_q)
    tl.store(dalpha + b * stride_dab + h * stride_dah + p * stride_dan, b_dalpha, mask=is_patch_q)


@triton.jit
def _backward_dkdv_tiles(
    b_k, b_v, q_base, do_base, lse_base, delta_base, var_base, alpha_base, stride_qn, stride_don,
    stride_varn, stride_varc, stride_an, lo, hi, N, GW, P, qk_scale, eps, cmin,
    row_k, col_k, is_patch_k, b_dk, b_dv,
    BIAS: tl.constexpr, D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, EVEN_N: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dk, dv over query tiles [lo, hi), transposed (keys x queries); with BIAS the Gaussian."""
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_m = offs_m < N
        b_q = _load_rows(q_base, offs_m, stride_qn, m_m, D, not EVEN_N)
        b_do = _load_rows(do_base, offs_m, stride_don, m_m, D, not EVEN_N)
        if EVEN_N:
            b_lse = tl.load(lse_base + offs_m)
            b_delta = tl.load(delta_base + offs_m)
        else:
            b_lse = tl.load(lse_base + offs_m, mask=m_m, other=0.0)
            b_delta = tl.load(delta_base + offs_m, mask=m_m, other=0.0)
        b_st = tl.dot(b_k, tl.trans(b_q), input_precision=DOT_PRECISION) * qk_scale - b_lse[None, :]
        if BIAS:
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = _row_coefficients(
                var_base, alpha_base, offs_m, N, GW, eps, cmin, stride_varn, stride_varc, stride_an, P, RATE)
            e = _log2_bias(row_q[None, :], col_q[None, :], nh_r[None, :], nh_c[None, :], lo_r[None, :],
                           lo_c[None, :], tl.log2(a * _LOG2E)[None, :], row_k[:, None], col_k[:, None],
                           is_patch_k[:, None], CLAMP, HAS_PREFIX)
            b_st += tl.exp2(e)
        b_pt = tl.exp2(b_st)
        if not EVEN_N:
            b_pt = tl.where(m_m[None, :], b_pt, 0.0)

        b_dv += tl.dot(b_pt.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
        b_dpt = tl.dot(b_v, tl.trans(b_do), input_precision=DOT_PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk += tl.dot(b_dst.to(b_q.dtype), b_q, input_precision=DOT_PRECISION)
    return b_dk, b_dv


@triton.jit
def _backward_dkdv_kernel(
    q, k, v, var, alpha, do, lse, delta, dk, dv,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    H, N, GW, P, qk_scale, scale, eps, cmin,
    D: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, EVEN_N: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """grid: (cdiv(N, BLOCK_N) * B * H,), one program per (key tile, batch*head).

    Owns its key rows and loops over all queries (far, near, far): ``dv = P^T dO``,
    ``dk = scale * dS^T q``. Needs the delta written by the dq kernel.
    """
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    bh = pid // num_n
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    start_n = (pid % num_n) * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    m_n = offs_n < N

    b_k = _load_rows(k + b * stride_kb + h * stride_kh, offs_n, stride_kn, m_n, D, not EVEN_N)
    b_v = _load_rows(v + b * stride_vb + h * stride_vh, offs_n, stride_vn, m_n, D, not EVEN_N)
    row_k, col_k, is_patch_k = _positions(offs_n, N, GW, P, RATE, not CLAMP)
    var_base = var + b * stride_varb + h * stride_varh
    alpha_base = alpha + b * stride_ab + h * stride_ah
    radius = _radius(var_base, alpha_base, stride_varn, stride_an, N - P, eps, (N - P) // GW, CLAMP)
    near_lo, near_hi = _near_range(start_n, BLOCK_N, radius, N, GW, P, RATE, BLOCK_M)

    q_base = q + b * stride_qb + h * stride_qh
    do_base = do + b * stride_dob + h * stride_doh
    row_base = bh.to(tl.int64) * N
    b_dk = tl.zeros([BLOCK_N, D], tl.float32)
    b_dv = tl.zeros([BLOCK_N, D], tl.float32)
    # Far queries, then near queries with the Gaussian, then far queries.
    b_dk, b_dv = _backward_dkdv_tiles(
        b_k, b_v, q_base, do_base, lse + row_base, delta + row_base, var_base, alpha_base, stride_qn, stride_don,
        stride_varn, stride_varc, stride_an, 0, near_lo, N, GW, P, qk_scale, eps, cmin, row_k, col_k, is_patch_k,
        b_dk, b_dv, False, D, HAS_PREFIX, RATE, EVEN_N, CLAMP, DOT_PRECISION, BLOCK_M)
    b_dk, b_dv = _backward_dkdv_tiles(
        b_k, b_v, q_base, do_base, lse + row_base, delta + row_base, var_base, alpha_base, stride_qn, stride_don,
        stride_varn, stride_varc, stride_an, near_lo, near_hi, N, GW, P, qk_scale, eps, cmin, row_k, col_k, is_patch_k,
        b_dk, b_dv, True, D, HAS_PREFIX, RATE, EVEN_N, CLAMP, DOT_PRECISION, BLOCK_M)
    b_dk, b_dv = _backward_dkdv_tiles(
        b_k, b_v, q_base, do_base, lse + row_base, delta + row_base, var_base, alpha_base, stride_qn, stride_don,
        stride_varn, stride_varc, stride_an, near_hi, N, N, GW, P, qk_scale, eps, cmin, row_k, col_k, is_patch_k,
        b_dk, b_dv, False, D, HAS_PREFIX, RATE, EVEN_N, CLAMP, DOT_PRECISION, BLOCK_M)

    p_dk = dk + b * stride_dkb + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :]
    p_dv = dv + b * stride_dvb + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :]
    tl.store(p_dk, (b_dk * scale).to(dk.dtype.element_ty), mask=m_n[:, None])
    tl.store(p_dv, b_dv.to(dv.dtype.element_ty), mask=m_n[:, None])
