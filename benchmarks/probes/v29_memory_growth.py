"""v29 probe (benchmarks/NOTES.md, v29; results/memory_v29_tiny_H200.json): the memory allocated after each of 20
eager LocAtViT-Tiny training steps (batch 256, fused AdamW, bf16 autocast) on a baseline tree's model ("before")
and on this tree's ("after"), in that order in one process. v22-v28's dk/dv launch key kept each call's gradients
alive in DirectLaunch's cache, which grows by a qkv gradient per layer call until it holds 512 entries; the
baseline's cache is its own module's, so its leak stays allocated while "after" runs (after's flat line starts there).
``python -m locat_bench.baseline make 15e69d9 --dest .baseline_v28``, then on a GPU
``PYTHONPATH=.:.baseline_v28 python benchmarks/probes/v29_memory_growth.py OUT.json``."""
import json
import sys

import torch
import triton

import locat_vit  # noqa: F401  (registers the models)
from locat_bench import bench_model as bm
from locat_bench.baseline import before_model

case = bm.ModelCase.parse("tiny:224:256")
out = {}
for name in ("before", "after"):
    model = before_model(case) if name == "before" else bm.build(case, "locat_triton", "cuda")
    step = bm.train_step(case, "locat_triton", "eager", model=model)
    mem = []
    for i in range(20):
        step()
        torch.cuda.synchronize()
        mem.append(torch.cuda.memory_allocated() / 2**30)
    out[name] = [round(m, 3) for m in mem]
    print(name, "GiB allocated after steps 1, 5, 10, 20:", out[name][0], out[name][4], out[name][9], out[name][19])
    del model, step
    torch.cuda.empty_cache()
json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               case="tiny:224:256 eager, fused AdamW, bf16 autocast", command=" ".join(["python", *sys.argv]),
               allocated_gib_after_each_step=out), open(sys.argv[1], "w"), indent=1)
