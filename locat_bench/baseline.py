"""Before and after in one process: this tree's op and models against an earlier commit's.

    python -m locat_bench.baseline make REF       # in a git checkout: REF's packages into .baseline/
    PYTHONPATH=.:.baseline python -m locat_bench.baseline run --output before_after.json   # on a GPU

``make`` copies REF's ``locat_kernels`` and ``locat_vit`` as ``locat_kernels_base`` and
``locat_vit_base`` (imports renamed, timm registration dropped), so both versions import side by
side. ``run`` times, on the same inputs: the op (forward and forward+backward, plain calls and
CUDA-graph replays, each over SDPA without a bias; ``--op-rounds`` rounds of the three in turn; with
``--layer`` as a LocAt layer launches it, ``locat_attention`` with layer weights of the regime) at
the op shapes; at ``--kernel-shapes`` each kernel's ms of one forward+backward of the op (or layer), by
torch.profiler; at ``--gaug-shapes`` the Gaussian augmentation's two kernels alone; and whole-model eager
training and inference images/s (over timm's ViT) for the model cases, eager (and with ``--modes eager
compiled`` under torch.compile).
"""
from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

RENAMES = {"locat_kernels": "locat_kernels_base", "locat_vit": "locat_vit_base"}


def make(ref: str, dest: Path) -> None:
    archive = subprocess.run(["git", "archive", ref, *RENAMES], check=True, capture_output=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            top, _, rest = member.name.partition("/")
            text = tar.extractfile(member).read().decode()
            for old, new in RENAMES.items():
                text = re.sub(rf"\b{old}\b", new, text)
            text = re.sub(r"^@register_model\n", "", text, flags=re.M)  # keep timm's registry to this tree
            text = text.replace("locat::", "locat_base::").replace("ops.locat.", "ops.locat_base.")  # op names too
            path = dest / RENAMES[top] / rest
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    (dest / "REF").write_text(subprocess.run(["git", "rev-parse", ref], check=True, capture_output=True,
                                             text=True).stdout)
    print(f"wrote {dest}: {', '.join(RENAMES.values())} at {ref}")


def time_ops(ops: dict, inputs, shape, rounds: int, timer) -> dict:
    """``{name}_{fwd,fwd_bwd}_{plain,graph}_ms`` of each op in ``ops`` (name -> fn(*inputs, shape), the
    gradients to every input; "sdpa"'s to q, k, v only) by ``timer(fn, graph=...)``: ``rounds`` rounds, each
    timing every op in turn (so a host that drifts meets them all alike), the median round, with
    ``rounds`` > 1 the spread (max / min - 1); and each op's ratio over "sdpa"'s."""
    import statistics

    import torch

    do = torch.randn_like(inputs[0])
    samples = {}
    for _ in range(rounds):
        for name, fn in ops.items():
            wrt = inputs[:3] if name == "sdpa" else inputs
            for graph in (False, True):
                tag = "graph" if graph else "plain"
                with torch.no_grad():
                    ms = timer(lambda: fn(*inputs, shape), graph=graph)
                samples.setdefault(f"{name}_fwd_{tag}", []).append(ms)
                ms = timer(lambda: torch.autograd.grad(fn(*inputs, shape), wrt, do), graph=graph)
                samples.setdefault(f"{name}_fwd_bwd_{tag}", []).append(ms)
    row = {}
    for key, times in samples.items():
        row[f"{key}_ms"] = statistics.median(times)
        if rounds > 1:
            row[f"{key}_spread"] = max(times) / min(times) - 1
    for name in ops if "sdpa" in ops else ():
        for key in ("fwd_plain", "fwd_bwd_plain", "fwd_graph", "fwd_bwd_graph"):
            if name != "sdpa":
                row[f"{name}_{key}_over_sdpa"] = row[f"{name}_{key}_ms"] / row[f"sdpa_{key}_ms"]
    return row


def op_fns(after, before, layer: bool = False) -> dict:
    """"after" / "before" / "sdpa" -> fn(*inputs, shape), ``after`` and ``before`` the two trees'
    ``locat_kernels`` (the fused backend). Inputs (q, k, v, var, alpha); with ``layer`` (q, k, v and
    the four layer tensors, ``bench_attention.layer_weights``), the op as the layers launch it."""
    import torch.nn.functional as F

    def op(kernels):
        fn = kernels.locat_attention if layer else kernels.gaussian_attention

        def call(*args):  # the tensors, then the shape
            *tensors, s = args
            return fn(*tensors, s.grid, num_prefix_tokens=s.P, backend="triton")
        return call

    return dict(after=op(after), before=op(before), sdpa=lambda q, k, v, *rest: F.scaled_dot_product_attention(q, k, v))


def before_model(case, device="cuda"):
    """The baseline tree's LocAtViT of a ViT model case (``bench_model.ModelCase``), fused backend."""
    import locat_vit_base

    dims = dict(tiny=(192, 3), small=(384, 6), base=(768, 12))[case.size]
    return locat_vit_base.LocAtViT(img_size=case.img_size, patch_size=16, embed_dim=dims[0], depth=12,
                                   num_heads=dims[1], attn_backend="triton").to(device)


def run(args) -> dict:
    import torch

    import locat_kernels
    import locat_kernels_base
    import locat_vit_base

    from . import bench_model as bm
    from . import profile_step
    from .bench_attention import Shape, layer_weights, make_inputs
    from .cli import environment
    from .timing import cuda_median_ms

    locat_kernels.set_fp32_precision(args.fp32_precision)
    ops = op_fns(locat_kernels, locat_kernels_base, args.layer)
    op_rows = []
    for spec in args.shapes:
        s = Shape.parse(spec)
        try:
            inputs = make_inputs(s, args.regime, getattr(torch, args.dtype), "cuda")
        except torch.cuda.OutOfMemoryError:
            continue
        if args.layer:
            inputs = (*inputs[:3], *layer_weights(s.D, args.regime, "cuda"))
        row = dict(shape=spec, regime=args.regime, dtype=args.dtype, fp32_precision=args.fp32_precision,
                   layer=args.layer, **time_ops(ops, inputs, s, args.op_rounds, cuda_median_ms))
        print(json.dumps(row), flush=True)
        op_rows.append(row)

    kernel_rows = []  # each kernel's ms of one forward+backward (torch.profiler), both trees in turn
    for spec in args.kernel_shapes:
        s = Shape.parse(spec)
        inputs = make_inputs(s, args.regime, getattr(torch, args.dtype), "cuda")
        if args.layer:
            inputs = (*inputs[:3], *layer_weights(s.D, args.regime, "cuda"))
        do = torch.randn_like(inputs[0])
        row = dict(kernel_shape=spec, regime=args.regime, dtype=args.dtype, layer=args.layer)
        for name in ("after", "before"):
            def step(fn=ops[name]):
                torch.autograd.grad(fn(*inputs, s), inputs, do)
            kernels = profile_step.profile_fn(step, steps=20, top=30)["kernels"]
            row[name] = {k["name"]: k["ms_per_step"] for k in kernels}
            row[f"{name}_ms"] = sum(row[name].values())
        print(json.dumps(row), flush=True)
        kernel_rows.append(row)

    gaug_rows = []  # the Gaussian augmentation's kernels alone (kernel time, graph replays), q a view of qkv
    for spec in args.gaug_shapes:
        B, H, gh, gw, P, D, rate = (int(x) for x in spec.split(","))
        q = torch.randn(B, P + gh * gw, 3, H, D, device="cuda", dtype=torch.bfloat16)[:, :, 0].transpose(1, 2)
        dq = torch.randn(B, H, P + gh * gw, D, device="cuda", dtype=torch.bfloat16)
        dvar, dalpha = torch.randn(B, H, gh * gw, 2, device="cuda"), torch.randn(B, H, gh * gw, device="cuda")
        layers = [0.3 * torch.randn(*shape, device="cuda") for shape in ((2, D), (2,), (1, D), (1,))]
        row = dict(gaug_shape=spec)
        grads, params = {}, {}
        for name, fused in (("after", locat_kernels.fused), ("before", locat_kernels_base.fused)):
            def forward(fused=fused):
                return fused.gaug_forward(q, *layers, gh, gw, P, 0.5, 1.0, 1e-6, False, rate)

            def call(fused=fused, dq=dq.clone()):
                return fused.gaug_backward(q, dq, dvar, dalpha, *layers, gh, gw, P, 0.5, 1.0, rate)
            row[f"forward_{name}_ms"] = cuda_median_ms(forward, graph=True)
            row[f"{name}_ms"] = cuda_median_ms(call, graph=True)
            params[name] = forward()[:2]
            out = dq.clone()
            grads[name] = [out, *fused.gaug_backward(q, out, dvar, dalpha, *layers, gh, gw, P, 0.5, 1.0, rate)]
        row["max_rel_diff"] = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                                  for a, b in zip(grads["after"], grads["before"]))
        row["forward_max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(params["after"], params["before"]))
        row["forward_after_over_before"] = row["forward_after_ms"] / row["forward_before_ms"]
        row["after_over_before"] = row["after_ms"] / row["before_ms"]
        print(json.dumps(row), flush=True)
        gaug_rows.append(row)

    model_rows = []
    for spec in args.models:
        case = bm.ModelCase.parse(spec)
        for mode in args.modes:
            before = before_model(case)
            model_rows += bm.bench_case(case, ("vit", "locat_triton", "before"), "cuda", mode=mode,
                                        models=dict(before=before), repeats=args.repeats)
            del before
            torch.cuda.empty_cache()
    before = locat_vit_base.LocAtViT(img_size=64, patch_size=16, embed_dim=192, depth=1, num_heads=3,
                                     attn_backend="triton").cuda()
    host = bm.layer_host_times("cuda", others=dict(before=before.blocks[0].attn))
    print(json.dumps(host), flush=True)
    env = dict(environment("cuda"), command="python -m locat_bench.baseline run " + " ".join(args.argv))
    ref = Path(locat_kernels_base.__file__).parents[1] / "REF"  # whichever baseline folder PYTHONPATH names
    return dict(environment=env, baseline_ref=ref.read_text().strip() if ref.exists() else None, op=op_rows,
                kernels=kernel_rows, gaug=gaug_rows, model=model_rows, model_ratios=bm.ratios(model_rows),
                host_times=host)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m locat_bench.baseline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("ref")
    p.add_argument("--dest", type=Path, default=Path(".baseline"))
    p = sub.add_parser("run")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--regime", default="broad", choices=["broad", "init"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="the op's inputs")
    p.add_argument("--fp32-precision", default="ieee", choices=["ieee", "tf32x3"],
                   help="this tree's products of fp32 inputs (locat_kernels.set_fp32_precision); the baseline "
                   "keeps its own")
    p.add_argument("--layer", action="store_true",
                   help="time the op as a LocAt layer launches it (locat_attention: var and alpha from the queries)")
    p.add_argument("--shapes", nargs="*", default=[
        "128,12,14,14,1,64", "256,3,14,14,1,64", "32,12,24,24,1,64", "16,12,32,32,1,64", "8,12,37,37,5,64",
        "8,12,40,40,1,64", "4,12,64,64,1,64", "16,8,32,32,1,128"], help="B,H,gh,gw,P,D")
    p.add_argument("--kernel-shapes", nargs="*", default=[],
                   help="B,H,gh,gw,P,D: each kernel's ms of one forward+backward of the op (with --layer, the layer's)")
    p.add_argument("--gaug-shapes", nargs="*", default=[],
                   help="B,H,gh,gw,P,D,rate: the gaug kernels alone (forward, and backward as before)")
    p.add_argument("--models", nargs="*", default=["tiny:224:256", "base:224:128", "base:384:32", "base:512:16"],
                   help="size:img:batch")
    p.add_argument("--modes", nargs="*", default=["eager"], choices=list(("eager", "compiled")))
    p.add_argument("--repeats", type=int, default=5, help="model runs per case")
    p.add_argument("--op-rounds", type=int, default=1,
                   help="op timings: rounds of after, before and SDPA in turn (the median round and the spread)")
    args = parser.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[2:])
    if args.cmd == "make":
        make(args.ref, args.dest)
        return 0
    result = run(args)
    args.output.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
