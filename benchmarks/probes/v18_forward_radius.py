"""v18 probe (benchmarks/NOTES.md, v18; results/probe_v18_forward_radius_H200.json): the forward kernel's
time with its skip radius found (the public op) or given (the LocAt layers), by do_bench and by the
profiler, alone and inside forward+backward. ``PYTHONPATH=. python benchmarks/probes/v18_forward_radius.py
OUT.json`` (CUDA)."""
import json
import sys
import torch
from triton.testing import do_bench
from locat_kernels import fused, gaussian_clamp, gaussian_eps, gaussian_attention
from locat_kernels.fused import configs
from locat_bench.bench_attention import Shape, make_inputs
from torch.profiler import profile, ProfilerActivity

out = {}
for spec in ["32,12,24,24,1,64", "128,12,14,14,1,64", "16,12,32,32,1,64"]:
    s = Shape.parse(spec)
    q, k, v, var, alpha = (t.detach() for t in make_inputs(s, "broad", torch.bfloat16, "cuda"))
    common = (s.grid[1], s.P, gaussian_eps(s.grid), gaussian_clamp(s.grid), 1, s.D ** -0.5)
    o, lse, radius = fused.attention_forward(q, k, v, var, alpha, None, *common)
    do = torch.randn_like(q)
    r = dict(meta=str(configs.launch_meta("forward", q, s.grid[1], s.P, common[3], 1)),
             radius=radius.float().mean().item())
    r["fwd_find_radius_ms"] = do_bench(lambda: fused.attention_forward(q, k, v, var, alpha, None, *common))
    r["fwd_given_radius_ms"] = do_bench(lambda: fused.attention_forward(q, k, v, var, alpha, radius, *common))
    r["op_nograd_ms"] = do_bench(lambda: gaussian_attention(q, k, v, var, alpha, s.grid, num_prefix_tokens=s.P, backend="triton"))
    def fb():
        o, lse, _ = fused.attention_forward(q, k, v, var, alpha, radius, *common)
        fused.attention_backward(do, q, k, v, var, alpha, o, lse, radius, *common)
    for name, fn, n in (("alone_find", lambda: fused.attention_forward(q, k, v, var, alpha, None, *common), 20),
                        ("alone_given", lambda: fused.attention_forward(q, k, v, var, alpha, radius, *common), 20),
                        ("in_fwd_bwd", fb, 20)):
        fn(); torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                fn()
            torch.cuda.synchronize()
        ev = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA and "_forward_kernel" in e.name]
        r[f"prof_{name}_fwd_ms"] = sum(e.device_time_total for e in ev) / len(ev) / 1e3
    print(spec, json.dumps(r), flush=True)
    out[spec] = r
json.dump(dict(gpu=torch.cuda.get_device_name(), rows=out), open(sys.argv[1], "w"), indent=1)
