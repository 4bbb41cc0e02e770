"""Block sizes, warps and pipeline stages of the fused kernels, and each launch's constexpr flags:
the one place they live.

``launch_meta(kernel, q, gw, num_prefix_tokens, cmin, rate)`` returns every keyword of one launch
(block sizes, warps, stages, variant flags), cached per shape class so a call costs a dict lookup.
Block configs come from the committed table ``configs.json``: per GPU architecture (``sm_90``: H100
and H200), keyed by kernel, head-dim class, dtype class and grid class (``config_key``; a grid class
can be one grid width), each entry saying where it was measured. ``python -m locat_bench.tune
--table`` measures an architecture's entries on the GPU at hand and ``--write`` puts them into the
table. An architecture without entries (A100, Blackwell) uses sm_90's, with a one-time warning that
they are untested there. There is no autotuning at run time: it would compile every candidate for
every variant. Under the Triton interpreter (``TRITON_INTERPRET=1``, the CPU tests) the config is a
single small one.

``Launch``: one launch with all but its tensors fixed, which eager calls on a GPU send to the compiled
kernel's launcher directly; ``Plans``: the eager ops' Launches per call signature, made by its first call.
"""
from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import warnings
from pathlib import Path

import torch
from torch.fx.experimental.symbolic_shapes import guard_int
from triton.runtime import driver

try:
    from triton import knobs
except ImportError:  # an older Triton: no direct launches (Launch)
    knobs = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# "forward_radius": the forward that finds its skip radius itself (the public op; the LocAt layers give
# it from the Gaussian augmentation's kernel): the same kernel, whose best config can differ (at grid
# width 24, 8 warps are 20% slower with the radius given and 7% faster finding it; benchmarks/NOTES.md,
# v18). Without entries of its own it takes the forward's, and the forward's overrides.
KERNELS = ("forward", "forward_radius", "backward_dq", "backward_dkdv")
MAX_HEAD_DIM = 256
MAX_TOKENS = 1 << 20  # tiles.positions divides patch indices by the grid width exactly below 2^20
TABLE_PATH = Path(__file__).with_name("configs.json")
DEFAULT_ARCH = "sm_90"  # the architecture whose entries stand in for one the table lacks
# Grids over this wide take a "wide" entry where the table has one (``table_key``): at head-dim class 128 the
# forward's "any" config has 32-key tiles, which hold no grid row past 32 columns (the Gaussian per logit instead).
WIDE_COLS = 32


def load_table(path: Path = TABLE_PATH) -> dict[str, dict[tuple, tuple[int, ...]]]:
    """arch -> {(kernel, head_dim class, dtype class, grid class): (BLOCK_M, BLOCK_N, num_warps, num_stages)},
    with a fifth element where the entry caps the registers a thread (``launch_config``)."""
    archs = json.loads(Path(path).read_text())["archs"]
    return {arch: {(e["kernel"], e["head_dim"], e["dtype"], e["grid"]): tuple(e["config"]) for e in spec["entries"]}
            for arch, spec in archs.items()}


TABLE = load_table()
_INTERPRETER = (16, 16, 1, 1)

# kernel -> (BLOCK_M, BLOCK_N, num_warps, num_stages[, maxnreg]), taking precedence: for locat_bench/tune.py
# ("forward" serves "forward_radius" too, unless it has its own).
OVERRIDES: dict[str, tuple[int, ...]] = {}

# Grid-shaped key tiles (forward and dq): a tile holds ROWS grid rows of COLS slots each, COLS =
# next_pow2(gw) or gw (grid_layout; tiles.tile_keys), so the Gaussian splits into a per-query row factor
# per tile and a column table computed once. Used while a tile holds at most MAX_GRID_ROWS grid rows of
# next_pow2(gw) slots (each row costs a select per logit), or MAX_CHUNK_ROWS rows of 8 (each register's row
# known at compile time: grid widths 5-8); off: tune A/B.
GRID_TILES = True
MAX_GRID_ROWS = 4
# Column chunks (the forward and dq; column_chunks): a grid width that is not a power of two split into two or three
# chunks of power-of-two widths, swept one after the other, each with its own column table. "auto": 16-bit inputs
# (fp32 with exact products measured 15% slower at 518 px, on 32-key tiles that the two-row rule of
# column_chunks excludes anyway; under tf32x3 its 64-key tiles would take chunks, not measured); True: fp32
# too (the interpreter's tests); False: off (tune A/B).
COLUMN_CHUNKS: bool | str = "auto"
MAX_CHUNK_ROWS = 8
# The narrowest first chunk: 16 (24 wide as 16 + 8, column_chunks) or 32 (widths 33-48 only). 384 px on the 4-warp
# configs, H200, bf16: the layers' forward 0.1670 -> 0.1580 ms, the whole backward 0.4966 -> 0.4799 (NOTES.md, v35).
CHUNK_COLS = 16
# Three column chunks where they take fewer slots than two (column_chunks: 56 wide as 32 + 16 + 8); off: tune A/B.
MID_CHUNKS = True


