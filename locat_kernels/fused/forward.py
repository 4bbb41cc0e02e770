"""The fused forward: logits, Gaussian bias, online softmax and P @ V in one pass over the keys.

``attention_forward(q, k, v, var, alpha, radius, params) -> (out, lse, radius)``: q, k, v
(B, H, N, D) with a unit last stride; var (B, H, Np, 2), alpha (B, H, Np); radius (B*H,) int32
from ``gaug_forward``, or None: then each program finds its (batch, head)'s radius from var and
alpha and the first stores it (for the backward; a launch with configs of its own, "forward_radius").
out (B, H, N, D) is stored as (B, N, H, D) and returned transposed, so the caller's head merge is
free; lse (B, H, N) float32 in log2 units. A head dim between powers of two loads as one tile of next_pow2 columns
or as a first tile and a tail where that takes fewer (80 as 64 + 16: ``configs.head_dim_tiles``, ``tiles.load_head``).

Key tiles come in two layouts (``configs.grid_layout``). **Grid tiles**: the prefix keys first as
token tiles of BLOCK_P = max(16, next_pow2(P)) keys without a bias, then the patches as tiles of
ROWS grid rows of COLS slots each (COLS = next_pow2(gw), or gw itself with the rows packed and the
tile's last slots padding; ``tiles.tile_keys``), or, at widths 24, 33-56 and 65-127 (16-bit), in two or three
column chunks of power-of-two widths swept one after the other (``configs.column_chunks``; 56 wide: 32 + 16 + 8
columns). Every grid tile of a sweep has the same columns in the same slots, so the Gaussian is a column table
``exp2(e_c)`` computed once per program (and chunk) times one row factor ``exp2(e_r + log2(alpha log2 e))`` per
query row and grid row: no exp2 per logit besides the softmax's. **Token tiles** (grid rows that fit neither layout):
the bias per logit, ``exp2(e_r + e_c + log2(alpha log2 e))``.

Key rows farther than the (batch, head)'s radius from a query tile's rows skip the Gaussian: the
loop runs as three ranges, far / near / far (``_forward_sweep``), as causal flash attention splits
its masked tiles (a branch inside one loop crashed Triton 3.6's pipeliner).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .tiles import (
    LOG2E, _LOG2E, dot_head, grid_col_exponents, grid_row_terms, head_rows, layer_row_coefficients, load_head,
    log2_bias, nan_max, near_grid_tiles, near_token_tiles, positions, program_tile, radius_from_maxima, radius_of,
    row_coefficients, store_head, tile_keys, warp_uniform,
)


def attention_forward(q, k, v, var, alpha, radius, gw, num_prefix_tokens, eps, cmin, rate, scale, traced=False,
                      plan=None):
    """out (B, H, N, D) as a transposed (B, N, H, D) tensor, lse (B, H, N) float32, radius (B*H,).
    ``traced``: launch through ``torch.library.wrap_triton`` (inside a ``triton_op``). ``plan``: an eager
    call's launch plan (``configs.Plans``), which keeps the launch made at its first call."""
    B, H, N, D = q.shape
    out = configs.empty((B, N, H, D), q).transpose(1, 2)
    lse = configs.empty((B, H, N), q, torch.float32)
    find_radius = radius is None
    if find_radius:
        radius = configs.empty((B * H,), q, torch.int32)
    tensors = (q, k, v, var, alpha, radius, out, lse, None, None, None, None)  # no layers
    configs.prepared(plan, "forward", lambda: _launch(*tensors, gw, num_prefix_tokens, eps, cmin, rate, scale,
                                                      find_radius))(tensors, traced)
    return out, lse, radius


def layer_forward(q, k, v, w_var, b_var, w_alpha, b_alpha, gw, num_prefix_tokens, eps, cmin, shift, var_scale, scale,
                  traced=False, plan=None):
    """out of ``gaug_forward`` then ``attention_forward`` at rate 1 (a call that records no gradient), in one
    launch: each program makes its query rows' var and alpha from the q tile it holds, by the layers
    ``w_var, b_var, w_alpha, b_alpha`` as ``gaug_forward`` does, and its skip radius from their maxima; no var,
    alpha, radius or lse is stored. ``traced`` and ``plan`` as ``attention_forward``'s."""
    B, H, N, D = q.shape
    out = configs.empty((B, N, H, D), q).transpose(1, 2)
    tensors = (q, k, v, None, None, None, out, None, w_var, b_var, w_alpha, b_alpha)  # no var, alpha, radius, lse
    configs.prepared(plan, "layer_forward", lambda: _launch(*tensors, gw, num_prefix_tokens, eps, cmin, 1, scale,
                                                            False, (shift, var_scale)))(tensors, traced)
    return out


