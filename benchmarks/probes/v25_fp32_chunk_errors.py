"""fp32 on CUDA: the LocAt op's errors against float64 at 20 x 37 (5 prefix), token tiles and column chunks
(COLUMN_CHUNKS False / True); results/fp32_v25_chunks_H200.log. Run from the repository root: python benchmarks/probes/v25_fp32_chunk_errors.py"""
import sys, torch
sys.path.insert(0, "tests")
from helpers import reference_errors, make_inputs, make_layers
from locat_kernels.fused import configs
for seed in (0, 1, 2):
    torch.manual_seed(seed)
    grid, P, D = (20, 37), 5, 64
    q, k, v, _, _ = make_inputs(1, 2, grid, P, D, device="cuda")
    inputs = [q, k, v, *make_layers(D, device="cuda")]
    do = torch.randn_like(q)
    for chunks in (False, True):
        with configs.switched({"COLUMN_CHUNKS": chunks}):
            errs = reference_errors(None, inputs, do, locat=True, grid_size=grid, num_prefix_tokens=P, rate=1)
        print(seed, "chunks" if chunks else "tokens", " ".join(f"{n} {e:.2e}" for n, e, b in errs), flush=True)
