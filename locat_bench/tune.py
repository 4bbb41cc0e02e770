"""Block configs of the three kernels measured on this GPU (CUDA): ``python -m locat_bench.tune``.

**Sweep** (default): for each shape, times the forward launcher under each forward config (with the
skip radius given, as the LocAt layers launch it; "forward_radius": finding it, as the public op does),
then the backward launchers under each dq config (dk/dv at its default) and each dk/dv config (dq at its
default); the forward and dq configs both with grid-shaped key tiles and with token tiles
(``configs.GRID_TILES``), the dk/dv configs with and without the factored Gaussian
(``configs.FACTORED_DKDV``); ``--switch NAME=V1,V2``: under those values of that switch instead (e.g.
``FP32_PRECISION='ieee','tf32x3'`` with ``--dtype float32``: bf16 inputs by default). Prints the medians
and writes them as JSON (``--output``). ``--rounds N`` times a shape's configs N times in turn (all of
them, then all again: a GPU whose speed drifts meets every config alike; one launch read 0.44-0.75 ms in
three processes, benchmarks/NOTES.md v26) and adds each config's median and spread (max / min - 1).

**Table** (``--table``): every entry of the config table (``locat_kernels/fused/configs.json``) for
this GPU's architecture (sm_90's entries where it has none) is timed on its representative shape and
dtype (``TABLE_SHAPES``, each in its entry's class; a "tf32x3" entry under that fp32 precision) under
each candidate, then the fastest and those within ``CAP_SLACK`` of it under each register cap (``CAPS``);
the fastest of those wins. ``--entries PATTERN ...`` times only the entries whose ``kernel/head_dim/dtype/grid`` matches
one of the shell patterns (e.g. ``'*/64/16bit/*'``: a device call's worth at a time).
Each entry's own config is timed beside them, and ``--write PATH`` puts a winner into that table file under this
architecture where it beats the entry by ``--min-gain`` (default 2%: entries do not churn on noise; an architecture
new to the table takes every winner), its source naming the GPU, shape, date and command; the timings go to
``--output`` as in the sweep.
"""
from __future__ import annotations

import argparse
import datetime
import fnmatch
import functools
import json
import sys
from pathlib import Path

import torch
import triton.testing

from locat_kernels import fused, gaussian_clamp, gaussian_eps
from locat_kernels.fused import configs

from .bench_attention import GPU_SHAPES, Shape, make_inputs
from .cli import environment, parse_switch

CANDIDATES = {  # (BLOCK_M, BLOCK_N, num_warps, num_stages), 16-bit inputs, head_dim <= 128
    "forward": [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 32, 4, 3),
                (64, 128, 4, 3), (64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 4, 3), (128, 128, 8, 2),
                (64, 32, 4, 3)],
    "backward_dq": [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (128, 32, 8, 2), (64, 64, 4, 3),
                    (64, 64, 8, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 128, 4, 2), (32, 128, 8, 2),
                    (64, 128, 4, 2)],
    "backward_dkdv": [(64, 64, 4, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 128, 4, 2), (64, 32, 4, 3),
                      (32, 64, 4, 2), (32, 64, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2), (32, 32, 4, 2),
                      (32, 128, 4, 3), (32, 128, 8, 2), (64, 128, 4, 2), (16, 128, 4, 2), (16, 64, 4, 3),
                      # without spills where the table's choices spill (python -m locat_bench.resources, v9)
                      (32, 128, 8, 3), (32, 64, 4, 3), (16, 128, 4, 3)],
}
CANDIDATES["forward_radius"] = CANDIDATES["forward"]  # the forward finding its skip radius (the public op)
# Register caps (a config's fifth element, ptxas's maxnreg) that --table tries on each entry's winner and on the
# candidates within CAP_SLACK of it: with 4 warps, 168 / 128 / 96 registers a thread fit 3 / 4 / 5 programs an SM
# (benchmarks/NOTES.md, v34). torch.compile's launches drop the cap, so a capped runner-up costs them at most CAP_SLACK;
# at 384 px the forward's (64, 32, 4, 3) read 0.5% behind (64, 64, 4, 3) uncapped and 3.5% ahead of it capped (v36).
CAPS = (168, 128, 96)
CAP_SLACK = 0.02
# --table --write: a winner replaces an entry of this GPU's architecture only where it is this fraction faster
# (re-timings of unchanged code read 1-3% apart across processes, benchmarks/NOTES.md v36-v39).
MIN_GAIN = 0.02
# Head-dim class 256 and fp32 (exact or tf32x3 products: many registers): smaller tiles, every kernel.
SMALL_TILES = [(64, 32, 8, 2), (32, 32, 4, 2), (32, 32, 8, 1), (64, 32, 4, 2), (32, 64, 4, 2), (32, 64, 8, 2),
               (16, 32, 4, 2), (64, 64, 4, 2)]
