"""The Gaussian augmentation kernels' launch configs timed on this GPU (CUDA):
``python -m locat_bench.tune_gaug --output F.json [--kernels forward backward] --shapes B,H,gh,gw,P,D,rate ...``.

For each kernel and shape, ``gaug_forward`` / ``gaug_backward`` (the layer-gradient sum included; "backward_dz":
with dz given, the rate-1 launch after the dq kernel's chain) under
every (BLOCK_P, num_warps) of ``CANDIDATES``, with the model's strides (q a view of a (B, N, 3, H, D) qkv
tensor, dq stored as (B, N, H, D)); CUDA-graph replays, medians. Each row also gives the largest relative
difference of the outputs from the first candidate's (float32 summation order only). The table it informs
is ``locat_kernels/fused/gaug.py``'s ``FORWARD_CONFIG`` / ``BACKWARD_CONFIG``.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from locat_kernels.fused import gaug

from .cli import write_rows
from .timing import cuda_median_ms

CANDIDATES = list(itertools.product((16, 32, 64, 128), (1, 2, 4)))  # (BLOCK_P, num_warps)
DEFAULT_SHAPES = ["128,12,14,14,1,64,1", "32,12,24,24,1,64,1", "256,3,14,14,1,64,1", "16,12,32,32,1,64,2",
                  "128,12,14,14,1,64,2", "16,8,32,32,1,128,1"]


def sweep(kernel: str, spec: str) -> list[dict]:
    """One row per candidate of ``kernel`` ("forward" / "backward" / "backward_dz") at shape ``spec``
    (B,H,gh,gw,P,D,rate)."""
    B, H, gh, gw, P, D, rate = (int(x) for x in spec.split(","))
    N = P + gh * gw
    q = torch.randn(B, N, 3, H, D, device="cuda", dtype=torch.bfloat16)[:, :, 0].transpose(1, 2)
    dq0 = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    dvar, dalpha = torch.randn(B, H, gh * gw, 2, device="cuda"), torch.randn(B, H, gh * gw, device="cuda")
    layers = [0.3 * torch.randn(*s, device="cuda") for s in ((2, D), (2,), (1, D), (1,))]
    table = gaug.FORWARD_CONFIG if kernel == "forward" else gaug.BACKWARD_CONFIG
    dz_given = kernel == "backward_dz"
    key = "dz" if dz_given else min(rate, 2)
    saved, first, rows = table[key], None, []
    try:
        for block_p, warps in CANDIDATES:
            table[key] = (block_p, warps)
            if kernel == "forward":
                def call():
                    return gaug.gaug_forward(q, *layers, gh, gw, P, 0.5, 1.0, 1e-6, False, rate)
                outputs = call()
            else:
                dq = dq0.clone()

                def call():
                    return gaug.gaug_backward(q, dq, dvar, dalpha, *layers, gh, gw, P, 0.5, 1.0, rate,
                                              dz_given=dz_given)
                out = dq0.clone()
                outputs = [out, *gaug.gaug_backward(q, out, dvar, dalpha, *layers, gh, gw, P, 0.5, 1.0, rate,
                                                    dz_given=dz_given)]
            outputs = [x.double() for x in outputs]
            first = first or outputs
            diff = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(outputs, first))
            rows.append(dict(kernel=kernel, shape=spec, BLOCK_P=block_p, num_warps=warps,
                             ms=cuda_median_ms(call, graph=True), max_rel_diff_from_first=diff))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        table[key] = saved
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.tune_gaug", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--kernels", nargs="+", default=["forward", "backward"],
                        choices=["forward", "backward", "backward_dz"])
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="B,H,gh,gw,P,D,rate")
    args = parser.parse_args(argv)
    for spec in args.shapes:
        parts = spec.split(",")
        if len(parts) != 7 or not all(p.isdigit() for p in parts):
            parser.error(f"--shapes takes B,H,gh,gw,P,D,rate (seven integers), got {spec!r}")
        if "backward_dz" in args.kernels and parts[-1] != "1":
            parser.error(f"backward_dz runs at rate 1 only, got {spec!r}")
    if not torch.cuda.is_available():
        parser.error("tuning the gaug kernels needs CUDA")
    rows = [row for kernel in args.kernels for spec in args.shapes for row in sweep(kernel, spec)]
    write_rows(args.output, "locat_bench.tune_gaug", argv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
