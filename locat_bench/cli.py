"""``locat-bench``: the benchmark report. The fused op against its peers: table, JSON and a plot.

On CUDA: the shapes of docs/method.md section 4, 384 px, patch 14 at 518 px and head_dim 128, in
bf16, both regimes, every peer that imports (``--shapes B,H,gh,gw,P,D`` times your own; ``--shapes
widths``: grid widths 7 to 96). Without CUDA it still runs: tiny shapes through the Triton interpreter
and the eager peers, and says what needs a GPU (timings of the compiled kernels, FlexAttention, peak
memory). ``--model``: whole-model training and inference images/s, eager and compiled, LocAtViT per
backend against timm's ViT.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

RESULTS = Path("locat-bench-results")  # in the working directory (the repository's own: benchmarks/results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="locat-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", help="shape names, or your own as B,H,gh,gw,P,D, or 'widths' (grid "
                        "widths 7 to 96) (default: all for this device)")
    parser.add_argument("--regimes", nargs="*", default=None, help="broad and/or init")
    parser.add_argument("--peers", nargs="*", default=None, help="subset of locat locat_layer eager sdpa_bias flex sdpa")
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON path (default: ./locat-bench-results/<kind>_<gpu>.json; on CPU the temp folder)")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--model", action="store_true", help="whole-model images/s instead of the op")
    parser.add_argument("--cases", nargs="*", help="--model: cases as [family:]size:img:batch, e.g. base:384:32 or "
                                                   "rope:base:224:128 (families: vit, rope, swin, jumbo)")
    parser.add_argument("--modes", nargs="*", choices=["eager", "compiled"],
                        help="--model: eager and/or torch.compile (default: both on CUDA, eager on CPU)")
    parser.add_argument("--variants", nargs="*", help="--model: subset of vit locat_triton locat_sdpa")
    parser.add_argument("--repeats", type=int, default=5,
                        help="--model: timed runs of each case, mode and variant, interleaved (CUDA; the median "
                             "is reported with the spread of the runs beside it; default 5)")
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only draw the PNG of a saved op result")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.plot:
        print(f"wrote {plot(args.plot)}")
        return 0

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        # Kernels run through the interpreter on CPU; this must be set before triton kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
        # The interpreter evaluates the kernels in numpy, where log2(0) = -inf (alpha off the patches) is
        # intended: no RuntimeWarning for it.
        import numpy as np

        np.seterr(divide="ignore", invalid="ignore")
    env = environment(device)
    if args.model:
        return run_models(args, device, env)
    from . import bench_attention as ba

    shapes = ba.GPU_SHAPES if device == "cuda" else ba.CPU_SHAPES
    if args.shapes:
        known = {s.name: s for s in ba.GPU_SHAPES + ba.CPU_SHAPES + ba.WIDTH_SHAPES}
        try:
            shapes = [shape for s in args.shapes for shape in (
                ba.WIDTH_SHAPES if s == "widths" else [known[s] if s in known else ba.Shape.parse(s)])]
        except ValueError as e:
            parser.error(f"{e}; known names: {sorted(known)}, or 'widths'")
    regimes = args.regimes or ba.REGIMES
    peers = args.peers or ba.PEERS
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
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
    if device == "cuda":
        print_ratios(ratios)
    else:
        print("\nNo ratio table on CPU: the interpreter's times are not a speed measure (the rows above show each "
              "peer's error against float64 and that it runs).")

    if not args.no_save:
        path = save(args, "attention", env, rows, ratios)
        try:
            print(f"wrote {plot(path)}")
        except ImportError:
            print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
    return 0


def run_models(args, device: str, env: dict) -> int:
    from . import bench_model as bm

    cases = [bm.ModelCase.parse(c) for c in args.cases] if args.cases else (
        bm.GPU_CASES if device == "cuda" else bm.CPU_CASES)
    modes = args.modes or (bm.MODES if device == "cuda" else ("eager",))
    variants = args.variants or [v for v in bm.VARIANTS if device == "cuda" or v != "locat_triton"]
    print(f"locat-bench --model on {env['device']} (torch {env['torch']}, triton {env['triton']})")
    if device == "cpu":
        print("No CUDA device: one tiny case in float32, eager; LocAtViT's triton backend, torch.compile, "
              "kernel counts and memory need CUDA. CPU numbers are not a speed measure: no ratios printed.")
    rows = []
    for i, case in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {case.name}, batch {case.batch}", flush=True)
        for mode in modes:
            rows += bm.bench_case(case, variants, device, mode, repeats=args.repeats,
                                  log=lambda s: print(s, flush=True))
        if not args.no_save and i + 1 < len(cases):  # a run cut short keeps the cases it finished
            save(args, "model", env, rows, bm.ratios(rows) if device == "cuda" else [], complete=False)
    ratios = bm.ratios(rows) if device == "cuda" else []
    host = bm.layer_host_times(device) if device == "cuda" else None
    if ratios:
        print("\nimages/s over the backbone without LocAt (timm's ViT, or the family's) of the same size and mode "
              "(higher is better), the same from the steps' GPU busy time (what a host that keeps up would see), "
              "peak training memory over the backbone's:")
        nan = float("nan")
        for r in ratios:
            print(f"  {r['model']:<15} {r['variant']:<13} {r['mode']:<8} train {r['train_over_vit']:5.2f}  "
                  f"infer {r['infer_over_vit']:5.2f}  GPU busy {r.get('train_gpu_over_vit', nan):5.2f} / "
                  f"{r.get('infer_gpu_over_vit', nan):5.2f}  memory {r.get('train_memory_over_vit', nan):5.2f}")
    if host:
        print("\nhost time of one attention layer (B=1, 17 tokens, eager), LocAt triton / timm Attention:")
        for kind in ("forward", "forward_backward", "inference"):
            print(f"  {kind:<17} {host[f'locat_{kind}_us']:7.1f} us / {host[f'timm_{kind}_us']:7.1f} us = "
                  f"{host[f'{kind}_over_timm']:.2f}x")
    if not args.no_save:
        save(args, "model", env, rows, ratios, host_times=host)
    return 0


def save(args, kind: str, env: dict, rows: list, ratios: list, **extra) -> Path:
    """JSON with the environment (GPU, versions, date, command), every measured row and the ratios."""
    tag = env["device"].replace(" ", "_").replace("/", "_").replace("(", "").replace(")", "")
    # CPU runs are a smoke test, not results: they go to the temp folder, not into the source tree.
    folder = RESULTS if torch.cuda.is_available() else Path(tempfile.gettempdir()) / "locat-bench"
    path = args.output or folder / f"{kind}_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env, command=" ".join(["locat-bench", *sys.argv[1:]]))
    path.write_text(json.dumps(dict(environment=env, rows=rows, ratios=ratios, **extra), indent=1))
    print(f"wrote {path}")
    return path


def plot(json_path: Path) -> Path:
    """Bar chart of each peer's time over the floor, forward and forward+backward, next to the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    data = json.loads(Path(json_path).read_text())
    ratios = [r for r in data["ratios"] if r["peer"] != "sdpa"]
    groups = list(dict.fromkeys((r["shape"], r["regime"]) for r in ratios))
    peers = [p for p in ("locat", "locat_layer", "sdpa_bias", "flex", "eager") if any(r["peer"] == p for r in ratios)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), sharey=True)
    width = 0.8 / len(peers)
    for ax, key, title in zip(axes, ("fwd_ms_over_floor", "fwd_bwd_ms_over_floor"), ("forward", "forward + backward")):
        for i, peer in enumerate(peers):
            vals = [next((r.get(key, float("nan")) for r in ratios if (r["shape"], r["regime"]) == g and r["peer"] == peer),
                         float("nan")) for g in groups]
            ax.bar([j + i * width for j in range(len(groups))], vals, width, label=peer)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{title}: time / SDPA without bias")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(groups))])
        ax.set_xticklabels([f"{s}, {r}" for s, r in groups], fontsize=8, rotation=35, ha="right")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}x"))
    env = data["environment"]
    fig.suptitle(f"{env['device']}, torch {env['torch']}, triton {env['triton']} (lower is better)")
    # the legend in a row of its own below the axes, where no bar is
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(peers), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(json_path).with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def environment(device: str) -> dict:
    import timm
    import triton

    return dict(
        device=torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.machine()})",
        torch=torch.__version__, triton=triton.__version__, timm=timm.__version__,
        python=platform.python_version(), date=datetime.date.today().isoformat(),
        interpreter=os.environ.get("TRITON_INTERPRET", "0") == "1",
    )


