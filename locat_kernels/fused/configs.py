"""Block sizes, warps and pipeline stages of the fused kernels, and each launch's constexpr flags:
the one place they live.

``launch_meta(kernel, q, gw, num_prefix_tokens, cmin, rate)`` returns every keyword of one launch
(block sizes, warps, stages, variant flags), cached per shape class so a call costs a dict lookup.
Configs come from a table keyed on the kernel, the padded head dim, an N bucket and the dtype,
measured on an H100 (head_dim 64) and an H200 (head_dim 128's backward) with ``python -m
locat_bench.tune`` (benchmarks/NOTES.md). Both are sm_90 and share the table; other GPUs (A100,
Blackwell) use it too, untested. There is no autotuning at run time: it
would compile every candidate for every variant. Under the Triton interpreter (``TRITON_INTERPRET=1``,
the CPU tests) the config is a single small one.
"""
from __future__ import annotations

import functools
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

KERNELS = ("forward", "backward_dq", "backward_dkdv")
MAX_HEAD_DIM = 256

# kernel -> (BLOCK_M, BLOCK_N, num_warps, num_stages); BLOCK_M tiles queries, BLOCK_N keys.
# 16-bit inputs, padded head_dim <= 64: the winners of locat_bench/tune.py on an H100, bf16, D = 64
# (results/tune_H100.json; forward and dq with grid tiles: tune_grid_H100.json).
_HALF = {
    "forward": (64, 64, 4, 3),
    "backward_dq": (64, 64, 4, 3),
    "backward_dkdv": (32, 128, 4, 3),  # 3 stages: backward 2-8% faster at 224-512 px (tune_dkdv_H100.json)
}
_HALF_SMALL_N = {**_HALF, "forward": (128, 64, 4, 3), "backward_dq": (64, 32, 4, 3)}  # N <= 256
_HALF_D128 = {  # padded head_dim 128 (72 to 128); backward tuned on an H200 (results/tune_d128_H200.json)
    "forward": (128, 64, 8, 3),
    "backward_dq": (64, 64, 4, 2),
    "backward_dkdv": (64, 32, 4, 3),
}
# The dk/dv kernel with its factored Gaussian (16-bit, gw <= MAX_FACTORED_COLS): its one-hot matrices
# take registers, so wider grids want 64-key tiles. H200, whole backward (results/tune_factored_H200.json):
# 0.53 ms at 224 px (per-logit: 0.54), 0.73 at 384 (0.78), 0.88 at 512 (1.02), D128 0.93 (1.11).
_HALF_DKDV_FACTORED = {64: (32, 128, 4, 3), 128: (32, 64, 4, 2)}  # padded head_dim <= 64 with gw <= 16; 128
_HALF_DKDV_FACTORED_WIDE = (64, 64, 4, 2)  # padded head_dim <= 64, 16 < gw <= 32
_HALF_D256 = {k: (64, 32, 8, 2) for k in KERNELS}  # padded head_dim 256 (136 to 256): correctness first
_FP32 = {k: (32, 32, 4, 2) for k in KERNELS}  # exact (ieee) fp32 products: small tiles, many registers
_FP32_WIDE = {k: (32, 32, 8, 1) for k in KERNELS}  # fp32, padded head_dim >= 128
_INTERPRETER = (16, 16, 1, 1)

# kernel -> (BLOCK_M, BLOCK_N, num_warps, num_stages), taking precedence: for locat_bench/tune.py.
OVERRIDES: dict[str, tuple[int, int, int, int]] = {}

# Grid-shaped key tiles (forward and dq): a tile holds ROWS grid rows of COLS slots each, COLS =
# next_pow2(gw) or gw (grid_layout; tiles.tile_keys), so the Gaussian splits into a per-query row factor
# per tile and a column table computed once. Used while a tile holds at most MAX_GRID_ROWS grid rows of
# next_pow2(gw) slots (each row costs a select per logit); off: tune A/B.
GRID_TILES = True
MAX_GRID_ROWS = 4


