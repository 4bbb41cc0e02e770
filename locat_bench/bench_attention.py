"""The fused op against its peers: time (forward, forward+backward), TFLOP/s, peak memory, error.

Peers, all timed in the same process on the same inputs:
- ``locat``: ``gaussian_attention(backend="triton")``, the fused kernels;
- ``locat_layer``: ``locat_attention(backend="triton")``, the launches a LocAt layer makes: var and
  alpha from the queries by the block's two layers (their own kernel, which also gives the attention
  its skip radius), then the attention; its layers' weights make var and alpha of the regime
  (``layer_weights``), not the inputs' var and alpha;
- ``eager``: the reference (materializes the bias, eager softmax);
- ``sdpa_bias``: the dense (B, H, N, N) bias handed to SDPA (the published path);
- ``flex``: FlexAttention with a ``score_mod`` computing the bias (var_r, var_c, alpha captured
  as three tensors, each indexed once, so their gradients work);
- ``sdpa``: SDPA without any bias, the floor (gradients to q, k, v only).

On CUDA each peer's forward and forward+backward is timed with ``triton.testing.do_bench`` (median)
over replays of a CUDA graph (``fwd_ms``, ``fwd_bwd_ms``: the kernels alone) and, for locat and the
floor, also over plain calls (``fwd_plain_ms``, ``fwd_bwd_plain_ms``: as users call it, host time
included).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from locat_kernels import (
    gaussian_attention, gaussian_attention_reference, gaussian_clamp, gaussian_eps, gaussian_parameters,
    locat_attention,
)

from .timing import cpu_median_ms, cuda_median_ms, peak_memory_gb

__all__ = ["Shape", "GPU_SHAPES", "CPU_SHAPES", "REGIMES", "PEERS", "bench_shape", "ratios", "make_inputs",
           "layer_weights", "flops"]


@dataclass(frozen=True)
class Shape:
    name: str
    B: int
    H: int
    grid: tuple[int, int]
    P: int = 1
    D: int = 64

    @property
    def N(self) -> int:
        return self.P + self.grid[0] * self.grid[1]

    @classmethod
    def parse(cls, spec: str) -> "Shape":
        """A user's shape 'B,H,gh,gw,P,D' (e.g. 8,12,37,37,5,64: patch 14 at 518 px, 4 registers)."""
        try:
            B, H, gh, gw, P, D = (int(x) for x in spec.split(","))
        except ValueError:
            raise ValueError(f"a shape is a name or B,H,gh,gw,P,D, got {spec!r}") from None
        return cls(spec, B, H, (gh, gw), P, D)


# The shapes of docs/method.md section 4, then 384 px, patch 14 at 518 px with 4 registers, head_dim 128.
GPU_SHAPES = [
    Shape("ViT-B 224", 128, 12, (14, 14)),
    Shape("ViT-T 224", 256, 3, (14, 14)),
    Shape("ViT-B 384", 32, 12, (24, 24)),
    Shape("ViT-B/14 518 +4 reg", 8, 12, (37, 37), P=5),
    Shape("ViT-B 512", 16, 12, (32, 32)),
    Shape("ViT-B 1024", 4, 12, (64, 64)),
    Shape("D128 1025", 16, 8, (32, 32), D=128),
]
# ``--shapes widths``: grid widths 7 to 96 at N >= 577 (issue #11's range; README, v32), then head dims 128 and 80.
WIDTH_SHAPES = [Shape(f"{gh}x{gw}", B, 12, (gh, gw), P=P) for B, gh, gw, P in (
    (16, 83, 7, 1), (32, 48, 12, 1), (32, 34, 17, 1), (32, 29, 20, 1), (32, 24, 24, 1), (16, 28, 28, 1),
    (16, 32, 32, 1), (8, 37, 37, 5), (8, 40, 40, 1), (8, 48, 48, 1), (4, 56, 56, 1), (4, 64, 64, 1), (2, 80, 80, 1),
    (2, 96, 96, 1))] + [Shape("32x32 D128", 16, 8, (32, 32), D=128), Shape("32x32 D80", 16, 12, (32, 32), D=80)]
CPU_SHAPES = [Shape("tiny 7x7", 1, 2, (7, 7), D=32), Shape("tiny 4x6+5", 2, 2, (4, 6), P=5, D=16)]
REGIMES = ("broad", "init")
PEERS = ("locat", "locat_layer", "eager", "sdpa_bias", "flex", "sdpa")


