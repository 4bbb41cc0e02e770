"""Block sizes, warps and pipeline stages of the Gaussian attention kernels: the one place they live.

``launch_config(kernel, head_dim, n, dtype)`` picks one config per launch from a small table keyed
on the kernel, head_dim, an N bucket and the dtype (measured on an H100: benchmarks/NOTES.md).
There is no autotuning at run time: it would compile every candidate for every variant.
Under the Triton interpreter (``TRITON_INTERPRET=1``, the CPU tests) the config is a single small one.
"""
from __future__ import annotations

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

KERNELS = ("forward", "backward_dq", "backward_dkdv")

# kernel -> (BLOCK_M, BLOCK_N, num_warps, num_stages) for 16-bit inputs and head_dim <= 64.
# BLOCK_M tiles queries, BLOCK_N keys.
# The winners of benchmarks/tune.py on an H100, bf16, D = 64 (benchmarks/results/tune_H100.json;
# forward and dq with grid tiles: tune_grid_H100.json).
_HALF = {
    "forward": (64, 64, 4, 3),
    "backward_dq": (64, 64, 4, 3),
    "backward_dkdv": (32, 128, 4, 2),
}
_HALF_SMALL_N = {**_HALF, "forward": (128, 64, 4, 3), "backward_dq": (64, 32, 4, 3)}  # N <= 256
_HALF_D128 = {  # not tuned yet: 8 warps keep the (BLOCK, 128) accumulators out of local memory
    "forward": (128, 64, 8, 3),
    "backward_dq": (64, 64, 8, 2),
    "backward_dkdv": (64, 64, 8, 2),
}
_FP32 = {k: (32, 32, 4, 2) for k in KERNELS}  # exact (ieee) fp32 products: small tiles, many registers
_INTERPRETER = (16, 16, 1, 1)

# kernel -> (BLOCK_M, BLOCK_N, num_warps, num_stages), taking precedence: for benchmarks/tune.py.
OVERRIDES: dict[str, tuple[int, int, int, int]] = {}


def launch_config(kernel: str, head_dim: int, n: int, dtype: torch.dtype) -> dict:
    """Keyword arguments for one kernel launch: BLOCK_M, BLOCK_N, num_warps, num_stages."""
    if kernel in OVERRIDES:
        m, b, w, s = OVERRIDES[kernel]
    elif INTERPRET:
        m, b, w, s = _INTERPRETER
    elif dtype == torch.float32:
        m, b, w, s = _FP32[kernel]
    elif head_dim > 64:
        m, b, w, s = _HALF_D128[kernel]
    elif n <= 256:
        m, b, w, s = _HALF_SMALL_N[kernel]
    else:
        m, b, w, s = _HALF[kernel]
    return dict(BLOCK_M=m, BLOCK_N=b, num_warps=w, num_stages=s)


# Grid-shaped key tiles (forward and dq): a tile holds ROWS grid rows of COLS = next_pow2(gw) slots,
# so the Gaussian splits into a per-query row factor per tile and a column table computed once.
# Used while a tile holds at most MAX_GRID_ROWS grid rows (each costs a select per logit); off: tune A/B.
GRID_TILES = True
MAX_GRID_ROWS = 4


def grid_rows(gw: int, block_n: int) -> int:
    """Grid rows per key tile of ``block_n`` slots for grid width ``gw``; 0: plain token tiles."""
    cols = 1 << (gw - 1).bit_length()
    rows = block_n // cols
    return rows if GRID_TILES and 1 <= rows <= MAX_GRID_ROWS else 0


def even_n(n: int, config: dict) -> bool:
    """Both tile sizes divide N: the kernels then skip every bounds mask."""
    return n % config["BLOCK_M"] == 0 and n % config["BLOCK_N"] == 0