# The dk/dv kernel's factored Gaussian (backward.py): "auto" for 16-bit inputs with head_dim <= 128 where
# next_pow2(gw) <= MAX_FACTORED_COLS (at 64 columns it was no faster: 518 and 1024 px, tune_factored_H200.json);
# True also elsewhere, fp32 included (tests: the factors are rounded to fp16); False: off.
FACTORED_DKDV: bool | str = "auto"
MAX_FACTORED_COLS = 32


def padded_head_dim(head_dim: int) -> int:
    """The power of two (>= 16, tl.dot's smallest) the kernels load a head_dim as."""
    return max(16, 1 << (head_dim - 1).bit_length())


def launch_config(kernel: str, head_dim: int, n: int, dtype: torch.dtype, gw: int = 1, factored: bool = False) -> dict:
    """BLOCK_M, BLOCK_N, num_warps, num_stages of one launch (``factored``: the dk/dv kernel's
    factored Gaussian on a grid of width ``gw``)."""
    d = padded_head_dim(head_dim)
    if kernel in OVERRIDES:
        m, b, w, s = OVERRIDES[kernel]
    elif INTERPRET:
        m, b, w, s = _INTERPRETER
    elif factored and dtype != torch.float32 and d <= 128:
        m, b, w, s = _HALF_DKDV_FACTORED_WIDE if d <= 64 and gw > 16 else _HALF_DKDV_FACTORED[max(d, 64)]
    elif dtype == torch.float32:
        m, b, w, s = (_FP32 if d <= 64 else _FP32_WIDE)[kernel]
    elif d == 256:
        m, b, w, s = _HALF_D256[kernel]
    elif d == 128:
        m, b, w, s = _HALF_D128[kernel]
    elif n <= 256:
        m, b, w, s = _HALF_SMALL_N[kernel]
    else:
        m, b, w, s = _HALF[kernel]
    return dict(BLOCK_M=m, BLOCK_N=b, num_warps=w, num_stages=s)


