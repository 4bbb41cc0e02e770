"""The public ops, their argument checks, the backend choice and the triton ops.

- ``gaussian_attention(q, k, v, var, alpha, grid_size, ...)``: attention with the Gaussian bias, for
  callers that bring their own var and alpha.
- ``locat_attention(q, k, v, log_var_weight, log_var_bias, log_alpha_weight, log_alpha_bias,
  grid_size, ...)``: what a LocAt attention layer computes: var and alpha made from the patch
  queries by the block's two linear layers (``reference.gaussian_parameters``), then the attention.
  On the triton backend var and alpha are made by one small kernel and their gradients flow back in
  one more, instead of about twenty small torch operations; a call that records no gradient (inference,
  eager or compiled) at rate 1 is one launch, the forward making each query tile's var and alpha itself.

Under ``torch.compile`` both are ``torch.library.triton_op`` s (``locat::gaussian_attention``,
``locat::locat_attention`` and their backwards, autograd registered; ``locat::locat_inference``, the one
launch, where no gradient is recorded at rate 1): the compiler traces into them and launches the kernels
from its own generated code, without a Python call per op. Eager calls
take a plain ``autograd.Function`` around the same launchers (less host time than the op dispatch), with a
launch plan per call signature (``configs.Plans``: every launch's grid and arguments made by the signature's
first call); a ``locat_attention_qkvpacked`` call whose signature passed the checks before skips them.
"""
from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import guard_float, guard_int

from . import fused
from .fused import configs
from .gaussian import as_pair, gaussian_clamp, gaussian_eps, variance_scale, variance_shift
from .reference import extra_bias, gaussian_attention_reference, gaussian_bias, gaussian_parameters

__all__ = ["gaussian_attention", "locat_attention", "locat_attention_qkvpacked", "BACKENDS", "resolve_backend"]

BACKENDS = ("auto", "triton", "reference", "sdpa")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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
    attn_bias: Tensor | None = None,
    window_mask: Tensor | None = None,
) -> Tensor:
    """Self-attention with LocAtViT's per-query Gaussian bias toward nearby patches.

    ``out = softmax(scale * q k^T + bias) v`` with, for patch tokens i, j (prefix rows and columns
    get no bias),
    ``bias[i, j] = alpha_i * exp(c_r(i,j) / (var_i,r + eps) + c_c(i,j) / (var_i,c + eps))`` and
    ``c_r = max(-1/2 (row_i - row_j)^2, cmin)``, likewise for columns (docs/method.md).

    Args:
        q, k, v: (B, H, N, D), N = num_prefix_tokens + gh * gw. Any strides; the triton backend needs
            a unit stride on the last dimension (timm's q/k/v views of one qkv tensor have it) and a
            head_dim that is a multiple of 8 up to 256.
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
        backend: "triton" (the fused kernels), "reference" (eager, materializes the bias), "sdpa"
            (dense bias into SDPA, the published path) or "auto" (``resolve_backend``).
        check_values: also check that var is positive and finite and alpha finite. Off by default:
            it reads the values back to the host, a device synchronization on every call.
        attn_bias: (H, N, N), added to the logits of every batch element (Swin's relative position
            bias, shared by all windows); float32 or q's dtype. Gradients flow to it.
        window_mask: (nW, N, N) with B a multiple of nW: batch element b gets ``window_mask[b % nW]``
            added (Swin's shift mask, one per window position); no gradient. With either, the
            triton backend runs the window kernel (``fused.window``: no prefix tokens, rate 1,
            N <= 64, the whole window one tile; the (B, H, N, N) bias is never built).

    Returns:
        (B, H, N, D) in q's dtype. The triton backend stores it as (B, N, H, D) and returns the
        transposed view, so merging heads afterwards is free. fp32 inputs use exact (non-tf32) dot
        products. Gradients flow to q, k, v, var and alpha. Shapes, dtypes, devices and grids are
        always checked (no device sync); values only with ``check_values=True``.
    """
    gh, gw = _check(q, k, v, grid_size, num_prefix_tokens, rate)
    _check_parameters(q, gh * gw, var=var, alpha=alpha)
    windowed = attn_bias is not None or window_mask is not None
    if windowed:
        _check_window_bias(q, attn_bias, window_mask)
    if check_values:
        _check_values(var, alpha)
    init_grid_size = (gh, gw) if init_grid_size is None else as_pair(init_grid_size)
    eps = gaussian_eps(init_grid_size) if eps is None else float(eps)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    backend = _resolve(backend, q, num_prefix_tokens, rate, windowed)
    if backend == "reference":
        return gaussian_attention_reference(
            q, k, v, var, alpha, (gh, gw), num_prefix_tokens=num_prefix_tokens,
            init_grid_size=init_grid_size, eps=eps, rate=rate, scale=scale, attn_bias=attn_bias,
            window_mask=window_mask)
    if backend == "sdpa":
        bias = gaussian_bias(var, alpha, (gh, gw), num_prefix_tokens=num_prefix_tokens,
                             init_grid_size=init_grid_size, eps=eps, rate=rate)
        extra = extra_bias(attn_bias, window_mask, q.shape[0])
        if extra is not None:
            bias = bias + extra.to(bias.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
    _check_triton(q, k, v)
    return _triton_attention(q, k, v, var, alpha, gw, num_prefix_tokens, eps, gaussian_clamp(init_grid_size), rate,
                             scale, attn_bias, window_mask)


def locat_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_var_weight: Tensor,
    log_var_bias: Tensor,
    log_alpha_weight: Tensor,
    log_alpha_bias: Tensor,
    grid_size,
    *,
    num_prefix_tokens: int = 0,
    init_grid_size=None,
    rate: int = 1,
    scale: float | None = None,
    backend: str = "auto",
    gaussian_queries: Tensor | None = None,
    attn_bias: Tensor | None = None,
    window_mask: Tensor | None = None,
) -> Tensor:
    """A LocAt attention layer's attention: var and alpha from the patch queries, then
    ``gaussian_attention``.

    ``var, alpha = reference.gaussian_parameters(q[:, :, P:], log_var_weight, log_var_bias,
    log_alpha_weight, log_alpha_bias, grid_size, init_grid_size=..., rate=rate)`` (float32, the
    published sigmoid/softplus, the variance rescale for a grid other than the build grid, and
    with rate 2 the queries pooled over 2 x 2 patch blocks), then the attention with positions
    quantized to ``rate``. Gradients flow to q (through the attention and through var and alpha),
    k, v and the four layer tensors.

    Args:
        q, k, v: (B, H, N, D) as for ``gaussian_attention``.
        log_var_weight, log_var_bias: (2, D) and (2,), the block's ``gaug.log_var`` layer.
        log_alpha_weight, log_alpha_bias: (1, D) and (1,), the block's ``gaug.log_alpha`` layer.
        grid_size, num_prefix_tokens, rate, scale, backend: as for ``gaussian_attention``.
        init_grid_size: the grid the model was built for (default: grid_size): sets eps, cmin, the
            variance's range and its rescale.
        gaussian_queries: the queries var and alpha are made from, (B, H, N, D) like q (default: q
            itself). RoPE-ViT passes its queries before the rotary embedding, as published; gradients
            flow to them through var and alpha, and to q through the attention.
        attn_bias, window_mask: as for ``gaussian_attention`` (LocAt Swin's relative position bias and
            shift mask); on the triton backend var and alpha come from their own kernel, then the
            window kernel.
    """
    return _locat_attention(q, k, v, log_var_weight, log_var_bias, log_alpha_weight, log_alpha_bias, grid_size,
                            num_prefix_tokens, init_grid_size, rate, scale, backend, gaussian_queries, attn_bias,
                            window_mask)


