"""v30 probe (benchmarks/NOTES.md, v30): host microseconds of one call of ``triton.cdiv`` (a constexpr function in
recent Triton) against ``configs.cdiv`` (plain integer arithmetic), as the launch sequences call them to size a
grid. ``python benchmarks/probes/v30_cdiv_host_call.py`` from the repository's root."""
import sys
import time

import triton

sys.path.insert(0, ".")
from locat_kernels.fused import configs  # noqa: E402


def host_us(f, n=100000):
    """Median of 7 rounds of n calls, microseconds a call."""
    for _ in range(1000):
        f()
    rounds = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return sorted(rounds)[3]


print(f"triton {triton.__version__}: triton.cdiv is {type(triton.cdiv).__name__}; host call: "
      f"triton.cdiv {host_us(lambda: triton.cdiv(197, 64)):.2f} us, "
      f"configs.cdiv {host_us(lambda: configs.cdiv(197, 64)):.3f} us")