def parse_switch(text: str) -> tuple[str, list]:
    """``NAME=V1,V2`` (Python literals) -> (NAME, [V1, V2]): a ``locat_kernels.fused.configs`` switch and
    the values to A/B it under (``--switch`` of kernel_profile and tune); ValueError naming the problem."""
    import ast

    from locat_kernels.fused import configs

    name, _, spec = text.partition("=")
    try:
        values = [ast.literal_eval(v) for v in spec.split(",")]
    except (ValueError, SyntaxError):
        raise ValueError(f"--switch takes NAME=V1,V2 with Python literals, got {text!r}") from None
    if not name.isupper() or not hasattr(configs, name):
        raise ValueError(f"--switch: configs has no switch {name!r}")
    return name, values


def write_rows(path, module: str, argv, rows: list[dict]) -> None:
    """``{"environment", "rows"}`` JSON at ``path``: this CUDA machine's environment with the command that
    made the rows, ``python -m MODULE ARGS`` (``argv``, or this process's arguments when None)."""
    args = argv if argv is not None else sys.argv[1:]
    env = dict(environment("cuda"), command=f"python -m {module} " + " ".join(args))
    Path(path).write_text(json.dumps(dict(environment=env, rows=rows), indent=1))


def print_ratios(ratios: list[dict]) -> None:
    print("\ntime over the floor (SDPA without bias; lower is better): CUDA-graph replays, plain calls; and over locat:")
    keys = ("fwd_ms_over_floor", "fwd_bwd_ms_over_floor", "fwd_plain_ms_over_floor", "fwd_bwd_plain_ms_over_floor",
            "fwd_ms_over_locat", "fwd_bwd_ms_over_locat", "mem_over_floor")
    print(f"  {'shape':<20} {'regime':<6} {'peer':<11} {'fwd':>7} {'f+b':>7} {'fwd pl':>7} {'f+b pl':>7} "
          f"{'fwd/loc':>7} {'f+b/loc':>7} {'mem':>7}")
    for r in ratios:
        print(f"  {r['shape']:<20} {r['regime']:<6} {r['peer']:<11} "
              + " ".join(f"{r[k]:7.2f}" if r.get(k) is not None else f"{'-':>7}" for k in keys))


if __name__ == "__main__":
    sys.exit(main())