def _launch(q, k, v, var, alpha, radius, out, lse, w_var, b_var, w_alpha, b_alpha, gw, P, eps, cmin, rate, scale,
            find_radius, layers=None) -> configs.Launch:
    """The forward's launch; ``layers``: (shift, var_scale) of ``layer_forward``'s launch."""
    B, H, N, _ = q.shape
    meta = configs.launch_meta("forward_radius" if find_radius else "forward", q, gw, P, cmin, rate)
    var_strides = (0,) * 7 if layers else (*var.stride(), *alpha.stride())
    return configs.Launch(
        _forward_kernel, (configs.query_tiles(N, P, meta) * B * H,),
        (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *var_strides,
         H, N, gw, P, scale * LOG2E, eps, cmin, w_var.stride(0) if layers else 0, *(layers or (0.0, 1.0))),
        dict(FIND_RADIUS=find_radius, LAYERS=layers is not None, ALIGN8=configs.align8(q, k, v, out), **meta))


@triton.jit
def _online_softmax(b_s, b_v, b_v_tail, b_m, b_l, b_acc, b_acc_tail, D_TAIL: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """One key tile's logits ``b_s`` (log2 units) into the running max, sum and ``acc = sum_j p_j v_j``
    (over the head dim's tiles: ``acc_tail`` with D_TAIL)."""
    b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
    b_corr = tl.exp2(b_m - b_m_new)
    b_p = tl.exp2(b_s - b_m_new[:, None])
    b_l = b_l * b_corr + tl.sum(b_p, 1)
    b_acc = b_acc * b_corr[:, None] + tl.dot(b_p.to(b_v.dtype), b_v, input_precision=DOT_PRECISION)
    if D_TAIL:
        b_acc_tail = b_acc_tail * b_corr[:, None] + tl.dot(b_p.to(b_v.dtype), b_v_tail, input_precision=DOT_PRECISION)
    return b_m_new, b_l, b_acc, b_acc_tail


@triton.jit
def _forward_tiles(
    b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, t_lo, t_hi, end, N, GH, GW, P, qk_scale,
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_c, b_m, b_l, b_acc, b_acc_tail,
    BIAS: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, MASKED: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, COL0: tl.constexpr = 0,
):
    """Online softmax over key tiles [t_lo, t_hi) (layout: ``tile_keys``); with BIAS the Gaussian,
    on grid tiles as the row factor times the column table ``b_c``, on token tiles per logit."""
    for t in range(t_lo, t_hi):
        offs_n, m_n = tile_keys(t, GH, GW, P, end, ROWS, COLS, BLOCK_N, COL0)
        p_n = tl.minimum(offs_n, end - 1)  # slots past the end read the last key, masked below: no load masks
        b_k, b_k_tail = load_head(k_base, p_n, stride_kn, m_n, D, D_PAD, D_TAIL, False)  # (BLOCK_N, D_PAD), (.., TAIL)
        b_v, b_v_tail = load_head(v_base, p_n, stride_vn, m_n, D, D_PAD, D_TAIL, False)
        b_s = dot_head(b_q, b_q_tail, b_k, b_k_tail, D_TAIL, DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        if BIAS:
            if ROWS:
                _, b_f = grid_row_terms(t, row_q, nh_r, lo_r, log2_amp, RATE, CLAMP, ROWS, COLS, BLOCK_N)
                b_g = b_f * b_c
            else:
                row_k, col_k, is_patch_k, _ = positions(offs_n, N, GW, P, RATE, not CLAMP)
                b_g = tl.exp2(log2_bias(row_q[:, None], col_q[:, None], nh_r[:, None], nh_c[:, None],
                                        lo_r[:, None], lo_c[:, None], log2_amp[:, None], row_k[None, :],
                                        col_k[None, :], is_patch_k[None, :], CLAMP, HAS_PREFIX))
            b_s = tl.fma(b_s, qk_scale, b_g)
        else:
            b_s = b_s * qk_scale
        if MASKED:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m, b_l, b_acc, b_acc_tail = _online_softmax(b_s, b_v, b_v_tail, b_m, b_l, b_acc, b_acc_tail, D_TAIL,
                                                      DOT_PRECISION)
    return b_m, b_l, b_acc, b_acc_tail


@triton.jit
def _forward_sweep(
    b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, num_tiles, end, N, GH, GW, P, qk_scale,
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_c, b_m, b_l, b_acc, b_acc_tail,
    ROWS: tl.constexpr, COLS: tl.constexpr, MASKED: tl.constexpr, D: tl.constexpr, D_PAD: tl.constexpr,
    D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, COL0: tl.constexpr = 0,
):
    """Far tiles [0, near_lo), near tiles with the Gaussian, far tiles [near_hi, num_tiles)."""
    b_m, b_l, b_acc, b_acc_tail = _forward_tiles(
        b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, 0, near_lo, end, N, GH, GW, P, qk_scale,
        row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_c, b_m, b_l, b_acc, b_acc_tail, BIAS=False, ROWS=ROWS,
        COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
        DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)
    b_m, b_l, b_acc, b_acc_tail = _forward_tiles(
        b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, end, N, GH, GW, P, qk_scale,
        row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_c, b_m, b_l, b_acc, b_acc_tail, BIAS=True, ROWS=ROWS,
        COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
        DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)
    b_m, b_l, b_acc, b_acc_tail = _forward_tiles(
        b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, near_hi, num_tiles, end, N, GH, GW, P, qk_scale,
        row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_c, b_m, b_l, b_acc, b_acc_tail, BIAS=False, ROWS=ROWS,
        COLS=COLS, MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
        DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)
    return b_m, b_l, b_acc, b_acc_tail


@triton.jit
def _forward_grid(
    b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH, GW, P, qk_scale,
    row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc, b_acc_tail,
    ROWS: tl.constexpr, COLS: tl.constexpr, COL0: tl.constexpr, MASKED: tl.constexpr, D: tl.constexpr,
    D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The far / near / far sweep over the grid tiles of the columns from COL0 (all of them, or one
    column chunk), ROWS grid rows of COLS slots a tile, with that column table."""
    T = tl.cdiv(GH, ROWS)
    near_lo, near_hi = near_grid_tiles(start_m, BLOCK_M, r, N, GW, P, RATE, ROWS, T)
    b_c = tl.exp2(grid_col_exponents(col_q, nh_c, lo_c, RATE, CLAMP, COLS, BLOCK_N, COL0))
    return _forward_sweep(
        b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, T, N, N, GH, GW, P, qk_scale,
        row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_c, b_m, b_l, b_acc, b_acc_tail, ROWS=ROWS, COLS=COLS,
        MASKED=MASKED, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
        DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N, COL0=COL0)


@triton.jit
def _forward_kernel(
    q, k, v, var, alpha, radius, o, lse, w_var, b_var, w_alpha, b_alpha,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
    stride_varb, stride_varh, stride_varn, stride_varc, stride_ab, stride_ah, stride_an,
    H, N, GW, P, qk_scale, eps, cmin, stride_w, shift, var_scale,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, FULL_TILES: tl.constexpr, MID_ROWS: tl.constexpr, MID_COLS: tl.constexpr,
    MID_FULL: tl.constexpr, TAIL_ROWS: tl.constexpr, TAIL_COLS: tl.constexpr, TAIL_FULL: tl.constexpr,
    FIND_RADIUS: tl.constexpr, LAYERS: tl.constexpr, SPLIT_PREFIX: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, ALIGN8: tl.constexpr = False,
):
    """grid: (query tiles * B * H,), query tiles fastest so neighbours share K/V in L2.

    A program owns BLOCK_M query rows of one (batch, head): one pass over all keys, then stores
    their out rows and lse. Query tiles of BLOCK_M tokens from token 0, cdiv(N, BLOCK_M) of them; with
    SPLIT_PREFIX (set where the prefix tokens would add a tile: 577 tokens in 64-query tiles)
    cdiv(N - P, BLOCK_M) tiles of patches from token P, then one program of the BLOCK_P prefix rows,
    which have no bias (every key tile far). EVEN_M: the patch (or token) tiles need no row masks;
    EVEN_N: N is a multiple of BLOCK_N. With FIND_RADIUS each patch program reads its (batch, head)'s
    var and alpha maxima for the radius (cheaper than a launch) and the first stores it. With LAYERS
    (``layer_forward``, rate 1; var, alpha, radius and lse None) each program makes its rows' var and alpha from its
    q tile by the layers (w_var (2, D) with row stride ``stride_w``, b_var (2,), w_alpha (1, D), b_alpha (1,)) and its
    radius from their maxima, and stores out only; without it the layers are None. ALIGN8: the q, k, v, out strides
    are multiples of 8 (``configs.align8``).
    """
    qk_scale = tl.cast(qk_scale, tl.float32)  # fp32 scalars (see configs.launcher)
    eps, cmin = tl.cast(eps, tl.float32), tl.cast(cmin, tl.float32)
    shift, var_scale = tl.cast(shift, tl.float32), tl.cast(var_scale, tl.float32)
    bh, tile, is_prefix, start_m = program_tile(N, P, BLOCK_M, SPLIT_PREFIX)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
    GH = (N - P) // GW
    q_base, stride_qn = head_rows(q, b, h, stride_qb, stride_qh, stride_qn, ALIGN8)
    k_base, stride_kn = head_rows(k, b, h, stride_kb, stride_kh, stride_kn, ALIGN8)
    v_base, stride_vn = head_rows(v, b, h, stride_vb, stride_vh, stride_vn, ALIGN8)
    o_base, stride_on = head_rows(o, b, h, stride_ob, stride_oh, stride_on, ALIGN8)
    if LAYERS:  # None: the layers make var and alpha, no lse is stored
        var_base, alpha_base, lse_base = var, alpha, lse
    else:
        var_base, stride_varn = head_rows(var, b, h, stride_varb, stride_varh, stride_varn)
        alpha_base, stride_an = head_rows(alpha, b, h, stride_ab, stride_ah, stride_an)
        lse_base = lse + bh.to(tl.int64) * N
    layers = (w_var, b_var, w_alpha, b_alpha, stride_w, shift, var_scale)
    if is_prefix:
        _forward_rows(
            q_base, k_base, v_base, var_base, alpha_base, o_base, lse_base, stride_qn, stride_kn, stride_vn,
            stride_on, stride_varn, stride_varc, stride_an, N, GH, GW, P, qk_scale, eps, cmin, -GH - 2, 0, P,
            *layers, LAYERS=LAYERS, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, EVEN_M=False,
            EVEN_N=EVEN_N, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, ROWS=ROWS, COLS=COLS, FULL_TILES=FULL_TILES,
            MID_ROWS=MID_ROWS, MID_COLS=MID_COLS, MID_FULL=MID_FULL, TAIL_ROWS=TAIL_ROWS, TAIL_COLS=TAIL_COLS,
            TAIL_FULL=TAIL_FULL, BLOCK_M=BLOCK_P, BLOCK_N=BLOCK_N, BLOCK_P=BLOCK_P)
    else:
        if LAYERS:
            r = GH  # at most: each program's own, from its rows' maxima (_forward_rows)
        elif FIND_RADIUS:
            if CLAMP:  # the clamp keeps far biases at their floor: no skipping
                r = GH
            else:
                r = warp_uniform(radius_of(var_base, alpha_base, stride_varn, stride_an, N - P, eps, GH))
            tl.store(radius + bh, r, mask=tile == 0)
        else:
            r = tl.load(radius + bh)
        _forward_rows(
            q_base, k_base, v_base, var_base, alpha_base, o_base, lse_base, stride_qn, stride_kn, stride_vn,
            stride_on, stride_varn, stride_varc, stride_an, N, GH, GW, P, qk_scale, eps, cmin, r, start_m, N,
            *layers, LAYERS=LAYERS, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, EVEN_M=EVEN_M,
            EVEN_N=EVEN_N, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, ROWS=ROWS, COLS=COLS, FULL_TILES=FULL_TILES,
            MID_ROWS=MID_ROWS, MID_COLS=MID_COLS, MID_FULL=MID_FULL, TAIL_ROWS=TAIL_ROWS, TAIL_COLS=TAIL_COLS,
            TAIL_FULL=TAIL_FULL, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_P=BLOCK_P)


@triton.jit
def _forward_rows(
    q_base, k_base, v_base, var_base, alpha_base, o_base, lse_base, stride_qn, stride_kn, stride_vn, stride_on,
    stride_varn, stride_varc, stride_an, N, GH, GW, P, qk_scale, eps, cmin, r, start_m, end_m,
    w_var, b_var, w_alpha, b_alpha, stride_w, shift, var_scale, LAYERS: tl.constexpr,
    D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr, HAS_PREFIX: tl.constexpr, RATE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr, CLAMP: tl.constexpr, DOT_PRECISION: tl.constexpr, ROWS: tl.constexpr,
    COLS: tl.constexpr, FULL_TILES: tl.constexpr, MID_ROWS: tl.constexpr, MID_COLS: tl.constexpr,
    MID_FULL: tl.constexpr, TAIL_ROWS: tl.constexpr, TAIL_COLS: tl.constexpr, TAIL_FULL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out and lse of the BLOCK_M query rows from token ``start_m`` (those before ``end_m``) of one
    (batch, head) (the bases point at it): every key, the Gaussian on the tiles within radius ``r``. With
    LAYERS var and alpha come from the layers, the radius is at most the rows' own, and no lse is stored."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_m = offs_m < end_m
    b_q, b_q_tail = load_head(q_base, offs_m, stride_qn, m_m, D, D_PAD, D_TAIL, not EVEN_M)
    if LAYERS:
        row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, v_r = layer_row_coefficients(
            b_q, b_q_tail, w_var, b_var, w_alpha, b_alpha, stride_w, shift, var_scale, offs_m, N, GW, P, eps, cmin,
            D, D_PAD, D_TAIL, DOT_PRECISION)
        if not CLAMP:  # the clamp keeps far biases at their floor: no skipping
            r = warp_uniform(tl.minimum(r, radius_from_maxima(nan_max(v_r), nan_max(a), eps, GH)))
    else:
        row_q, col_q, nh_r, nh_c, lo_r, lo_c, a, _ = row_coefficients(
            var_base, alpha_base, offs_m, N, GW, P, eps, cmin, stride_varn, stride_varc, stride_an, RATE)
    log2_amp = tl.log2(a * _LOG2E)  # -inf off patches

    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, D_PAD], tl.float32)
    b_acc_tail = 0.0
    if D_TAIL:
        b_acc_tail = tl.zeros([BLOCK_M, D_TAIL], tl.float32)
    if ROWS:
        if HAS_PREFIX:  # the prefix keys: tiles of BLOCK_P (a few tokens, not a whole BLOCK_N), no bias
            b_m, b_l, b_acc, b_acc_tail = _forward_tiles(
                b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, 0, tl.cdiv(P, BLOCK_P), P, N, GH, GW, P, qk_scale,
                row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, 0.0, b_m, b_l, b_acc, b_acc_tail, BIAS=False, ROWS=0,
                COLS=1, MASKED=True, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
                DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_P)
        b_m, b_l, b_acc, b_acc_tail = _forward_grid(
            b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH, GW, P, qk_scale,
            row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc, b_acc_tail, ROWS=ROWS, COLS=COLS, COL0=0,
            MASKED=not FULL_TILES, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
            DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        if MID_COLS:  # the middle column chunk of three, after the first (the softmax does not mind the order)
            b_m, b_l, b_acc, b_acc_tail = _forward_grid(
                b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH, GW, P, qk_scale,
                row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc, b_acc_tail, ROWS=MID_ROWS,
                COLS=MID_COLS, COL0=COLS, MASKED=not MID_FULL, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX,
                RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)
        if TAIL_COLS:  # the last column chunk
            b_m, b_l, b_acc, b_acc_tail = _forward_grid(
                b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, start_m, r, N, GH, GW, P, qk_scale,
                row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, b_m, b_l, b_acc, b_acc_tail, ROWS=TAIL_ROWS,
                COLS=TAIL_COLS, COL0=COLS + MID_COLS, MASKED=not TAIL_FULL, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL,
                HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP, DOT_PRECISION=DOT_PRECISION, BLOCK_M=BLOCK_M,
                BLOCK_N=BLOCK_N)
    else:
        near_lo, near_hi = near_token_tiles(start_m, BLOCK_M, r, N, GW, P, 0, RATE, BLOCK_N)
        b_m, b_l, b_acc, b_acc_tail = _forward_sweep(
            b_q, b_q_tail, k_base, v_base, stride_kn, stride_vn, near_lo, near_hi, tl.cdiv(N, BLOCK_N), N, N, GH, GW, P,
            qk_scale, row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, 0.0, b_m, b_l, b_acc, b_acc_tail, ROWS=0, COLS=1,
            MASKED=not EVEN_N, D=D, D_PAD=D_PAD, D_TAIL=D_TAIL, HAS_PREFIX=HAS_PREFIX, RATE=RATE, CLAMP=CLAMP,
            DOT_PRECISION=DOT_PRECISION, BLOCK_N=BLOCK_N)

    if D_TAIL:
        b_acc_tail = b_acc_tail / b_l[:, None]
    store_head(o_base, offs_m, stride_on, b_acc / b_l[:, None], b_acc_tail, m_m, D, D_PAD, D_TAIL, not EVEN_M)
    if not LAYERS:  # (with LAYERS no gradient is to come: no lse)
        if EVEN_M:
            tl.store(lse_base + offs_m, b_m + tl.log2(b_l))
        else:
            tl.store(lse_base + offs_m, b_m + tl.log2(b_l), mask=m_m)