# kernel -> the configs switch it is timed under, and its values
SWITCHES = {"forward": ("GRID_TILES", (True, False)), "backward_dq": ("GRID_TILES", (True, False)),
            "backward_dkdv": ("FACTORED_DKDV", ("auto", False))}
SWITCHES["forward_radius"] = SWITCHES["forward"]
# (head-dim class, dtype class, grid class) -> the shape (B,H,gh,gw,P,D) its entries are timed on, or
# kernel -> shape where the kernels' classes differ (the dk/dv kernel's "any" is its per-logit path,
# grids wider than configs.MAX_FACTORED_COLS). tests/test_configs.py checks each falls in its class.
TABLE_SHAPES = {
    (64, "16bit", "any"): {"forward": "16,12,32,32,1,64", "backward_dq": "8,12,48,48,1,64",
                           "backward_dkdv": "2,12,96,96,1,64"},
    (64, "16bit", "small"): "128,12,14,14,1,64",
    (64, "16bit", "gw24"): "32,12,24,24,1,64",
    (64, "16bit", "gw28"): "16,12,28,28,1,64",
    (64, "16bit", "gw32"): "16,12,32,32,1,64",
    (64, "16bit", "gw37"): "8,12,37,37,5,64",
    (64, "16bit", "gw48"): "8,12,48,48,1,64",
    (64, "16bit", "factored"): "128,12,14,14,1,64",
    (64, "16bit", "factored_wide"): "16,12,32,32,1,64",
    (128, "16bit", "any"): {"forward": "16,8,32,32,1,128", "backward_dq": "16,8,32,32,1,128",
                            "backward_dkdv": "2,8,96,96,1,128"},
    (128, "16bit", "factored"): "16,8,32,32,1,128",
    (80, "16bit", "any"): {"forward": "8,16,27,27,0,72", "backward_dq": "4,16,37,37,1,80"},  # SigLIP 384, ViT-H/14 518
    (80, "16bit", "gw27"): "8,16,27,27,0,72",
    (80, "16bit", "wide"): "4,16,37,37,1,80",
    (128, "16bit", "wide"): "4,8,56,56,1,128",
    (256, "16bit", "any"): "4,8,32,32,1,256",
    (64, "fp32", "any"): "8,12,24,24,1,64",
    (64, "tf32x3", "any"): "256,3,14,14,1,64",
    (128, "fp32", "any"): "4,8,24,24,1,128",
    (256, "fp32", "any"): "2,8,24,24,1,256",
}
DTYPES = {"16bit": torch.bfloat16, "fp32": torch.float32, "tf32x3": torch.float32}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--regime", default="broad", choices=["broad", "init"])
    parser.add_argument("--output", type=Path, required=True, help="JSON of every timing")
    parser.add_argument("--kernels", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--shapes", nargs="*", help="sweep: shape names or B,H,gh,gw,P,D (default: all)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="sweep: the inputs' dtype (float32: the small-tile candidates by default)")
    parser.add_argument("--configs", nargs="*", help="sweep: these configs instead of the kernel's candidates; "
                        "--table: only the candidates among them; as BLOCK_M,BLOCK_N,warps,stages[,maxnreg] "
                        "(maxnreg: a cap on the registers a thread)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweep: time each shape's configs this many times in turn; the median and spread")
    parser.add_argument("--default-switch", action="store_true",
                        help="sweep: only the default layout (grid tiles, factored dk/dv), not the A/B")
    parser.add_argument("--switch", metavar="NAME=V1,V2",
                        help="sweep: A/B this configs switch (Python literals) instead of each kernel's default one")
    parser.add_argument("--table", action="store_true", help="time the config table's entries for this GPU")
    parser.add_argument("--entries", nargs="*", metavar="PATTERN",
                        help="--table: only the entries whose kernel/head_dim/dtype/grid matches a shell pattern, "
                        "e.g. '*/64/16bit/*' or 'backward_dq/64/16bit/gw2?'")
    parser.add_argument("--write", type=Path, metavar="TABLE",
                        help="--table: write the winners into this table file (e.g. locat_kernels/fused/configs.json)")
    parser.add_argument("--min-gain", type=float, default=MIN_GAIN,
                        help="--write: replace an entry only where the winner is this fraction faster (default 0.02)")
    args = parser.parse_args(argv)
    if (args.write or args.entries) and not args.table:
        parser.error("--write and --entries go with --table")
    if not 0 <= args.min_gain < 1:
        parser.error(f"--min-gain takes a fraction in [0, 1), got {args.min_gain}")
    if args.rounds < 1:
        parser.error(f"--rounds takes a count >= 1, got {args.rounds}")
    try:
        only = [tuple(int(x) for x in c.split(",")) for c in args.configs] if args.configs else None
    except ValueError:
        only = None
    if args.configs and (only is None or any(len(c) not in (4, 5) for c in only)):
        parser.error(f"--configs takes BLOCK_M,BLOCK_N,warps,stages[,maxnreg] per config, got {args.configs}")
    ab = None  # (switch, values) of --switch
    if args.switch:
        try:
            ab = parse_switch(args.switch)
        except ValueError as e:
            parser.error(str(e))
    if not torch.cuda.is_available():
        parser.error("tuning needs CUDA")
    command = "python -m locat_bench.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    env = dict(environment("cuda"), command=command)
    rows, summary = [], []

    def timer(kernel, spec, dtype, cand, switch=None, value=None, round_=None):
        ms, note = time_config(kernel, spec, dtype, cand, args.regime, switch, value)
        rows.append(dict(shape=spec, dtype=str(dtype).removeprefix("torch."), kernel=kernel, config=list(cand),
                         switch=switch, value=value, ms=ms, note=note, **({} if round_ is None else {"round": round_})))
        print(f"{spec:<18} {str(dtype):<15} {kernel:<14} {switch}={value!s:<5} {str(cand):<20} "
              + (f"{ms:8.4f} ms" if ms is not None else f"failed: {note}")
              + ("" if round_ is None else f"  (round {round_ + 1})"), flush=True)
        return ms

    if args.table:
        arch = configs.device_arch(torch.cuda.current_device())
        keys = [k for k in configs.TABLE.get(arch, configs.TABLE[configs.DEFAULT_ARCH]) if k[0] in args.kernels]
        keys = select_entries(keys, args.entries)
        if not keys:
            parser.error(f"no table entry of {arch} matches --kernels {args.kernels} and --entries {args.entries}")
        winners = measure_table(keys, timer, only, configs.TABLE.get(arch))
        for key, w in winners.items():
            print(f"{' '.join(map(str, key)):<40} {w['config']} {w['ms']:.4f} ms on {w['shape']}"
                  + (f"; the entry {w['entry']} {w['entry_ms']:.4f} ms: "
                     + ("replaced" if replaces(w, args.min_gain) else "kept") if "entry_ms" in w else ""))
        if args.write:
            write_table(args.write, arch, torch.cuda.get_device_name(), winners, command, args.min_gain)
            print(f"wrote {arch}'s entries into {args.write}")
    else:
        known = {s.name: s for s in GPU_SHAPES}
        dtype = getattr(torch, args.dtype)
        for shape in [known[s] if s in known else Shape.parse(s) for s in args.shapes] if args.shapes else GPU_SHAPES:
            spec = f"{shape.B},{shape.H},{shape.grid[0]},{shape.grid[1]},{shape.P},{shape.D}"
            jobs = [(kernel, cand, switch, value) for kernel in args.kernels
                    for switch, values in [ab or SWITCHES[kernel]]
                    for value in ((getattr(configs, switch),) if args.default_switch else values)
                    for cand in only or candidates(kernel, dtype, shape.D)]  # --configs: exactly those, in order
            runs = [[] for _ in jobs]
            for r in range(args.rounds):
                for (kernel, cand, switch, value), times in zip(jobs, runs):
                    times.append(timer(kernel, spec, dtype, cand, switch, value, r if args.rounds > 1 else None))
            if args.rounds > 1:
                summary += [summarize(spec, dtype, job, times) for job, times in zip(jobs, runs)]
    result = dict(environment=env, regime=args.regime, rows=rows, **({"summary": summary} if summary else {}))
    args.output.write_text(json.dumps(result, indent=1))
    return 0


