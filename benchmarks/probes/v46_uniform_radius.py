"""The forward kernel's loops, this tree against a baseline tree (``locat_bench.baseline make``), compiled for sm_90
without a GPU: per launch (the radius given, found by the public op, or made by the inference launch from its
layers) registers, spilled bytes and the instructions of each loop's body (``locat_bench.resources``).

    PYTHONPATH=.:.baseline python benchmarks/probes/v46_uniform_radius.py 128,12,14,14,1,64 32,12,24,24,1,64

v46's question: a radius made by a reduction (the inference launch's, the public op's) reaches the loops' bounds in
registers the compiler cannot prove equal across a warp, so their counters and addresses leave the uniform datapath;
``tiles.warp_uniform`` hands it over by a shuffle from lane 0 (benchmarks/NOTES.md, v46)."""
import sys

import torch

from locat_bench import resources

resources.use_target(90)
for spec in sys.argv[1:]:
    shape = tuple(int(x) for x in spec.split(","))
    for package in ("locat_kernels_base", "locat_kernels"):
        for kernel, grid, args, kw in resources.layer_launches(shape, 1, torch.bfloat16, package, variants=True):
            if kernel.fn.__name__ != "_forward_kernel":
                continue
            compiled = kernel.warmup(*args, grid=grid, **kw)
            usage = resources._resource_usage(compiled.asm["cubin"])
            loops = resources.sass_loops(resources.cuobjdump(compiled.asm["cubin"], "-sass"))
            launch = "inference" if kw.get("LAYERS") else "finds its radius" if kw.get("FIND_RADIUS") else "given"
            config = [kw[k] for k in ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "maxnreg") if k in kw]
            print(f"{spec:>18} {package:<19} {launch:<17} {str(config):<18} regs {usage['REG']:3d} "
                  f"spill {usage['STACK']:3d} B  loops {[loop['instructions'] for loop in loops]}", flush=True)
