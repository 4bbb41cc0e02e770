"""Where the host time of one LocAt attention layer goes: cProfile of eager forward+backward calls on a
launch-bound tiny input (B = 1, 17 tokens, bf16 autocast), the top functions by own time.

    python -m locat_bench.host_profile [--calls 300] [--top 25]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from .bench_model import ModelCase, build


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.host_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = build(ModelCase("tiny", 64, 1), "locat_triton" if device == "cuda" else "locat_sdpa", device).blocks[0].attn
    x = torch.randn(1, 17, 192, device=device, requires_grad=True)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            y = layer(x)
        y.sum().backward()

    for _ in range(20):
        step()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.calls):
        step()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