def make_inputs(shape: Shape, regime: str, dtype, device, requires_grad=True):
    """q, k, v as views of one qkv tensor (as timm makes them), var and alpha of the regime.

    broad: var uniform in [0.5, gh + 0.5], alpha uniform in [0, 2] (docs/method.md section 4);
    init: a freshly initialized model, var about 1 and alpha about 0.69.
    """
    B, H, N, D, (gh, gw) = shape.B, shape.H, shape.N, shape.D, shape.grid
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k, v = (t.requires_grad_(requires_grad) for t in qkv.detach().unbind(0))
    u = torch.rand(B, H, gh * gw, 3, device=device)
    if regime == "broad":
        var, alpha = 0.5 + gh * u[..., :2], 2 * u[..., 2]
    else:
        var, alpha = 0.9 + 0.2 * u[..., :2], 0.64 + 0.1 * u[..., 2]
    return q, k, v, var.requires_grad_(requires_grad), alpha.requires_grad_(requires_grad)


def layer_weights(D: int, regime: str, device) -> list[torch.Tensor]:
    """A LocAt block's ``gaug`` layer tensors (log_var weight (2, D) and bias (2,), log_alpha weight
    (1, D) and bias (1,)), float32, requiring grad. init: the published init (weights N(0, 0.02^2),
    biases 0: var about 1, alpha about 0.69); broad: weights N(0, 0.3^2 * 64 / D), var from ~0.01 to
    ~3 gh and alpha up to ~4 on unit queries, so the skip radius spans the grid as in ``make_inputs``'
    broad regime."""
    std = 0.02 if regime == "init" else 0.3 * (64 / D) ** 0.5
    return [(std * torch.randn(*shape, device=device) if len(shape) == 2 else torch.zeros(*shape, device=device))
            .requires_grad_() for shape in ((2, D), (2,), (1, D), (1,))]


