"""Where a step's milliseconds go (CUDA): ``python -m locat_bench.profile_step --output F.json``.

For each model case (``--cases size:img:batch``), variant, mode (eager / compiled) and phase (``--phases``:
training steps, inference calls), and for each op shape (``--shapes``, forward+backward of the fused op and of SDPA without bias), one profiled
step after warm-up: wall ms per step (plain calls), GPU busy ms (the sum of kernel times), kernels
per step, the kernels grouped by name with their ms per step, and the host operators with the most
self CPU time. Wall well above GPU busy means the host is the bottleneck.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from locat_kernels import gaussian_attention

from . import baseline
from .bench_attention import GPU_SHAPES, Shape, make_inputs
from .bench_model import ModelCase, train_step
from .cli import environment
from .timing import wall_ms

STEPS = 5


def kernel_family(name: str) -> str:
    """A kernel name without its template arguments and launch suffixes, for grouping."""
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"_\d+$", "", name)  # inductor's numbered fused kernels stay apart only by family
    return name[:90]


def profile_fn(fn, steps: int = STEPS, top: int = 15) -> dict:
    """Profile ``steps`` calls of ``fn`` (warmed up); per-step wall, GPU busy, kernels, top ops."""
    wall = wall_ms(fn, steps)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    kernels = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            k = kernels[kernel_family(e.name)]
            k[0] += 1
            k[1] += e.device_time_total / 1e3
    busy = sum(ms for _, ms in kernels.values()) / steps
    by_time = sorted(kernels.items(), key=lambda kv: -kv[1][1])
    cpu = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)[:top]
    return dict(
        wall_ms=wall, gpu_busy_ms=busy, kernels_per_step=sum(n for n, _ in kernels.values()) / steps,
        kernels=[dict(name=n, calls_per_step=c / steps, ms_per_step=ms / steps) for n, (c, ms) in by_time[:top]],
        host_ops=[dict(name=a.key[:90], calls_per_step=a.count / steps, self_cpu_ms_per_step=a.self_cpu_time_total
                       / 1e3 / steps) for a in cpu],
    )


def op_step(shape: Shape, peer: str):
    q, k, v, var, alpha = make_inputs(shape, "broad", torch.bfloat16, "cuda")
    do = torch.randn_like(q)
    if peer == "sdpa":
        def step():
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v), (q, k, v), do)
    else:
        def step():
            out = gaussian_attention(q, k, v, var, alpha, shape.grid, num_prefix_tokens=shape.P, backend="triton")
            torch.autograd.grad(out, (q, k, v, var, alpha), do)
    return step


def show(title: str, r: dict) -> None:
    print(f"{title}: wall {r['wall_ms']:.2f} ms/step, GPU busy {r['gpu_busy_ms']:.2f} ms, "
          f"{r['kernels_per_step']:.0f} kernels", flush=True)
    for k in r["kernels"][:8]:
        print(f"    {k['ms_per_step']:8.3f} ms  x{k['calls_per_step']:<5.0f} {k['name']}")
    for o in r["host_ops"][:6]:
        print(f"    host {o['self_cpu_ms_per_step']:7.3f} ms  x{o['calls_per_step']:<5.0f} {o['name']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.profile_step", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--cases", nargs="*", default=[], help="model cases size:img:batch")
    parser.add_argument("--variants", nargs="*", default=["vit", "locat_triton"],
                        help="bench_model's variants, and \"before\": the LocAtViT of the baseline tree "
                        "(python -m locat_bench.baseline make REF; PYTHONPATH with .baseline)")
    parser.add_argument("--modes", nargs="*", default=["eager", "compiled"])
    parser.add_argument("--phases", nargs="*", default=["train"], choices=["train", "infer"],
                        help="training steps and / or inference calls of the model cases")
    parser.add_argument("--shapes", nargs="*", default=[], help="op shapes: names or B,H,gh,gw,P,D")
    parser.add_argument("--top", type=int, default=15, help="kernel families and host operators kept per row")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("profiling needs CUDA")
    known = {s.name: s for s in GPU_SHAPES}
    rows = []
    for spec in args.cases:
        case = ModelCase.parse(spec)
        for mode in args.modes:
            for phase in args.phases:
                for variant in args.variants:
                    model = baseline.before_model(case) if variant == "before" else None
                    step = train_step(case, variant, mode, model=model, phase=phase)
                    r = dict(model=case.name, batch=case.batch, variant=variant, mode=mode, phase=phase,
                             **profile_fn(step, top=args.top))
                    show(f"{case.name} b{case.batch} {variant} {mode} {phase}", r)
                    rows.append(r)
    for spec in args.shapes:
        shape = known[spec] if spec in known else Shape.parse(spec)
        for peer in ("sdpa", "locat"):
            r = dict(shape=shape.name, B=shape.B, H=shape.H, grid=shape.grid, P=shape.P, D=shape.D, peer=peer,
                     **profile_fn(op_step(shape, peer), top=args.top))
            show(f"{shape.name} {peer} fwd+bwd", r)
            rows.append(r)
    command = "python -m locat_bench.profile_step " + " ".join(argv if argv is not None else sys.argv[1:])
    args.output.write_text(json.dumps(dict(environment=dict(environment("cuda"), command=command), rows=rows),
                                      indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
