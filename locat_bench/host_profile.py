"""Where the host time goes: cProfile, the top functions by own time.

    python -m locat_bench.host_profile [--calls 300] [--top 25]
    python -m locat_bench.host_profile --compiled-step tiny:224:256 [--calls 20] [--output DIR]

Default: eager forward+backward calls of one LocAt attention layer on a launch-bound tiny input
(B = 1, 17 tokens, bf16 autocast). ``--compiled-step``: training steps (fused AdamW, bf16 autocast)
of timm's ViT and then LocAtViT (triton) under ``torch.compile`` in one process, each with its wall
time per step; the tables by own and by cumulative time go to ``DIR/cprofile_<size>_<variant>.txt``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path

import torch

from .bench_model import ModelCase, build, train_step
from .timing import wall_ms


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.host_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, help="profiled calls (default 300 layer calls, 20 steps)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--compiled-step", metavar="SIZE:IMG:BATCH", help="profile compiled training steps instead")
    parser.add_argument("--output", type=Path, default=Path("."), help="--compiled-step: folder for the tables")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.compiled_step:
        if device != "cuda":
            parser.error("--compiled-step needs CUDA (the triton backend under torch.compile)")
        return _compiled_steps(ModelCase.parse(args.compiled_step), args.calls or 20, args.top, args.output)
    layer = build(ModelCase("tiny", 64, 1), "locat_triton" if device == "cuda" else "locat_sdpa", device).blocks[0].attn
    x = torch.randn(1, 17, 192, device=device, requires_grad=True)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            y = layer(x)
        y.sum().backward()

    for _ in range(20):
        step()
    print(_profile(step, args.calls or 300, args.top, "tottime"))
    return 0


def _profile(fn, calls: int, top: int, *orders: str) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    for order in orders:
        stats.sort_stats(order).print_stats(top)
    return out.getvalue()


def _compiled_steps(case: ModelCase, calls: int, top: int, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for variant in ("vit", "locat_triton"):
        step = train_step(case, variant, "compiled")
        wall = wall_ms(step, calls, warmup=8)
        table = _profile(step, calls, top, "tottime", "cumulative")
        torch.cuda.synchronize()
        path = folder / f"cprofile_{case.size}_{variant}.txt"
        path.write_text(f"wall ms/step {wall:.2f}\n{table}")
        print(f"{case.name} {variant}: {wall:.2f} ms per step (wall); {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
