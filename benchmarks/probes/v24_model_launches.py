"""v24 probe (benchmarks/NOTES.md, v24; results/probe_v24_model_launches.log): whether the models that the
README's model table times (ViT-T / ViT-B at 224, ViT-B at 384 and 512, rates 1 and 2, bf16 and fp16) launch
the same kernels with the same configs and constexprs as v23's code: every launch parameter of the forward
(given and finding its radius), dq and dk/dv, this tree against a baseline tree. No GPU needed.
``python -m locat_bench.baseline make 868d0ca --dest .baseline_v23``, then
``PYTHONPATH=.:.baseline_v23 python benchmarks/probes/v24_model_launches.py``. v25 against v24 (.baseline_v24
from 9df6bb1): results/probe_v25_model_launches.log; constexprs the baseline lacks count as the same launch
where they hold their off value (v25's column chunks: TAIL_COLS = 0 compiles the second chunk away)."""
import torch

from locat_kernels.fused import configs as after
from locat_kernels_base.fused import configs as before

MODELS = {"tiny 224": (3, 14, 14, 1, 64), "base 224": (12, 14, 14, 1, 64), "base 384": (12, 24, 24, 1, 64),
          "base 512": (12, 32, 32, 1, 64)}  # (H, gh, gw, prefix, head_dim)
for tree in (after, before):
    tree.INTERPRET = False  # the table's configs (sm_90), as on the GPU
# constexprs newer than a baseline, at their off value (v38's third column chunk: MID_COLS = 0 compiles it away;
# and v41's head-dim tail: D_TAIL = 0 compiles it away)
OFF = {"TAIL_ROWS": 0, "TAIL_COLS": 0, "TAIL_FULL": False, "MID_ROWS": 0, "MID_COLS": 0, "MID_FULL": False, "D_TAIL": 0}
differences = traced_differences = 0


def uncapped(meta: dict) -> dict:
    """A launch as compiled code makes it: without a register cap."""
    return {k: v for k, v in meta.items() if k != "maxnreg"}


for name, (H, gh, gw, P, D) in MODELS.items():
    for rate in (1, 2) if gh % 2 == 0 else (1,):
        for dtype in (torch.bfloat16, torch.float16):
            q = torch.empty(1, H, P + gh * gw, D, dtype=dtype, device="meta")
            for kernel in ("forward", "forward_radius", "backward_dq", "backward_dkdv"):
                a, b = (tree.launch_meta(kernel, q, gw, P, -8.0, rate) for tree in (after, before))
                a = {k: v for k, v in a.items() if k in b or OFF.get(k, "absent") != v}
                same = a == b
                differences += not same
                traced_differences += uncapped(a) != uncapped(b)  # as compiled code launches
                print(f"{name:<9} rate {rate} {str(dtype):<15} {kernel:<15} {'same' if same else f'{b} -> {a}'}")
print(f"launches that differ: {differences} (under torch.compile, which leaves a register cap out: "
      f"{traced_differences}); baseline {open(before.__file__.rsplit('/', 3)[0] + '/REF').read().strip()}")
# v34 against v33 (.baseline_v33 from 70a571b): results/probe_v34_model_launches.log (the forward's register caps)
# v35 against v34 (.baseline_v34 from e04972a): results/probe_v35_model_launches.log (24-wide chunks, dq's cap)
