"""LocAt Swin's window attention, op level (CUDA): ``python -m locat_bench.bench_window --output w.json``.

For each shape (windows Bw, heads H, window side, head_dim D, window positions nW; default: Swin-T's
four stages at batch 128, 224 px), in bf16 with the broad Gaussian, the relative position bias and
Swin's shift mask: forward and forward+backward times of the window kernel (``gaussian_attention``
with ``attn_bias`` and ``window_mask``, backend "triton"), the published dense path (backend "sdpa":
the (Bw, H, N, N) bias built and handed to SDPA) and SDPA without a bias (the peer), plain calls
and CUDA-graph replays; ratios over the peer. JSON with the GPU and versions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from locat_kernels import gaussian_attention

from .cli import write_rows
from .timing import cuda_median_ms

# Swin-T at 224 px, batch 128: 56/28/14/7 px maps in 7 x 7 windows; 3/6/12/24 heads of 32
SWIN_T = ["8192,3,7,32,64", "2048,6,7,32,16", "512,12,7,32,4", "128,24,7,32,1"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.bench_window", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=SWIN_T, help="Bw,H,window,D,nW (default: Swin-T's stages)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("the window benchmark needs CUDA (the CPU tests check the kernel through the interpreter)")
    rows = []
    for spec in args.shapes:
        row = dict(shape=spec, **time_shape(*(int(x) for x in spec.split(","))))
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_rows(args.output, "locat_bench.bench_window", argv, rows)
    print(f"wrote {args.output}")
    return 0


def time_shape(Bw: int, H: int, ws: int, D: int, nW: int, dtype=torch.bfloat16) -> dict:
    """ms and ratios over SDPA without a bias of the window kernel and the dense path."""
    N = ws * ws
    qkv = torch.randn(Bw, N, 3, H, D, device="cuda", dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k, v = (t.requires_grad_() for t in qkv.detach().unbind(0))
    u = torch.rand(Bw, H, N, 3, device="cuda")
    var, alpha = (0.5 + ws * u[..., :2]).requires_grad_(), (2 * u[..., 2]).requires_grad_()
    bias = torch.randn(H, N, N, device="cuda").requires_grad_()
    mask = torch.where(torch.rand(nW, N, N, device="cuda") < 0.3, -100.0, 0.0) if nW > 1 else None
    do = torch.randn_like(q)
    ops = {
        "window": lambda: gaussian_attention(q, k, v, var, alpha, (ws, ws), attn_bias=bias, window_mask=mask,
                                             backend="triton"),
        "dense": lambda: gaussian_attention(q, k, v, var, alpha, (ws, ws), attn_bias=bias, window_mask=mask,
                                            backend="sdpa"),
        "sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
    }
    inputs = {"window": (q, k, v, var, alpha, bias), "dense": (q, k, v, var, alpha, bias), "sdpa": (q, k, v)}
    row = {}
    for name, fn in ops.items():
        for graph in (False, True):
            tag = "graph" if graph else "plain"
            with torch.no_grad():
                row[f"{name}_fwd_{tag}_ms"] = cuda_median_ms(fn, graph=graph)
            row[f"{name}_fwd_bwd_{tag}_ms"] = cuda_median_ms(
                lambda: torch.autograd.grad(fn(), inputs[name], do), graph=graph)
    for name in ("window", "dense"):
        for key in ("fwd_plain", "fwd_bwd_plain", "fwd_graph", "fwd_bwd_graph"):
            row[f"{name}_{key}_over_sdpa"] = row[f"{name}_{key}_ms"] / row[f"sdpa_{key}_ms"]
    return row


if __name__ == "__main__":
    raise SystemExit(main())
