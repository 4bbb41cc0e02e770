"""v34 probe (benchmarks/NOTES.md, v34): does a config's register cap (its fifth element, ``maxnreg``) reach the
kernel under ``torch.compile``? Inductor moves a user kernel's num_warps / num_stages out of its keyword arguments,
not ``maxnreg`` (torch 2.11's ``triton_kernel_wrap``).

The public op's forward at 56 wide (B 4, H 12, bf16; the forward 12% faster capped at 168 registers, v34's tune),
eager and compiled, under the table's config and the same config capped: ms (do_bench median), or the error
a compiled call raised, and the compiled output's largest difference from the eager one.
``PYTHONPATH=. python benchmarks/probes/v34_maxnreg_compiled.py OUT.json`` on a GPU."""
import json
import sys

import torch
import triton.testing

from locat_bench.bench_attention import Shape, make_inputs
from locat_bench.cli import environment
from locat_kernels import gaussian_attention
from locat_kernels.fused import configs

SHAPE = "4,12,56,56,1,64"
CONFIGS = {"table": None, "capped": (64, 64, 4, 3, 168)}


def main(out):
    shape = Shape.parse(SHAPE)
    q, k, v, var, alpha = (t.detach() for t in make_inputs(shape, "broad", torch.bfloat16, "cuda"))

    def op(q, k, v, var, alpha):
        return gaussian_attention(q, k, v, var, alpha, shape.grid, num_prefix_tokens=shape.P, backend="triton")

    rows = []
    for name, cfg in CONFIGS.items():
        with configs.switched({}, {"forward": cfg} if cfg else {}):
            eager = op(q, k, v, var, alpha)
            row = dict(config=name, eager_ms=triton.testing.do_bench(lambda: op(q, k, v, var, alpha),
                                                                       return_mode="median"))
            torch._dynamo.reset()
            compiled = torch.compile(op, fullgraph=True)
            try:
                diff = (compiled(q, k, v, var, alpha) - eager).abs().max().item()
                row.update(compiled_ms=triton.testing.do_bench(lambda: compiled(q, k, v, var, alpha),
                                                               return_mode="median"), compiled_vs_eager=diff)
            except Exception as e:  # what a user would meet
                row.update(compiled_error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")
        print(row, flush=True)
        rows.append(row)
    with open(out, "w") as f:
        json.dump(dict(environment=environment("cuda"), shape=SHAPE, rows=rows), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