def summarize(spec, dtype, job, times) -> dict:
    """One config's rounds (``--rounds``): the median of those that ran, the spread (max / min - 1), all
    of them; printed as it is made."""
    import statistics

    kernel, cand, switch, value = job
    ok = [t for t in times if t is not None]
    ms = statistics.median(ok) if ok else None
    spread = max(ok) / min(ok) - 1 if ok else None
    print(f"{spec:<18} {str(dtype):<15} {kernel:<14} {switch}={value!s:<5} {str(cand):<20} "
          + (f"median {ms:8.4f} ms, spread {100 * spread:.1f}% of {len(ok)}/{len(times)}" if ok else "failed"),
          flush=True)
    return dict(shape=spec, dtype=str(dtype).removeprefix("torch."), kernel=kernel, config=list(cand), switch=switch,
                value=value, ms=ms, spread=spread, runs=times)


def time_config(kernel, spec, dtype, cand, regime="broad", switch=None, value=None):
    """(median ms, note) of the launches of ``kernel`` (the forward, or the backward's two) on shape
    ``spec`` under config ``cand`` (and ``configs.<switch> = value``); (None, why) if it fails. The
    forward gets its skip radius as the LocAt layers give it; "forward_radius" finds it (the public op)."""
    q, k, v, var, alpha, common, out, lse, radius, do = _inputs(spec, dtype, regime)
    if kernel in ("forward", "forward_radius"):
        def run():
            fused.attention_forward(q, k, v, var, alpha, None if kernel == "forward_radius" else radius, *common)
    else:
        def run():
            fused.attention_backward(do, q, k, v, var, alpha, out, lse, radius, *common)
    try:
        with configs.switched({switch: value} if switch else {}, {kernel: cand}):
            return triton.testing.do_bench(run, warmup=25, rep=100, return_mode="median"), ""
    except Exception as e:  # a config that does not compile or fit: note it, go on
        return None, str(e).splitlines()[0][:120]


