"""Shared ``@triton.jit`` pieces of the fused kernels: positions, the Gaussian's exponents in log2
units, the skip radius, near/far ranges, key layouts and loads. Inlined into each kernel.

Everything runs in log2 units (``exp2``, with log2(e) folded into the scale, the coefficients and
the amplitude). Per query row, ``nh = -1/2 log2(e) / (var + eps)`` and ``lo = cmin log2(e) / (var + eps)``
per axis, so an axis's exponent is ``max(nh d^2, lo)`` (the max only with CLAMP).

Head dims that are not a power of two are loaded as D_PAD = next_pow2(D) columns, the padding
read as zeros (masked loads, no copies): products and row sums are then exact. Or, where that saves
products (``configs.head_dim_tiles``: 80 as 64 + 16 where next_pow2 is 128), as two tiles: the first
D_PAD = prev_pow2(D) columns and a tail of D_TAIL columns from D_PAD, its padding read as zeros
(``load_head``, ``dot_head``; D_TAIL = 0: one tile, the tail a scalar 0 the code never reads).
"""
from __future__ import annotations

import triton
import triton.language as tl

from .configs import INTERPRET

LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)  # the same, for use inside kernels
# A tile pair whose every bias (and Gaussian factor) is below 2^SKIP_LOG2 skips the Gaussian: a
# relative change of the softmax weights under 2e-8, beneath float32 resolution.
SKIP_LOG2 = -25.0
_SKIP_LOG2 = tl.constexpr(SKIP_LOG2)
_RADIUS_BLOCK = tl.constexpr(512)  # patches per step when a program reads its (batch, head)'s maxima
_INTERPRETED = tl.constexpr(INTERPRET)  # no inline PTX there


@triton.jit
def program_tile(N, P, BLOCK: tl.constexpr, SPLIT_PREFIX: tl.constexpr):
    """This program's (batch*head) ``bh``, its tile index, whether it is the prefix tokens' program and
    the first token of its tile (the prefix program's rows are simply 0 to P). Tiles of BLOCK tokens
    from token 0, cdiv(N, BLOCK) per (batch, head); with SPLIT_PREFIX cdiv(N - P, BLOCK) tiles from
    token P (the patches), then one program of the P prefix tokens. Tiles run fastest, so those of one
    (batch, head) run together and share its K/V (or Q/dO) in L2."""
    pid = tl.program_id(0)
    if SPLIT_PREFIX:
        num = tl.cdiv(N - P, BLOCK) + 1
        first = P
    else:
        num = tl.cdiv(N, BLOCK)
        first = 0
    bh, tile = pid // num, pid % num
    return bh, tile, SPLIT_PREFIX and tile == num - 1, first + tile * BLOCK


