"""v31 probe (benchmarks/NOTES.md, v31; results/host_path_cpu_v31.log): the Python of one eager
``locat_attention_qkvpacked`` call on a CPU, with the launches as a GPU makes them but the kernels not run.

Under the Triton interpreter (CPU tensors), each kernel is replaced by a stand-in whose first launch returns a
compiled kernel that does nothing, and the driver by one that names device 0: an eager call then takes the direct
path to the "compiled kernel's launcher" of a GPU (this tree's ``configs.Launch``; the baseline's
``configs.DirectLaunch``), so what is timed is that path's Python: checks, plans, allocations, the launch calls.
Microseconds per call (B = 1, 17 tokens, 3 heads of 64, fp32), median of 7 rounds: forward (recording the
gradient), forward+backward, inference (no_grad).

    PYTHONPATH=. python benchmarks/probes/v31_host_path_cpu.py             # this tree
    PYTHONPATH=.:.baseline_v30 python benchmarks/probes/v31_host_path_cpu.py --baseline   # the baseline's tree
"""
import inspect
import os
import sys
import time
import types

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

BASELINE = "--baseline" in sys.argv
if BASELINE:
    import locat_kernels_base as kernels
    from locat_kernels_base.fused import configs
else:
    import locat_kernels as kernels
    from locat_kernels.fused import configs


class _Compiled:
    function, packed_metadata = 0, None

    def run(self, *args):
        return None


class _Param:
    def __init__(self, p):
        self.name, self.is_constexpr, self.default = p.name, "constexpr" in str(p.annotation), p.default


class _Kernel:
    """A JITFunction's surface for the direct path: params, and kernel[grid](...) returning a compiled kernel."""

    def __init__(self, kernel):
        self.fn = kernel.fn
        self.params = [_Param(p) for p in inspect.signature(kernel.fn).parameters.values()]

    def __getitem__(self, grid):
        return lambda *args, **meta: _Compiled()


_stand_ins = {}


def stand_in(kernel):
    if kernel not in _stand_ins:
        _stand_ins[kernel] = _Kernel(kernel)
    return _stand_ins[kernel]


configs.driver = types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=lambda: 0,
                                                                    get_current_stream=lambda device: 0))
configs.knobs = types.SimpleNamespace(runtime=types.SimpleNamespace(launch_enter_hook=None, launch_exit_hook=None))
configs.DIRECT_LAUNCH = True
if BASELINE:  # its launcher hands each kernel's DirectLaunch out
    launches = {}

    def launcher(kernel, traced):
        if kernel not in launches:
            launches[kernel] = configs.DirectLaunch(stand_in(kernel))
        return launches[kernel]
    configs.launcher = launcher
else:  # every Launch made on the stand-in kernel
    make = configs.Launch.__init__
    configs.Launch.__init__ = lambda self, kernel, *args: make(self, stand_in(kernel), *args)

B, N, H, D = 1, 17, 3, 64
qkv = torch.randn(B, N, 3, H, D, requires_grad=True)
layers = [torch.randn(*shape, requires_grad=True) for shape in ((2, D), (2,), (1, D), (1,))]
do = torch.ones(B, H, N, D)


def forward():
    return kernels.locat_attention_qkvpacked(qkv, *layers, (4, 4), num_prefix_tokens=1, backend="triton")


def forward_backward():
    forward().backward(do)


def inference():
    with torch.no_grad():
        forward()


def median_us(fn, calls=2000, rounds=7):
    for _ in range(200):
        fn()
    runs = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        runs.append((time.perf_counter() - t) / calls * 1e6)
    return sorted(runs)[rounds // 2]


if __name__ == "__main__":
    tree = "baseline" if BASELINE else "this tree"
    print(f"{tree}: forward {median_us(forward):.1f} us, forward+backward {median_us(forward_backward):.1f} us, "
          f"inference {median_us(inference):.1f} us")