def locat_attention_qkvpacked(
    qkv: Tensor,
    log_var_weight: Tensor,
    log_var_bias: Tensor,
    log_alpha_weight: Tensor,
    log_alpha_bias: Tensor,
    grid_size,
    *,
    num_prefix_tokens: int = 0,
    init_grid_size=None,
    rate: int = 1,
    scale: float | None = None,
    backend: str = "auto",
) -> Tensor:
    """``locat_attention`` on the output of a block's qkv layer as one tensor.

    ``qkv`` (B, N, 3, H, D) as ``qkv_layer(x).reshape(B, N, 3, H, D)`` gives it (timm's layout, with a
    unit last stride); the result and the other arguments are ``locat_attention``'s on
    ``q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)``. On the triton backend the kernels write dq,
    dk and dv into one (B, N, 3, H, D) gradient of ``qkv``: the backward of that split (a stack of
    the three gradients, then a copy into the qkv layer's layout: two passes over 3 B N H D values
    per layer) does not run. That is the eager path (its autograd Function). Under ``torch.compile`` the
    call runs ``locat::locat_attention`` on the three views, whose gradient the compiler stacks and
    copies in one fused pass: a triton op that writes into views of one buffer is functionalized by
    inductor into a copy of each view, and torch 2.11's copy read past the view's buffer (an illegal
    address at LocAtViT-Tiny, batch 256; benchmarks/NOTES.md, v28).
    """
    weights = (log_var_weight, log_var_bias, log_alpha_weight, log_alpha_bias)
    plan = _call_plan((qkv, *weights), (grid_size, num_prefix_tokens, init_grid_size, rate, scale, backend))
    params = plan.get("params") if plan is not None else None
    if params is not None:  # a call of this signature passed the checks before and ran on triton
        return _packed_triton(qkv, weights, _split(qkv), params, plan)
    if not isinstance(qkv, Tensor):
        raise TypeError(f"qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 5 or qkv.shape[2] != 3:
        raise ValueError(f"qkv must have shape (B, N, 3, H, D), got {tuple(qkv.shape)}")
    q, k, v = _split(qkv)
    return _locat_attention(q, k, v, *weights, grid_size, num_prefix_tokens, init_grid_size, rate, scale, backend,
                            None, None, None, qkv, plan)


def _locat_attention(q, k, v, log_var_weight, log_var_bias, log_alpha_weight, log_alpha_bias, grid_size,
                     num_prefix_tokens, init_grid_size, rate, scale, backend, gaussian_queries, attn_bias,
                     window_mask, qkv=None, plan=None):
    """``locat_attention``; ``qkv``: the tensor that q, k, v are views of (``locat_attention_qkvpacked``), with
    ``plan`` its call's plan (``_call_plan``) or None."""
    gh, gw = _check(q, k, v, grid_size, num_prefix_tokens, rate)
    windowed = attn_bias is not None or window_mask is not None
    if windowed:
        _check_window_bias(q, attn_bias, window_mask)
    D = q.shape[-1]
    if gaussian_queries is not None:
        if not isinstance(gaussian_queries, Tensor):
            raise TypeError(f"gaussian_queries must be a torch.Tensor, got {type(gaussian_queries).__name__}")
        if gaussian_queries.shape != q.shape or gaussian_queries.dtype != q.dtype or \
                gaussian_queries.device != q.device:
            raise ValueError(f"gaussian_queries must match q: shape {tuple(q.shape)}, {q.dtype} on {q.device}; got "
                             f"{tuple(gaussian_queries.shape)}, {gaussian_queries.dtype} on {gaussian_queries.device}")
    for name, t, shape in (("log_var_weight", log_var_weight, (2, D)), ("log_var_bias", log_var_bias, (2,)),
                           ("log_alpha_weight", log_alpha_weight, (1, D)), ("log_alpha_bias", log_alpha_bias, (1,))):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for head_dim {D}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    init_grid_size = (gh, gw) if init_grid_size is None else as_pair(init_grid_size)
    scale = D ** -0.5 if scale is None else float(scale)
    backend = _resolve(backend, q, num_prefix_tokens, rate, windowed)
    P = num_prefix_tokens
    qg = q if gaussian_queries is None else gaussian_queries
    if backend != "triton":
        var, alpha = gaussian_parameters(qg[:, :, P:], log_var_weight, log_var_bias, log_alpha_weight,
                                         log_alpha_bias, (gh, gw), init_grid_size=init_grid_size, rate=rate)
        return gaussian_attention(q, k, v, var, alpha, (gh, gw), num_prefix_tokens=P, init_grid_size=init_grid_size,
                                  rate=rate, scale=scale, backend=backend, attn_bias=attn_bias,
                                  window_mask=window_mask)
    _check_triton(q, k, v)
    # Dynamo traces the computation itself (it warns about a cache in the traced path); eager calls hit the cache.
    eps, cmin, shift, var_scale = (_fused_constants.__wrapped__ if torch.compiler.is_compiling() else _fused_constants)(
        (gh, gw), init_grid_size)
    weights = (log_var_weight, log_var_bias, log_alpha_weight, log_alpha_bias)
    if gaussian_queries is not None or windowed:  # var and alpha by their own kernels, then the attention on q
        if gaussian_queries is not None:
            _check_triton(qg, k, v)
        gparams = (gh, gw, P, eps, cmin, shift, var_scale, rate)
        if torch.compiler.is_compiling():
            var, alpha = torch.ops.locat.gaussian_augmentation(qg, *weights, *gparams)
        else:
            plan = _plan("augmentation", (qg, *weights), gparams)
            if _recorded(qg, *weights):
                var, alpha = _GaussianAugmentation.apply(qg, *weights, gparams, plan)
            else:
                var, alpha = _augmentation_forward(qg, *weights, *gparams, plan=plan)
        return _triton_attention(q, k, v, var, alpha, gw, P, eps, cmin, rate, scale, attn_bias, window_mask)
    params = (gh, gw, P, eps, cmin, shift, var_scale, rate, scale)
    if torch.compiler.is_compiling():  # on the views, packed or not (locat_attention_qkvpacked says why)
        if rate == 1 and not _recorded(q, k, v, *weights):  # Dynamo guards on the grad mode and requires_grad
            return torch.ops.locat.locat_inference(q, k, v, *weights, gw, P, eps, cmin, shift, var_scale, scale)
        return torch.ops.locat.locat_attention(q, k, v, *weights, *params)[0]
    if qkv is not None:
        plan = _plan("packed", (qkv, *weights), params) if plan is None else plan
        plan["params"] = params  # the checks passed: later calls of the signature skip them
        return _packed_triton(qkv, weights, (q, k, v), params, plan)
    plan = _plan("locat", (q, k, v, *weights), params)
    if _recorded(q, k, v, *weights):
        return _LocatAttention.apply(q, k, v, *weights, params, plan)
    return _locat_inference(q, k, v, weights, params, plan)


def _packed_triton(qkv, weights, views, params, plan):
    """The eager triton path of ``locat_attention_qkvpacked`` on checked inputs (``views``: q, k, v of qkv)."""
    if _recorded(qkv, *weights):
        return _LocatAttentionPacked.apply(qkv, *weights, views, params, plan)
    return _locat_inference(*views, weights, params, plan)


def _locat_inference(q, k, v, weights, params, plan):
    """An eager call that records no gradient: at rate 1 one launch that makes var and alpha itself
    (``fused.layer_forward``; the same out but for float32 rounding), else the launches of a recorded call."""
    gh, gw, P, eps, cmin, shift, var_scale, rate, scale = params
    if rate == 1:
        return fused.layer_forward(q, k, v, *weights, gw, P, eps, cmin, shift, var_scale, scale, plan=plan)
    return _locat_forward(q, k, v, *weights, *params, plan=plan)[0]


def resolve_backend(backend: str, q: Tensor) -> str:
    """The backend a call runs on: the one place "auto" is defined, for the ops and the models'
    ``attn_backend="auto"`` alike.

    "auto" is "triton" where the fused kernels take the input (CUDA tensors in fp16, bf16 or fp32
    with a head_dim that is a multiple of 8 up to 256), else "sdpa" (the dense bias into SDPA, the
    published path); on a GPU that fallback warns once per reason. The Triton interpreter (CPU,
    ``TRITON_INTERPRET=1``) is a correctness tool: only an explicit "triton" uses it. An explicit
    "triton" raises on inputs the kernels do not take."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not q.is_cuda:
        return "sdpa"
    reason = _triton_refusal(q)
    if reason is not None:
        # Python's default filter shows a warning once per message and place: once per reason.
        warnings.warn(f"backend='auto' runs the dense-bias SDPA path: {reason}", stacklevel=3)
        return "sdpa"
    return "triton"


def _resolve(backend, q, num_prefix_tokens, rate, windowed) -> str:
    """resolve_backend, and with attn_bias / window_mask the window kernel's limits: "auto" falls back
    to sdpa with a warning, an explicit "triton" raises."""
    explicit_triton = backend == "triton"
    backend = resolve_backend(backend, q) if q.numel() else "reference"  # an empty batch: nothing to launch
    if windowed and backend == "triton":
        reason = _window_refusal(q, num_prefix_tokens, rate)
        if reason and explicit_triton:
            raise ValueError(f"backend='triton' with attn_bias or window_mask: {reason}")
        if reason:
            warnings.warn(f"backend='auto' runs the dense-bias SDPA path: {reason}", stacklevel=3)
            return "sdpa"
    return backend


def _recorded(*tensors) -> bool:
    """Whether autograd records an eager call on ``tensors``: else (inference, no_grad) the launches run
    without an autograd Function, whose node and saved tensors cost host time per call."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _triton_attention(q, k, v, var, alpha, gw, P, eps, cmin, rate, scale, attn_bias, window_mask):
    """The fused attention on checked inputs: the window kernel with attn_bias / window_mask, else the
    grid kernels; the triton op under torch.compile, in eager calls the autograd Function where a
    gradient is recorded, else the launches alone."""
    compiling = torch.compiler.is_compiling()
    if alpha.dim() == 4:
        alpha = alpha.squeeze(-1)
    if attn_bias is not None or window_mask is not None:
        if attn_bias is None:  # the kernel always reads a bias tile
            attn_bias = q.new_zeros(q.shape[1], q.shape[2], q.shape[2], dtype=torch.float32)
        params = (gw, eps, cmin, scale)
        if compiling:
            return torch.ops.locat.window_attention(q, k, v, var, alpha, attn_bias, window_mask, *params)[0]
        plan = _plan("window", (q, k, v, var, alpha, attn_bias, window_mask), params)
        if _recorded(q, k, v, var, alpha, attn_bias):
            return _WindowAttention.apply(q, k, v, var, alpha, attn_bias, window_mask, params, plan)
        return fused.window_forward(q, k, v, var, alpha, attn_bias, window_mask, *params, plan=plan)[0]
    params = (gw, P, eps, cmin, rate, scale)
    if compiling:
        return torch.ops.locat.gaussian_attention(q, k, v, var, alpha, *params)[0]
    plan = _plan("gaussian", (q, k, v, var, alpha), params)
    if _recorded(q, k, v, var, alpha):
        return _GaussianAttention.apply(q, k, v, var, alpha, params, plan)
    return _gaussian_forward(q, k, v, var, alpha, *params, plan=plan)[0]


_PLANS = configs.Plans()


def _plan(sequence: str, tensors: tuple, params: tuple) -> dict:
    """An eager call's launch plan (``configs.Plans``), keyed by its launch sequence, the signature of its
    tensors, its parameters and the launch switches."""
    return _PLANS((sequence, configs.signature(*tensors), params, configs.launch_state()))


def _call_plan(tensors: tuple, args: tuple) -> dict | None:
    """The plan of an eager ``locat_attention_qkvpacked`` call, keyed by what the caller passed (the signature of
    its tensors and its other arguments) rather than by what the checks make of it, so that a later call of the
    signature finds the parameters there (``plan["params"]``) and skips the checks. None under torch.compile,
    where the key cannot be made (an argument that is not a tensor, or not hashable: the checks say which), and
    where an argument that is no tensor is one (a tensor ``scale``: a key would keep it alive and never match)."""
    if torch.compiler.is_compiling() or any(isinstance(a, Tensor) for a in args):
        return None
    try:
        return _plan("packed call", tensors, args)
    except (AttributeError, TypeError):
        return None


def _backward_plan(plan: dict, *grads: Tensor) -> dict:
    """The backward's part of a call's plan, by the signature of the outputs' gradients (autograd hands them
    over in any strides and alignment; the launches read them)."""
    return configs.prepared(plan, configs.signature(*grads), dict)


# ----------------------------------------------------------------------------------------------
# Argument checks: shapes, dtypes and devices only, so nothing synchronizes the device.


def _check(q, k, v, grid_size, num_prefix_tokens, rate):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q must be 4-D (B, H, N, D), got shape {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has {q.dtype}")
    try:
        gh, gw = as_pair(grid_size)
    except (TypeError, ValueError):
        raise ValueError(f"grid_size must be an int or a pair (gh, gw), got {grid_size!r}") from None
    if gh < 1 or gw < 1:
        raise ValueError(f"grid sides must be >= 1, got grid_size={(gh, gw)}")
    if not isinstance(num_prefix_tokens, int) or num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be an int >= 0, got {num_prefix_tokens!r}")
    if not isinstance(rate, int) or rate < 1 or gh % rate or gw % rate:
        raise ValueError(f"rate must be an int >= 1 dividing both grid sides {(gh, gw)}, got {rate!r}")
    N = q.shape[2]
    if N != num_prefix_tokens + gh * gw:
        raise ValueError(
            f"q has N={N} tokens but num_prefix_tokens + gh*gw = {num_prefix_tokens} + {gh}*{gw} "
            f"= {num_prefix_tokens + gh * gw}")
    return gh, gw


def _check_float_like_q(name, t, q):
    """t is a tensor on q's device, float32 or q's dtype."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device != q.device:
        raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    if t.dtype not in (torch.float32, q.dtype):
        raise TypeError(f"{name} must be float32 or q's dtype {q.dtype}, got {t.dtype}")


def _check_parameters(q, np_, *, var, alpha):
    B, H = q.shape[:2]
    for name, t in (("var", var), ("alpha", alpha)):
        _check_float_like_q(name, t, q)
    if var.shape != (B, H, np_, 2):
        raise ValueError(f"var must have shape (B, H, gh*gw, 2) = {(B, H, np_, 2)}, got {tuple(var.shape)}")
    if alpha.shape not in ((B, H, np_), (B, H, np_, 1)):
        raise ValueError(
            f"alpha must have shape (B, H, gh*gw) = {(B, H, np_)} or {(B, H, np_, 1)}, got {tuple(alpha.shape)}")


def _check_window_bias(q, attn_bias, window_mask):
    B, H, N, _ = q.shape
    for name, t, shape in (("attn_bias", attn_bias, (H, N, N)), ("window_mask", window_mask, None)):
        if t is None:
            continue
        _check_float_like_q(name, t, q)
        if shape is not None and tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape (H, N, N) = {shape}, one bias shared by the batch, "
                             f"got {tuple(t.shape)}")
    if window_mask is not None:
        if window_mask.dim() != 3 or tuple(window_mask.shape[1:]) != (N, N) or not window_mask.shape[0] \
                or B % window_mask.shape[0]:
            raise ValueError(f"window_mask must have shape (nW, N, N) = (nW, {N}, {N}) with the batch {B} a "
                             f"multiple of nW (batch element b takes window_mask[b % nW]), got "
                             f"{tuple(window_mask.shape)}")
        if window_mask.requires_grad:
            raise ValueError("window_mask gets no gradient: pass it detached (attn_bias is the learned one)")


def _window_refusal(q, num_prefix_tokens, rate) -> str | None:
    """Why the window kernel (attn_bias, window_mask) cannot take these inputs, or None."""
    if num_prefix_tokens or rate != 1:
        return f"it takes windows without prefix tokens at rate 1, got {num_prefix_tokens} and rate {rate}"
    if q.shape[2] > fused.window.MAX_WINDOW:
        return f"a window is one tile of at most {fused.window.MAX_WINDOW} tokens, got N={q.shape[2]}"
    return None


def _check_values(var, alpha):
    bad_var = int((~(torch.isfinite(var) & (var > 0))).sum())
    bad_alpha = int((~torch.isfinite(alpha)).sum())
    if bad_var or bad_alpha:
        raise ValueError(f"var must be positive and finite and alpha finite: {bad_var} bad var values, "
                         f"{bad_alpha} bad alpha values")


def _triton_refusal(q) -> str | None:
    """Why the fused kernels do not take q's dtype or head_dim (None: they do)."""
    D = q.shape[-1]
    if q.dtype not in TRITON_DTYPES:
        return f"the triton kernels take dtypes {TRITON_DTYPES}, got {q.dtype}"
    if D % 8 or not 8 <= D <= configs.MAX_HEAD_DIM:
        return f"the triton kernels take a head_dim that is a multiple of 8 up to {configs.MAX_HEAD_DIM}, got {D}"
    if q.shape[-2] > configs.MAX_TOKENS:
        return (f"the triton kernels take at most {configs.MAX_TOKENS} tokens (grid positions in float32), "
                f"got {q.shape[-2]}")
    return None


def _check_triton(q, k, v):
    if not (q.is_cuda or (configs.INTERPRET and q.device.type == "cpu")):
        raise ValueError(
            f"backend='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before "
            f"import: slow, a correctness tool); q is on {q.device}. Use backend='reference' or 'sdpa' there.")
    reason = _triton_refusal(q)
    if reason is not None:
        raise (TypeError if "dtype" in reason else ValueError)(f"backend='triton': {reason}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(
                f"{name} must have a contiguous last dimension (stride 1), got strides {t.stride()}; "
                f"call .contiguous() on it first")


@functools.lru_cache(maxsize=256)
def _fused_constants(grid_size, init_grid_size) -> tuple[float, float, float, float]:
    """eps, cmin, shift and the variance scale of a (grid, build grid) pair."""
    return (gaussian_eps(init_grid_size), gaussian_clamp(init_grid_size), variance_shift(init_grid_size),
            variance_scale(grid_size, init_grid_size))


def _clamps(gh, gw, cmin) -> bool:
    """The clamp of -1/2 d^2 at cmin bites (the grid exceeds the build grid): no far-tile skipping."""
    return 0.5 * (max(gh, gw) - 1) ** 2 > -cmin


# ----------------------------------------------------------------------------------------------
# Launch sequences shared by the triton ops and the eager autograd Functions.


# ``traced``: inside a triton_op, where the launches go through ``torch.library.wrap_triton``. ``plan``: an eager
# call's launch plan (``_plan``), which keeps the launches its first call made; traced calls have none.


def _gaussian_forward(q, k, v, var, alpha, gw, P, eps, cmin, rate, scale, traced=False, plan=None):
    return fused.attention_forward(q, k, v, var, alpha, None, gw, P, eps, cmin, rate, scale, traced, plan)


def _gaussian_backward(do, q, k, v, var, alpha, out, lse, radius, gw, P, eps, cmin, rate, scale, traced=False,
                       plan=None):
    dq, dk, dv, dvar, dalpha = fused.attention_backward(
        do, q, k, v, var, alpha, out, lse, radius, gw, P, eps, cmin, rate, scale, traced, plan=plan)
    return dq, dk, dv, dvar.to(var.dtype), dalpha.to(alpha.dtype)


def _locat_forward(q, k, v, wv, bv, wa, ba, gh, gw, P, eps, cmin, shift, var_scale, rate, scale, traced=False,
                   plan=None):
    var, alpha, radius = fused.gaug_forward(q, wv, bv, wa, ba, gh, gw, P, shift, var_scale, eps,
                                            _clamps(gh, gw, cmin), rate, traced, plan)
    out, lse, _ = fused.attention_forward(q, k, v, var, alpha, radius, gw, P, eps, cmin, rate, scale, traced, plan)
    return out, lse, var, alpha, radius


def _locat_backward(do, q, k, v, wv, bv, wa, ba, out, lse, var, alpha, radius,
                    gh, gw, P, eps, cmin, shift, var_scale, rate, scale, traced=False, grads=None, plan=None):
    chain = (wv, wa, var_scale) if rate == 1 else None  # at rate 1 the dq kernel carries dvar, dalpha on
    dq, dk, dv, dvar, dalpha = fused.attention_backward(
        do, q, k, v, var, alpha, out, lse, radius, gw, P, eps, cmin, rate, scale, traced, chain, grads, plan)
    dweights = fused.gaug_backward(q, dq, dvar, dalpha, wv, bv, wa, ba, gh, gw, P, shift, var_scale, rate, traced,
                                   dz_given=chain is not None, plan=plan)
    return dq, dk, dv, *dweights


def _locat_packed_backward(do, q, k, v, *saved, plan):
    """dqkv (one (B, N, 3, H, D) tensor that the kernels write dq, dk, dv into; q, k, v are views of one such)
    and the four layer gradients."""
    B, H, N, D = q.shape
    dqkv = configs.empty((B, N, 3, H, D), q)
    _, _, _, *dweights = _locat_backward(do, q, k, v, *saved, grads=_split(dqkv), plan=plan)
    return dqkv, dweights


def _split(qkv):
    """q, k, v (B, H, N, D) as views of a (B, N, 3, H, D) tensor."""
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def _augmentation_forward(q, wv, bv, wa, ba, gh, gw, P, eps, cmin, shift, var_scale, rate, traced=False,
                          plan=None):
    var, alpha, _ = fused.gaug_forward(q, wv, bv, wa, ba, gh, gw, P, shift, var_scale, eps, _clamps(gh, gw, cmin),
                                       rate, traced, plan)
    return var, alpha  # the attention finds its radius itself


def _augmentation_backward(q, dvar, dalpha, wv, bv, wa, ba, gh, gw, P, eps, cmin, shift, var_scale, rate,
                           traced=False, plan=None):
    dq = torch.zeros_like(q)  # gaug_backward adds the patch rows' gradient into it
    dweights = fused.gaug_backward(q, dq, dvar.float().contiguous(), dalpha.float().contiguous(), wv, bv, wa, ba,
                                   gh, gw, P, shift, var_scale, rate, traced, plan=plan)
    return dq, *dweights


# ----------------------------------------------------------------------------------------------
# Triton ops: torch.compile traces their launch sequences (the same functions, run on fake tensors,
# are their fake implementations).


def _triton_op(name: str):
    """``torch.library.triton_op(name)`` whose int and float arguments reach the launch sequence as plain
    numbers. Where a grid or a rate changes between calls of one compiled function, Dynamo passes them
    (and the token count) as SymInt / SymFloat; the kernels specialize on them (constexprs, the launch
    cache), so the graph is specialized on their values too: a guard each, a recompile per new value."""

    def decorate(fn):
        @functools.wraps(fn)
        def op(*args):
            return fn(*(guard_int(a) if isinstance(a, torch.SymInt) else
                        guard_float(a) if isinstance(a, torch.SymFloat) else a for a in args))

        return torch.library.triton_op(name, op, mutates_args=())

    return decorate


@_triton_op("locat::gaussian_attention")
def _gaussian_op(
    q: Tensor, k: Tensor, v: Tensor, var: Tensor, alpha: Tensor,
    gw: int, num_prefix_tokens: int, eps: float, cmin: float, rate: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return _gaussian_forward(q, k, v, var, alpha, gw, num_prefix_tokens, eps, cmin, rate, scale, traced=True)


@_triton_op("locat::gaussian_attention_backward")
def _gaussian_backward_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, var: Tensor, alpha: Tensor, out: Tensor, lse: Tensor,
    radius: Tensor, gw: int, num_prefix_tokens: int, eps: float, cmin: float, rate: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _gaussian_backward(do, q, k, v, var, alpha, out, lse, radius, gw, num_prefix_tokens, eps, cmin, rate,
                              scale, traced=True)


def _gaussian_setup_context(ctx, inputs, output):
    q, k, v, var, alpha, *ctx.params = inputs
    ctx.save_for_backward(q, k, v, var, alpha, *output)


def _gaussian_autograd_backward(ctx, dout, *_):  # lse and radius are internal outputs: no gradient
    grads = _gaussian_backward_op(dout, *ctx.saved_tensors, *ctx.params)
    return (*grads,) + (None,) * len(ctx.params)


_gaussian_op.register_autograd(_gaussian_autograd_backward, setup_context=_gaussian_setup_context)


@_triton_op("locat::locat_attention")
def _locat_op(
    q: Tensor, k: Tensor, v: Tensor, wv: Tensor, bv: Tensor, wa: Tensor, ba: Tensor,
    gh: int, gw: int, num_prefix_tokens: int, eps: float, cmin: float, shift: float, var_scale: float,
    rate: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _locat_forward(q, k, v, wv, bv, wa, ba, gh, gw, num_prefix_tokens, eps, cmin, shift, var_scale, rate,
                          scale, traced=True)


@_triton_op("locat::locat_attention_backward")
def _locat_backward_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, wv: Tensor, bv: Tensor, wa: Tensor, ba: Tensor,
    out: Tensor, lse: Tensor, var: Tensor, alpha: Tensor, radius: Tensor,
    gh: int, gw: int, num_prefix_tokens: int, eps: float, cmin: float, shift: float, var_scale: float,
    rate: int, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, dk, dv, *dweights = _locat_backward(do, q, k, v, wv, bv, wa, ba, out, lse, var, alpha, radius,
                                            gh, gw, num_prefix_tokens, eps, cmin, shift, var_scale, rate, scale,
                                            traced=True)
    # The layer gradients are views of one reduced buffer; an op's outputs may not alias.
    return dq, dk, dv, *(t.clone() for t in dweights)


def _locat_setup_context(ctx, inputs, output):
    q, k, v, wv, bv, wa, ba, *ctx.params = inputs
    ctx.save_for_backward(q, k, v, wv, bv, wa, ba, *output)


def _locat_autograd_backward(ctx, dout, *_):  # lse, var, alpha, radius: internal outputs
    grads = _locat_backward_op(dout, *ctx.saved_tensors, *ctx.params)
    return (*grads,) + (None,) * len(ctx.params)


_locat_op.register_autograd(_locat_autograd_backward, setup_context=_locat_setup_context)


@_triton_op("locat::locat_inference")
def _locat_inference_op(
    q: Tensor, k: Tensor, v: Tensor, wv: Tensor, bv: Tensor, wa: Tensor, ba: Tensor,
    gw: int, num_prefix_tokens: int, eps: float, cmin: float, shift: float, var_scale: float, scale: float,
) -> Tensor:
    """``locat::locat_attention``'s out at rate 1 where no gradient is recorded: one launch (no autograd)."""
    return fused.layer_forward(q, k, v, wv, bv, wa, ba, gw, num_prefix_tokens, eps, cmin, shift, var_scale, scale,
                               traced=True)


@_triton_op("locat::gaussian_augmentation")
def _augmentation_op(
    q: Tensor, wv: Tensor, bv: Tensor, wa: Tensor, ba: Tensor, gh: int, gw: int, num_prefix_tokens: int,
    eps: float, cmin: float, shift: float, var_scale: float, rate: int,
) -> tuple[Tensor, Tensor]:
    return _augmentation_forward(q, wv, bv, wa, ba, gh, gw, num_prefix_tokens, eps, cmin, shift, var_scale, rate,
                                 traced=True)


@_triton_op("locat::gaussian_augmentation_backward")
def _augmentation_backward_op(
    q: Tensor, dvar: Tensor, dalpha: Tensor, wv: Tensor, bv: Tensor, wa: Tensor, ba: Tensor, gh: int, gw: int,
    num_prefix_tokens: int, eps: float, cmin: float, shift: float, var_scale: float, rate: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    dq, *dweights = _augmentation_backward(q, dvar, dalpha, wv, bv, wa, ba, gh, gw, num_prefix_tokens, eps, cmin,
                                           shift, var_scale, rate, traced=True)
    return dq, *(t.clone() for t in dweights)  # views of one reduced buffer; an op's outputs may not alias


def _augmentation_setup_context(ctx, inputs, output):
    q, wv, bv, wa, ba, *ctx.params = inputs
    ctx.save_for_backward(q, wv, bv, wa, ba)


def _augmentation_autograd_backward(ctx, dvar, dalpha):
    q, *weights = ctx.saved_tensors
    grads = _augmentation_backward_op(q, dvar, dalpha, *weights, *ctx.params)
    return (*grads,) + (None,) * len(ctx.params)


_augmentation_op.register_autograd(_augmentation_autograd_backward, setup_context=_augmentation_setup_context)


class _GaussianAugmentation(torch.autograd.Function):
    """Eager var and alpha of ``locat_attention(..., gaussian_queries=...)`` on the triton backend."""

    @staticmethod
    def forward(ctx, q, wv, bv, wa, ba, params, plan):
        ctx.save_for_backward(q, wv, bv, wa, ba)
        ctx.params, ctx.plan = params, plan
        return _augmentation_forward(q, wv, bv, wa, ba, *params, plan=plan)

    @staticmethod
    def backward(ctx, dvar, dalpha):
        q, *weights = ctx.saved_tensors
        grads = _augmentation_backward(q, dvar, dalpha, *weights, *ctx.params,
                                       plan=_backward_plan(ctx.plan, dvar, dalpha))
        return *grads, None, None  # params, plan: no gradient


@_triton_op("locat::window_attention")
def _window_op(
    q: Tensor, k: Tensor, v: Tensor, var: Tensor, alpha: Tensor, bias: Tensor, mask: Optional[Tensor],
    gw: int, eps: float, cmin: float, scale: float,
) -> tuple[Tensor, Tensor]:
    return fused.window_forward(q, k, v, var, alpha, bias, mask, gw, eps, cmin, scale, traced=True)


@_triton_op("locat::window_attention_backward")
def _window_backward_op(
    do: Tensor, q: Tensor, k: Tensor, v: Tensor, var: Tensor, alpha: Tensor, bias: Tensor, mask: Optional[Tensor],
    out: Tensor, lse: Tensor, gw: int, eps: float, cmin: float, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _window_backward(do, q, k, v, var, alpha, bias, mask, out, lse, gw, eps, cmin, scale, traced=True)


def _window_backward(do, q, k, v, var, alpha, bias, mask, out, lse, gw, eps, cmin, scale, traced=False, plan=None):
    dq, dk, dv, dvar, dalpha, dbias = fused.window_backward(do, q, k, v, var, alpha, bias, mask, out, lse, gw, eps,
                                                            cmin, scale, traced, plan)
    return dq, dk, dv, dvar.to(var.dtype), dalpha.to(alpha.dtype), dbias.to(bias.dtype)


def _window_setup_context(ctx, inputs, output):
    q, k, v, var, alpha, bias, mask, *ctx.params = inputs
    ctx.save_for_backward(q, k, v, var, alpha, bias, mask, *output)


def _window_autograd_backward(ctx, dout, *_):  # lse: internal output
    grads = _window_backward_op(dout, *ctx.saved_tensors, *ctx.params)
    return (*grads, None) + (None,) * len(ctx.params)  # the mask: no gradient


_window_op.register_autograd(_window_autograd_backward, setup_context=_window_setup_context)


class _WindowAttention(torch.autograd.Function):
    """Eager ``gaussian_attention`` with attn_bias / window_mask on the triton backend."""

    @staticmethod
    def forward(ctx, q, k, v, var, alpha, bias, mask, params, plan):
        out, lse = fused.window_forward(q, k, v, var, alpha, bias, mask, *params, plan=plan)
        ctx.save_for_backward(q, k, v, var, alpha, bias, mask, out, lse)
        ctx.params, ctx.plan = params, plan
        return out

    @staticmethod
    def backward(ctx, dout):
        grads = _window_backward(dout, *ctx.saved_tensors, *ctx.params, plan=_backward_plan(ctx.plan, dout))
        return *grads, None, None, None  # the mask, params, plan: no gradient


class _GaussianAttention(torch.autograd.Function):
    """Eager ``gaussian_attention``: the launch sequence without the custom-op dispatch (host time
    per call: forward 317 us through the custom op, 123 us this way, measured on an H100 machine)."""

    @staticmethod
    def forward(ctx, q, k, v, var, alpha, params, plan):
        out, lse, radius = _gaussian_forward(q, k, v, var, alpha, *params, plan=plan)
        ctx.save_for_backward(q, k, v, var, alpha, out, lse, radius)
        ctx.params, ctx.plan = params, plan
        return out

    @staticmethod
    def backward(ctx, dout):
        grads = _gaussian_backward(dout, *ctx.saved_tensors, *ctx.params, plan=_backward_plan(ctx.plan, dout))
        return *grads, None, None  # params, plan: no gradient


class _LocatAttention(torch.autograd.Function):
    """Eager ``locat_attention`` on the triton backend."""

    @staticmethod
    def forward(ctx, q, k, v, wv, bv, wa, ba, params, plan):
        out, lse, var, alpha, radius = _locat_forward(q, k, v, wv, bv, wa, ba, *params, plan=plan)
        ctx.save_for_backward(q, k, v, wv, bv, wa, ba, out, lse, var, alpha, radius)
        ctx.params, ctx.plan = params, plan
        return out

    @staticmethod
    def backward(ctx, dout):
        grads = _locat_backward(dout, *ctx.saved_tensors, *ctx.params, plan=_backward_plan(ctx.plan, dout))
        return *grads, None, None  # params, plan: no gradient


class _LocatAttentionPacked(torch.autograd.Function):
    """Eager ``locat_attention_qkvpacked`` on the triton backend: dq, dk, dv written into one gradient of qkv."""

    @staticmethod
    def forward(ctx, qkv, wv, bv, wa, ba, views, params, plan):  # views: q, k, v of qkv, split once by the caller
        out, lse, var, alpha, radius = _locat_forward(*views, wv, bv, wa, ba, *params, plan=plan)
        # the views saved, not qkv: the backward splits no qkv (saved tensors are freed by the backward)
        ctx.save_for_backward(*views, wv, bv, wa, ba, out, lse, var, alpha, radius)
        ctx.params, ctx.plan = params, plan
        return out

    @staticmethod
    def backward(ctx, dout):
        dqkv, dweights = _locat_packed_backward(dout, *ctx.saved_tensors, *ctx.params,
                                                plan=_backward_plan(ctx.plan, dout))
        return dqkv, *dweights, None, None, None  # views, params, plan: no gradient
