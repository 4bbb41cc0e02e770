"""Registers, spills and shared memory of each fused kernel at a shape, compiled for a GPU on any
machine (no GPU needed): ``python -m locat_bench.resources --shapes 128,12,14,14,1,64``.

For each shape (B,H,gh,gw,P,D) it runs the LocAt layer's launch sequence (``fused.gaug_forward``,
``attention_forward``, ``attention_backward``: dq then dk/dv, ``gaug_backward``) with the launches
recorded instead of run, compiles every recorded launch for the target with Triton's own compiler
(``JITFunction.warmup`` under a stand-in driver that names the target), and reads ptxas's resource
usage from the cubin (``cuobjdump -res-usage``, shipped with Triton). Per kernel: the launch config,
registers per thread, STACK (bytes per thread of local memory: > 0 means spills), and the shared
memory the launch needs, and the programs of it an SM holds at once (``programs_per_sm``: the fewest that its
registers, shared memory and warps allow; where registers set it, a config's fifth element (``maxnreg``) can
add one, benchmarks/NOTES.md v33-v34). The configs are those the table gives on sm_90 (``--override`` swaps a
kernel's; ``--switch NAME=VALUE`` sets a ``configs`` switch while the launches are recorded).
Each row also names its machine code by a hash of the SASS instructions (``sass``: equal hashes, the
same instructions; line info and names left out), so two source trees' launches compare without a GPU
(benchmarks/NOTES.md, v41). ``--loops`` also reads each kernel's machine code (``cuobjdump -sass``) and lists its loops
(one per backward branch, in address order: a sweep's far / near / far ranges) with the instructions
of each body and its most frequent opcodes, the count that tells a lean loop from a heavy one before
any GPU time (benchmarks/NOTES.md, v13). Run it without ``TRITON_INTERPRET``; it replaces Triton's
driver for its whole process.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget

from .cli import parse_switch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.resources", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", required=True, help="B,H,gh,gw,P,D")
    parser.add_argument("--rate", type=int, default=1, help="1, or 2 (the published rate-2 training mode)")
    parser.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    parser.add_argument("--arch", type=int, default=90, help="compute capability to compile for (90: H100, H200)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KERNEL=M,N,WARPS,STAGES",
                        help="a config for backward_dq, backward_dkdv or forward instead of the table's")
    parser.add_argument("--switch", nargs="*", default=[], metavar="NAME=VALUE",
                        help="configs switches set while the launches are recorded (Python literals)")
    parser.add_argument("--loops", action="store_true", help="also each kernel's loops: instructions per iteration")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("compiling for a GPU needs TRITON_INTERPRET unset")
    overrides = {}
    for spec in args.override:
        name, _, cfg = spec.partition("=")
        try:
            overrides[name] = tuple(int(x) for x in cfg.split(","))
        except ValueError:
            parser.error(f"--override takes KERNEL=M,N,WARPS,STAGES[,MAXNREG], got {spec!r}")
        if name not in ("forward", "backward_dq", "backward_dkdv") or len(overrides[name]) not in (4, 5):
            parser.error(f"--override takes KERNEL=M,N,WARPS,STAGES[,MAXNREG] with KERNEL forward, backward_dq or "
                         f"backward_dkdv, got {spec!r}")
    switches = {}
    for spec in args.switch:
        try:
            name, values = parse_switch(spec)
        except ValueError as e:
            parser.error(str(e))
        if len(values) != 1:
            parser.error(f"--switch takes one value a switch here, got {spec!r}")
        switches[name] = values[0]
    rows = []
    for spec in args.shapes:
        try:
            shape = tuple(int(x) for x in spec.split(","))
            assert len(shape) == 6
        except (ValueError, AssertionError):
            parser.error(f"a shape is B,H,gh,gw,P,D, got {spec!r}")
        for row in resources(shape, args.rate, DTYPES[args.dtype], args.arch, overrides, args.loops, switches):
            row = dict(shape=spec, rate=args.rate, dtype=args.dtype, **row)
            print(f"{spec:>20} {row['kernel']:<14} config {str(row['config']):<18} regs {row['regs']:>3}  "
                  f"spill {row['stack']:>4} B/thread  shared {row['shared'] / 1024:6.1f} KiB  "
                  f"programs/SM {row['programs_per_sm'] or '?'}  sass {row['sass']}", flush=True)
            for i, loop in enumerate(row.get("loops", [])):
                ops = ", ".join(f"{op} {n}" for op, n in loop["opcodes"].items())
                print(f"{'':>22}loop {i}: {loop['instructions']:5d} instructions ({ops})")
            rows.append(row)
    if args.output:
        env = dict(triton=triton.__version__, torch=torch.__version__, target=f"sm_{args.arch}",
                   command="python -m locat_bench.resources " + " ".join(argv if argv is not None else sys.argv[1:]))
        args.output.write_text(json.dumps(dict(environment=env, rows=rows), indent=1))
        print(f"wrote {args.output}")
    return 0


def resources(shape, rate: int, dtype, arch: int, overrides: dict, loops: bool = False,
              switches: dict | None = None) -> list[dict]:
    """One row per launch of the LocAt layer's forward and backward at ``shape`` (with ``loops``, each
    kernel's ``sass_loops`` too), under ``configs`` switches ``switches`` (name -> value)."""
    use_target(arch)
    launches = layer_launches(shape, rate, dtype, switches=switches, overrides=overrides)
    rows = []
    for kernel, grid, args, kwargs in launches:
        name = kernel.fn.__name__.strip("_").removesuffix("_kernel")  # _backward_dq_kernel: backward_dq
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        usage = _resource_usage(compiled.asm["cubin"])
        sass = cuobjdump(compiled.asm["cubin"], "-sass")
        config = [kwargs[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "maxnreg") if k in kwargs]
        rows.append(dict(kernel=name, config=config,
                         regs=usage["REG"], stack=usage["STACK"], shared=compiled.metadata.shared,
                         programs_per_sm=programs_per_sm(usage["REG"], kwargs.get("num_warps", 4),
                                                         compiled.metadata.shared, arch),
                         flags={k: v for k, v in kwargs.items() if k in ("FACTORED", "ROWS", "COLS", "KEY_ROWS",
                                                                          "KEY_COLS", "CLAMP", "RATE", "LAYERS")},
                         sass=sass_hash(sass)))
        if loops:
            rows[-1]["loops"] = sass_loops(sass)
    return rows


