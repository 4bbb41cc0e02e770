"""v41 probe (benchmarks/NOTES.md, v41; results/probe_v41_sass_identity.log): whether this tree's kernels compile to
the baseline tree's machine code at head dims that are a power of two, which v41's head-dim tail (``D_TAIL = 0``)
should leave alone. Every launch of a LocAt layer's forward and backward (``locat_bench.resources``' sequence, the
dq kernel with and without the layers' chain) and of the public op's forward (finding its radius), bf16, compiled
for sm_90 on the CPU for both trees; per launch: the SASS hash (``resources.sass_hash``), the hash with register
numbers left out (a renaming), and, where those differ, whether every loop body holds the same instructions
(``resources.sass_loops``: count and opcodes). No GPU needed; minutes a shape.
``python -m locat_bench.baseline make a1c2425 --dest .baseline_v41``, then
``PYTHONPATH=.:.baseline_v41 python benchmarks/probes/v41_sass_identity.py [B,H,gh,gw,P,D ...]``."""
import importlib
import re
import sys

import torch

from locat_bench import resources

SHAPES = ["256,3,14,14,1,64", "128,12,14,14,1,64", "32,12,24,24,1,64", "16,12,28,28,1,64", "16,12,32,32,1,64",
          "8,12,37,37,5,64", "8,8,40,40,1,128", "4,8,56,56,1,128"]  # the models' widths, the op table's, class 128


def sass_of_launches(package: str, shape: tuple, rate: int) -> list[tuple[str, str]]:
    """(kernel name, SASS) of each launch of the layer's and the op's sequence in ``package``'s kernels."""
    launches = resources.layer_launches(shape, rate, torch.bfloat16, package, variants=True)
    return [(kernel.fn.__name__, resources.cuobjdump(kernel.warmup(*args, grid=grid, **meta).asm["cubin"], "-sass"))
            for kernel, grid, args, meta in launches]


def main(shapes: list[str]) -> None:
    resources.use_target(90)
    counts = dict(same=0, renamed=0, loops_same=0, loops_differ=0)
    for spec in shapes:
        shape = tuple(int(x) for x in spec.split(","))
        for rate in (1, 2) if shape[2] % 2 == shape[3] % 2 == 0 else (1,):
            pairs = zip(sass_of_launches("locat_kernels", shape, rate), sass_of_launches("locat_kernels_base", shape,
                                                                                         rate))
            for i, ((name, after), (_, before)) in enumerate(pairs):
                if resources.sass_hash(after) == resources.sass_hash(before):
                    verdict = "same"
                else:
                    after, before = (re.sub(r"\bU?R\d+\b", "R", s) for s in (after, before))
                    if resources.sass_hash(after) == resources.sass_hash(before):
                        verdict = "renamed"
                    else:
                        same = resources.sass_loops(after, top=1000) == resources.sass_loops(before, top=1000)
                        verdict = "loops_same" if same else "loops_differ"
                counts[verdict] += 1
                print(f"{spec:>20} rate {rate} #{i} {name:<24} {verdict}", flush=True)
    print("launches:", ", ".join(f"{k} {v}" for k, v in counts.items()), "(renamed: the same instructions but register "
          "numbers; loops_same: every loop body the same instructions, the code outside them not); baseline",
          open(importlib.import_module("locat_kernels_base").__file__.rsplit("/", 2)[0] + "/REF").read().strip())


if __name__ == "__main__":
    main(sys.argv[1:] or SHAPES)
