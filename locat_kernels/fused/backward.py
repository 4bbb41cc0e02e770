"""The fused backward: ``dS = P * (dP - delta)``, ``dP = dO V^T``, ``delta = rowsum(dO * O)``.

``attention_backward(do, q, k, v, var, alpha, out, lse, radius, params) -> (dq, dk, dv, dvar, dalpha)``,
two launches (three with the factored Gaussian's tables). The dq kernel owns query rows: it writes
``delta``, dq, and the row reductions ``dalpha_i = sum_j dS_ij g_ij`` and ``dvar_i = -alpha_i / (var_i +
eps)^2 sum_j dS_ij g_ij c_ij`` (g the Gaussian factor), so no atomics are needed and the result is
deterministic; it loops over keys in the forward's layouts (column chunks included). For a LocAt layer
at rate 1 (``chain``) it carries dvar and dalpha on through the sigmoid and softplus that made var and
alpha, and adds their part of dq itself. The dk/dv kernel owns key rows and loops over the prefix
queries, then over query tiles aligned at the first patch (no bounds masks where the tile divides the
patch count), the Gaussian per logit or, for 16-bit inputs on grids up to 64 wide (fp16: 32), factored
into row and column factors (fp16 tables of one small kernel before it, (B*H, gh, Np) and (B*H,
KEY_COLS, Np), the amplitude split between them; for fp16 inputs each followed by its rounding
remainders) spread to the keys by one-hot matmuls (``_dkdv_keys``); where the prefix tokens would add a
key tile, its key tiles start at the first patch and the prefix keys get a small tile of their own
(``_backward_dkdv_kernel``). dq, dk, dv are stored as (B, N, H, D) like the forward's out; dvar and
dalpha in float32. Head dims load as the forward's do (``configs.head_dim_tiles``: 80 as 64 + 16 columns).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .tiles import (
    LOG2E, _LOG2E, axis_exponent, dot_head, exponents, grid_col_exponents, grid_row_terms, head_rows, load_head,
    log2_bias, near_grid_tiles, near_token_tiles, positions, program_tile, row_coefficients, store_head, tile_keys,
)


def attention_backward(do, q, k, v, var, alpha, out, lse, radius, gw, num_prefix_tokens, eps, cmin, rate, scale,
                       traced=False, chain=None, grads=None, plan=None):
    """dq, dk, dv like q (stored as (B, N, H, D)); dvar (like var) and dalpha (like alpha) in float32.

    ``chain = (w_var, w_alpha, var_scale)`` (rate 1, var and alpha made from q by those layers, as
    ``gaug_forward`` makes them): the gradient carried on through the sigmoid and softplus, so dvar and
    dalpha hold the layers' output gradients ``dz`` and dq already has their part ``dz w``.
    ``grads``: (dq, dk, dv) to write into, (B, H, N, D) with a unit last stride (views of one qkv gradient).
    ``plan``: an eager call's launch plan (``configs.Plans``)."""
    B, H, N, D = q.shape
    if do.stride(-1) != 1:
        do = do.contiguous()
    delta = configs.empty((B, H, N), q, torch.float32)
    dq, dk, dv = grads or (configs.empty((B, N, H, D), q).transpose(1, 2) for _ in range(3))
    dvar = configs.empty(var.shape, q, torch.float32)
    dalpha = configs.empty(alpha.shape, q, torch.float32)
    w_var, w_alpha, var_scale = chain or (var, alpha, 1.0)  # unread without a chain
    tensors = (q, k, v, var, alpha, radius, out, do, lse, delta, dq, dk, dv, dvar, dalpha, w_var, w_alpha)
    tables, launch_dq, launch_kv = configs.prepared(
        plan, "backward", lambda: _launches(*tensors, gw, num_prefix_tokens, eps, cmin, rate, scale, var_scale,
                                            chain is not None))
    f_r = f_c = delta  # unread without the factored Gaussian
    if tables is not None:  # the dk/dv kernel's row and column factors, once per query (their own launch)
        shape_r, shape_c, launch_tables = tables
        f_r = configs.empty(shape_r, q, torch.float16)
        f_c = configs.empty(shape_c, q, torch.float16)
        launch_tables((var, alpha, f_r, f_c), traced)
    launch_dq((q, k, v, var, alpha, radius, out, do, lse, delta, dq, dvar, dalpha, w_var, w_alpha), traced)
    launch_kv((q, k, v, var, alpha, radius, do, lse, delta, f_r, f_c, dk, dv), traced)
    return dq, dk, dv, dvar, dalpha


def _launches(q, k, v, var, alpha, radius, out, do, lse, delta, dq, dk, dv, dvar, dalpha, w_var, w_alpha,
              gw, P, eps, cmin, rate, scale, var_scale, chain):
    """(the factor tables' (shape of f_r, shape of f_c, launch), or None), the dq launch, the dk/dv launch."""
    B, H, N, _ = q.shape
    common = (H, N, gw, P, scale * LOG2E, scale, eps, cmin)
    meta = configs.launch_meta("backward_dq", q, gw, P, cmin, rate)
    meta_kv = configs.launch_meta("backward_dkdv", q, gw, P, cmin, rate)
    key_cols, lo = meta_kv["KEY_COLS"], meta_kv["FACTOR_LO"]
    n_p = N - P
    n_pad = configs.cdiv(n_p, TABLE_BLOCK) * TABLE_BLOCK  # whole query tiles of both kernels: unmasked along p
    tables = None
    if meta_kv["FACTORED"]:  # tables (B*H, rows, n_pad), contiguous: a row's stride is n_pad
        tables = ((B * H, (1 + lo) * (n_p // gw), n_pad), (B * H, (1 + lo) * key_cols, n_pad), configs.Launch(
            _factor_tables_kernel, (configs.cdiv(n_p, TABLE_BLOCK) * B * H,),
            (*var.stride(), *alpha.stride(), n_pad, H, N, gw, P, eps, cmin),
            dict(RATE=rate, CLAMP=meta_kv["CLAMP"], KEY_COLS=key_cols, FACTOR_LO=lo, BLOCK_M=TABLE_BLOCK,
                 num_warps=4)))
    launch_dq = configs.Launch(
        _backward_dq_kernel, (configs.query_tiles(N, P, meta) * B * H,),
        (w_var.stride(0), var_scale, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
         *do.stride()[:3], *dq.stride()[:3], *var.stride(), *alpha.stride(), *dvar.stride(), *dalpha.stride(),
         *common),
        dict(CHAIN=chain, ALIGN8=configs.align8(q, k, v, out, do, dq), **meta))
    launch_kv = configs.Launch(
        _backward_dkdv_kernel, (configs.key_tiles(N, P, meta_kv) * B * H,),
        (n_pad, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3], *dk.stride()[:3],
         *dv.stride()[:3], *var.stride(), *alpha.stride(), *common),
        dict(ALIGN8=configs.align8(q, k, v, do, dk, dv), **meta_kv))
    return tables, launch_dq, launch_kv