def layer_launches(shape, rate: int, dtype, package: str = "locat_kernels", variants: bool = False,
                   switches: dict | None = None, overrides: dict | None = None) -> list[tuple]:
    """The launches ``(kernel, grid, args, meta)`` of the LocAt layer's forward and backward at ``shape`` by
    ``package``'s kernels (a baseline tree's: ``locat_kernels_base``), recorded, not run: the Gaussian augmentation's
    forward, the attention forward given its radius (at rate 1 also ``layer_forward``'s, the forward of a call that
    records no gradient, where ``package`` has it), the backward, the augmentation's backward; with ``variants``
    also the forward finding its radius (the public op's) and the backward with the layers' chain."""
    pkg = importlib.import_module(package)
    fused, configs = (importlib.import_module(f"{package}.fused{m}") for m in ("", ".configs"))
    _, H, gh, gw, P, D = shape
    N = P + gh * gw
    q, k, v = torch.randn(1, N, 3, H, D, dtype=dtype).permute(2, 0, 3, 1, 4).unbind(0)  # timm's views
    layers = [0.3 * torch.randn(2, D), torch.zeros(2), 0.3 * torch.randn(1, D), torch.zeros(1)]
    eps, cmin, scale = pkg.gaussian_eps((gh, gw)), pkg.gaussian_clamp((gh, gw)), D ** -0.5
    # the launches are recorded, not run: each call gets inputs of the right shapes, not its predecessor's outputs
    var, alpha = torch.rand(1, H, gh * gw, 2) + 0.5, torch.rand(1, H, gh * gw)
    radius, lse = torch.ones(H, dtype=torch.int32), torch.zeros(1, H, N)
    out, do = torch.randn(1, N, H, D, dtype=dtype).transpose(1, 2), torch.randn_like(q)
    with configs.switched(switches or {}, overrides), configs.recorded_launches() as launches:
        fused.gaug_forward(q, *layers, gh, gw, P, 0.0, 1.0, eps, False, rate)
        for r in (radius, None) if variants else (radius,):
            fused.attention_forward(q, k, v, var, alpha, r, gw, P, eps, cmin, rate, scale)
        if rate == 1 and hasattr(fused, "layer_forward"):
            fused.layer_forward(q, k, v, *layers, gw, P, eps, cmin, 0.0, 1.0, scale)
        for chain in (None, (layers[0], layers[2], 1.0)) if variants else (None,):
            fused.attention_backward(do, q, k, v, var, alpha, out, lse, radius, gw, P, eps, cmin, rate, scale,
                                     chain=chain)
        fused.gaug_backward(q, torch.zeros_like(q), torch.randn_like(var), torch.randn_like(alpha), *layers, gh,
                            gw, P, 0.0, 1.0, rate)
    return launches


