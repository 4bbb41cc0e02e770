"""v26 probe: test_cuda_large_logits_low_precision's errors (fp16 / bf16) with the dk/dv kernel's factored
Gaussian on and off, on the test's own inputs (its seed) and 4 other seeds. Each error comes with its
bound (2x eager PyTorch's in that dtype). CUDA, from the repository root:

    PYTHONPATH=. python benchmarks/probes/v26_fp16_large_logits.py OUT.json
"""
import json
import sys
import zlib

import torch

sys.path.insert(0, "tests")
from helpers import make_inputs, reference_errors
from locat_kernels.fused import configs

rows = []
for dtype in (torch.float16, torch.bfloat16):
    node = f"tests/test_extremes.py::test_cuda_large_logits_low_precision[{dtype}]"
    for seed in (zlib.crc32(node.encode()), 1, 2, 3, 4):
        for factored in ("auto", False):
            torch.manual_seed(seed)
            q, k, v, var, alpha = make_inputs(2, 4, (14, 14), 1, 64, device="cuda", dtype=dtype, alpha_max=50.0)
            q = (q.detach() * 8).requires_grad_()
            do = torch.randn_like(q)
            with configs.switched({"FACTORED_DKDV": factored}):
                errs = reference_errors(None, [q, k, v, var, alpha], do, grid_size=(14, 14), num_prefix_tokens=1)
            row = dict(dtype=str(dtype), seed=seed, factored=factored,
                       errors={n: [round(e, 6), round(b, 6)] for n, e, b in errs})
            rows.append(row)
            print(json.dumps(row), flush=True)
json.dump(rows, open(sys.argv[1], "w"), indent=1)
