"""Block-size sweep of the three kernels at the op shapes (CUDA): ``python -m locat_bench.tune``.

For each shape, times the forward launcher under each forward config, then the backward launchers
under each dq config (dk/dv at its default) and each dk/dv config (dq at its default); the forward
and dq configs both with grid-shaped key tiles and with token tiles (``configs.GRID_TILES``), the
dk/dv configs with and without the factored Gaussian (``configs.FACTORED_DKDV``). Prints the medians
and writes them as JSON; the winners go into ``locat_kernels/fused/configs.py`` by hand, with the
measurement cited in benchmarks/NOTES.md.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton.testing

from locat_kernels import fused, gaussian_clamp, gaussian_eps
from locat_kernels.fused import configs

from .bench_attention import GPU_SHAPES, Shape, make_inputs
from .cli import environment

CANDIDATES = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                (64, 128, 4, 3), (64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 4, 3), (128, 128, 8, 2)],
    "backward_dq": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 4, 3),
                    (64, 64, 8, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 128, 4, 2), (32, 128, 8, 2),
                    (64, 128, 4, 2)],
    "backward_dkdv": [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 128, 4, 2), (64, 32, 4, 3),
                      (32, 64, 4, 2), (32, 64, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2), (32, 32, 4, 2),
                      (32, 128, 4, 3), (32, 128, 8, 2), (64, 128, 4, 2), (16, 128, 4, 2), (16, 64, 4, 3)],
}
# kernel -> the configs switch it is timed under, and its values
SWITCHES = {"forward": ("GRID_TILES", (True, False)), "backward_dq": ("GRID_TILES", (True, False)),
            "backward_dkdv": ("FACTORED_DKDV", ("auto", False))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="broad", choices=["broad", "init"])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--kernels", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--shapes", nargs="*", help="shape names or B,H,gh,gw,P,D (default: all)")
    parser.add_argument("--configs", nargs="*", help="only these candidates, as BLOCK_M,BLOCK_N,warps,stages")
    parser.add_argument("--default-switch", action="store_true",
                        help="only the default layout (grid tiles, factored dk/dv), not the A/B")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("tuning needs CUDA")
    only = {tuple(int(x) for x in c.split(",")) for c in args.configs} if args.configs else None
    rows = []
    known = {s.name: s for s in GPU_SHAPES}
    for shape in [known[s] if s in known else Shape.parse(s) for s in args.shapes] if args.shapes else GPU_SHAPES:
        q, k, v, var, alpha = (t.detach() for t in make_inputs(shape, args.regime, torch.bfloat16, "cuda"))
        alpha = alpha.contiguous()
        grid, P = shape.grid, shape.P
        common = (grid[1], P, gaussian_eps(grid), gaussian_clamp(grid), 1, shape.D ** -0.5)
        out, lse, radius = fused.attention_forward(q, k, v, var, alpha, None, *common)
        do = torch.randn_like(out)
        runs = {
            "forward": lambda: fused.attention_forward(q, k, v, var, alpha, None, *common),
            "backward_dq": lambda: fused.attention_backward(do, q, k, v, var, alpha, out, lse, radius, *common),
        }
        runs["backward_dkdv"] = runs["backward_dq"]
        for kernel in args.kernels:
            switch, values = SWITCHES[kernel]
            default = getattr(configs, switch)
            for value in (default,) if args.default_switch else values:
                for cand in CANDIDATES[kernel]:
                    if only and cand not in only:
                        continue
                    configs.OVERRIDES[kernel] = cand
                    setattr(configs, switch, value)
                    try:
                        ms = triton.testing.do_bench(runs[kernel], warmup=25, rep=100, return_mode="median")
                    except Exception as e:  # a config that does not compile or fit: note it, go on
                        ms, note = None, str(e).splitlines()[0][:120]
                    else:
                        note = ""
                    del configs.OVERRIDES[kernel]
                    setattr(configs, switch, default)
                    rows.append(dict(shape=shape.name, kernel=kernel, config=list(cand), switch=switch, value=value,
                                     ms=ms, note=note))
                    print(f"{shape.name:<11} {kernel:<14} {switch}={value!s:<5} {str(cand):<20} "
                          + (f"{ms:8.4f} ms" if ms is not None else f"failed: {note}"), flush=True)
    env = dict(environment("cuda"), command="python -m locat_bench.tune " + " ".join(argv if argv is not None else sys.argv[1:]))
    args.output.write_text(json.dumps(dict(environment=env, regime=args.regime, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
