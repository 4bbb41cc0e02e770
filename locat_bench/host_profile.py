"""Where the host time goes: cProfile, the top functions by own time.

    python -m locat_bench.host_profile [--calls 300] [--top 25] [--forward | --op]
    python -m locat_bench.host_profile --compiled-step tiny:224:256 [--calls 20] [--output DIR]
    python -m locat_bench.host_profile --step tiny:224:256 [--calls 20] [--output DIR]

Default: eager forward+backward calls of one LocAt attention layer on a launch-bound tiny input
(B = 1, 17 tokens, bf16 autocast), with the wall time per call (500 calls; ``--calls N``: N); ``--forward``: forward
calls (recording the gradient, as in training) of that layer and of timm's ``Attention``, a table
each; ``--op``: forward+backward calls of the op alone and of SDPA without a bias on that input.
``--launches``: host microseconds per launch of each kernel of one ``locat_attention`` forward+backward
on that input, through Triton's ``kernel[grid]``, through
``configs.Launch`` and through the compiled kernel's launcher alone (JSON to ``--output``).
``--compiled-step``: training steps (fused AdamW, bf16 autocast)
of timm's ViT and then LocAtViT (triton) under ``torch.compile`` in one process, each with its wall
time per step; the tables by own and by cumulative time go to ``DIR/cprofile_<size>_<variant>.txt``.
``--step``: the same for eager training steps (``DIR/cprofile_eager_<size>_<variant>.txt``); at a
small batch the GPU keeps up and the wall time per step is the host's.
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
    parser.add_argument("--calls", type=int, help="profiled calls (default 300 layer calls, 20 steps); for the layer "
                        "and the op also the timed ones (default 500)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--compiled-step", metavar="SIZE:IMG:BATCH", help="profile compiled training steps instead")
    parser.add_argument("--step", metavar="SIZE:IMG:BATCH", help="profile eager training steps instead")
    parser.add_argument("--launches", action="store_true", help="time each kernel's launch paths instead")
    parser.add_argument("--forward", action="store_true", help="forward calls only, the LocAt layer's and timm's")
    parser.add_argument("--op", action="store_true",
                        help="the op alone: gaussian_attention's forward+backward and SDPA's on that input")
    parser.add_argument("--output", type=Path, default=Path("."),
                        help="--compiled-step, --step: folder for the tables; --launches: the JSON file")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.launches:
        from locat_kernels.fused import configs

        if device != "cuda":
            parser.error("--launches needs CUDA (it launches the kernels)")
        if not configs.DIRECT_LAUNCH:
            parser.error("direct launches are off here (LOCAT_DIRECT_LAUNCH=0, or a Triton they were not checked "
                         "against)")
        return _launches(args.output)
    if args.compiled_step or args.step:
        flag, mode = ("--compiled-step", "compiled") if args.compiled_step else ("--step", "eager")
        if device != "cuda":
            parser.error(f"{flag} needs CUDA (the triton backend)")
        return _steps(ModelCase.parse(args.compiled_step or args.step), mode, args.calls or 20, args.top, args.output)
    case = ModelCase("tiny", 64, 1)
    layer = build(case, "locat_triton" if device == "cuda" else "locat_sdpa", device).blocks[0].attn
    x = torch.randn(1, 17, 192, device=device, requires_grad=True)

    def forward(layer):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            return layer(x)

    steps = {"locat forward+backward": lambda: forward(layer).sum().backward()}
    if args.forward:
        timm_layer = build(case, "vit", device).blocks[0].attn
        steps = {"locat forward": lambda: forward(layer), "timm forward": lambda: forward(timm_layer)}
    if args.op:
        steps = _op_steps(device)
    timed = args.calls or 500  # a short run when asked for one (CI's smoke test on CPU: 520 calls took minutes)
    for name, step in steps.items():
        print(f"=== {name}: {wall_ms(step, timed, warmup=min(20, timed)) * 1e3:.1f} us per call (wall)")
        print(_profile(step, args.calls or 300, args.top, "tottime"))
    return 0


def _op_steps(device) -> dict:
    """Forward+backward of ``gaussian_attention`` and of SDPA without a bias on the layer's input
    (B = 1, H = 3, a 4 x 4 grid and 1 prefix token, D = 64; bf16 on CUDA), gradients to every input."""
    import torch.nn.functional as F

    from locat_kernels import gaussian_attention

    from .bench_attention import Shape, make_inputs

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, k, v, var, alpha = make_inputs(Shape.parse("1,3,4,4,1,64"), "broad", dtype, device)
    do = torch.randn_like(q)
    backend = "triton" if device == "cuda" else "sdpa"
    return {"gaussian_attention forward+backward": lambda: torch.autograd.grad(
                gaussian_attention(q, k, v, var, alpha, (4, 4), num_prefix_tokens=1, backend=backend),
                (q, k, v, var, alpha), do),
            "sdpa forward+backward": lambda: torch.autograd.grad(
                F.scaled_dot_product_attention(q, k, v), (q, k, v), do)}


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


def _launches(path: Path) -> int:
    """Per kernel of one locat_attention forward+backward (B = 1, H = 3, 4 x 4 grid, 1 prefix token,
    D = 64, bf16): host us per launch by Triton's path, by its ``configs.Launch`` (as an eager call's plan keeps
    it), and by the compiled kernel's launcher alone (the floor: no binding), given the tensors (it asks each for
    its pointer and the driver about it) or their device pointers (as a Launch passes them); calls back to back,
    the device keeping up."""
    import json

    from locat_kernels import locat_attention
    from locat_kernels.fused import configs

    from .cli import environment

    q, k, v = (torch.randn(1, 3, 17, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    weights = [(0.02 * torch.randn(*shape, device="cuda")).requires_grad_() for shape in ((2, 64), (2,), (1, 64), (1,))]
    with configs.recorded_launches(run=True) as launches:
        locat_attention(q, k, v, *weights, (4, 4), num_prefix_tokens=1).sum().backward()
    rows = []
    for kernel, grid, args, meta in launches:
        n = next(i for i, a in enumerate(args) if not (a is None or isinstance(a, torch.Tensor)))
        tensors, launch = args[:n], configs.Launch(kernel, grid, args[n:], meta)
        launch(tensors)  # its first launch: Triton's path, the compiled kernel kept
        (compiled, rest), = launch.compiled.values()
        g = (*grid, 1, 1)
        stream = torch.cuda.current_stream().cuda_stream
        pointers = [None if t is None else t.data_ptr() for t in tensors]
        row = dict(kernel=kernel.fn.__name__, arguments=n + len(rest), tensors=n, grid=list(grid))

        def launcher(leading, compiled=compiled, rest=rest, g=g):  # the compiled kernel's launcher alone
            return lambda: compiled.run(g[0], g[1], g[2], stream, compiled.function, compiled.packed_metadata,
                                        None, None, None, *leading, *rest)
        for name, fn in (("triton_us", lambda: kernel[grid](*args, **meta)),
                         ("direct_launch_us", lambda: launch(tensors)),
                         ("launcher_only_us", launcher(tensors)), ("launcher_pointers_us", launcher(pointers))):
            row[name] = min(wall_ms(fn, 500, warmup=20) for _ in range(5)) * 1e3
        print(f"{row['kernel']:<26} {row['arguments']:3d} arguments ({n} tensors): Triton {row['triton_us']:6.1f} us, "
              f"Launch {row['direct_launch_us']:6.1f}, launcher alone {row['launcher_only_us']:6.1f} (tensors), "
              f"{row['launcher_pointers_us']:6.1f} (pointers)", flush=True)
        rows.append(row)
    env = dict(environment("cuda"), command="python -m locat_bench.host_profile --launches --output " + str(path))
    path.write_text(json.dumps(dict(environment=env, launches=rows), indent=1))
    print(f"wrote {path}")
    return 0


def _steps(case: ModelCase, mode: str, calls: int, top: int, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "cprofile_" if mode == "compiled" else "cprofile_eager_"
    for variant in ("vit", "locat_triton"):
        step = train_step(case, variant, mode)
        wall = wall_ms(step, calls, warmup=8)
        table = _profile(step, calls, top, "tottime", "cumulative")
        torch.cuda.synchronize()
        path = folder / f"{prefix}{case.size}_{variant}.txt"
        path.write_text(f"wall ms/step {wall:.2f}\n{table}")
        print(f"{case.name} {variant}: {wall:.2f} ms per step (wall); {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
