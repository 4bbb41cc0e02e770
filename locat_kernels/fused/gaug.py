"""The Gaussian augmentation in one launch each way, and the per-(batch, head) skip radius.

``gaug_forward(q, w_var, b_var, w_alpha, b_alpha, grid, params) -> (var, alpha, radius)``: from the
patch queries ``qp = q[:, :, P:]`` (average-pooled over RATE x RATE patch blocks first),
``var = var_scale * sigmoid(qp w_var^T + b_var - shift)`` (B, H, Np, 2) and
``alpha = softplus(qp w_alpha^T + b_alpha)`` (B, H, Np), float32, each block's values stored at
its RATE^2 patches; and the radius of ``radius_from_maxima`` (B*H,) int32. Replaces the float32
copy of qp, two linear layers, sigmoid, softplus, pooling and upsampling (about ten launches).

``gaug_backward(q, dq, dvar, dalpha, ...) -> (dw_var, db_var, dw_alpha, db_alpha)``: the gradient
through var and alpha. It adds ``dz w / RATE^2`` to dq's patch rows in place (dz the gradients of the
linear layers' outputs, from the recomputed pre-activations), and reduces the weight and bias gradients
per program (BLOCK_P pooled blocks of one (batch, head)) into a (programs, 3 D + 3) buffer that one
``sum`` finishes: no atomics, deterministic. With ``dz_given`` (rate 1, after ``attention_backward``'s
chain) dvar and dalpha hold dz and dq has its part already: only the reduction runs, reading q and dz.
The four gradients are contiguous views of that sum, with the parameters' own strides
(DistributedDataParallel's gradient buckets expect them).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from .tiles import gaussian_layers, head_rows, load_rows, nan_max, radius_from_maxima, store_rows

# (BLOCK_P patches or pooled blocks per program step, num_warps) of each launch, by rate (H200, model shapes
# and strides: results/gaug_sweep_v14_H200.json). The backward does little work per patch row: at rate 1
# one warp on 16 patches (many programs in flight, reductions within a warp) ran 23-35% faster than
# (64, 4); at rate 2 (four patch rows per block) (64, 2) ran 7% faster. The forward's (64, 4) is within 12%
# of each shape's best. "dz": rate 1 after the dq kernel's chain (the reduction alone): one warp on 32 patches,
# Base 224 / 384 / 512 and Tiny 224 0.0317 / 0.0266 / 0.0248 / 0.0223 ms against the full kernel's 0.0716 /
# 0.0528 / 0.0436 / 0.0417 at (16, 1) (results/gaug_sweep_v21_dz_H200.json).
FORWARD_CONFIG = {1: (64, 4), 2: (64, 4)}
BACKWARD_CONFIG = {1: (16, 1), 2: (64, 2), "dz": (32, 1)}


def gaug_forward(q, w_var, b_var, w_alpha, b_alpha, gh, gw, num_prefix_tokens, shift, var_scale, eps, clamp, rate,
                 traced=False, plan=None):
    B, H, _, D = q.shape
    var = configs.empty((B, H, gh * gw, 2), q, torch.float32)
    alpha = configs.empty((B, H, gh * gw), q, torch.float32)
    radius = configs.empty((B * H,), q, torch.int32)
    configs.prepared(plan, "gaug_forward", lambda: configs.Launch(
        _gaug_forward_kernel, (B * H,), (*q.stride()[:3], w_var.stride(0), H, gh, gw, num_prefix_tokens, shift,
                                         var_scale, eps),
        dict(D=D, D_PAD=configs.padded_head_dim(D), RATE=rate, CLAMP=clamp, ALIGN8=configs.align8(q),
             **_config(FORWARD_CONFIG, min(rate, 2))),
    ))((q, w_var, b_var, w_alpha, b_alpha, var, alpha, radius), traced)
    return var, alpha, radius


def gaug_backward(q, dq, dvar, dalpha, w_var, b_var, w_alpha, b_alpha, gh, gw, num_prefix_tokens, shift, var_scale,
                  rate, traced=False, dz_given=False, plan=None):
    B, H, _, D = q.shape
    assert rate == 1 or not dz_given, "dz is given at rate 1 only"
    partial_shape, launch = configs.prepared(plan, "gaug_backward", lambda: _backward_launch(
        q, dq, w_var, gh, gw, num_prefix_tokens, shift, var_scale, rate, dz_given))
    partial = configs.empty(partial_shape, q, torch.float32)
    launch((q, dq, dvar, dalpha, w_var, b_var, w_alpha, b_alpha, partial), traced)
    # (3 D + 3,): the weights of var_r, var_c, alpha, then their biases
    dw_var, dw_alpha, db_var, db_alpha = partial.sum(0).split_with_sizes((2 * D, D, 2, 1))
    grads, layers = (dw_var.view(2, D), db_var, dw_alpha.view(1, D), db_alpha), (w_var, b_var, w_alpha, b_alpha)
    if all(p.dtype == torch.float32 for p in layers):  # the usual case: no cast (a host call each)
        return grads
    return tuple(g.to(p.dtype) for g, p in zip(grads, layers))


def _backward_launch(q, dq, w_var, gh, gw, P, shift, var_scale, rate, dz_given):
    """The partial sums' shape (programs, 3 D + 3) and the launch."""
    B, H, _, D = q.shape
    config = _config(BACKWARD_CONFIG, "dz" if dz_given else min(rate, 2))
    chunks = configs.cdiv((gh // rate) * (gw // rate), config["BLOCK_P"])
    return (B * H * chunks, 3 * D + 3), configs.Launch(
        _gaug_backward_kernel, (B * H, chunks),
        (*q.stride()[:3], *dq.stride()[:3], w_var.stride(0), H, gh, gw, P, shift, var_scale),
        dict(D=D, D_PAD=configs.padded_head_dim(D), RATE=rate, DZ_GIVEN=dz_given, ALIGN8=configs.align8(q, dq),
             **config))


def _config(table, key):
    block_p, warps = (16, 1) if configs.INTERPRET else table[key]
    return dict(BLOCK_P=block_p, num_warps=warps)


@triton.jit
def _block_corners(offs, GW, RATE: tl.constexpr):
    """The top-left patch of each pooled block ``offs``. Index math only, kept out of the helpers
    that load: torch.compile's analysis of what a kernel writes follows every value a store address
    is made from, and would count a tensor read on the way as written."""
    return (offs // (GW // RATE)) * (RATE * GW) + (offs % (GW // RATE)) * RATE


@triton.jit
def _pooled_queries(q_base, stride_qn, p0, m, GW, P, D: tl.constexpr, D_PAD: tl.constexpr, RATE: tl.constexpr):
    """(BLOCK_P, D_PAD) float32 mean of the RATE x RATE patch queries of the blocks with top-left
    patches ``p0``."""
    b_q = load_rows(q_base, P + p0, stride_qn, m, D, D_PAD, True).to(tl.float32)
    for i in tl.static_range(RATE):
        for j in tl.static_range(RATE):
            if i + j > 0:
                b_q += load_rows(q_base, P + p0 + i * GW + j, stride_qn, m, D, D_PAD, True).to(tl.float32)
    return b_q * (1.0 / (RATE * RATE))


@triton.jit
def _preactivations(b_q, w_var, b_var, w_alpha, b_alpha, stride_w, D: tl.constexpr, D_PAD: tl.constexpr):
    """The pre-activations of the two layers, ``qp w^T + b``, of (BLOCK_P, D_PAD) float32 queries:
    (BLOCK_P,) each for var_r, var_c, alpha; and the three weight rows (D_PAD,) in float32 (zeros past D)."""
    offs_d = tl.arange(0, D_PAD)
    m_d = offs_d < D
    w_r = tl.load(w_var + offs_d, mask=m_d, other=0.0).to(tl.float32)
    w_c = tl.load(w_var + stride_w + offs_d, mask=m_d, other=0.0).to(tl.float32)
    w_a = tl.load(w_alpha + offs_d, mask=m_d, other=0.0).to(tl.float32)
    z_r = tl.sum(b_q * w_r[None, :], 1) + tl.load(b_var).to(tl.float32)
    z_c = tl.sum(b_q * w_c[None, :], 1) + tl.load(b_var + 1).to(tl.float32)
    y = tl.sum(b_q * w_a[None, :], 1) + tl.load(b_alpha).to(tl.float32)
    return z_r, z_c, y, w_r, w_c, w_a


@triton.jit
def _gaug_forward_kernel(
    q, w_var, b_var, w_alpha, b_alpha, var, alpha, radius, stride_qb, stride_qh, stride_qn, stride_w,
    H, GH, GW, P, shift, var_scale, eps,
    D: tl.constexpr, D_PAD: tl.constexpr, RATE: tl.constexpr, CLAMP: tl.constexpr, BLOCK_P: tl.constexpr,
    ALIGN8: tl.constexpr = False,
):
    """grid: (B * H,). A program owns every patch of one (batch, head): var and alpha (contiguous
    outputs), and the radius from their maxima. ALIGN8: q's strides are multiples of 8 (``configs.align8``)."""
    shift, var_scale = tl.cast(shift, tl.float32), tl.cast(var_scale, tl.float32)  # see configs.launcher
    eps = tl.cast(eps, tl.float32)
    bh = tl.program_id(0)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_base, stride_qn = head_rows(q, b, h, stride_qb, stride_qh, stride_qn, ALIGN8)
    NP = GH * GW
    var_base = var + bh.to(tl.int64) * NP * 2
    alpha_base = alpha + bh.to(tl.int64) * NP
    NPR = (GH // RATE) * (GW // RATE)
    b_var_max = tl.zeros([BLOCK_P], tl.float32)
    b_alpha_max = tl.zeros([BLOCK_P], tl.float32)
    for start in range(0, NPR, BLOCK_P):
        offs = start + tl.arange(0, BLOCK_P)
        m = offs < NPR
        p0 = _block_corners(offs, GW, RATE)
        b_q = _pooled_queries(q_base, stride_qn, p0, m, GW, P, D, D_PAD, RATE)
        z_r, z_c, y, _, _, _ = _preactivations(b_q, w_var, b_var, w_alpha, b_alpha, stride_w, D, D_PAD)
        var_r, var_c, a = gaussian_layers(z_r, z_c, y, shift, var_scale)
        for i in tl.static_range(RATE):
            for j in tl.static_range(RATE):
                p = p0 + i * GW + j
                tl.store(var_base + 2 * p, var_r, mask=m)
                tl.store(var_base + 2 * p + 1, var_c, mask=m)
                tl.store(alpha_base + p, a, mask=m)
        b_var_max = tl.maximum(b_var_max, tl.where(m, var_r, 0.0), propagate_nan=tl.PropagateNan.ALL)
        b_alpha_max = tl.maximum(b_alpha_max, tl.where(m, a, 0.0), propagate_nan=tl.PropagateNan.ALL)
    if CLAMP:  # the clamp keeps far biases at their floor: no skipping
        r = GH
    else:
        r = radius_from_maxima(nan_max(b_var_max), nan_max(b_alpha_max), eps, GH)
    tl.store(radius + bh, r)


@triton.jit
def _gaug_backward_kernel(
    q, dq, dvar, dalpha, w_var, b_var, w_alpha, b_alpha, partial, stride_qb, stride_qh, stride_qn,
    stride_dqb, stride_dqh, stride_dqn, stride_w, H, GH, GW, P, shift, var_scale,
    D: tl.constexpr, D_PAD: tl.constexpr, RATE: tl.constexpr, DZ_GIVEN: tl.constexpr, BLOCK_P: tl.constexpr,
    ALIGN8: tl.constexpr = False,
):
    """grid: (B * H, cdiv(pooled blocks, BLOCK_P)). A program owns BLOCK_P pooled blocks of one
    (batch, head) (many programs in flight: the work per row is small, the latency is not): adds the
    gradient through var and alpha to their dq rows and writes its row of the layer gradients.
    DZ_GIVEN (rate 1): dvar and dalpha hold dz, and dq has its part: the row of gradients only.

    With z the pre-activations: ``dz_var = dvar var_scale s (1 - s)``, s = sigmoid(z - shift);
    ``dz_alpha = dalpha sigmoid(z_alpha)``; summed over each block's RATE^2 patches, whose queries
    then each get ``dz w / RATE^2``; ``dw += dz qp``, ``db += dz``. ALIGN8: as the forward's.
    """
    shift, var_scale = tl.cast(shift, tl.float32), tl.cast(var_scale, tl.float32)  # see configs.launcher
    bh, chunk = tl.program_id(0), tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    q_base, stride_qn = head_rows(q, b, h, stride_qb, stride_qh, stride_qn, ALIGN8)
    dq_base, stride_dqn = head_rows(dq, b, h, stride_dqb, stride_dqh, stride_dqn, ALIGN8)
    NP = GH * GW
    dvar_base = dvar + bh.to(tl.int64) * NP * 2
    dalpha_base = dalpha + bh.to(tl.int64) * NP
    offs = chunk * BLOCK_P + tl.arange(0, BLOCK_P)
    m = offs < (GH // RATE) * (GW // RATE)
    p0 = _block_corners(offs, GW, RATE)
    b_q = _pooled_queries(q_base, stride_qn, p0, m, GW, P, D, D_PAD, RATE)
    g_r = tl.zeros([BLOCK_P], tl.float32)
    g_c = tl.zeros([BLOCK_P], tl.float32)
    g_a = tl.zeros([BLOCK_P], tl.float32)
    for i in tl.static_range(RATE):
        for j in tl.static_range(RATE):
            p = p0 + i * GW + j
            g_r += tl.load(dvar_base + 2 * p, mask=m, other=0.0)
            g_c += tl.load(dvar_base + 2 * p + 1, mask=m, other=0.0)
            g_a += tl.load(dalpha_base + p, mask=m, other=0.0)
    if DZ_GIVEN:
        dz_r, dz_c, dz_a = g_r, g_c, g_a
    else:
        z_r, z_c, y, w_r, w_c, w_a = _preactivations(b_q, w_var, b_var, w_alpha, b_alpha, stride_w, D, D_PAD)
        s_r = tl.sigmoid(z_r - shift)
        s_c = tl.sigmoid(z_c - shift)
        dz_r = g_r * var_scale * s_r * (1.0 - s_r)
        dz_c = g_c * var_scale * s_c * (1.0 - s_c)
        dz_a = g_a * tl.sigmoid(y)
        b_dqp = dz_r[:, None] * w_r[None, :] + dz_c[:, None] * w_c[None, :] + dz_a[:, None] * w_a[None, :]
        b_dqp = b_dqp * (1.0 / (RATE * RATE))  # (BLOCK_P, D_PAD)
        for i in tl.static_range(RATE):
            for j in tl.static_range(RATE):
                rows = P + p0 + i * GW + j
                b_dq = load_rows(dq_base, rows, stride_dqn, m, D, D_PAD, True).to(tl.float32)
                store_rows(dq_base, rows, stride_dqn, b_dq + b_dqp, m, D, D_PAD)
    # this program's row of the layer gradients: [dw_r, dw_c, dw_a (D each), db_r, db_c, db_a]
    p_out = partial + (bh.to(tl.int64) * tl.num_programs(1) + chunk) * (3 * D + 3)
    offs_d = tl.arange(0, D_PAD)
    m_d = offs_d < D
    tl.store(p_out + offs_d, tl.sum(dz_r[:, None] * b_q, 0), mask=m_d)
    tl.store(p_out + D + offs_d, tl.sum(dz_c[:, None] * b_q, 0), mask=m_d)
    tl.store(p_out + 2 * D + offs_d, tl.sum(dz_a[:, None] * b_q, 0), mask=m_d)
    tl.store(p_out + 3 * D, tl.sum(dz_r, 0))
    tl.store(p_out + 3 * D + 1, tl.sum(dz_c, 0))
    tl.store(p_out + 3 * D + 2, tl.sum(dz_a, 0))
