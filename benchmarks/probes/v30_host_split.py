"""v30 probe (benchmarks/NOTES.md, v30; results/host_split_v30_H200.json): where the host time of one eager LocAt
attention layer goes, without a profiler's own cost. Host microseconds per call (B = 1, 17 tokens, bf16 autocast:
the device keeps up, so the wall time is the host's), median of interleaved rounds, of:

- timm's ``Attention`` and LocAtViT-Tiny's layer (triton), forward and forward+backward;
- that layer with every kernel launch skipped (``configs.launcher`` answering with a no-op): its Python without
  the launches; the difference to the layer is what the launches cost;
- the pieces on their own: one ``torch.empty`` of a small CUDA tensor, one view (``transpose``), the split of
  qkv into q, k, v (``permute`` + ``unbind``), an autograd Function's floor (forward+backward of one that saves
  ten tensors and only clones its input), and SDPA's forward+backward on that input.

``PYTHONPATH=. python benchmarks/probes/v30_host_split.py OUT.json`` on a GPU."""
import json
import sys
import time

import torch
import torch.nn.functional as F

import locat_vit  # noqa: F401  (registers the models)
from locat_bench import bench_model as bm
from locat_bench.cli import environment
from locat_kernels.fused import configs

CALLS, ROUNDS = 300, 9


class _NoLaunch:
    def __getitem__(self, grid):
        return self

    def __call__(self, *args, **meta):
        return None


class _Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, *weights):
        ctx.save_for_backward(x, *weights, x, x, x, x, x)
        return x.clone()

    @staticmethod
    def backward(ctx, dout):
        ctx.saved_tensors  # unpacked, as a backward does: part of the floor
        return (dout,) + (None,) * 4


def main(path):
    case = bm.ModelCase("tiny", 64, 1)
    locat = bm.build(case, "locat_triton", "cuda").blocks[0].attn
    timm_layer = bm.build(case, "vit", "cuda").blocks[0].attn
    x = torch.randn(1, 17, 192, device="cuda", requires_grad=True)
    qkv = torch.randn(1, 17, 3, 3, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weights = [torch.randn(2, 64, device="cuda", requires_grad=True) for _ in range(4)]
    real_launcher, skip = configs.launcher, _NoLaunch()

    def layer(module, backward, launches=True):
        def call():
            configs.launcher = real_launcher if launches else (lambda kernel, traced: skip)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = module(x)
            if backward:
                out.sum().backward()
        return call

    def sdpa():
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        F.scaled_dot_product_attention(q, k, v).sum().backward()

    def floor():
        _Floor.apply(x, *weights).sum().backward()

    small = torch.empty(3, 17, device="cuda")
    steps = {
        "timm_forward": layer(timm_layer, False), "locat_forward": layer(locat, False),
        "locat_forward_no_launch": layer(locat, False, launches=False),
        "timm_forward_backward": layer(timm_layer, True), "locat_forward_backward": layer(locat, True),
        "locat_forward_backward_no_launch": layer(locat, True, launches=False),
        "torch_empty": lambda: torch.empty((1, 3, 17), device="cuda", dtype=torch.float32),
        "view": lambda: small.transpose(0, 1),
        "split_qkv": lambda: qkv.permute(2, 0, 3, 1, 4).unbind(0),
        "function_floor_forward_backward": floor,
        "sdpa_forward_backward": sdpa,
    }
    times = {name: [] for name in steps}
    for fn in steps.values():
        for _ in range(20):
            fn()
    for _ in range(ROUNDS):  # each layer step sets the launcher it times
        for name, fn in steps.items():
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(CALLS):
                fn()
            torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t) / CALLS * 1e6)
    configs.launcher = real_launcher
    out = {name: dict(us=sorted(runs)[len(runs) // 2], spread=max(runs) / min(runs) - 1)
           for name, runs in times.items()}
    for name, r in out.items():
        print(f"{name:<34} {r['us']:8.1f} us  (spread {r['spread']:.0%})")
    env = dict(environment("cuda"), command="PYTHONPATH=. python benchmarks/probes/v30_host_split.py " + path)
    with open(path, "w") as f:
        json.dump(dict(environment=env, calls=CALLS, rounds=ROUNDS, us_per_call=out), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
