"""v32 probe (benchmarks/NOTES.md, v32): where one eager LocAt layer's forward+backward spends its host time, with
the launches timed where they run (v31's probe put 342 us of a layer's 1839 on its six launches, where each launch
alone took 11-16 us).

On a GPU, LocAtViT-Tiny's first layer at 64 px (B = 1, 17 tokens, bf16 autocast: the device keeps up, so the wall
time is the host's), host us per call, median of interleaved rounds:

1. the layer's forward+backward: as it runs (the compiled launcher given the tensors: it calls ``data_ptr()`` and
   ``cuPointerGetAttribute`` for each); its launches given the device pointers as ints instead (a draft, not
   adopted); every launch skipped; timm's ``Attention``;
2. inside the draft's calls, per call: each kernel's ``Launch``, the autograd Function's forward and backward bodies;
3. ``torch.profiler``'s CPU table of 20 forward+backward calls of each layer (its own cost included).

``PYTHONPATH=. python benchmarks/probes/v32_layer_launches.py OUT.json`` on a GPU. results/layer_launches_v32_H200.json
was measured with the draft in the tree: its "locat" is this probe's "locat_pointers", its "locat_tensors" this
probe's "locat"."""
import collections
import json
import sys
import time

import torch

import locat_vit  # noqa: F401  (registers the models)
from locat_bench import bench_model as bm
from locat_bench.cli import environment
from locat_bench.timing import wall_ms
from locat_kernels import attention
from locat_kernels.fused import configs

CALLS, ROUNDS = 300, 9
_TENSOR_CALL = configs.Launch.__call__


def _pointer_call(self, tensors, traced=False):
    """The draft's ``Launch.__call__``: the compiled launcher given the tensors' device pointers as ints."""
    if traced or not configs.DIRECT_LAUNCH or configs.launcher is not configs._LAUNCHER:
        return _TENSOR_CALL(self, tensors, traced)
    device = configs.driver.active.get_current_device()
    entry = self.compiled.get(device)
    if entry is None:
        return _TENSOR_CALL(self, tensors, traced)
    kernel, rest = entry
    kernel.run(*self.dims, configs.driver.active.get_current_stream(device), kernel.function,
               kernel.packed_metadata, None, None, None, *[None if t is None else t.data_ptr() for t in tensors],
               *rest)


class _NoLaunch:
    def __getitem__(self, grid):
        return self

    def __call__(self, *args, **meta):
        return None


def main(path):
    case = bm.ModelCase("tiny", 64, 1)
    locat = bm.build(case, "locat_triton", "cuda").blocks[0].attn
    timm_layer = bm.build(case, "vit", "cuda").blocks[0].attn
    x = torch.randn(1, 17, 192, device="cuda", requires_grad=True)
    real_launcher, skip = configs.launcher, _NoLaunch()

    def layer(module, call=_TENSOR_CALL, launches=True):
        def step():
            configs.Launch.__call__ = call
            configs.launcher = real_launcher if launches else (lambda kernel, traced: skip)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = module(x)
            out.sum().backward()
        return step

    steps = {"timm": layer(timm_layer), "locat": layer(locat), "locat_pointers": layer(locat, _pointer_call),
             "locat_no_launch": layer(locat, launches=False)}
    times = {name: [] for name in steps}
    for fn in steps.values():
        for _ in range(20):
            fn()
    for _ in range(ROUNDS):
        for name, fn in steps.items():
            times[name].append(wall_ms(fn, CALLS, warmup=0) * 1e3)
    configs.Launch.__call__, configs.launcher = _TENSOR_CALL, real_launcher
    walls = {name: dict(us=sorted(runs)[len(runs) // 2], spread=max(runs) / min(runs) - 1)
             for name, runs in times.items()}
    for name, r in walls.items():
        print(f"{name:<18} {r['us']:8.1f} us a forward+backward (spread {r['spread']:.0%})")

    # 2. the pieces, timed inside the calls (perf_counter around each; their own cost included)
    spent = collections.Counter()

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
        return wrapper

    def launch_timed(self, tensors, traced=False):
        t = time.perf_counter()
        _pointer_call(self, tensors, traced)
        spent["launch " + self.kernel.fn.__name__] += time.perf_counter() - t

    function = attention._LocatAttentionPacked
    saved = function.forward, function.backward
    function.forward = staticmethod(timed("Function.forward body", saved[0]))
    function.backward = staticmethod(timed("Function.backward body", saved[1]))
    configs.Launch.__call__ = launch_timed
    step = layer(locat, launch_timed)
    for _ in range(20):
        step()
    spent.clear()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(CALLS):
        step()
    torch.cuda.synchronize()
    total = (time.perf_counter() - t) / CALLS * 1e6
    function.forward, function.backward = (staticmethod(f) for f in saved)
    configs.Launch.__call__ = _TENSOR_CALL
    pieces = {name: s / CALLS * 1e6 for name, s in sorted(spent.items())}
    print(f"instrumented layer forward+backward {total:.1f} us; inside it, us a call:")
    for name, us in pieces.items():
        print(f"  {name:<40} {us:8.1f}")

    # 3. torch.profiler's CPU view
    tables = {}
    for name in ("timm", "locat"):
        fn = steps[name]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                fn()
        tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
        print(f"--- torch.profiler, 20 forward+backward calls of {name}\n{tables[name]}")
    configs.Launch.__call__ = _TENSOR_CALL

    env = dict(environment("cuda"), command="PYTHONPATH=. python benchmarks/probes/v32_layer_launches.py " + path)
    with open(path, "w") as f:
        json.dump(dict(environment=env, calls=CALLS, rounds=ROUNDS, us_per_call=walls, instrumented_us=total,
                       inside_us=pieces, profiler_tables=tables), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