# The dk/dv kernel's factored Gaussian (backward.py): "auto" for 16-bit inputs with head_dim <= 128 where
# next_pow2(gw) <= MAX_FACTORED_COLS (with the factor tables, 64 columns run the whole backward 7-25% faster
# at 518-1024 px, 128 columns only 2% at 1536: tune_v24_dkdv_factored*_H200.json); True also elsewhere, fp32
# included (tests: the factors are rounded to fp16); False: off. Its factor tables (backward.py) take
# gh + next_pow2(gw) fp16 values per patch query: only up to MAX_FACTORED_ROWS grid rows (at head_dim 64, at
# most 3x the bytes of q), else the Gaussian per logit.
FACTORED_DKDV: bool | str = "auto"
MAX_FACTORED_COLS = 64
MAX_FACTORED_ROWS = 128
# The factors' fp16 rounding remainders as second tables (FACTOR_LO): "fp16" for fp16 inputs, whose eager error
# is 8x finer than bf16's (at alpha 50 the single tables put fp16's dv at 4x eager's; v26); True: every dtype
# (tests); False: none. With them "auto" factors only up to MAX_FACTORED_LO_COLS columns: H200, fp16, the
# whole backward with remainders against the Gaussian per logit, 384 px (32 columns) 0.526 against 0.713 ms,
# 518 px (64 columns) 1.014 against 0.866 (benchmarks/NOTES.md, v27).
FACTOR_LO: bool | str = "fp16"
MAX_FACTORED_LO_COLS = 32


# The attention kernels' head dim as a first tile and a tail where next_pow2 would pad more (head_dim_tiles: 80 as
# 64 + 16 columns, not 128: 37.5% fewer products); off: tune A/B.
HEAD_DIM_TAIL = True

# How the kernels multiply fp32 inputs (set_fp32_precision).
FP32_PRECISIONS = ("ieee", "tf32x3")
FP32_PRECISION = "ieee"

# The switches above that shape a launch: launch_meta's cache is keyed on their values, so an A/B of one
# (``switched``, a test's monkeypatch) never reads back a launch cached under its other value.
_LAUNCH_SWITCHES = operator.itemgetter("GRID_TILES", "MAX_GRID_ROWS", "COLUMN_CHUNKS", "MAX_CHUNK_ROWS",
                                       "CHUNK_COLS", "MID_CHUNKS", "FACTORED_DKDV", "MAX_FACTORED_COLS",
                                       "MAX_FACTORED_ROWS", "FACTOR_LO", "MAX_FACTORED_LO_COLS", "HEAD_DIM_TAIL",
                                       "FP32_PRECISION")


def set_fp32_precision(precision: str) -> None:
    """How the kernels multiply fp32 q, k, v: "ieee" (the default: exact products, on the CUDA cores)
    or "tf32x3" (each product as three tf32 products on the tensor cores, the method of SDPA's own
    fp32 kernels; within the same 1e-5 of float64 in the tests). On an H200 at head_dim 64, over SDPA
    in fp32: ViT-T 224 forward 2.72x -> 0.98x, forward+backward 3.84x -> 1.45x; at head_dim 128 the
    backward is slower than ieee's (its dk/dv kernel spills under tf32x3; benchmarks/NOTES.md, v17).
    Inputs in fp16 and bf16 are not affected. Set it before ``torch.compile`` traces a model: the
    compiled code keeps the launches it traced."""
    global FP32_PRECISION
    if precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32 precision must be one of {FP32_PRECISIONS}, got {precision!r}")
    FP32_PRECISION = precision