# ----------------------------------------------------------------------------------------------
# dq, delta, dvar, dalpha: programs own query rows.


@triton.jit
def _dq_tiles(
    b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, t_lo, t_hi, end, N, GH, GW, P,
    qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_ec, b_c, b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c,
    BIAS: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, MASKED: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, COL0: tl.constexpr = 0,
):
    """dq over key tiles [t_lo, t_hi) (layout: ``tile_keys``); with BIAS also the row sums of
    dS g, dS g e_r and dS g e_c, the Gaussian from the column tables ``b_ec`` (e_c) and ``b_c``
    (its exp2) on grid tiles, per logit on token tiles. Where a grid tile is one grid row, g = f c
    with the row factor f and exponent e_r one per query, so they leave the sums: f sum_j dS c_j
    (1, e_r, e_c,j)."""
    for t in range(t_lo, t_hi):
        offs_n, m_n = tile_keys(t, GH, GW, P, end, ROWS, COLS, BLOCK_N, COL0)
        p_n = tl.minimum(offs_n, end - 1)  # slots past the end read the last key, masked below: no load masks
        b_k, b_k_tail = load_head(k_base, p_n, stride_kn, m_n, D, D_PAD, D_TAIL, False)  # (BLOCK_N, D_PAD), (.., TAIL)
        b_v, b_v_tail = load_head(v_base, p_n, stride_vn, m_n, D, D_PAD, D_TAIL, False)
        b_s = dot_head(b_q, b_q_tail, b_k, b_k_tail, D_TAIL, DOT_PRECISION) * qk_scale - b_lse[:, None]
        if BIAS and ROWS == 1:  # one grid row a tile: b_er, b_fr (BLOCK_M, 1)
            b_er, b_fr = grid_row_terms(t, row_q, nh_r, lo_r, 0.0, RATE, CLAMP, ROWS, COLS, BLOCK_N)
            b_s = tl.fma(amp[:, None] * b_fr, b_c, b_s)
        elif BIAS:
            if ROWS:
                b_er, b_fr = grid_row_terms(t, row_q, nh_r, lo_r, 0.0, RATE, CLAMP, ROWS, COLS, BLOCK_N)
                b_g = b_fr * b_c
                b_ec_t = b_ec
            else:
                row_k, col_k, is_patch_k, _ = positions(offs_n, N, GW, P, RATE, False)
                b_er, b_ec_t = exponents(row_q[:, None], col_q[:, None], nh_r[:, None], nh_c[:, None],
                                         lo_r[:, None], lo_c[:, None], row_k[None, :], col_k[None, :], CLAMP)
                b_g = tl.exp2(b_er + b_ec_t)
                if HAS_PREFIX:
                    b_g = tl.where(is_patch_k[None, :], b_g, 0.0)
            b_s = tl.fma(amp[:, None], b_g, b_s)
        b_p = tl.exp2(b_s)
        if MASKED:
            b_p = tl.where(m_n[None, :], b_p, 0.0)
        b_dp = dot_head(b_do, b_do_tail, b_v, b_v_tail, D_TAIL, DOT_PRECISION)
        b_ds = b_p * (b_dp - b_delta[:, None])
        if BIAS and ROWS == 1:  # f and e_r out of the sums (docstring)
            f, e_r = tl.reshape(b_fr, [b_fr.shape[0]]), tl.reshape(b_er, [b_er.shape[0]])
            b_w = b_ds * b_c
            s_w = tl.sum(b_w, 1)
            b_dalpha += f * s_w
            b_sum_r += f * e_r * s_w
            b_sum_c += f * tl.sum(b_w * b_ec, 1)
        elif BIAS:
            b_dsg = b_ds * b_g
            b_dalpha += tl.sum(b_dsg, 1)
            b_sum_r += tl.sum(b_dsg * b_er, 1)
            b_sum_c += tl.sum(b_dsg * b_ec_t, 1)
        b_dq += tl.dot(b_ds.to(b_k.dtype), b_k, input_precision=DOT_PRECISION)
        if D_TAIL:
            b_dq_tail += tl.dot(b_ds.to(b_k.dtype), b_k_tail, input_precision=DOT_PRECISION)
    return b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c


@triton.jit
def _dq_sweep(
    b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, num_tiles,
    end, N, GH, GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_ec, b_c, b_dq, b_dq_tail, b_dalpha,
    b_sum_r, b_sum_c, ROWS: tl.constexpr, COLS: tl.constexpr, MASKED: tl.constexpr, D: tl.constexpr,
    D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, COL0: tl.constexpr = 0,
):
    """Far tiles [0, near_lo), near tiles with the Gaussian, far tiles [near_hi, num_tiles)."""
    b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_tiles(
        b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, 0, near_lo, end, N, GH,
        GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_ec, b_c, b_dq, b_dq_tail, b_dalpha, b_sum_r,
        b_sum_c, BIAS=False, ROWS=ROWS, COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL,
        HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)
    b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_tiles(
        b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, end, N,
        GH, GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_ec, b_c, b_dq, b_dq_tail, b_dalpha, b_sum_r,
        b_sum_c, BIAS=True, ROWS=ROWS, COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX,
        RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)
    b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_tiles(
        b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_hi, num_tiles, end,
        N, GH, GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_ec, b_c, b_dq, b_dq_tail, b_dalpha,
        b_sum_r, b_sum_c, BIAS=False, ROWS=ROWS, COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL,
        HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)
    return b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c