@functools.lru_cache(maxsize=1)  # the candidates of one shape share its inputs; one shape's tensors kept
def _inputs(spec, dtype, regime):
    """Inputs of shape ``spec`` and the forward's outputs and dO (made under the default config)."""
    shape = Shape.parse(spec)
    q, k, v, var, alpha = (t.detach() for t in make_inputs(shape, regime, dtype, "cuda"))
    alpha = alpha.contiguous()
    common = (shape.grid[1], shape.P, gaussian_eps(shape.grid), gaussian_clamp(shape.grid), 1, shape.D ** -0.5)
    out, lse, radius = fused.attention_forward(q, k, v, var, alpha, None, *common)
    return q, k, v, var, alpha, common, out, lse, radius, torch.randn_like(out)


def candidates(kernel: str, dtype: torch.dtype, head_dim: int) -> list:
    """The configs ``kernel`` is timed under for inputs of ``dtype`` and ``head_dim``."""
    return CANDIDATES[kernel] if dtype != torch.float32 and configs.padded_head_dim(head_dim) <= 128 else SMALL_TILES


def select_entries(keys: list, patterns: list | None) -> list:
    """The table keys ``(kernel, head_dim, dtype, grid)`` whose ``kernel/head_dim/dtype/grid`` matches one of the
    shell ``patterns`` (all of them without patterns)."""
    if not patterns:
        return list(keys)
    return [k for k in keys if any(fnmatch.fnmatchcase("/".join(map(str, k)), p) for p in patterns)]


def table_plan(key: tuple) -> tuple[str, torch.dtype, list]:
    """The shape, dtype and candidate configs a table entry ``(kernel, head_dim, dtype, grid)`` is
    timed with."""
    kernel, d, dtype, grid = key
    spec = TABLE_SHAPES[(d, dtype, grid)]
    spec = spec[kernel] if isinstance(spec, dict) else spec
    return spec, DTYPES[dtype], candidates(kernel, DTYPES[dtype], d)