def dot_precision(dtype: torch.dtype, fp32_precision: str | None = None) -> str:
    """``tl.dot``'s input_precision for inputs of ``dtype`` (ignored by Triton for fp16 / bf16)."""
    return (fp32_precision or FP32_PRECISION) if dtype == torch.float32 else "tf32"


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of host integers (SymInts too). Not ``triton.cdiv``: a constexpr function in Triton 3.6 and
    3.8, whose host call took 2.2 us on the H200 machine against 0.15 (benchmarks/NOTES.md, v30)."""
    return -(-a // b)


def dot_width(n: int) -> int:
    """The smallest power of two that holds ``n`` and is at least 16 (``tl.dot``'s smallest side)."""
    return max(16, 1 << (n - 1).bit_length())


def padded_head_dim(head_dim: int) -> int:
    """The power of two (>= 16, tl.dot's smallest) the kernels load a head_dim as."""
    return dot_width(head_dim)


def align8(*tensors: torch.Tensor) -> bool:
    """Whether the kernels' ALIGN8 holds for ``tensors`` (q, k, v, out, ...): every stride of a dim longer than one
    but the last is a multiple of 8 and some is not of 16. Triton specializes integer arguments on multiples of 16
    only, so rows of views of one qkv tensor at head dims 24, 40, 56, 72, 88 (a head stride of D) read as unaligned:
    every load element by element through registers. With ALIGN8 the kernels round those strides to multiples of 8
    (``tiles.head_rows``), which they are: 16-byte vector loads, asynchronous in the pipelined loops."""
    strides = [s for t in tensors for s, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1]
    return all(s % 8 == 0 for s in strides) and any(s % 16 for s in strides)


def head_dim_tiles(head_dim: int) -> tuple[int, int]:
    """(D_PAD, D_TAIL): the head dim as one tile of next_pow2 columns, (D_PAD, 0), or as two, a first tile of
    prev_pow2 columns and a tail of at least 16 (tl.dot's smallest side), where the two take fewer columns:
    80 as 64 + 16 (not 128), 96 as 64 + 32, 40 as 32 + 16, 192 as 128 + 64; 112 stays 128. With HEAD_DIM_TAIL."""
    d = padded_head_dim(head_dim)
    first = d // 2
    tail = dot_width(head_dim - first) if head_dim > first else 0
    if HEAD_DIM_TAIL and first >= 16 and 0 < tail and first + tail < d:
        return first, tail
    return d, 0


def config_key(kernel: str, head_dim: int, n: int, dtype: torch.dtype, gw: int = 1,
               factored: bool = False, fp32_precision: str | None = None) -> tuple[str, int, str, str]:
    """The table key of one launch: (kernel, head-dim class, dtype class, grid class). Head-dim class:
    the columns the kernels load (``head_dim_tiles``: 80 for head dims 72 and 80, as 64 + 16), at least 64; one
    without entries of a kernel takes the next power of two's (``table_key``). Dtype class: "16bit" (fp16, bf16),
    "fp32", "tf32x3" (fp32 under that precision; set_fp32_precision). Grid class: "factored" / "factored_wide"
    (the dk/dv kernel's factored Gaussian, 16-bit: grids up to 16 wide or any at head-dim classes over 64 / 17 to
    64 wide), "small" (N <= 256), else "gw<width>" (entries measured at one grid width, where it needs other
    tiles than the rest: the forward at 384 / 518 / 768 px); a class the table lacks falls back to "wide" for
    grids over WIDE_COLS wide (``table_key``), then to "any"."""
    d = max(64, sum(head_dim_tiles(head_dim)))
    half = dtype != torch.float32
    if factored and half and d <= 128:
        grid = "factored_wide" if d == 64 and gw > 16 else "factored"
    elif n <= 256:
        grid = "small"
    else:
        grid = f"gw{gw}"
    precision = "16bit" if half else "fp32" if dot_precision(dtype, fp32_precision) == "ieee" else "tf32x3"
    return kernel, d, precision, grid


def table_key(table: dict, key: tuple) -> tuple:
    """The entry of ``table`` that serves ``key``: the key itself, else its grid class "wide" where the grid is
    over WIDE_COLS wide, else "any"; for "tf32x3" without entries of its own, fp32's; for "forward_radius", the
    forward's; for a head-dim class between powers of two (80) without any of those, the next power of two's."""
    kernel, d, precision, grid = key
    wide = grid.startswith("gw") and int(grid[2:]) > WIDE_COLS
    for c in dict.fromkeys((d, padded_head_dim(d))):
        for p in (precision, "fp32") if precision == "tf32x3" else (precision,):
            for g in (grid, "wide", "any") if wide else (grid, "any"):
                for k in _kernels(kernel):
                    if (k, c, p, g) in table:
                        return k, c, p, g
    raise KeyError(f"configs.json has no entry for {key} nor its class 'any'")


def _kernels(kernel: str) -> tuple[str, ...]:
    """``kernel``, then the kernel whose configs it takes where it has none of its own."""
    return (kernel, "forward") if kernel == "forward_radius" else (kernel,)


def launch_config(kernel: str, head_dim: int, n: int, dtype: torch.dtype, gw: int = 1, factored: bool = False,
                  arch: str = DEFAULT_ARCH, fp32_precision: str | None = None) -> dict:
    """BLOCK_M, BLOCK_N, num_warps, num_stages of one launch on a GPU of architecture ``arch``
    (``factored``: the dk/dv kernel's factored Gaussian on a grid of width ``gw``), and ``maxnreg`` where the
    config has a fifth element: ptxas's cap on the registers a thread, where ptxas's own count fits fewer
    programs an SM than the cap does (H200: the forward 5-7% faster at 224 px, 10-13% at 17 and 56 wide;
    benchmarks/NOTES.md, v34). Eager launches only: traced ones leave it out (``Launch``)."""
    override = next((OVERRIDES[k] for k in _kernels(kernel) if k in OVERRIDES), None)
    if override:
        config = override
    elif INTERPRET:
        config = _INTERPRETER
    else:
        table = TABLE.get(arch)
        if table is None:
            _warn_untested(arch)
            table = TABLE[DEFAULT_ARCH]
        config = table[table_key(table, config_key(kernel, head_dim, n, dtype, gw, factored, fp32_precision))]
    m, b, w, s, *cap = config
    return dict(BLOCK_M=m, BLOCK_N=b, num_warps=w, num_stages=s, **({"maxnreg": cap[0]} if cap else {}))


@functools.lru_cache(maxsize=None)
def _warn_untested(arch: str) -> None:
    warnings.warn(f"locat: configs.json has no kernel configs measured on {arch}; using {DEFAULT_ARCH}'s, "
                  f"untested there (python -m locat_bench.tune --table --write locat_kernels/fused/configs.json "
                  f"measures them on this GPU)", stacklevel=3)


@functools.lru_cache(maxsize=None)
def device_arch(index: int) -> str:
    """The architecture of CUDA device ``index``, as the table names it (``sm_90``)."""
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def grid_layout(gw: int, block_n: int) -> tuple[int, int]:
    """(ROWS, COLS) of the grid key tiles of ``block_n`` slots for grid width ``gw``; (0, 1): token
    tiles. Grid tiles where ``block_n`` holds 1 to MAX_GRID_ROWS rows of next_pow2(gw) slots, or up to
    MAX_CHUNK_ROWS rows of 8 slots, as column_chunks' tails (widths 5-8: H200, bf16, 83 x 7 forward 1.53x
    SDPA's where token tiles took 2.54x; benchmarks/NOTES.md, v32). COLS = gw (the rows packed, the tile's
    last slots padding) where that fits more rows (a width of 21: 3 rows in 64 slots, not 2), or where a
    tile holds at most 2 rows and a quarter or more of its next_pow2(gw) slots would pad: H200, forward at
    384 / 518 / 640 / 768 px 6 / 22 / 25 / 4% faster (benchmarks/NOTES.md, v8; since then 518-768 px and 384 px's
    4-warp configs take column_chunks). Else COLS = next_pow2(gw): packed rows of 14 cost 3-4% at 224 px."""
    cols = 1 << (gw - 1).bit_length()
    rows = block_n // cols
    if not GRID_TILES or not 1 <= rows <= (MAX_CHUNK_ROWS if cols == 8 else MAX_GRID_ROWS):
        return 0, 1
    packed = min(block_n // gw, MAX_GRID_ROWS)
    if packed > rows or (rows <= 2 and 4 * rows * gw <= 3 * block_n):
        return packed, gw
    return rows, cols


def column_chunks(gw: int, block_n: int, dtype: torch.dtype, num_warps: int = 4) -> tuple[tuple[int, int], ...] | None:
    """((ROWS, COLS), (TAIL_ROWS, TAIL_COLS)) of the forward's and dq's key tiles in two column chunks, or three
    ((ROWS, COLS), (MID_ROWS, MID_COLS), (TAIL_ROWS, TAIL_COLS)), or None where ``grid_layout``'s tiles are used
    instead. Chunk 0 holds columns [0, COLS) with COLS the largest power of two <= gw, the last chunk the rest in
    TAIL_COLS = next_pow2(rest) >= 8 slots a row, or, where that takes fewer slots, a middle chunk of the largest
    power of two >= 8 within the rest and a last one of the remainder (56 wide: 32 + 16 + 8, every slot a key,
    where 32 + 32 pads 8 of 64; widths 49-56, 81-88 and 97-104 in 64-key tiles; H200, bf16, the op's forward at
    56 wide 14% faster, 52 wide 9%, 88 wide 7%: benchmarks/NOTES.md, v38). A tile holds a chunk's ROWS (MID_ROWS,
    TAIL_ROWS) grid rows. Every row starts at a multiple of 8 slots, so each register of a tile knows its row at
    compile time (no select per logit). Used (COLUMN_CHUNKS) where a tile holds at least two rows of a first
    chunk 32 wide and the chunks fill at least a tenth more of the slots than ``grid_layout`` (widths 33-48:
    52-75% -> 82-100%): H200, bf16, forward at 518 / 640 / 768 px 12 / 14 / 16% faster (v25); the whole backward
    (dq's tiles) 3 / 11 / 8% (v26). At 24 wide as 16 + 8 (CHUNK_COLS; every slot filled, 75% before) on at most
    4 warps: at 384 px the layers' forward 5% faster, the backward 3%, head_dim 128's forward 12% (v35), where 8
    warps (the public op's (128, 64, 8, 3)) ran 36% slower and 22 wide's padded 16 + 8 2-5% slower. And where a
    grid row overflows a tile of at least 64 keys, which then holds one row of chunk 0 (widths 65-127 in 64-key
    tiles, which grid_layout leaves to token tiles): forward at 80 / 96 wide 1.17x SDPA's where token tiles took
    2.39x / 2.30x (v32)."""
    cols = 1 << (gw.bit_length() - 1)
    on = COLUMN_CHUNKS is True or (COLUMN_CHUNKS == "auto" and dtype != torch.float32)
    if not (GRID_TILES and on) or cols == gw:
        return None
    rest = gw - cols
    mid = 1 << (rest.bit_length() - 1)
    widths = (cols, _chunk_slots(rest))
    if MID_CHUNKS and 8 <= mid < rest and mid + _chunk_slots(rest - mid) < widths[1]:
        widths = (cols, mid, _chunk_slots(rest - mid))
    one_row = cols == block_n >= 64
    # a first chunk of 32 columns; of 16 (CHUNK_COLS) only where the chunks pad no slot (16 + 8: 24 wide) and on at
    # most 4 warps
    narrow = cols == CHUNK_COLS == 16 and sum(widths) == gw and num_warps <= 4
    two_rows = 2 * cols <= block_n and (cols == 32 or narrow)
    if not (one_row or two_rows) or any(block_n // w > MAX_CHUNK_ROWS for w in widths):
        return None
    rows, _ = grid_layout(gw, block_n)
    if 10 * gw * block_n < (10 * rows * gw + block_n) * sum(widths):  # fills < 1/10 more than grid_layout
        return None
    return tuple((block_n // w, w) for w in widths)


def _chunk_slots(cols: int) -> int:
    """Slots a row of a column chunk holding ``cols`` columns: next_pow2(cols), at least 8."""
    return max(8, 1 << (cols - 1).bit_length())


def launch_meta(kernel: str, q: torch.Tensor, gw: int, num_prefix_tokens: int, cmin: float, rate: int) -> dict:
    """Every keyword argument of one launch of ``kernel`` on q's shape: config and constexpr flags."""
    _, _, N, D = q.shape
    if isinstance(N, torch.SymInt):  # a traced call at a new size: the launch specializes on it (attention._triton_op)
        N = guard_int(N)
    arch = device_arch(q.device.index or 0) if q.device.type == "cuda" and not INTERPRET else DEFAULT_ARCH
    return _launch_meta(kernel, D, N, q.dtype, gw, num_prefix_tokens, cmin, rate, arch,
                        _LAUNCH_SWITCHES(globals()), tuple(OVERRIDES.items()))


def dkdv_factored(dtype: torch.dtype, head_dim: int, gh: int, gw: int, setting: bool | str = None) -> bool:
    """Whether the dk/dv kernel uses its factored Gaussian (``setting``: FACTORED_DKDV by default) on a
    grid of ``gh`` rows and ``gw`` columns."""
    setting = FACTORED_DKDV if setting is None else setting
    max_cols = MAX_FACTORED_LO_COLS if factor_remainders(dtype) else MAX_FACTORED_COLS
    return gh <= MAX_FACTORED_ROWS and (
        setting is True or (setting == "auto" and dtype != torch.float32 and head_dim <= 128
                            and dot_width(gw) <= max_cols))


def factor_remainders(dtype: torch.dtype) -> bool:
    """Whether the factored Gaussian's tables carry their rounding remainders for inputs of ``dtype`` (FACTOR_LO)."""
    return FACTOR_LO is True or (FACTOR_LO == "fp16" and dtype == torch.float16)


@functools.lru_cache(maxsize=1024)
def _launch_meta(kernel, D, N, dtype, gw, P, cmin, rate, arch, switches, overrides) -> dict:
    # switches, overrides: the cache's key only (read as globals)
    key_cols = dot_width(gw)  # the dk/dv kernel's factored Gaussian: its columns
    factored = kernel == "backward_dkdv" and dkdv_factored(dtype, D, (N - P) // gw, gw)
    cfg = launch_config(kernel, D, N, dtype, gw, factored, arch)
    if kernel == "backward_dkdv" and not factored and (N - P) % cfg["BLOCK_M"] and cfg["num_stages"] == 3:
        # 3 stages pay where the patch tiles need no bounds mask (576, 1024 patches: backward 8-10%
        # faster) and cost where they do (1369 patches: 6% slower; results/tune_dkdv_H*.json). Overrides
        # too: `tune` then times what a table entry of that config would launch (v19).
        cfg["num_stages"] = 2
    gh = (N - P) // gw
    d_pad, d_tail = head_dim_tiles(D)
    meta = dict(
        D=D, D_PAD=d_pad, D_TAIL=d_tail, HAS_PREFIX=P > 0, RATE=rate,
        # The clamp of -1/2 d^2 at cmin only bites when the grid is larger than the build grid.
        CLAMP=0.5 * (max(gh, gw) - 1) ** 2 > -cmin,
        DOT_PRECISION=dot_precision(dtype),
        **cfg,
    )
    # BLOCK_P: the tile of the prefix tokens (a few: not a whole tile; tl.dot takes >= 16).
    block_p = meta["BLOCK_P"] = min(cfg["BLOCK_M" if kernel == "backward_dkdv" else "BLOCK_N"],
                                    dot_width(P))
    if kernel != "backward_dkdv":  # the kernels that loop over key tiles
        rows, cols = grid_layout(gw, cfg["BLOCK_N"])
        # Query tiles from the first patch and the prefix rows a program of BLOCK_P rows, where the prefix
        # would otherwise add a tile (577 tokens in 64-query tiles: 10 tiles, the last holding one token).
        split = _split_prefix(N, P, cfg["BLOCK_M"], block_p)
        # ROWS = 0: token tiles. FULL_TILES: no padding slot and no partial last tile. EVEN_M: the query
        # tiles need no bounds masks; EVEN_N: the token key tiles neither.
        meta.update(ROWS=rows, COLS=cols, FULL_TILES=bool(rows) and rows * gw == cfg["BLOCK_N"] and gh % rows == 0,
                    SPLIT_PREFIX=split, EVEN_M=(N - P if split else N) % cfg["BLOCK_M"] == 0,
                    EVEN_N=N % cfg["BLOCK_N"] == 0)
        # Column chunks (TAIL_COLS = 0: none; MID_COLS = 0: two at most); a chunk's *_FULL: no padding slot
        # (its columns within the grid) and no partial last tile.
        chunks = column_chunks(gw, cfg["BLOCK_N"], dtype, cfg["num_warps"]) or ()
        meta.update(MID_ROWS=0, MID_COLS=0, MID_FULL=False, TAIL_ROWS=0, TAIL_COLS=0, TAIL_FULL=False)
        col0 = 0
        for name, (rows, cols) in zip(("", "MID_", "TAIL_") if len(chunks) == 3 else ("", "TAIL_"), chunks):
            meta[name + "ROWS"], meta[name + "COLS"] = rows, cols
            meta[name + "FULL" if name else "FULL_TILES"] = col0 + cols <= gw and gh % rows == 0
            col0 += cols
    else:  # the query loop runs over patch tiles aligned at token P
        # A key tile's patches span at most (BLOCK_N - 1) // gw + rate + 1 quantized rows (from its first).
        key_rows = dot_width((cfg["BLOCK_N"] - 1) // gw + rate + 1)
        # Key tiles from the first patch and the prefix keys one BLOCK_P tile of their own, where the prefix
        # would otherwise add a tile (577 tokens in 64-key tiles: 10 tiles, the last holding one key) and fits one.
        split = _split_prefix(N, P, cfg["BLOCK_N"], block_p)
        meta.update(EVEN_N=(N - P if split else N) % cfg["BLOCK_N"] == 0, EVEN_PATCHES=(N - P) % cfg["BLOCK_M"] == 0,
                    FACTORED=factored, KEY_ROWS=key_rows, KEY_COLS=key_cols, SPLIT_PREFIX=split,
                    FACTOR_LO=factored and factor_remainders(dtype))
    return meta


def _split_prefix(N: int, P: int, block: int, block_p: int) -> bool:
    """Whether tiles of ``block`` tokens start at the first patch and the P prefix tokens get a program of
    their own: where they fit its BLOCK_P and would otherwise add a tile."""
    return 0 < P <= block_p and cdiv(N - P, block) < cdiv(N, block)


def _tiles(N: int, P: int, block: int, split: bool) -> int:
    """Programs per (batch, head): tiles of ``block`` tokens, with ``split`` the patches' plus the prefix's."""
    return cdiv(N - P, block) + 1 if split else cdiv(N, block)


def query_tiles(N: int, P: int, meta: dict) -> int:
    """Programs per (batch, head) of the forward and dq kernels: query tiles of BLOCK_M, and with
    SPLIT_PREFIX the patches' tiles plus one program of the prefix rows."""
    return _tiles(N, P, meta["BLOCK_M"], meta["SPLIT_PREFIX"])


def key_tiles(N: int, P: int, meta: dict) -> int:
    """Programs per (batch, head) of the dk/dv kernel: key tiles of BLOCK_N, and with SPLIT_PREFIX the
    patches' tiles plus one of the prefix keys."""
    return _tiles(N, P, meta["BLOCK_N"], meta["SPLIT_PREFIX"])


def launcher(kernel, traced: bool):
    """``kernel`` for ``kernel[grid](*args, **meta)``: with ``traced`` (inside a ``torch.library.triton_op``)
    wrapped by ``torch.library.wrap_triton`` so torch.compile sees the launch and emits it in its own
    code (Inductor may type a float argument as fp64 there: each kernel casts its float scalars to
    fp32); else the kernel itself (Triton's path; ``Launch`` takes a shorter one in eager calls on a GPU
    while this function is the module's own). The interpreter cannot be traced: there a traced launch
    runs on real tensors and does nothing on fake ones (the op's fake implementation is the same function).
    Replaced by ``recorded_launches`` (and probes) to see or skip every launch."""
    if traced:
        return _FakeSkippingLaunch(kernel) if INTERPRET else torch.library.wrap_triton(kernel)
    return kernel


_LAUNCHER = launcher  # the module's own: while ``launcher`` is it, eager launches take ``Launch``'s direct path


class _FakeSkippingLaunch:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if not any(isinstance(a, torch._subclasses.FakeTensor) for a in args):
                self.kernel[grid](*args, **kwargs)
        return launch


@contextlib.contextmanager
def switched(switches: dict, overrides: dict | None = None):
    """Within the block, this module's switches set (name -> value: ``GRID_TILES``, ``FP32_PRECISION``,
    ...) and ``OVERRIDES`` updated with ``overrides`` (kernel -> config); both as before after it (the
    A/B of locat_bench's tune, kernel_profile and resources)."""
    saved, saved_overrides = {name: globals()[name] for name in switches}, dict(OVERRIDES)
    globals().update(switches)
    OVERRIDES.update(overrides or {})
    try:
        yield
    finally:
        globals().update(saved)
        OVERRIDES.clear()
        OVERRIDES.update(saved_overrides)


@contextlib.contextmanager
def recorded_launches(run: bool = False):
    """Within the block, every launch through ``launcher`` is appended to the yielded list as
    ``(kernel, grid, args, meta)``, and runs only with ``run`` (tools that inspect or time the
    launches of a call: ``locat_bench.resources``, ``host_profile --launches``, the tests)."""
    launches = []

    class Record:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **meta):
                launches.append((self.kernel, grid, args, meta))
                if run:
                    self.kernel[grid](*args, **meta)
            return launch

    global launcher
    saved, launcher = launcher, lambda kernel, traced: Record(kernel)
    try:
        yield launches
    finally:
        launcher = saved


class Launch:
    """One launch of ``kernel`` with everything but its leading tensors fixed: ``grid``, ``args`` (every argument
    after the tensors: strides, sizes, scalars; never a tensor) and ``meta`` (constexprs, warps, stages).
    ``launch(tensors, traced)`` runs it on ``tensors`` (the kernel's tensor arguments, or None, in order).

    Made from shapes and strides by the launch sites (``forward``, ``backward``, ``gaug``, ``window``), once per
    call signature in eager calls (``Plans``). An eager launch on a GPU goes to the compiled kernel's launcher
    directly, with the arguments Triton's ``JITFunction.run`` would pass (the tensors and the rest, then the
    constexprs in the kernel's parameter order), once Triton's own first launch of it has compiled the kernel for
    the current device: Triton binds and specializes every argument on every launch (an H200 machine: 35-71 us a
    launch of these kernels by Triton's path, 11-16 by a Launch, 9-14 by the launcher alone; ``benchmarks/NOTES.md``,
    v31). That reuse is exact while the tensors keep the dtypes and the 16-byte alignment of that first launch,
    which a plan's key holds (``signature``). Traced launches (inside a ``triton_op``), the interpreter, a replaced
    ``launcher`` (``recorded_launches``) and every launch while a Triton launch hook is set (profilers) take
    ``launcher``'s path."""

    __slots__ = ("kernel", "grid", "args", "meta", "dims", "compiled")

    def __init__(self, kernel, grid: tuple, args: tuple, meta: dict):
        if any(isinstance(a, torch.Tensor) for a in args):  # a plan would keep it alive, and miss on every call
            raise TypeError(f"{kernel.fn.__name__}: a Launch's arguments after its tensors hold no tensor")
        self.kernel, self.grid, self.args, self.meta = kernel, tuple(grid), tuple(args), meta
        self.dims = (*self.grid, 1, 1)[:3]  # the launcher's three grid sizes
        self.compiled = {}  # device -> (compiled kernel, args + constexprs)

    def __call__(self, tensors: tuple, traced: bool = False) -> None:
        if traced or not DIRECT_LAUNCH or launcher is not _LAUNCHER:
            meta = self.meta
            if traced and "maxnreg" in meta:  # torch 2.11's Inductor drops it; newer ones untested on a GPU (NOTES v34)
                meta = {name: value for name, value in meta.items() if name != "maxnreg"}
            launcher(self.kernel, traced)[self.grid](*tensors, *self.args, **meta)
            return
        device = driver.active.get_current_device()
        entry = self.compiled.get(device)
        if entry is None or _hooked(knobs.runtime.launch_enter_hook) or _hooked(knobs.runtime.launch_exit_hook):
            kernel = self.kernel[self.grid](*tensors, *self.args, **self.meta)
            if entry is None and kernel is not None:
                kernel = kernel.result() if hasattr(kernel, "result") else kernel
                params = self.kernel.params[len(tensors) + len(self.args):]
                if all(p.is_constexpr for p in params):  # else: Triton's path every time
                    constexprs = (self.meta[p.name] if p.name in self.meta else p.default for p in params)
                    self.compiled[device] = (kernel, (*self.args, *constexprs))
            return
        kernel, rest = entry
        kernel.run(*self.dims, driver.active.get_current_stream(device), kernel.function, kernel.packed_metadata,
                   None, None, None, *tensors, *rest)


def prepared(plan: dict | None, name, make):
    """``plan[name]`` (a launch site's ``Launch`` es and the buffer shapes they go with, or the backward's part of
    a plan), made by ``make()`` at the plan's first call; with no plan (traced calls), made every call."""
    launch = plan.get(name) if plan is not None else None
    if launch is None:
        launch = make()
        if plan is not None:
            plan[name] = launch
    return launch


class Plans:
    """The eager ops' launch plans: per call signature (a key the caller makes with ``signature`` and
    ``launch_state``), a dict of its launch sequence's ``Launch`` es by name, filled by its first call.
    A later call with that key allocates and launches; it makes no grid, arguments or constexprs."""

    MAX_ENTRIES = 512  # signatures of one process; past it the plans start over

    def __init__(self):
        self.plans: dict = {}

    def __call__(self, key) -> dict:
        plan = self.plans.get(key)
        if plan is None:
            if len(self.plans) >= self.MAX_ENTRIES:
                self.plans.clear()
            plan = self.plans[key] = {}
        return plan


def signature(*tensors) -> tuple:
    """What the launches of a call depend on in ``tensors`` (None allowed): shape, strides, dtype, device and
    16-byte alignment (Triton specializes a pointer on it). The buffers a launch sequence allocates are not in it:
    their layouts follow from these, and the caching allocator aligns them."""
    return tuple(None if t is None else (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16) for t in tensors)


def launch_state() -> tuple:
    """The switches and overrides that shape launches, for a plan's key (an A/B never reads a plan of the other side)."""
    return _LAUNCH_SWITCHES(globals()), tuple(OVERRIDES.items())


def _hooked(hook) -> bool:
    """Whether a Triton launch hook is set: a function (Triton 3.6), or a HookChain with calls (3.8)."""
    return bool(getattr(hook, "calls", hook is not None))


def _triton_launches_as_expected() -> bool:
    """Whether this Triton's ``JITFunction.run`` calls the compiled kernel's launcher the way
    ``Launch`` does (checked in its source; Triton 3.6 and 3.8 do)."""
    import inspect

    from triton.runtime.jit import JITFunction

    try:
        source = " ".join(inspect.getsource(JITFunction.run).split())
    except (OSError, TypeError):
        return False
    return ("kernel.run(grid_0, grid_1, grid_2, stream, kernel.function, kernel.packed_metadata, launch_metadata, "
            "knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *bound_args.values())") in source


# Eager launches straight to the compiled kernel's launcher (``Launch``; LOCAT_DIRECT_LAUNCH=0: always Triton's path).
DIRECT_LAUNCH = (knobs is not None and not INTERPRET and os.environ.get("LOCAT_DIRECT_LAUNCH", "1") != "0"
                 and _triton_launches_as_expected())


# Tests set this: every output starts as NaN, so an element a kernel fails to write shows.
POISON_OUTPUTS = False


def empty(shape, like: torch.Tensor, dtype=None) -> torch.Tensor:
    """An output buffer on ``like``'s device (NaN-filled when POISON_OUTPUTS; integers: -1)."""
    out = torch.empty(shape, device=like.device, dtype=dtype or like.dtype)
    if not POISON_OUTPUTS:
        return out
    return out.fill_(float("nan") if out.is_floating_point() else -1)
