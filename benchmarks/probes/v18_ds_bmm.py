"""v18 probe (benchmarks/NOTES.md, v18; results/probe_v18_ds_bmm_H200.log): what a dq pass from a stored
dS (B*H, N, N) would cost at model shapes: cuBLAS's bmm of dS (or dS^T) with K, and one write of dS.
``PYTHONPATH=. python benchmarks/probes/v18_ds_bmm.py OUT.json`` (CUDA)."""
import json
import sys
import torch
from triton.testing import do_bench
rows = []
for B, H, N in [(32, 12, 577), (128, 12, 197), (16, 12, 1025), (256, 3, 197)]:
    ds = torch.randn(B * H, N, N, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B * H, N, 64, device="cuda", dtype=torch.bfloat16)
    w = torch.empty_like(ds)
    rows.append(dict(B=B, H=H, N=N, ds_mb=ds.numel() * 2 / 1e6,
                     bmm_dsT_k_ms=do_bench(lambda: torch.bmm(ds.transpose(1, 2), k), warmup=25, rep=200),
                     bmm_ds_k_ms=do_bench(lambda: torch.bmm(ds, k), warmup=25, rep=200),
                     write_ms=do_bench(lambda: w.fill_(1.0), warmup=25, rep=200)))
    print(json.dumps(rows[-1]), flush=True)
    del ds, k, w
json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), open(sys.argv[1], "w"), indent=1)