@triton.jit
def _dq_grid(
    b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH, GW, P,
    qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c,
    ROWS: tl.constexpr, COLS: tl.constexpr, COL0: tl.constexpr, MASKED: tl.constexpr, D: tl.constexpr,
    D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The far / near / far sweep over the grid tiles of the columns from COL0 (all of them, or one
    column chunk), ROWS grid rows of COLS slots a tile, with that chunk's column tables."""
    T = tl.cdiv(GH, ROWS)
    near_lo, near_hi = near_grid_tiles(start_m, BLOCK_M, r, N, GW, P, RATE, ROWS, T)
    b_ec = grid_col_exponents(col_q, nh_c, lo_c, RATE, CLAMP, COLS, BLOCK_N, COL0)
    return _dq_sweep(
        b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, T, N, N,
        GH, GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_ec, tl.exp2(b_ec), b_dq, b_dq_tail, b_dalpha,
        b_sum_r, b_sum_c, ROWS=ROWS, COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX,
        RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)


@triton.jit
def _backward_dq_kernel(
    q, k, v, var, alpha, radius, o, do, lse, delta, dq, dvar, dalpha, w_var, w_alpha, stride_w, var_scale,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_dob, stride_doh, stride_don, stride_dqb, stride_dqh, stride_dqn,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    stride_dvarb, stride_dvarh, stride_dvarn, stride_dvarc, stride_dab, stride_dah, stride_dan,
    H, N, GW, P, qk_scale, scale, eps, cmin,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, FULL_TILES: tl.constexpr, MID_ROWS: tl.constexpr, MID_COLS: tl.constexpr,
    MID_FULL: tl.constexpr, TAIL_ROWS: tl.constexpr, TAIL_COLS: tl.constexpr, TAIL_FULL: tl.constexpr,
    SPLIT_PREFIX: tl.constexpr, CHAIN: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, ALIGN8: tl.constexpr = False,
):
    """grid: (query tiles * B * H,), one program per (query tile, batch*head), tiles as the forward's
    (``_forward_kernel``: with SPLIT_PREFIX the patches' tiles from token P, then the BLOCK_P prefix
    rows, which have no bias). Each program is ``_dq_rows``. CHAIN: dvar and dalpha carried on to
    the layers' outputs, and their part of dq added (``attention_backward``'s chain; rate 1). ALIGN8: the
    q, k, v, o, do, dq strides are multiples of 8 (``configs.align8``).
    """
    qk_scale, scale = tl.cast(qk_scale, tl.float32), tl.cast(scale, tl.float32)  # see configs.launcher
    eps, cmin = tl.cast(eps, tl.float32), tl.cast(cmin, tl.float32)
    var_scale = tl.cast(var_scale, tl.float32)
    bh, _, is_prefix, start_m = program_tile(N, P, BLOCK_M, SPLIT_PREFIX)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    GH = (N - P) // GW
    q_base, stride_qn = head_rows(q, b, h, stride_qb, stride_qh, stride_qn, ALIGN8)
    k_base, stride_kn = head_rows(k, b, h, stride_kb, stride_kh, stride_kn, ALIGN8)
    v_base, stride_vn = head_rows(v, b, h, stride_vb, stride_vh, stride_vn, ALIGN8)
    o_base, stride_on = head_rows(o, b, h, stride_ob, stride_oh, stride_on, ALIGN8)
    do_base, stride_don = head_rows(do, b, h, stride_dob, stride_doh, stride_don, ALIGN8)
    dq_base, stride_dqn = head_rows(dq, b, h, stride_dqb, stride_dqh, stride_dqn, ALIGN8)
    var_base, stride_varn = head_rows(var, b, h, stride_varb, stride_varh, stride_varn)
    alpha_base, stride_an = head_rows(alpha, b, h, stride_ab, stride_ah, stride_an)
    dvar_base, stride_dvarn = head_rows(dvar, b, h, stride_dvarb, stride_dvarh, stride_dvarn)
    dalpha_base, stride_dan = head_rows(dalpha, b, h, stride_dab, stride_dah, stride_dan)
    row_base = bh.to(tl.int64) * N
    if is_prefix:
        _dq_rows(
            q_base, k_base, v_base, var_base, alpha_base, o_base, do_base, lse + row_base, delta + row_base,
            dq_base, dvar_base, dalpha_base, w_var, w_alpha, stride_qn, stride_kn, stride_vn, stride_on, stride_don,
            stride_dqn, stride_varn, stride_varc, stride_an, stride_dvarn, stride_dvarc, stride_dan, stride_w, N, GH,
            GW, P, qk_scale, scale, eps, cmin, var_scale, -GH - 2, 0, P,
            D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, EVEN_M=False, EVEN_N=EVEN_N, CLAMP=CLAMP,
            DOT_PRECISION=DOT_PRECISION, ROWS=ROWS, COLS=COLS, FULL_TILES=FULL_TILES, MID_ROWS=MID_ROWS,
            MID_COLS=MID_COLS, MID_FULL=MID_FULL, TAIL_ROWS=TAIL_ROWS, TAIL_COLS=TAIL_COLS, TAIL_FULL=TAIL_FULL,
            CHAIN=CHAIN, BLOCK_M=BLOCK_P, BLOCK_N=BLOCK_N, BLOCK_P=BLOCK_P)
    else:
        _dq_rows(
            q_base, k_base, v_base, var_base, alpha_base, o_base, do_base, lse + row_base, delta + row_base,
            dq_base, dvar_base, dalpha_base, w_var, w_alpha, stride_qn, stride_kn, stride_vn, stride_on, stride_don,
            stride_dqn, stride_varn, stride_varc, stride_an, stride_dvarn, stride_dvarc, stride_dan, stride_w, N, GH,
            GW, P, qk_scale, scale, eps, cmin, var_scale, tl.load(radius + bh), start_m, N,
            D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, EVEN_M=EVEN_M, EVEN_N=EVEN_N,
            CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, ROWS=ROWS, COLS=COLS, FULL_TILES=FULL_TILES, MID_ROWS=MID_ROWS,
            MID_COLS=MID_COLS, MID_FULL=MID_FULL, TAIL_ROWS=TAIL_ROWS, TAIL_COLS=TAIL_COLS, TAIL_FULL=TAIL_FULL,
            CHAIN=CHAIN, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_P=BLOCK_P)


@triton.jit
def _dq_rows(
    q_base, k_base, v_base, var_base, alpha_base, o_base, do_base, lse_base, delta_base, dq_base, dvar_base,
    dalpha_base, w_var, w_alpha, stride_qn, stride_kn, stride_vn, stride_on, stride_don, stride_dqn, stride_varn,
    stride_varc, stride_an, stride_dvarn, stride_dvarc, stride_dan, stride_w, N, GH, GW, P, qk_scale, scale, eps,
    cmin, var_scale, r, start_m, end_m,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, FULL_TILES: tl.constexpr, MID_ROWS: tl.constexpr, MID_COLS: tl.constexpr,
    MID_FULL: tl.constexpr, TAIL_ROWS: tl.constexpr, TAIL_COLS: tl.constexpr, TAIL_FULL: tl.constexpr,
    CHAIN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The BLOCK_M query rows from token ``start_m`` (those before ``end_m``) of one (batch, head) (the
    bases point at it): writes their delta, then loops over all keys (as the forward does) for dq and
    the row reductions that give dvar and dalpha; the Gaussian on the tiles within radius ``r``. With
    CHAIN (rate 1), from var and alpha themselves: ``dz_var = dvar var (1 - var / var_scale)`` (the
    sigmoid's derivative), ``dz_alpha = dalpha (1 - exp(-alpha))`` (softplus's: sigmoid of its input),
    stored in dvar's and dalpha's places, and ``dz w`` added to the patch rows' dq."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_m = offs_m < end_m
    b_q, b_q_tail = load_head(q_base, offs_m, stride_qn, m_m, D, D_PAD, D_TAIL, not EVEN_M)
    b_o, b_o_tail = load_head(o_base, offs_m, stride_on, m_m, D, D_PAD, D_TAIL, not EVEN_M)
    b_do, b_do_tail = load_head(do_base, offs_m, stride_don, m_m, D, D_PAD, D_TAIL, not EVEN_M)
    b_lse = tl.load(lse_base + offs_m) if EVEN_M else tl.load(lse_base + offs_m, mask=m_m, other=0.0)
    b_delta = tl.sum(b_do.to(tl.float32) * b_o.to(tl.float32), 1)
    if D_TAIL:
        b_delta += tl.sum(b_do_tail.to(tl.float32) * b_o_tail.to(tl.float32), 1)
    tl.store(delta_base + offs_m, b_delta, mask=m_m)
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = row_coefficients(
        var_base, alpha_base, offs_m, N, GW, P, eps, cmin, stride_varn, stride_varc, stride_an, RATE)

    b_dq = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    b_dq_tail = 0.0
    if D_TAIL:
        b_dq_tail = tl.zeros([BLOCK_M, D_TAIL], tl.float32)
    b_dalpha = tl.zeros([BLOCK_M], tl.float32)  # sum_j dS g
    b_sum_r = tl.zeros([BLOCK_M], tl.float32)  # sum_j dS g e_r
    b_sum_c = tl.zeros([BLOCK_M], tl.float32)
    amp = a * _LOG2E
    if ROWS:
        if HAS_PREFIX:  # the prefix keys: token tiles of BLOCK_P, no bias
            b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_tiles(
                b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, 0,
                tl.cdiv(P, BLOCK_P), P, N, GH, GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, 0.0, 0.0,
                b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c, BIAS=False, ROWS=0, COLS=1, MASKED=True, D=D, D_PAD=D_PAD,
                D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION,
                BLOCK_N=BLOCK_P)
        b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_grid(
            b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH, GW,
            P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c,
            ROWS=ROWS, COLS=COLS, COL0=0, MASKED=not FULL_TILES, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX,
            RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        if MID_COLS:  # the middle column chunk of three (configs.column_chunks)
            b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_grid(
                b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH,
                GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c,
                ROWS=MID_ROWS, COLS=MID_COLS, COL0=COLS, MASKED=not MID_FULL, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL,
                HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
                BLOCK_N=BLOCK_N)
        if TAIL_COLS:  # the last column chunk
            b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_grid(
                b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH,
                GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c,
                ROWS=TAIL_ROWS, COLS=TAIL_COLS, COL0=COLS + MID_COLS, MASKED=not TAIL_FULL, D=D, D_PAD=D_PAD,
                D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION,
                BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
    else:
        near_lo, near_hi = near_token_tiles(start_m, BLOCK_M, r, N, GW, P, 0, RATE, BLOCK_N)
        b_dq, b_dq_tail, b_dalpha, b_sum_r, b_sum_c = _dq_sweep(
            b_q, b_q_tail, b_do, b_do_tail, b_lse, b_delta, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi,
            tl.cdiv(N, BLOCK_N), N, N, GH, GW, P, qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, amp, 0.0, 0.0, b_dq,
            b_dq_tail, b_dalpha, b_sum_r, b_sum_c, ROWS=0, COLS=1, MASKED=not EVEN_N, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL,
            HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N)

    # e = c * inv with inv = log2(e) / (var + eps) = -2 nh, so c / (var + eps)^2 = e * inv / log2(e)^2.
    # The patch rows from index math (see gaug._block_corners), not from row_coefficients' loads.
    is_patch_q = (offs_m >= P) & m_m
    p = tl.where(is_patch_q, offs_m - P, 0)
    g_r = b_sum_r * (2.0 * a * nh_r / (_LOG2E * _LOG2E))  # dvar
    g_c = b_sum_c * (2.0 * a * nh_c / (_LOG2E * _LOG2E))
    g_a = b_dalpha
    b_dq = b_dq * scale
    if D_TAIL:
        b_dq_tail = b_dq_tail * scale
    if CHAIN:
        v_r = tl.load(var_base + p * stride_varn, mask=is_patch_q, other=0.0).to(tl.float32)
        v_c = tl.load(var_base + p * stride_varn + stride_varc, mask=is_patch_q, other=0.0).to(tl.float32)
        g_r = tl.where(is_patch_q, g_r * v_r * (1.0 - v_r / var_scale), 0.0)
        g_c = tl.where(is_patch_q, g_c * v_c * (1.0 - v_c / var_scale), 0.0)
        g_a = tl.where(is_patch_q, g_a * _one_minus_exp_neg(a), 0.0)
        b_dq += _layer_gradient(w_var, w_alpha, stride_w, g_r, g_c, g_a, 0, D, D_PAD)
        if D_TAIL:
            b_dq_tail += _layer_gradient(w_var, w_alpha, stride_w, g_r, g_c, g_a, D_PAD, D, D_TAIL)
    store_head(dq_base, offs_m, stride_dqn, b_dq, b_dq_tail, m_m, D, D_PAD, D_TAIL)
    p_dvar = dvar_base + p * stride_dvarn
    tl.store(p_dvar, g_r, mask=is_patch_q)
    tl.store(p_dvar + stride_dvarc, g_c, mask=is_patch_q)
    tl.store(dalpha_base + p * stride_dan, g_a, mask=is_patch_q)


@triton.jit
def _layer_gradient(w_var, w_alpha, stride_w, g_r, g_c, g_a, COL0: tl.constexpr, D: tl.constexpr,
                    WIDTH: tl.constexpr):
    """``dz w`` of the Gaussian layers over head-dim columns [COL0, COL0 + WIDTH) (those < D): (BLOCK_M, WIDTH)
    from the rows' output gradients g_r, g_c (var's two) and g_a (alpha's)."""
    offs_d = COL0 + tl.arange(0, WIDTH)
    m_d = offs_d < D
    w_r = tl.load(w_var + offs_d, mask=m_d, other=0.0).to(tl.float32)
    w_c = tl.load(w_var + stride_w + offs_d, mask=m_d, other=0.0).to(tl.float32)
    w_a = tl.load(w_alpha + offs_d, mask=m_d, other=0.0).to(tl.float32)
    return g_r[:, None] * w_r[None, :] + g_c[:, None] * w_c[None, :] + g_a[:, None] * w_a[None, :]


@triton.jit
def _one_minus_exp_neg(a):
    """``1 - exp(-a)`` for a >= 0 without the cancellation near 0 (its series to a^5 below 0.1)."""
    series = a * (1.0 - a * (0.5 - a * (1.0 / 6.0 - a * (1.0 / 24.0 - a * (1.0 / 120.0)))))
    return tl.where(a < 0.1, series, 1.0 - tl.exp(-a))


TABLE_BLOCK = 128  # patches per program of the factor tables' kernel: every column of the tables (n_pad)


@triton.jit
def _factor_tables_kernel(
    var, alpha, f_r, f_c, stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    stride_f, H, N, GW, P, eps, cmin,
    RATE: tl.constexpr, CLAMP: tl.constexpr, KEY_COLS: tl.constexpr, FACTOR_LO: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """grid: (B * H * cdiv(Np, BLOCK_M),), tiles fastest. The factored dk/dv kernel's bias as fp16
    tables whose rows hold ``stride_f`` = cdiv(Np, BLOCK_M) BLOCK_M patch queries: ``f_r[bh, r, p] =
    sqrt(alpha log2 e) exp2(e_r)`` of patch query p against grid row r (every row), ``f_c[bh, c, p] =
    sqrt(alpha log2 e) exp2(e_c)`` against column c < KEY_COLS, so ``f_r f_c`` is the bias in log2
    units with no multiply per logit (fp16 holds the amplitude up to alpha ~3e9; beyond, inf and a
    non-finite dk, never a finite wrong one). A program owns BLOCK_M patch queries of one (batch, head);
    those past Np get the factors of var 1, which the dk/dv kernel reads for its masked queries only,
    so the stores need no mask along p and go out 16 bytes at a time. Every key program of the dk/dv
    kernel reads them instead of computing (KEY_ROWS + KEY_COLS) exp2 per query of each query tile.
    With FACTOR_LO each table is followed by its factors' rounding remainders ``f - fp16(f)`` in fp16
    (``f_r[bh, GH + r, p]``, ``f_c[bh, KEY_COLS + c, p]``): their sum holds a factor to ~2^-22, not 2^-11."""
    eps, cmin = tl.cast(eps, tl.float32), tl.cast(cmin, tl.float32)  # see configs.launcher
    tiles = tl.cdiv(N - P, BLOCK_M)
    bh, tile = tl.program_id(0) // tiles, tl.program_id(0) % tiles
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    GH = (N - P) // GW
    p = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = row_coefficients(
        var + b * stride_varb + h * stride_varh, alpha + b * stride_ab + h * stride_ah, P + p, N, GW, P, eps, cmin,
        stride_varn, stride_varc, stride_an, RATE)
    root_amp = tl.sqrt(a * _LOG2E)[None, :]  # (1, BLOCK_M): half the amplitude in each table
    f_r += bh.to(tl.int64) * (1 + FACTOR_LO) * GH * stride_f
    f_c += bh.to(tl.int64) * (1 + FACTOR_LO) * KEY_COLS * stride_f
    cols = tl.arange(0, KEY_COLS)
    e_c = axis_exponent(col_q[None, :], nh_c[None, :], lo_c[None, :], cols[:, None].to(tl.float32), CLAMP)
    _store_factors(f_c + cols[:, None] * stride_f + p[None, :], root_amp * tl.exp2(e_c), KEY_COLS * stride_f, True,
                   FACTOR_LO)
    for r0 in range(0, GH, 16):
        rows = r0 + tl.arange(0, 16)
        e_r = axis_exponent(row_q[None, :], nh_r[None, :], lo_r[None, :], rows[:, None].to(tl.float32), CLAMP)
        _store_factors(f_r + rows[:, None] * stride_f + p[None, :], root_amp * tl.exp2(e_r), GH * stride_f,
                       (rows < GH)[:, None], FACTOR_LO)


@triton.jit
def _store_factors(ptrs, f, lo_offset, mask, FACTOR_LO: tl.constexpr):
    """fp16(f) at ``ptrs``; with FACTOR_LO also its remainder fp16(f - fp16(f)) at ``ptrs + lo_offset``."""
    hi = f.to(tl.float16)
    tl.store(ptrs, hi, mask=mask)
    if FACTOR_LO:
        tl.store(ptrs + lo_offset, (f - hi.to(tl.float32)).to(tl.float16), mask=mask)


# ----------------------------------------------------------------------------------------------
# dk, dv: programs own key rows.


@triton.jit
def _dkdv_tiles(
    b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse_base, delta_base, var_base, alpha_base, f_r, f_c, stride_f,
    stride_qn, stride_don, stride_varn, stride_varc, stride_an, q0, t_lo, t_hi, end, N, GW, P, qk_scale, eps, cmin,
    row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv, b_dv_tail,
    BIAS: tl.constexpr, MASKED: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr,
    HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FACTORED: tl.constexpr, FACTOR_LO: tl.constexpr, KEY_ROWS: tl.constexpr, KEY_COLS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """dk, dv over query tiles [t_lo, t_hi) of BLOCK_M tokens from token ``q0`` (queries < ``end``),
    transposed (keys x queries); with BIAS (patch tiles only: their coefficients load without masks,
    ``row_coefficients``' PATCHES; rows past N read the last patch's) the Gaussian: per logit, or with
    FACTORED as ``(sel_r @ f_r) * (sel_c @ f_c)``, the row and column factors of each query against
    the key tile's KEY_ROWS grid rows (from ``row0``) and KEY_COLS columns, loaded from the tables
    ``f_r``, ``f_c`` (``_factor_tables_kernel``) and spread to the keys by one-hot matmuls."""
    for t in range(t_lo, t_hi):
        offs_m = q0 + t * BLOCK_M + tl.arange(0, BLOCK_M)
        m_m = offs_m < end
        b_q, b_q_tail = load_head(q_base, offs_m, stride_qn, m_m, D, D_PAD, D_TAIL, MASKED)
        b_do, b_do_tail = load_head(do_base, offs_m, stride_don, m_m, D, D_PAD, D_TAIL, MASKED)
        if MASKED:
            b_lse = tl.load(lse_base + offs_m, mask=m_m, other=0.0)
            b_delta = tl.load(delta_base + offs_m, mask=m_m, other=0.0)
        else:
            b_lse = tl.load(lse_base + offs_m)
            b_delta = tl.load(delta_base + offs_m)
        b_st = dot_head(b_k, b_k_tail, b_q, b_q_tail, D_TAIL, DOT_PRECISION) * qk_scale - b_lse[None, :]
        if BIAS and FACTORED:  # patch tiles: offs_m = P + p; the tables' columns past Np are masked queries
            p = t * BLOCK_M + tl.arange(0, BLOCK_M)
            rows = row0 + tl.arange(0, KEY_ROWS)
            GH = (N - P) // GW
            m_r = (rows < GH)[:, None]
            p_fr = f_r + rows[:, None] * stride_f + p[None, :]  # (KEY_ROWS, BLOCK_M)
            p_fc = f_c + tl.arange(0, KEY_COLS)[:, None] * stride_f + p[None, :]  # (KEY_COLS, BLOCK_M)
            b_r = tl.dot(b_sel_r, tl.load(p_fr, mask=m_r, other=0.0))  # (BLOCK_N, BLOCK_M), 0 off patch keys
            b_c = tl.dot(b_sel_c, tl.load(p_fc))
            if FACTOR_LO:  # plus the remainders: the one-hot sums f + (f - fp16(f)) exactly in fp32
                b_r = tl.dot(b_sel_r, tl.load(p_fr + GH * stride_f, mask=m_r, other=0.0), acc=b_r)
                b_c = tl.dot(b_sel_c, tl.load(p_fc + KEY_COLS * stride_f), acc=b_c)
            b_st = tl.fma(b_r, b_c, b_st)
        elif BIAS:
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = row_coefficients(
                var_base, alpha_base, offs_m, N, GW, P, eps, cmin, stride_varn, stride_varc, stride_an, RATE,
                PATCHES=True, IN_BOUNDS=not MASKED)
            e = log2_bias(row_q[None, :], col_q[None, :], nh_r[None, :], nh_c[None, :], lo_r[None, :],
                          lo_c[None, :], tl.log2(a * _LOG2E)[None, :], row_k[:, None], col_k[:, None],
                          is_patch_k[:, None], CLAMP, HAS_PREFIX)
            b_st += tl.exp2(e)
        b_pt = tl.exp2(b_st)
        if MASKED:
            b_pt = tl.where(m_m[None, :], b_pt, 0.0)
        b_dv += tl.dot(b_pt.to(b_do.dtype), b_do, input_precision=DOT_PRECISION)
        if D_TAIL:
            b_dv_tail += tl.dot(b_pt.to(b_do.dtype), b_do_tail, input_precision=DOT_PRECISION)
        b_dpt = dot_head(b_v, b_v_tail, b_do, b_do_tail, D_TAIL, DOT_PRECISION)
        b_dst = b_pt * (b_dpt - b_delta[None, :])
        b_dk += tl.dot(b_dst.to(b_q.dtype), b_q, input_precision=DOT_PRECISION)
        if D_TAIL:
            b_dk_tail += tl.dot(b_dst.to(b_q.dtype), b_q_tail, input_precision=DOT_PRECISION)
    return b_dk, b_dk_tail, b_dv, b_dv_tail


@triton.jit
def _dkdv_sweep(
    b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse_base, delta_base, var_base, alpha_base, f_r, f_c, stride_f,
    stride_qn, stride_don, stride_varn, stride_varc, stride_an, near_lo, near_hi, N, GW, P, qk_scale, eps, cmin,
    row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv, b_dv_tail,
    MASKED: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr,
    RATE: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, FACTORED: tl.constexpr,
    FACTOR_LO: tl.constexpr, KEY_ROWS: tl.constexpr, KEY_COLS: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """The patch query tiles (from token P): far [0, near_lo), near ones with the Gaussian, far
    [near_hi, cdiv(N - P, BLOCK_M))."""
    b_dk, b_dk_tail, b_dv, b_dv_tail = _dkdv_tiles(
        b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse_base, delta_base, var_base, alpha_base, f_r, f_c, stride_f,
        stride_qn, stride_don, stride_varn, stride_varc, stride_an, P, 0, near_lo, N, N, GW, P, qk_scale, eps, cmin,
        row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv, b_dv_tail, BIAS=False, MASKED=MASKED,
        D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION,
        FACTORED=FACTORED, FACTOR_LO=FACTOR_LO, KEY_ROWS=KEY_ROWS, KEY_COLS=KEY_COLS, BLOCK_M=BLOCK_M)
    b_dk, b_dk_tail, b_dv, b_dv_tail = _dkdv_tiles(
        b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse_base, delta_base, var_base, alpha_base, f_r, f_c, stride_f,
        stride_qn, stride_don, stride_varn, stride_varc, stride_an, P, near_lo, near_hi, N, N, GW, P, qk_scale, eps,
        cmin, row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv, b_dv_tail, BIAS=True,
        MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
        DOT_PRECISION=DOT_PRECISION, FACTORED=FACTORED, FACTOR_LO=FACTOR_LO, KEY_ROWS=KEY_ROWS, KEY_COLS=KEY_COLS,
        BLOCK_M=BLOCK_M)
    b_dk, b_dk_tail, b_dv, b_dv_tail = _dkdv_tiles(
        b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse_base, delta_base, var_base, alpha_base, f_r, f_c, stride_f,
        stride_qn, stride_don, stride_varn, stride_varc, stride_an, P, near_hi, tl.cdiv(N - P, BLOCK_M), N, N, GW, P,
        qk_scale, eps, cmin, row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv, b_dv_tail,
        BIAS=False, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
        DOT_PRECISION=DOT_PRECISION, FACTORED=FACTORED, FACTOR_LO=FACTOR_LO, KEY_ROWS=KEY_ROWS, KEY_COLS=KEY_COLS,
        BLOCK_M=BLOCK_M)
    return b_dk, b_dk_tail, b_dv, b_dv_tail


@triton.jit
def _backward_dkdv_kernel(
    q, k, v, var, alpha, radius, do, lse, delta, f_r, f_c, dk, dv, stride_f,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    H, N, GW, P, qk_scale, scale, eps, cmin,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    EVEN_N: tl.constexpr, EVEN_PATCHES: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FACTORED: tl.constexpr, FACTOR_LO: tl.constexpr, KEY_ROWS: tl.constexpr, KEY_COLS: tl.constexpr,
    SPLIT_PREFIX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
    ALIGN8: tl.constexpr = False,
):
    """grid: (key tiles * B * H,), one program per (key tile, batch*head), key tiles fastest.

    Key tiles of BLOCK_N tokens from token 0, cdiv(N, BLOCK_N) per (batch, head); with SPLIT_PREFIX
    (set where the prefix tokens would add a tile: 577 tokens in 64-key tiles) cdiv(N - P, BLOCK_N)
    tiles of BLOCK_N patches from token P, no bounds masks where BLOCK_N divides the patch count, then
    one tile of the BLOCK_P prefix keys, which get no bias. Each program is ``_dkdv_keys``: dk, dv of
    its keys over all queries. EVEN_N: the key tiles need no bounds masks. Needs the delta written by
    the dq kernel. ALIGN8: the q, k, v, do, dk, dv strides are multiples of 8 (``configs.align8``).
    """
    bh, _, is_prefix, start_n = program_tile(N, P, BLOCK_N, SPLIT_PREFIX)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    q_base, stride_qn = head_rows(q, b, h, stride_qb, stride_qh, stride_qn, ALIGN8)
    k_base, stride_kn = head_rows(k, b, h, stride_kb, stride_kh, stride_kn, ALIGN8)
    v_base, stride_vn = head_rows(v, b, h, stride_vb, stride_vh, stride_vn, ALIGN8)
    do_base, stride_don = head_rows(do, b, h, stride_dob, stride_doh, stride_don, ALIGN8)
    dk_base, stride_dkn = head_rows(dk, b, h, stride_dkb, stride_dkh, stride_dkn, ALIGN8)
    dv_base, stride_dvn = head_rows(dv, b, h, stride_dvb, stride_dvh, stride_dvn, ALIGN8)
    var_base, stride_varn = head_rows(var, b, h, stride_varb, stride_varh, stride_varn)
    alpha_base, stride_an = head_rows(alpha, b, h, stride_ab, stride_ah, stride_an)
    if is_prefix:
        _dkdv_keys(
            q_base, k_base, v_base, var_base, alpha_base, do_base, dk_base, dv_base, radius, lse, delta, f_r, f_c,
            stride_f, stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn, stride_varn, stride_varc,
            stride_an, N, GW, P, qk_scale, scale, eps, cmin, bh, 0, P,
            D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, EVEN_KEYS=False,
            EVEN_PATCHES=EVEN_PATCHES, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, FACTORED=False, FACTOR_LO=FACTOR_LO,
            KEY_ROWS=KEY_ROWS, KEY_COLS=KEY_COLS, NEAR=False, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_P, BLOCK_P=BLOCK_P)
    else:
        _dkdv_keys(
            q_base, k_base, v_base, var_base, alpha_base, do_base, dk_base, dv_base, radius, lse, delta, f_r, f_c,
            stride_f, stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn, stride_varn, stride_varc,
            stride_an, N, GW, P, qk_scale, scale, eps, cmin, bh, start_n, N,
            D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, EVEN_KEYS=EVEN_N,
            EVEN_PATCHES=EVEN_PATCHES, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, FACTORED=FACTORED, FACTOR_LO=FACTOR_LO,
            KEY_ROWS=KEY_ROWS, KEY_COLS=KEY_COLS, NEAR=True, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_P=BLOCK_P)


@triton.jit
def _dkdv_keys(
    q_base, k_base, v_base, var_base, alpha_base, do_base, dk_base, dv_base, radius, lse, delta, f_r, f_c, stride_f,
    stride_qn, stride_kn, stride_vn, stride_don, stride_dkn, stride_dvn, stride_varn, stride_varc, stride_an,
    N, GW, P, qk_scale, scale, eps, cmin, bh, start_n, end_n,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    EVEN_KEYS: tl.constexpr, EVEN_PATCHES: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FACTORED: tl.constexpr, FACTOR_LO: tl.constexpr, KEY_ROWS: tl.constexpr, KEY_COLS: tl.constexpr, NEAR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """dk, dv of the BLOCK_N keys from token ``start_n`` (those before ``end_n``) of (batch*head) ``bh`` (the bases
    point at it):
    loops over all queries, the prefix queries as tiles of BLOCK_P (no bias), then the patch queries
    in tiles of BLOCK_M aligned at token P (far, near, far; no bounds masks when BLOCK_M divides the
    patch count; NEAR = False: all far, for the prefix keys): ``dv = P^T dO``, ``dk = scale * dS^T q``.
    With FACTORED (``configs.dkdv_factored``: 16-bit inputs on grids up to 64 wide, fp16 up to 32) the
    Gaussian of a near tile is ``(sel_r @ f_r) * (sel_c @ f_c)``: the key tile's patches span at most
    KEY_ROWS quantized grid rows from ``row0`` and KEY_COLS columns, so a query tile needs (KEY_ROWS +
    KEY_COLS) x BLOCK_M row and column factors, not an exp2 per logit; they are loaded from the tables of
    ``_factor_tables_kernel`` (computed once per query, not once per key tile), and one-hot fp16 matrices
    ``sel_r`` (BLOCK_N, KEY_ROWS) and ``sel_c`` (BLOCK_N, KEY_COLS), built once, spread them to the
    keys on the tensor cores. Each factor is rounded to fp16 (2^-11 relative), so a bias b is off by up
    to ~2^-10 b: at alpha 50, fp16's dv error was 4x eager fp16's (benchmarks/NOTES.md, v26). With
    FACTOR_LO (fp16 inputs) the factors' remainders are spread by two more one-hot matmuls into the same
    fp32 accumulators, which then hold each factor to ~2^-22.
    """
    qk_scale, scale = tl.cast(qk_scale, tl.float32), tl.cast(scale, tl.float32)  # see configs.launcher
    eps, cmin = tl.cast(eps, tl.float32), tl.cast(cmin, tl.float32)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    m_n = offs_n < end_n

    b_k, b_k_tail = load_head(k_base, offs_n, stride_kn, m_n, D, D_PAD, D_TAIL, not EVEN_KEYS)
    b_v, b_v_tail = load_head(v_base, offs_n, stride_vn, m_n, D, D_PAD, D_TAIL, not EVEN_KEYS)
    row_k, col_k, is_patch_k, _ = positions(offs_n, N, GW, P, RATE, not CLAMP)
    # The first patch key's quantized row; every patch key of the tile is within KEY_ROWS rows of it.
    row0 = (tl.maximum(start_n - P, 0) // GW) // RATE * RATE
    if FACTORED:
        b_sel_r = tl.where(is_patch_k[:, None] & (row_k[:, None] - row0 == tl.arange(0, KEY_ROWS)[None, :]),
                           1.0, 0.0).to(tl.float16)  # (BLOCK_N, KEY_ROWS)
        b_sel_c = tl.where(is_patch_k[:, None] & (col_k[:, None] == tl.arange(0, KEY_COLS)[None, :]),
                           1.0, 0.0).to(tl.float16)  # (BLOCK_N, KEY_COLS)
    else:
        b_sel_r, b_sel_c = 0.0, 0.0

    row_base = bh.to(tl.int64) * N
    # (gh, >= Np), (KEY_COLS, >= Np) of this (batch, head), each followed by its remainders with FACTOR_LO
    f_r = f_r + bh.to(tl.int64) * (1 + FACTOR_LO) * ((N - P) // GW) * stride_f
    f_c = f_c + bh.to(tl.int64) * (1 + FACTOR_LO) * KEY_COLS * stride_f
    b_dk = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    b_dv = tl.zeros([BLOCK_N, D_PAD], tl.float32)
    b_dk_tail, b_dv_tail = 0.0, 0.0
    if D_TAIL:
        b_dk_tail = tl.zeros([BLOCK_N, D_TAIL], tl.float32)
        b_dv_tail = tl.zeros([BLOCK_N, D_TAIL], tl.float32)
    if HAS_PREFIX:
        b_dk, b_dk_tail, b_dv, b_dv_tail = _dkdv_tiles(
            b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse + row_base, delta + row_base, var_base, alpha_base, f_r,
            f_c, stride_f, stride_qn, stride_don, stride_varn, stride_varc, stride_an, 0, 0, tl.cdiv(P, BLOCK_P), P, N,
            GW, P, qk_scale, eps, cmin, row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv,
            b_dv_tail, BIAS=False, MASKED=True, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE,
            CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, FACTORED=FACTORED, FACTOR_LO=FACTOR_LO, KEY_ROWS=KEY_ROWS,
            KEY_COLS=KEY_COLS, BLOCK_M=BLOCK_P)
    if NEAR:
        near_lo, near_hi = near_token_tiles(start_n, BLOCK_N, tl.load(radius + bh), N, GW, P, P, RATE, BLOCK_M)
    else:
        near_lo, near_hi = 0, 0
    b_dk, b_dk_tail, b_dv, b_dv_tail = _dkdv_sweep(
        b_k, b_k_tail, b_v, b_v_tail, q_base, do_base, lse + row_base, delta + row_base, var_base, alpha_base, f_r, f_c,
        stride_f, stride_qn, stride_don, stride_varn, stride_varc, stride_an, near_lo, near_hi,
        N, GW, P, qk_scale, eps, cmin, row_k, col_k, is_patch_k, row0, b_sel_r, b_sel_c, b_dk, b_dk_tail, b_dv,
        b_dv_tail, MASKED=not EVEN_PATCHES, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE,
        CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, FACTORED=FACTORED, FACTOR_LO=FACTOR_LO, KEY_ROWS=KEY_ROWS,
        KEY_COLS=KEY_COLS, BLOCK_M=BLOCK_M)

    if D_TAIL:
        b_dk_tail = b_dk_tail * scale
    store_head(dk_base, offs_n, stride_dkn, b_dk * scale, b_dk_tail, m_n, D, D_PAD, D_TAIL)
    store_head(dv_base, offs_n, stride_dvn, b_dv, b_dv_tail, m_n, D, D_PAD, D_TAIL)
