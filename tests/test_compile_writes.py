"""torch.compile's view of each kernel: which tensor arguments it writes.

Inside the triton ops, inductor reads each kernel's Triton IR to learn what it writes; a tensor it
wrongly counts as written gets copied before every launch (q, k, v: a copy per layer), and a leaf
input that requires grad makes compilation fail. The analysis follows every value a store address
is made from, so this pins it to each kernel's contract. It runs the real (not interpreted)
frontend against an sm_90 target, which needs no GPU, in a subprocess without TRITON_INTERPRET.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import json, torch, triton
from triton.backends.compiler import GPUTarget
try:
    from torch._higher_order_ops.triton_kernel_wrap import identify_accessed_tensors
except ImportError:
    print(json.dumps(None)); raise SystemExit
if not torch.cuda.is_available():
    class _Target:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
    triton.runtime.driver.set_active(_Target())
import locat_kernels.attention as A
from locat_kernels.fused import configs

recording = configs.recorded_launches()  # each launch recorded instead of run
launches = recording.__enter__()

q, k, v = (torch.randn(2, 3, 21, 64) for _ in range(3))
layers = [torch.randn(2, 64), torch.randn(2), torch.randn(1, 64), torch.randn(1)]
var, alpha = torch.rand(2, 3, 16, 2) + 0.5, torch.rand(2, 3, 16)
consts = (0.1, -2.0, 1.0, 1.0)
for factored in (False, True):  # the dk/dv kernel's per-logit and factored Gaussian
    configs.FACTORED_DKDV = factored
    out = A._gaussian_forward(q, k, v, var, alpha, 4, 5, 0.1, -2.0, 1, 0.125)
    A._gaussian_backward(torch.randn_like(q), q, k, v, var, alpha, *out, 4, 5, 0.1, -2.0, 1, 0.125)
for rate in (1, 2):
    out = A._locat_forward(q, k, v, *layers, 4, 4, 5, *consts, rate, 0.125)
    A._locat_backward(torch.randn_like(q), q, k, v, *layers, *out, 4, 4, 5, *consts, rate, 0.125)
A.fused.layer_forward(q, k, v, *layers, 4, 5, *consts, 0.125)  # inference: the one launch
wq, wk, wv = (torch.randn(4, 3, 16, 32) for _ in range(3))  # the window kernel: 4 x 4 windows, a bias and a mask
wvar, walpha, wbias, wmask = torch.rand(4, 3, 16, 2) + 0.5, torch.rand(4, 3, 16), torch.randn(3, 16, 16), torch.zeros(2, 16, 16)
out = A.fused.window_forward(wq, wk, wv, wvar, walpha, wbias, wmask, 4, 0.1, -2.0, 0.125)
A.fused.window_backward(torch.randn_like(wq), wq, wk, wv, wvar, walpha, wbias, wmask, *out, 4, 0.1, -2.0, 0.125)
rows = []
for kernel, _, args, kw in launches:
    kwargs = dict(zip(kernel.arg_names, args), **{n: x for n, x in kw.items() if n not in ("num_warps", "num_stages")})
    written = identify_accessed_tensors(kernel, kwargs, {}).read_writes.writes
    flag = next((f for f in ("FIND_RADIUS", "DZ_GIVEN", "LAYERS") if kw.get(f)), None)  # one that changes the outputs
    rows.append([kernel.fn.__name__, flag,
                 sorted(d.name for d in written if isinstance(kwargs.get(d.name), torch.Tensor))])
print(json.dumps(rows))
'''

# Each kernel's outputs, from its contract (docstrings in locat_kernels/fused).
WRITES = {
    "_gaug_forward_kernel": ["alpha", "radius", "var"],
    "_forward_kernel": ["lse", "o"],
    "_backward_dq_kernel": ["dalpha", "delta", "dq", "dvar"],
    "_factor_tables_kernel": ["f_c", "f_r"],
    "_backward_dkdv_kernel": ["dk", "dv"],
    "_gaug_backward_kernel": ["dq", "partial"],  # dq: the gradient through var and alpha, added in place
    "_window_forward_kernel": ["lse", "o"],
    "_window_backward_kernel": ["dalpha", "dk", "dq", "dv", "dvar", "partial"],
}
# ... and under a flag: the public op's forward finds its radius; the inference forward stores out only; the
# rate-1 gaug backward after the dq kernel's chain only reduces the layer gradients (dq has its part already).
FLAGGED_WRITES = {
    ("_forward_kernel", "FIND_RADIUS"): ["lse", "o", "radius"],
    ("_forward_kernel", "LAYERS"): ["o"],
    ("_gaug_backward_kernel", "DZ_GIVEN"): ["partial"],
}


def test_compile_sees_exactly_each_kernels_outputs():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    if rows is None:
        pytest.skip("this torch has no identify_accessed_tensors (inductor's write analysis)")
    # the public op twice, the layers at rates 1 and 2, the window kernel, the inference forward; the factor tables
    # where factored (3 times)
    assert len(rows) == 4 * 5 - 4 + 2 + 1 + 3
    for name, flag, written in rows:
        want = FLAGGED_WRITES[name, flag] if flag else WRITES[name]
        assert written == sorted(want), (name, flag, written)