def grid_layout(gw: int, block_n: int) -> tuple[int, int]:
    """(ROWS, COLS) of the grid key tiles of ``block_n`` slots for grid width ``gw``; (0, 1): token
    tiles. Grid tiles where ``block_n`` holds 1 to MAX_GRID_ROWS rows of next_pow2(gw) slots. COLS =
    gw (the rows packed, the tile's last slots padding) where that fits more rows (a width of 21: 3
    rows in 64 slots, not 2), or where a tile holds at most 2 rows and a quarter or more of its
    next_pow2(gw) slots would pad: H200, forward at 384 / 518 / 640 / 768 px 6 / 22 / 25 / 4% faster
    (benchmarks/NOTES.md, v8). Else COLS = next_pow2(gw): packed rows of 14 cost 3-4% at 224 px."""
    cols = 1 << (gw - 1).bit_length()
    rows = block_n // cols
    if not GRID_TILES or not 1 <= rows <= MAX_GRID_ROWS:
        return 0, 1
    packed = min(block_n // gw, MAX_GRID_ROWS)
    if packed > rows or (rows <= 2 and 4 * rows * gw <= 3 * block_n):
        return packed, gw
    return rows, cols


def launch_meta(kernel: str, q: torch.Tensor, gw: int, num_prefix_tokens: int, cmin: float, rate: int) -> dict:
    """Every keyword argument of one launch of ``kernel`` on q's shape: config and constexpr flags."""
    _, _, N, D = q.shape
    return _launch_meta(kernel, D, N, q.dtype, gw, num_prefix_tokens, cmin, rate, GRID_TILES, FACTORED_DKDV,
                        tuple(OVERRIDES.items()))


@functools.lru_cache(maxsize=1024)
def _launch_meta(kernel, D, N, dtype, gw, P, cmin, rate, grid_tiles, factored, overrides) -> dict:
    key_cols = max(16, 1 << (gw - 1).bit_length())  # the dk/dv kernel's factored Gaussian: its columns
    factored = kernel == "backward_dkdv" and (factored is True or (
        factored == "auto" and dtype != torch.float32 and key_cols <= MAX_FACTORED_COLS and D <= 128))
    cfg = launch_config(kernel, D, N, dtype, gw, factored)
    if (kernel == "backward_dkdv" and not factored and (N - P) % cfg["BLOCK_M"] and not overrides
            and cfg["num_stages"] == 3):
        # 3 stages pay where the patch tiles need no bounds mask (576, 1024 patches: backward 8-10%
        # faster) and cost where they do (1369 patches: 6% slower; results/tune_dkdv_H*.json).
        cfg["num_stages"] = 2
    gh = (N - P) // gw
    meta = dict(
        D=D, D_PAD=padded_head_dim(D), HAS_PREFIX=P > 0, RATE=rate,
        EVEN_N=N % cfg["BLOCK_M"] == 0 and N % cfg["BLOCK_N"] == 0,  # no bounds masks
        # The clamp of -1/2 d^2 at cmin only bites when the grid is larger than the build grid.
        CLAMP=0.5 * (max(gh, gw) - 1) ** 2 > -cmin,
        # fp32 inputs get exact products (no tf32); the flag is ignored for fp16/bf16 operands.
        DOT_PRECISION="ieee" if dtype == torch.float32 else "tf32",
        **cfg,
    )
    if kernel != "backward_dkdv":  # the kernels that loop over key tiles
        rows, cols = grid_layout(gw, cfg["BLOCK_N"])
        # ROWS = 0: token tiles. FULL_TILES: no padding slot and no partial last tile.
        meta.update(ROWS=rows, COLS=cols, FULL_TILES=bool(rows) and rows * gw == cfg["BLOCK_N"] and gh % rows == 0)
    else:  # the query loop runs over patch tiles aligned at token P
        # A key tile's patches span at most (BLOCK_N - 1) // gw + rate + 1 quantized rows (from its first).
        key_rows = max(16, 1 << ((cfg["BLOCK_N"] - 1) // gw + rate).bit_length())
        meta.update(EVEN_PATCHES=(N - P) % cfg["BLOCK_M"] == 0, FACTORED=factored, KEY_ROWS=key_rows,
                    KEY_COLS=key_cols)
    # BLOCK_P: the tile of the prefix tokens (a few: not a whole tile; tl.dot takes >= 16).
    loop_block = cfg["BLOCK_M" if kernel == "backward_dkdv" else "BLOCK_N"]
    meta.update(BLOCK_P=min(loop_block, max(16, 1 << (P - 1).bit_length())))
    return meta


def launcher(kernel, traced: bool):
    """``kernel`` itself, or with ``traced`` (inside a ``torch.library.triton_op``) wrapped by
    ``torch.library.wrap_triton`` so torch.compile sees the launch and emits it in its own code.
    Inductor may type a float argument as fp64 there: each kernel casts its float scalars to fp32.
    The interpreter cannot be traced: there a traced launch runs on real tensors and does nothing
    on fake ones (the op's fake implementation is the same function)."""
    if not traced:
        return kernel
    if not INTERPRET:
        return torch.library.wrap_triton(kernel)
    return _FakeSkippingLaunch(kernel)


class _FakeSkippingLaunch:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if not any(isinstance(a, torch._subclasses.FakeTensor) for a in args):
                self.kernel[grid](*args, **kwargs)
        return launch


# Tests set this: every output starts as NaN, so an element a kernel fails to write shows.
POISON_OUTPUTS = False


def empty(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output buffer on ``like``'s device (NaN-filled when POISON_OUTPUTS; integers: -1)."""
    out = torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    if not POISON_OUTPUTS:
        return out
    return out.fill_(float("nan") if out.is_floating_point() else -1)
