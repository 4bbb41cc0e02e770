"""v32 probe (benchmarks/NOTES.md, v32): a LocAt layer's errors against float64 on a 40 x 7 grid in fp16 and bf16,
with the key tiles of 8 grid rows of 8 slots (v32) and with token tiles (v31's layout there, ``MAX_CHUNK_ROWS`` 4),
over several seeds: each tensor's error over its bound (twice eager PyTorch's error in that dtype), so a layout
that loses precision shows as a ratio the other does not reach.

``PYTHONPATH=.:tests python benchmarks/probes/v32_narrow_grid_errors.py [B] [SEEDS]`` on a GPU (default 1 and 8)."""
import sys

import torch

from helpers import make_inputs, make_layers, reference_errors
from locat_kernels.fused import configs

B = int(sys.argv[1]) if len(sys.argv) > 1 else 1
SEEDS = range(int(sys.argv[2]) if len(sys.argv) > 2 else 8)
for dtype in (torch.float16, torch.bfloat16):
    for name, switches in (("8 rows of 8", {}), ("token tiles", {"MAX_CHUNK_ROWS": 4})):
        ratios = {}
        for seed in SEEDS:
            torch.manual_seed(seed)
            q, k, v, _, _ = make_inputs(B, 2, (40, 7), 1, 64, device="cuda", dtype=dtype)
            inputs = [q, k, v, *make_layers(64, device="cuda")]
            with configs.switched(switches):
                layout = configs.launch_meta("forward", q, 7, 1, -1e9, 1)
                errors = reference_errors(None, inputs, torch.randn_like(q), locat=True, grid_size=(40, 7),
                                          num_prefix_tokens=1)
            for tensor, err, bound in errors:
                ratios.setdefault(tensor, []).append(err / bound)
        print(f"{str(dtype):15} {name:12} (ROWS, COLS) = ({layout['ROWS']}, {layout['COLS']}): error / bound over "
              f"{len(SEEDS)} seeds, worst (median, seeds above 1): " + ", ".join(
                  f"{t} {max(r):.2f} ({sorted(r)[len(r) // 2]:.2f}, {sum(x > 1 for x in r)})" for t, r in ratios.items()),
              flush=True)