def flex_peer():
    """FlexAttention with the Gaussian bias as a score_mod, compiled once; None if unavailable."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(q, k, v, var, alpha, grid, P):
        gh, gw = grid
        eps, cmin = gaussian_eps(grid), gaussian_clamp(grid)
        var_r, var_c = var[..., 0].contiguous(), var[..., 1].contiguous()

        def score_mod(score, b, h, i, j):
            pi, pj = (i - P).clamp(min=0), (j - P).clamp(min=0)
            dr = (pi // gw - pj // gw).to(torch.float32)
            dc = (pi % gw - pj % gw).to(torch.float32)
            e = (-0.5 * dr * dr).clamp(min=cmin) / (var_r[b, h, pi] + eps)
            e = e + (-0.5 * dc * dc).clamp(min=cmin) / (var_c[b, h, pi] + eps)
            bias = alpha[b, h, pi] * torch.exp(e)
            return score + torch.where((i >= P) & (j >= P), bias, 0.0)

        return compiled(q, k, v, score_mod=score_mod)

    return run


def peer_fns(device, layers=()):
    """peer -> fn(q, k, v, var, alpha, grid, P); ``locat_layer`` with ``layers`` (``layer_weights``)."""
    fns = {
        "locat": lambda q, k, v, var, alpha, grid, P: gaussian_attention(
            q, k, v, var, alpha, grid, num_prefix_tokens=P, backend="triton"),
        "eager": lambda q, k, v, var, alpha, grid, P: gaussian_attention_reference(
            q, k, v, var, alpha, grid, num_prefix_tokens=P),
        "sdpa_bias": lambda q, k, v, var, alpha, grid, P: gaussian_attention(
            q, k, v, var, alpha, grid, num_prefix_tokens=P, backend="sdpa"),
        "sdpa": lambda q, k, v, var, alpha, grid, P: F.scaled_dot_product_attention(q, k, v),
    }
    if layers:
        fns["locat_layer"] = lambda q, k, v, var, alpha, grid, P: locat_attention(
            q, k, v, *layers, grid, num_prefix_tokens=P, backend="triton")
    if device == "cuda":
        flex = flex_peer()
        if flex is not None:
            fns["flex"] = flex
    return fns


def flops(shape: Shape, backward: bool) -> float:
    """Matrix FLOPs: forward 2 products of 2*N*N*D per (b, h); backward 2.5x the forward."""
    fwd = 4.0 * shape.B * shape.H * shape.N**2 * shape.D
    return fwd * (3.5 if backward else 1.0)


def _timer(device, graph=True):
    if device == "cuda":
        return lambda fn: cuda_median_ms(fn, graph=graph)
    return lambda fn: cpu_median_ms(fn, reps=5)


def bench_shape(shape: Shape, regime: str, dtype, device, peers=PEERS, log=print) -> list[dict]:
    """One row per peer: fwd/fwd+bwd median ms, TFLOP/s, peak fwd+bwd memory, error vs float64."""
    layers = layer_weights(shape.D, regime, device) if "locat_layer" in peers else ()
    fns = peer_fns(device, layers)
    timer, plain = _timer(device), _timer(device, graph=False)
    inputs = make_inputs(shape, regime, dtype, device)
    q, k, v, var, alpha = inputs
    do = torch.randn_like(q)
    ref = _reference64(inputs, shape)
    ref_layer = _reference64(inputs, shape, layers) if layers else None
    rows = []
    for peer in peers:
        if peer not in fns:
            continue
        fn = fns[peer]
        args = (*inputs, shape.grid, shape.P)
        wrt = dict(sdpa=(q, k, v), locat_layer=(q, k, v, *layers)).get(peer, inputs)
        row = dict(shape=shape.name, B=shape.B, H=shape.H, N=shape.N, D=shape.D, grid=list(shape.grid),
                   P=shape.P, regime=regime, dtype=str(dtype).removeprefix("torch."), peer=peer)
        try:
            with torch.no_grad():
                out = fn(*args)
                row["fwd_ms"] = timer(lambda: fn(*args))
                if device == "cuda" and peer in ("locat", "locat_layer", "sdpa"):
                    row["fwd_plain_ms"] = plain(lambda: fn(*args))
            truth = ref_layer if peer == "locat_layer" else ref
            row["max_abs_err"] = None if peer == "sdpa" else float((out[:1].double() - truth).abs().max())

            def fwd_bwd():
                return torch.autograd.grad(fn(*args), wrt, do)

            row["fwd_bwd_ms"] = timer(fwd_bwd)
            if device == "cuda" and peer in ("locat", "locat_layer", "sdpa"):
                row["fwd_bwd_plain_ms"] = plain(fwd_bwd)
            row["peak_mem_gb"] = peak_memory_gb(fwd_bwd, device, above_current=True)
            row["fwd_tflops"] = flops(shape, False) / row["fwd_ms"] * 1e-9
            row["fwd_bwd_tflops"] = flops(shape, True) / row["fwd_bwd_ms"] * 1e-9
        except torch.cuda.OutOfMemoryError as e:  # the dense bias does not fit: say so, go on
            row["error"] = f"out of memory: {e}".splitlines()[0]
            torch.cuda.empty_cache()
        rows.append(row)
        log(_format_row(row))
    return rows


def _reference64(inputs, shape: Shape, layers=()):
    """The float64 truth for the first batch element (enough to measure error; keeps memory small);
    with ``layers``, var and alpha made from its queries by them (``locat_layer``)."""
    q, k, v, var, alpha = [t.detach()[:1].double() for t in inputs]
    with torch.no_grad():
        if layers:
            var, alpha = gaussian_parameters(q[:, :, shape.P:], *(w.detach().double() for w in layers), shape.grid)
        return gaussian_attention_reference(q, k, v, var, alpha, shape.grid, num_prefix_tokens=shape.P)


def _format_row(row: dict) -> str:
    if "error" in row:
        return f"  {row['shape']:<11} {row['regime']:<5} {row['peer']:<11} {row['error']}"
    err = "" if row["max_abs_err"] is None else f"err {row['max_abs_err']:.1e}"
    mem = "" if row["peak_mem_gb"] is None else f"{row['peak_mem_gb']:7.3f} GB"
    return (f"  {row['shape']:<11} {row['regime']:<5} {row['peer']:<11} fwd {row['fwd_ms']:8.3f} ms "
            f"fwd+bwd {row['fwd_bwd_ms']:8.3f} ms  {row['fwd_tflops']:6.1f}/{row['fwd_bwd_tflops']:6.1f} TFLOP/s "
            f"{mem} {err}")


def ratios(rows: list[dict]) -> list[dict]:
    """Per (shape, regime): each peer's time over the floor (sdpa without bias) and over locat."""
    out = []
    groups = {}
    for r in rows:
        groups.setdefault((r["shape"], r["regime"], r["dtype"]), {})[r["peer"]] = r
    for (shape, regime, dtype), g in groups.items():
        floor, ours = g.get("sdpa"), g.get("locat")
        for peer, r in g.items():
            if "error" in r:
                continue
            entry = dict(shape=shape, regime=regime, dtype=dtype, peer=peer)
            for t in ("fwd_ms", "fwd_bwd_ms", "fwd_plain_ms", "fwd_bwd_plain_ms"):
                if t not in r:
                    continue
                if floor and "error" not in floor:
                    entry[f"{t}_over_floor"] = r[t] / floor[t]
                if ours and "error" not in ours:
                    entry[f"{t}_over_locat"] = r[t] / ours[t]
            if floor and r.get("peak_mem_gb") is not None and floor.get("peak_mem_gb"):
                entry["mem_over_floor"] = r["peak_mem_gb"] / floor["peak_mem_gb"]
            out.append(entry)
    return out


