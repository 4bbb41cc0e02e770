"""``locat-bench``: the benchmark report. The fused op against its peers, as a table and JSON.

On CUDA: the shapes of SPEC section 4 in bf16, both regimes, every peer that imports. Without CUDA
it still runs: tiny shapes through the Triton interpreter and the eager peers, and says what needs
a GPU (timings of the compiled kernels, FlexAttention, peak memory).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="locat-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", help="shape names to run (default: all for this device)")
    parser.add_argument("--regimes", nargs="*", default=None, help="broad and/or init")
    parser.add_argument("--peers", nargs="*", default=None, help="subset of locat eager sdpa_bias flex sdpa")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/attention_<gpu>.json)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        # Kernels run through the interpreter on CPU; this must be set before triton kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from . import bench_attention as ba

    shapes = ba.GPU_SHAPES if device == "cuda" else ba.CPU_SHAPES
    if args.shapes:
        shapes = [s for s in shapes if s.name in args.shapes]
        if not shapes:
            parser.error(f"no shape matches {args.shapes}; known: {[s.name for s in ba.GPU_SHAPES + ba.CPU_SHAPES]}")
    regimes = args.regimes or ba.REGIMES
    peers = args.peers or ba.PEERS
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    env = environment(device)
    print(f"locat-bench on {env['device']} (torch {env['torch']}, triton {env['triton']}), {dtype}")
    if device == "cpu":
        print("No CUDA device: tiny shapes only, the fused kernels run through the Triton interpreter (slow, "
              "not a speed measure). Kernel timings, FlexAttention and peak memory need CUDA.")

    rows = []
    for i, shape in enumerate(shapes):
        for regime in regimes:
            print(f"[{i + 1}/{len(shapes)}] {shape.name} (B={shape.B}, H={shape.H}, N={shape.N}, D={shape.D}) {regime}",
                  flush=True)
            rows += ba.bench_shape(shape, regime, dtype, device, peers=peers, log=lambda s: print(s, flush=True))
    ratios = ba.ratios(rows)
    print_ratios(ratios)

    if not args.no_save:
        tag = env["device"].replace(" ", "_").replace("/", "_")
        path = args.output or RESULTS / f"attention_{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(environment=env, rows=rows, ratios=ratios), indent=1))
        print(f"wrote {path}")
    return 0


def environment(device: str) -> dict:
    import timm
    import triton

    return dict(
        device=torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
        torch=torch.__version__, triton=triton.__version__, timm=timm.__version__,
        python=platform.python_version(), date=datetime.date.today().isoformat(),
        interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1",
    )


def print_ratios(ratios: list[dict]) -> None:
    print("\ntime over the floor (SDPA without bias; lower is better) and over locat:")
    print(f"  {'shape':<11} {'regime':<6} {'peer':<9} {'fwd/floor':>9} {'f+b/floor':>9} {'fwd/locat':>9} "
          f"{'f+b/locat':>9} {'mem/floor':>9}")
    for r in ratios:
        cells = [r.get(k) for k in ("fwd_ms_over_floor", "fwd_bwd_ms_over_floor", "fwd_ms_over_locat",
                                    "fwd_bwd_ms_over_locat", "mem_over_floor")]
        print(f"  {r['shape']:<11} {r['regime']:<6} {r['peer']:<9} "
              + " ".join(f"{c:9.2f}" if c is not None else f"{'-':>9}" for c in cells))


if __name__ == "__main__":
    sys.exit(main())
