"""Each fused kernel's GPU time in one op call, with and without its Gaussian, beside SDPA's
kernels (CUDA): ``python -m locat_bench.kernel_profile --shapes B,H,gh,gw,P,D ... --output F.json``.

Per shape (bf16 unless ``--dtype``, the broad regime unless ``--regime``), one forward and backward
of the fused kernels (``fused.attention_forward`` / ``attention_backward``, var and alpha given) in
two variants: "gaussian", as the op runs, and "no_gaussian", the same launches with a radius below
-gh, which leaves every key tile far (the kernels' cost without the bias, same tiles and configs);
and SDPA without a bias, forward and backward. Each kernel's device time per call from
``torch.profiler`` over ``--calls`` calls. With ``--ncu`` each of the three runs once between
``cudaProfilerStart`` / ``Stop`` and nothing is timed: for ``ncu --profile-from-start off ...``.
``--switch NAME=V1,V2`` runs the fused variants once per value of ``configs.NAME`` (A/B in one process,
e.g. ``FACTORED_DKDV='auto',False``), the variant named ``gaussian[NAME=V1]``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from locat_kernels import fused, gaussian_clamp, gaussian_eps
from locat_kernels.fused import configs

from .bench_attention import GPU_SHAPES, Shape, make_inputs
from .cli import parse_switch, write_rows
from .profile_step import profile_fn

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def op_calls(shape: Shape, dtype, regime: str) -> dict:
    """name -> a function running one forward and backward: "gaussian", "no_gaussian", "sdpa"."""
    q, k, v, var, alpha = (t.detach() for t in make_inputs(shape, regime, dtype, "cuda"))
    alpha = alpha.contiguous()
    common = (shape.grid[1], shape.P, gaussian_eps(shape.grid), gaussian_clamp(shape.grid), 1, shape.D ** -0.5)
    _, _, radius = fused.attention_forward(q, k, v, var, alpha, None, *common)
    no_radius = torch.full_like(radius, -(shape.grid[0] + 2))
    do = torch.randn_like(q)

    def fused_call(r):
        def call():
            out, lse, _ = fused.attention_forward(q, k, v, var, alpha, r, *common)
            fused.attention_backward(do, q, k, v, var, alpha, out, lse, r, *common)
        return call

    qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))

    def sdpa():
        torch.autograd.grad(F.scaled_dot_product_attention(qs, ks, vs), (qs, ks, vs), do)

    return dict(gaussian=fused_call(radius), no_gaussian=fused_call(no_radius), sdpa=sdpa)


def switched(calls: dict, switch, values):
    """(name, call) of each fused call under each value of ``configs.<switch>`` (set while it runs), then SDPA."""
    for value in values:
        for name, call in calls.items():
            if name != "sdpa":
                yield (f"{name}[{switch}={value}]" if switch else name), _under(call, switch, value)
    yield "sdpa", calls["sdpa"]


def _under(call, switch, value):
    if switch is None:
        return call

    def run():
        with configs.switched({switch: value}):
            call()
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.kernel_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", required=True, help="names or B,H,gh,gw,P,D")
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--regime", default="broad", choices=["broad", "init"])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--output", type=Path, help="JSON of every kernel's ms per call")
    parser.add_argument("--ncu", action="store_true", help="run each variant once inside a cudaProfiler range")
    parser.add_argument("--switch", metavar="NAME=V1,V2",
                        help="the fused variants once per value of configs.NAME (Python literals)")
    args = parser.parse_args(argv)
    switch, values = None, [None]
    if args.switch:
        try:
            switch, values = parse_switch(args.switch)
        except ValueError as e:
            parser.error(str(e))
    if not torch.cuda.is_available():
        parser.error("kernel profiles need CUDA")
    known = {s.name: s for s in GPU_SHAPES}
    rows = []
    for spec in args.shapes:
        shape = known[spec] if spec in known else Shape.parse(spec)
        for variant, call in switched(op_calls(shape, DTYPES[args.dtype], args.regime), switch, values):
            for _ in range(3):  # compile and warm up outside the profiled range
                call()
            torch.cuda.synchronize()
            if args.ncu:
                torch.cuda.cudart().cudaProfilerStart()
                call()
                torch.cuda.synchronize()
                torch.cuda.cudart().cudaProfilerStop()
                continue
            r = profile_fn(call, steps=args.calls)
            print(f"{shape.name} {variant}: GPU busy {r['gpu_busy_ms']:.3f} ms per call", flush=True)
            for kern in r["kernels"]:
                print(f"    {kern['ms_per_step']:8.4f} ms  {kern['name']}")
            rows.append(dict(shape=shape.name, B=shape.B, H=shape.H, grid=shape.grid, P=shape.P, D=shape.D,
                             dtype=args.dtype, regime=args.regime, variant=variant, gpu_busy_ms=r["gpu_busy_ms"],
                             kernels=r["kernels"]))
    if args.output and not args.ncu:
        write_rows(args.output, "locat_bench.kernel_profile", argv, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