def measure_table(keys, timer, only=None, entries=None) -> dict:
    """key -> the fastest candidate (config, ms, shape, dtype) by ``timer(kernel, spec, dtype, cand,
    switch, value)`` (ms, or None for a candidate that fails; a "tf32x3" key under that
    ``FP32_PRECISION``); keys whose every candidate fails are left out. The uncapped candidates within
    ``CAP_SLACK`` of the fastest uncapped one are then timed under each register cap (``CAPS``; with ``only``,
    those of their caps listed there) and the fastest of all wins: torch.compile's launches drop the cap, so
    they run a winner's uncapped config, at most CAP_SLACK slower than the fastest uncapped one. With ``entries``
    (key -> the table's config for this GPU), each key's own config is timed too, if no candidate was it, and kept
    beside the winner as ``entry`` and ``entry_ms``."""
    winners = {}
    for key in keys:
        spec, dtype, cands = table_plan(key)
        switch = ("FP32_PRECISION", "tf32x3") if key[2] == "tf32x3" else (None, None)

        def timed(cands):
            return [(ms, cand) for cand in cands if (ms := timer(key[0], spec, dtype, cand, *switch)) is not None]

        times = timed(cand for cand in cands if not only or cand in only)
        if times:
            best = min(times)
            near = [cand for ms, cand in times if ms <= best[0] * (1 + CAP_SLACK)]
            caps = [c for c in only if c[:4] in near and len(c) == 5] if only else [(*c, r) for c in near for r in CAPS]
            times += timed(caps)
            ms, cand = min(times)
            winners[key] = dict(config=list(cand), ms=ms, shape=spec, dtype=str(dtype).removeprefix("torch."))
            own = tuple(entries[key]) if entries and key in entries else None
            if own:
                own_ms = next((ms for ms, cand in times if cand == own), None)
                if own_ms is None:
                    own_ms = timer(key[0], spec, dtype, own, *switch)
                if own_ms is not None:
                    winners[key].update(entry=list(own), entry_ms=own_ms)
    return winners


def replaces(winner: dict, min_gain: float) -> bool:
    """Whether ``winner`` (from ``measure_table``) goes into the table: faster than the entry by ``min_gain``, or
    no entry timed."""
    return "entry_ms" not in winner or winner["ms"] < (1 - min_gain) * winner["entry_ms"]


def write_table(path: Path, arch: str, gpu: str, winners: dict, command: str, min_gain: float = 0.0) -> None:
    """Put ``winners`` (from ``measure_table``) into the table file at ``path`` as ``arch``'s entries, naming the GPU,
    shape, date and command; entries not measured, or not beaten by ``min_gain`` (``replaces``), keep their config and
    source."""
    table = json.loads(Path(path).read_text())
    spec = table["archs"].get(arch) or dict(gpus=[], entries=[  # a new architecture starts from the default's
        dict(e, source=f"copied from {configs.DEFAULT_ARCH}: not measured on {arch}")
        for e in table["archs"][configs.DEFAULT_ARCH]["entries"]])
    if gpu not in spec["gpus"]:
        spec["gpus"].append(gpu)
    date = datetime.date.today().isoformat()
    for entry in spec["entries"]:
        w = winners.get((entry["kernel"], entry["head_dim"], entry["dtype"], entry["grid"]))
        if w and replaces(w, min_gain):
            entry.update(config=w["config"], source=f"{gpu}, {w['dtype']}, {w['shape']}: {w['ms']:.4f} ms ({date}: {command})")
    table["archs"][arch] = spec
    Path(path).write_text(dump_table(table))


def dump_table(table: dict) -> str:
    """The table file's text: indented JSON with each entry and each GPU list on one line (a diff shows entries)."""
    def line(value, indent):
        if isinstance(value, dict) and not {"kernel", "config"} <= value.keys():
            items = [f'{" " * (indent + 1)}{json.dumps(k)}: {line(v, indent + 1)}' for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{' ' * indent}}}"
        if isinstance(value, list) and value and isinstance(value[0], dict):
            items = [" " * (indent + 1) + line(v, indent + 1) for v in value]
            return "[\n" + ",\n".join(items) + f"\n{' ' * indent}]"
        return json.dumps(value)
    return line(table, 0) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