_SASS_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def sass_hash(sass: str) -> str:
    """12 hex digits of sha256 over a SASS listing's instructions and their addresses (not its headers)."""
    return hashlib.sha256("\n".join(" ".join(i) for i in _SASS_INSTRUCTION.findall(sass)).encode()).hexdigest()[:12]


def sass_loops(sass: str, top: int = 8) -> list[dict]:
    """The loops of one kernel's SASS listing: one per backward branch, in address order, each with the
    instructions of its body (branch target to the branch) and its ``top`` most frequent opcodes."""
    instrs = [(int(addr, 16), text) for addr, text in _SASS_INSTRUCTION.findall(sass)]
    index = {addr: i for i, (addr, _) in enumerate(instrs)}
    loops = []
    for i, (addr, text) in enumerate(instrs):
        branch = re.search(r"\bBRA\s+(?:`\()?(0x[0-9a-f]+)", text)
        target = int(branch.group(1), 16) if branch else None
        if target is not None and target < addr and target in index:
            body = [t for _, t in instrs[index[target]:i + 1]]
            ops = Counter(re.sub(r"^@!?U?PT?\d*\s+", "", t).split()[0].split(".")[0] for t in body)
            loops.append(dict(instructions=len(body), opcodes=dict(ops.most_common(top))))
    return loops


# Per SM: registers, shared memory (bytes), warps, programs; 1 KiB of shared memory is reserved per program
# (CUDA's occupancy rules; the compute-capability tables of the CUDA C++ Programming Guide).
SM_LIMITS = {80: (65536, 167936, 64, 32), 86: (65536, 102400, 48, 16), 89: (65536, 102400, 48, 24),
             90: (65536, 233472, 64, 32)}


def programs_per_sm(regs: int, warps: int, shared: int, arch: int = 90) -> int | None:
    """How many programs of ``warps`` warps, ``regs`` registers a thread and ``shared`` bytes of shared memory an SM
    of ``sm_<arch>`` runs at once (None for an architecture without limits here). Registers go to a warp in units of
    256, shared memory to a program in units of 128 bytes plus the 1 KiB the runtime reserves."""
    if arch not in SM_LIMITS:
        return None
    sm_regs, sm_shared, sm_warps, sm_programs = SM_LIMITS[arch]
    warp_regs = -(-regs * 32 // 256) * 256
    by_regs = sm_regs // warp_regs // warps
    by_shared = sm_shared // (-(-shared // 128) * 128 + 1024)
    return min(by_regs, by_shared, sm_warps // warps, sm_programs)


def use_target(arch: int) -> None:
    """Triton's driver replaced, for the rest of the process, by one that compiles for ``sm_<arch>`` without a GPU."""
    triton.runtime.driver.set_active(_TargetOnly(arch))


class _TargetOnly:
    """Enough of Triton's driver to compile for ``sm_<arch>`` without a GPU."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


def _resource_usage(cubin: bytes) -> dict:
    """ptxas's REG, STACK, SHARED, LOCAL of the one function in a cubin."""
    text = cuobjdump(cubin, "-res-usage")
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text)}


def cuobjdump(cubin: bytes, flag: str) -> str:
    """What Triton's bundled cuobjdump prints for a cubin with ``flag``."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(tool), flag, str(path)], capture_output=True, text=True, check=True).stdout


if __name__ == "__main__":
    raise SystemExit(main())