@triton.jit
def positions(offs, N, GW, P, RATE: tl.constexpr, FAR: tl.constexpr, PATCHES: tl.constexpr = False,
              IN_BOUNDS: tl.constexpr = False):
    """Row and column (float32) of tokens ``offs``, quantized to RATE, whether each is a patch, and
    its patch index (0 off patches; with PATCHES, past N the last patch's).

    With FAR, non-patch tokens (prefix, or beyond N) sit at +inf: their Gaussian factor is exactly 0.
    PATCHES: the caller knows every token is at or after the first patch (tokens past N then take the
    last patch's position); IN_BOUNDS as well that every token is before N: fewer masks. ``p // GW``
    through a float32 reciprocal: exact while p < 2^20 (the reciprocal within 2 ulp, the product
    rounded: ``(p + 1/2) / GW`` off by less than the ``1/(2 GW)`` its fraction keeps from an integer).
    """
    p = offs - P
    if PATCHES and IN_BOUNDS:
        is_patch = tl.full(offs.shape, 1, tl.int1)
    elif PATCHES:
        is_patch = offs < N
        p = tl.minimum(p, N - 1 - P)
    else:
        is_patch = (p >= 0) & (offs < N)
        p = tl.where(is_patch, p, 0)
    r = ((p.to(tl.float32) + 0.5) * (1.0 / GW)).to(tl.int32)
    row = (r // RATE * RATE).to(tl.float32)
    col = ((p - r * GW) // RATE * RATE).to(tl.float32)
    if FAR:
        row = tl.where(is_patch, row, float("inf"))
        col = tl.where(is_patch, col, float("inf"))
    return row, col, is_patch, p


@triton.jit
def row_coefficients(var, alpha, offs_m, N, GW, P, eps, cmin, stride_varn, stride_varc, stride_an,
                     RATE: tl.constexpr, PATCHES: tl.constexpr = False, IN_BOUNDS: tl.constexpr = False):
    """Per query row: position, ``nh`` and ``lo`` per axis, alpha, is-patch. ``var`` and ``alpha``
    point at this program's (batch, head). Alpha is 0 off patches, except with PATCHES (see
    ``positions``; the dk/dv kernel's patch query tiles), where rows past N read the last patch's
    var and alpha: no load masks."""
    row, col, is_patch, p = positions(offs_m, N, GW, P, RATE, False, PATCHES, IN_BOUNDS)
    if PATCHES:
        v_r = tl.load(var + p * stride_varn)
        v_c = tl.load(var + p * stride_varn + stride_varc)
        a = tl.load(alpha + p * stride_an)
    else:
        v_r = tl.load(var + p * stride_varn, mask=is_patch, other=1.0)
        v_c = tl.load(var + p * stride_varn + stride_varc, mask=is_patch, other=1.0)
        a = tl.load(alpha + p * stride_an, mask=is_patch, other=0.0)
    nh_r, nh_c, lo_r, lo_c = _axis_coefficients(v_r.to(tl.float32), v_c.to(tl.float32), eps, cmin)
    return row, col, nh_r, nh_c, lo_r, lo_c, a.to(tl.float32), is_patch


@triton.jit
def layer_row_coefficients(b_q, b_q_tail, w_var, b_var, w_alpha, b_alpha, stride_w, shift, var_scale, offs_m, N, GW,
                           P, eps, cmin, D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr,
                           DOT_PRECISION: tl.constexpr):
    """``row_coefficients`` at rate 1 with var and alpha made from the query rows ``b_q`` (and ``b_q_tail``, as
    ``load_head`` gives them) by the block's two layers, as ``gaug_forward`` makes them, instead of loaded. The
    last of the eight is the rows' row variance (0 off patches; for the skip radius) where ``row_coefficients``
    has is-patch.

    The three products ``q w^T`` are one ``tl.dot`` against a (D, 16) tile of the weight rows (``_layer_products``:
    to float32's accuracy, but for the bf16 weights' split): the results come laid out as the attention's rows
    are. Row sums over a (rows, D) tile would leave them in that tile's layout, which the attention's tiles then
    convert inside their loop (sm_90, Tiny 224: 166 registers against 118, four more exp2 a tile)."""
    row, col, is_patch, _ = positions(offs_m, N, GW, P, 1, False)
    b_z = _layer_products(b_q, w_var, w_alpha, stride_w, 0, D, D_PAD, DOT_PRECISION)
    if D_TAIL:
        b_z += _layer_products(b_q_tail, w_var, w_alpha, stride_w, D_PAD, D, D_TAIL, DOT_PRECISION)
    j = tl.arange(0, 16)[None, :]  # (rows, 16): columns 0, 1, 2 hold z_r, z_c, y without their biases
    z_r = tl.sum(tl.where(j == 0, b_z, 0.0), 1) + tl.load(b_var).to(tl.float32)
    z_c = tl.sum(tl.where(j == 1, b_z, 0.0), 1) + tl.load(b_var + 1).to(tl.float32)
    y = tl.sum(tl.where(j == 2, b_z, 0.0), 1) + tl.load(b_alpha).to(tl.float32)
    v_r, v_c, a = gaussian_layers(z_r, z_c, y, shift, var_scale)
    v_r = tl.where(is_patch, v_r, 1.0)
    nh_r, nh_c, lo_r, lo_c = _axis_coefficients(v_r, tl.where(is_patch, v_c, 1.0), eps, cmin)
    return row, col, nh_r, nh_c, lo_r, lo_c, tl.where(is_patch, a, 0.0), tl.where(is_patch, v_r, 0.0)


@triton.jit
def _layer_products(b_q, w_var, w_alpha, stride_w, COL0: tl.constexpr, D: tl.constexpr, WIDTH: tl.constexpr,
                    DOT_PRECISION: tl.constexpr):
    """(rows, 16) float32: ``b_q`` (the head dim's columns [COL0, COL0 + WIDTH)) times ``_layer_weights``. bf16
    queries as they are, against the weights split in two bf16 parts (hi + lo: each product exact in float32,
    the weights to 2^-16 of their size); other dtypes in float32 (3xTF32, or IEEE as the attention's fp32 dots).
    The split leaves q as it is where a float32 copy (64 x 64 over 128 threads: 32 registers) spilled under the
    384 px cap (sm_90: 16 bytes a thread against 48, loops 3-4% shorter; benchmarks/NOTES.md, v46). fp16 keeps
    float32 (its range would not hold every weight)."""
    b_w = _layer_weights(w_var, w_alpha, stride_w, COL0, D, WIDTH)
    if b_q.dtype == tl.bfloat16:
        b_hi = b_w.to(tl.bfloat16)
        return tl.dot(b_q, (b_w - b_hi.to(tl.float32)).to(tl.bfloat16), tl.dot(b_q, b_hi))
    precision: tl.constexpr = "ieee" if DOT_PRECISION == "ieee" else "tf32x3"
    return tl.dot(b_q.to(tl.float32), b_w, input_precision=precision)


@triton.jit
def _layer_weights(w_var, w_alpha, stride_w, COL0: tl.constexpr, D: tl.constexpr, WIDTH: tl.constexpr):
    """(WIDTH, 16) float32: columns 0 and 1 the var layer's weight rows, column 2 the alpha layer's, over the head
    dim's columns [COL0, COL0 + WIDTH) (zeros at and past D, and in columns 3 to 15)."""
    d = COL0 + tl.arange(0, WIDTH)[:, None]
    j = tl.arange(0, 16)[None, :]
    # one load per layer: the two may come in different dtypes
    b_w = tl.load(w_var + tl.minimum(j, 1) * stride_w + d, mask=(d < D) & (j < 2), other=0.0).to(tl.float32)
    return b_w + tl.load(w_alpha + d + 0 * j, mask=(d < D) & (j == 2), other=0.0).to(tl.float32)


@triton.jit
def _axis_coefficients(v_r, v_c, eps, cmin):
    """``nh`` and ``lo`` per axis of float32 row and column variances."""
    inv_r = _LOG2E / (v_r + eps)
    inv_c = _LOG2E / (v_c + eps)
    return -0.5 * inv_r, -0.5 * inv_c, cmin * inv_r, cmin * inv_c


@triton.jit
def gaussian_layers(z_r, z_c, y, shift, var_scale):
    """The row and column variances and alpha from the layers' pre-activations: ``var_scale sigmoid(z - shift)``
    and ``softplus(y)`` (float32)."""
    return var_scale * tl.sigmoid(z_r - shift), var_scale * tl.sigmoid(z_c - shift), softplus(y)


@triton.jit
def softplus(y):
    """log(1 + exp(y)), stable: max(y, 0) + log1p(exp(-|y|)), log1p by its series where it is tiny."""
    t = tl.exp(-tl.abs(y))
    return tl.maximum(y, 0.0) + tl.where(t < 1e-4, t - 0.5 * t * t, tl.log(1.0 + t))


@triton.jit
def exponents(row_q, col_q, nh_r, nh_c, lo_r, lo_c, row_k, col_k, CLAMP: tl.constexpr):
    """``e = max(nh d^2, lo)`` per axis (the max only with CLAMP); inputs broadcast to one tile."""
    return axis_exponent(row_q, nh_r, lo_r, row_k, CLAMP), axis_exponent(col_q, nh_c, lo_c, col_k, CLAMP)


@triton.jit
def axis_exponent(pos_q, nh, lo, pos_k, CLAMP: tl.constexpr):
    """One axis of ``exponents``: ``max(nh (pos_q - pos_k)^2, lo)``."""
    d = pos_q - pos_k
    e = nh * (d * d)
    if CLAMP:
        e = tl.maximum(e, lo)
    return e


@triton.jit
def log2_bias(row_q, col_q, nh_r, nh_c, lo_r, lo_c, log2_amp, row_k, col_k, is_patch_k,
              CLAMP: tl.constexpr, HAS_PREFIX: tl.constexpr):
    """log2 of the bias in log2 units, ``e_r + e_c + log2(alpha log2(e))``; -inf where there is none.
    Without CLAMP the key positions must be FAR (non-patch keys at +inf give -inf, no mask)."""
    if CLAMP:
        e_r, e_c = exponents(row_q, col_q, nh_r, nh_c, lo_r, lo_c, row_k, col_k, True)
        e = e_r + e_c + log2_amp
        if HAS_PREFIX:
            e = tl.where(is_patch_k, e, float("-inf"))
    else:
        dr = row_q - row_k
        dc = col_q - col_k
        e = tl.fma(nh_r, dr * dr, tl.fma(nh_c, dc * dc, log2_amp))
    return e


@triton.jit
def radius_from_maxima(var_max, alpha_max, eps, GH):
    """Grid-row distance beyond which every bias (and Gaussian factor) of a (batch, head) is below
    2^SKIP_LOG2: ``nh_max d^2 + max(log2(alpha_max log2(e)), 0) < SKIP_LOG2``, from the widest row
    variance and the largest alpha. GH (nothing skipped) when a maximum is NaN or inf."""
    amp_bound = tl.maximum(tl.log2(alpha_max * _LOG2E), 0.0)
    r2 = (amp_bound - _SKIP_LOG2) * (var_max + eps) / (0.5 * _LOG2E)
    r = tl.sqrt(tl.minimum(r2, GH * GH * 1.0))  # GH may arrive as a Python int (Triton specializes 1)
    return tl.where(r == r, r, GH).to(tl.int32)  # floor; a NaN keeps every row near


@triton.jit
def radius_of(var, alpha, stride_varn, stride_an, NP, eps, GH):
    """``radius_from_maxima`` of the NP row variances and alphas at ``var``, ``alpha`` (one
    (batch, head))."""
    b_var = tl.zeros([_RADIUS_BLOCK], tl.float32)
    b_alpha = tl.zeros([_RADIUS_BLOCK], tl.float32)
    for start in range(0, NP, _RADIUS_BLOCK):
        offs = start + tl.arange(0, _RADIUS_BLOCK)
        m = offs < NP
        b_var = tl.maximum(b_var, tl.load(var + offs * stride_varn, mask=m, other=0.0).to(tl.float32),
                           propagate_nan=tl.PropagateNan.ALL)
        b_alpha = tl.maximum(b_alpha, tl.load(alpha + offs * stride_an, mask=m, other=0.0).to(tl.float32),
                             propagate_nan=tl.PropagateNan.ALL)
    return radius_from_maxima(nan_max(b_var), nan_max(b_alpha), eps, GH)


@triton.jit
def warp_uniform(x):
    """An int32 ``x`` that every thread holds alike (a reduction's result), as lane 0's by a warp shuffle: the
    compiler knows a shuffle from a fixed lane is the same across the warp, so loops bounded by it keep their
    counters and addresses on the uniform datapath. A radius made by reductions cost the forward's loops 3-10%
    more instructions an iteration and spilled (sm_90; benchmarks/NOTES.md, v46)."""
    if _INTERPRETED:
        return x
    return tl.inline_asm_elementwise("shfl.sync.idx.b32 $0, $1, 0, 0x1f, 0xffffffff;", "=r,r", [x],
                                     dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def nan_max(x):
    """``max(x)`` that keeps NaNs (tl.max drops them; adding ``sum(x * 0)`` brings them back, and
    turns an inf into NaN: then nothing is skipped)."""
    return tl.max(x, 0) + tl.sum(x * 0.0, 0)


@triton.jit
def near_rows(start, size, radius, N, GW, P, RATE: tl.constexpr):
    """Grid rows [lo, hi) (not clipped to the grid) holding every patch within ``radius`` grid rows
    of the patches among tokens [start, start + size); the rest are far. Rows quantized to RATE."""
    p_lo = tl.maximum(start - P, 0)
    p_hi = tl.maximum(tl.minimum(start + size, N) - 1 - P, 0)
    row_lo = (p_lo // GW) // RATE * RATE - radius
    row_hi = (p_hi // GW) // RATE * RATE + radius + RATE  # a quantized row is <= RATE - 1 below its row
    return row_lo, row_hi


@triton.jit
def near_token_tiles(start, size, radius, N, GW, P, first, RATE: tl.constexpr, BLOCK: tl.constexpr):
    """The near rows as tiles [lo, hi) of BLOCK tokens counted from token ``first`` (0: token
    tiles; P: patch tiles). A negative radius below -GH leaves none near (kernel_profile's ablation)."""
    row_lo, row_hi = near_rows(start, size, radius, N, GW, P, RATE)
    num = tl.cdiv(N - first, BLOCK)
    lo = tl.minimum((P - first + tl.maximum(row_lo, 0) * GW) // BLOCK, num)
    hi = tl.minimum(tl.cdiv(P - first + tl.maximum(row_hi, 0) * GW, BLOCK), num)
    return lo, tl.maximum(hi, lo)


@triton.jit
def near_grid_tiles(start, size, radius, N, GW, P, RATE: tl.constexpr, ROWS: tl.constexpr, T):
    """The near rows as grid tiles [lo, hi) of ROWS rows each, out of T (none for a radius below -GH)."""
    row_lo, row_hi = near_rows(start, size, radius, N, GW, P, RATE)
    lo = tl.minimum(tl.maximum(row_lo, 0) // ROWS, T)
    hi = tl.minimum(tl.cdiv(tl.maximum(row_hi, 0), ROWS), T)
    return lo, tl.maximum(hi, lo)


@triton.jit
def head_rows(x, b, h, stride_b, stride_h, stride_n, ALIGN8: tl.constexpr = False):
    """(batch, head) ``(b, h)`` of a (B, H, N, ...) tensor ``x``: its base pointer and row stride. With ALIGN8
    (``configs.align8``: the launch checked every stride is a multiple of 8) the strides are rounded to multiples of
    8, the same values, which the compiler then knows them to be: 16-bit rows load as 16-byte vectors."""
    if ALIGN8:
        stride_b, stride_h, stride_n = stride_b // 8 * 8, stride_h // 8 * 8, stride_n // 8 * 8
    return x + b * stride_b + h * stride_h, stride_n


@triton.jit
def load_rows(base, offs, stride, mask, D: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr):
    """Rows ``offs`` of a (rows, D) matrix with row stride ``stride`` as (len(offs), D_PAD): its first
    D_PAD columns; rows outside ``mask`` (with MASKED) and columns >= D read as 0."""
    offs_d = tl.arange(0, D_PAD)
    ptrs = base + offs[:, None] * stride + offs_d[None, :]
    if MASKED:
        if D < D_PAD:
            x = tl.load(ptrs, mask=mask[:, None] & (offs_d < D)[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=mask[:, None], other=0.0)
    elif D < D_PAD:
        x = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def store_rows(base, offs, stride, x, mask, D: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr = True):
    """Store (len(offs), D_PAD) ``x`` into rows ``offs`` (where ``mask``, with MASKED), columns < D."""
    offs_d = tl.arange(0, D_PAD)
    ptrs = base + offs[:, None] * stride + offs_d[None, :]
    if MASKED or D < D_PAD:
        tl.store(ptrs, x.to(base.dtype.element_ty), mask=mask[:, None] & (offs_d < D)[None, :])
    else:
        tl.store(ptrs, x.to(base.dtype.element_ty))


@triton.jit
def load_head(base, offs, stride, mask, D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr,
              MASKED: tl.constexpr):
    """Rows ``offs`` as the head dim's tiles: (len(offs), D_PAD) columns [0, D_PAD), and with D_TAIL
    (len(offs), D_TAIL) columns [D_PAD, D) (else the scalar 0)."""
    x = load_rows(base, offs, stride, mask, D, D_PAD, MASKED)
    x_tail = 0.0
    if D_TAIL:
        x_tail = load_rows(base + D_PAD, offs, stride, mask, D - D_PAD, D_TAIL, MASKED)
    return x, x_tail


@triton.jit
def store_head(base, offs, stride, x, x_tail, mask, D: tl.constexpr, D_PAD: tl.constexpr, D_TAIL: tl.constexpr,
               MASKED: tl.constexpr = True):
    """Store the head dim's tiles ``x`` (columns [0, D_PAD)) and ``x_tail`` ([D_PAD, D), with D_TAIL) into
    rows ``offs``."""
    store_rows(base, offs, stride, x, mask, D, D_PAD, MASKED)
    if D_TAIL:
        store_rows(base + D_PAD, offs, stride, x_tail, mask, D - D_PAD, D_TAIL, MASKED)


@triton.jit
def dot_head(a, a_tail, b, b_tail, D_TAIL: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """``a b^T`` summed over the head dim's tiles: (M, D_PAD) x (N, D_PAD), plus the tails' (M, D_TAIL) x
    (N, D_TAIL) with D_TAIL, as (M, N) float32."""
    s = tl.dot(a, tl.trans(b), input_precision=DOT_PRECISION)
    if D_TAIL:
        s = tl.dot(a_tail, tl.trans(b_tail), s, input_precision=DOT_PRECISION)
    return s


@triton.jit
def tile_keys(t, GH, GW, P, end, ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr,
              COL0: tl.constexpr = 0):
    """Token offsets of key tile ``t`` and which slots hold a key. ROWS = 0: token tile ``t`` of
    BLOCK_N consecutive tokens before ``end``. Else grid tile ``t`` of the patches: its first ROWS
    COLS slots hold ROWS grid rows, slot s the patch at grid row ``t ROWS + s // COLS``, column
    ``COL0 + s % COLS``; padding: columns >= GW (COLS a power of two: next_pow2(GW), or a column chunk
    from COL0, ``configs.column_chunks``), or slots >= ROWS COLS (COLS = GW, the rows packed;
    ``configs.grid_layout``), and rows >= GH."""
    s = tl.arange(0, BLOCK_N)
    if ROWS:
        if (COLS & (COLS - 1)) == 0:  # COLS a power of two, BLOCK_N = ROWS COLS
            row = t * ROWS + s // COLS
            col = COL0 + s % COLS
            offs = P + row * GW + col
            valid = (col < GW) & (row < GH)
        else:  # packed: COLS = GW; a slot's row in the tile is loop-invariant, so one compare a tile
            offs = P + t * (ROWS * COLS) + s
            valid = (s < ROWS * COLS) & (s // COLS < GH - t * ROWS)
    else:
        offs = t * BLOCK_N + s
        valid = offs < end
    return offs, valid


@triton.jit
def grid_col_exponents(col_q, nh_c, lo_c, RATE: tl.constexpr, CLAMP: tl.constexpr, COLS: tl.constexpr,
                       BLOCK_N: tl.constexpr, COL0: tl.constexpr = 0):
    """(BLOCK_M, BLOCK_N) column exponents ``e_c`` of each query row against each slot of a grid
    tile (its columns from COL0): the same in every grid tile, so a program computes them (and their
    exp2) once."""
    col = ((COL0 + tl.arange(0, BLOCK_N) % COLS) // RATE * RATE).to(tl.float32)
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
def grid_row_terms(t, row_q, nh_r, lo_r, shift, RATE: tl.constexpr, CLAMP: tl.constexpr,
                   ROWS: tl.constexpr, COLS: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row exponent ``e_r`` and factor ``exp2(e_r + shift)`` of every slot of grid tile ``t``: one
    exp2 per query row and grid row, not per logit. (BLOCK_M, 1) when a tile is one grid row, else
    (BLOCK_M, BLOCK_N) by a select per extra row."""
    e = _grid_row_exponent(row_q, nh_r, lo_r, t * ROWS, RATE, CLAMP)
    b_e = e[:, None]
    b_f = tl.exp2(e + shift)[:, None]
    slot_row = tl.arange(0, BLOCK_N) // COLS  # padding slots (row >= ROWS) keep row 0's: they are masked
    for j in tl.static_range(1, ROWS):
        e = _grid_row_exponent(row_q, nh_r, lo_r, t * ROWS + j, RATE, CLAMP)
        in_row = (slot_row == j)[None, :]
        b_e = tl.where(in_row, e[:, None], b_e)
        b_f = tl.where(in_row, tl.exp2(e + shift)[:, None], b_f)
    return b_e, b_f
