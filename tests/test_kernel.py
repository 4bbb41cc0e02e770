"""The fused op against the float64 reference: out and all five gradients.

Small shapes run everywhere (CPU through the Triton interpreter, in CI); the bf16/fp16/fp32 cases at
ViT sizes need CUDA and skip cleanly without it.
"""
import pytest
import torch
import triton
import triton.language as tl

from helpers import NAMES, assert_matches_reference, make_inputs, make_layers, rel_err, run
from locat_kernels import gaussian_attention, gaussian_attention_reference
from locat_kernels.fused import configs
from locat_kernels.fused.tiles import positions

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (grid, prefix tokens, head_dim, rate, init_grid): N = P + gh*gw covers 1, 2, 16, 50, 65 and more.
SMALL = [
    ((1, 1), 0, 16, 1, None),  # N = 1
    ((1, 1), 1, 32, 1, None),  # N = 2
    ((3, 5), 1, 16, 1, None),  # N = 16
    ((7, 7), 1, 32, 1, None),  # N = 50
    ((8, 8), 1, 16, 2, None),  # N = 65, rate 2
    ((1, 7), 5, 16, 1, None),  # 1 x N grid, several prefix tokens
    ((4, 6), 5, 32, 2, None),  # rectangular, rate 2
    ((7, 7), 0, 16, 1, (4, 4)),  # current grid larger than the build grid: the clamp bites
    ((3, 5), 0, 32, 1, (3, 5)),
    ((2, 2), 0, 16, 2, None),
    ((5, 12), 2, 16, 1, None),  # N = 62; under the interpreter: grid tiles of one padded row
    ((3, 16), 1, 32, 1, None),  # grid tiles of one full row
    ((4, 10), 0, 16, 2, None),
    ((5, 6), 1, 24, 1, None),  # head_dim 24: loaded as 32 columns, the padding masked
    ((4, 6), 2, 40, 2, None),  # head_dim 40 as 32 + 16 columns (configs.head_dim_tiles), rate 2
    ((5, 6), 1, 80, 1, None),  # head_dim 80 as 64 + 16
    ((4, 6), 0, 96, 2, None),  # head_dim 96 as 64 + 32, rate 2
    ((7, 5), 1, 16, 1, None),  # under the interpreter: 3 grid rows of 5 packed per 16-key tile, a partial last tile
    ((10, 3), 3, 16, 1, None),  # 4 rows of next_pow2(3) slots per tile, the last tile half full
    ((4, 4), 20, 16, 1, None),  # more prefix tokens than a 16-token tile holds
]


@pytest.mark.parametrize("grid,P,D,rate,init", SMALL, ids=lambda x: str(x).replace(" ", ""))
@pytest.mark.parametrize("var_range", [(0.01, 100.0), (0.5, 2.0)], ids=["broad", "init"])
def test_small_fp32_matches_float64(request, device, grid, P, D, rate, init, var_range):
    inputs = make_inputs(2, 2, grid, P, D, device=device, var_range=var_range)
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]),
                             grid_size=grid, num_prefix_tokens=P, rate=rate, init_grid_size=init)


@pytest.mark.parametrize("grid,P", [((16, 3), 1), ((20, 2), 0)])
@pytest.mark.parametrize("var_range", [(0.01, 0.05), (0.5, 1.5)], ids=["narrow", "unit"])
def test_far_tiles_skip_the_gaussian_exactly(request, device, grid, P, var_range):
    """Narrow Gaussians on a tall grid: most tile pairs are far apart and skip the bias; the result
    must still match the float64 reference (which never skips) to float32 precision, also where
    some skipped-or-not pairs carry small but significant biases (unit variances)."""
    inputs = make_inputs(1, 2, grid, P, 16, device=device, var_range=var_range, alpha_max=10.0)
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P)


@pytest.mark.parametrize("grid,P,rate", [((16, 3), 1, 1), ((20, 4), 2, 2)])
def test_one_wide_query_among_narrow_ones(request, device, grid, P, rate):
    """The skip radius is the widest query's: one patch query with a variance spanning the grid among
    narrow ones, in a middle tile, must reach every key (forward, dq) and every key's gradient must
    see it (dk, dv)."""
    q, k, v, var, alpha = make_inputs(1, 2, grid, P, 16, device=device, var_range=(0.01, 0.05), alpha_max=10.0)
    wide = grid[0] * grid[1] // 2
    with torch.no_grad():
        var[:, :, wide] = 4.0 * grid[0] ** 2
        alpha[:, :, wide] = 10.0
    assert_matches_reference(request, (q, k, v, var, alpha), torch.randn_like(q), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


@pytest.mark.parametrize("grid,P,rate", [((7, 5), 1, 1), ((6, 10), 3, 2)])
def test_fp16_within_twice_eager(request, device, grid, P, rate):
    """fp16 (the interpreter runs it as well; bf16 it cannot): every tensor's error against float64
    at most twice eager PyTorch's in fp16, packed grid tiles and rate 2 included."""
    inputs = make_inputs(2, 2, grid, P, 32, device=device, dtype=torch.float16, var_range=(0.3, 30.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


@pytest.mark.parametrize("scale", [0.7, -0.4, 0.0])
@pytest.mark.parametrize("grid,P", [((7, 5), 1), ((5, 12), 2)])
def test_any_logit_scale_matches_float64(request, device, grid, P, scale):
    """A scale other than head_dim^-0.5, negative and zero included: the forward's softmax max is of the
    scaled logits (a max taken before the scale is the min of the scaled ones where the scale is negative),
    the backward rescales as it recomputes."""
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.3, 30.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             scale=scale)


def test_head_dims_load_as_the_fewest_columns():
    """A head dim as one power-of-two tile, or a first tile and a tail (>= 16 columns, tl.dot's least) where the
    two hold fewer columns than the next power of two; with HEAD_DIM_TAIL off, always the one tile."""
    tiles = {16: (16, 0), 24: (32, 0), 40: (32, 16), 48: (32, 16), 64: (64, 0), 72: (64, 16), 80: (64, 16),
             96: (64, 32), 112: (128, 0), 128: (128, 0), 160: (128, 32), 192: (128, 64), 200: (256, 0), 256: (256, 0)}
    assert {d: configs.head_dim_tiles(d) for d in tiles} == tiles
    with configs.switched({"HEAD_DIM_TAIL": False}):
        assert {d: configs.head_dim_tiles(d) for d in tiles} == {d: (configs.padded_head_dim(d), 0) for d in tiles}


def test_grid_layout_of_key_tiles():
    """Grid tiles where a tile holds 1 to MAX_GRID_ROWS rows of next_pow2(gw) slots, or up to MAX_CHUNK_ROWS
    rows of 8 (else token tiles, (0, 1)); packed rows of gw slots where that fits more rows or a tile holds at
    most 2."""
    layouts = [configs.grid_layout(gw, 64) for gw in (64, 32, 14, 16, 9, 8, 7, 5, 4, 65, 96, 1, 21, 24, 37)]
    assert layouts == [(1, 64), (2, 32), (4, 16), (4, 16), (4, 16), (8, 8), (8, 8), (8, 8), (0, 1), (0, 1), (0, 1),
                       (0, 1), (3, 21), (2, 24), (1, 37)]
    assert [configs.grid_layout(gw, 128) for gw in (37, 40, 48, 24, 96)] == [(3, 37), (3, 40), (2, 48), (4, 32),
                                                                            (1, 96)]
    assert [configs.grid_layout(gw, 16) for gw in (16, 12, 5, 3, 2)] == [(1, 16), (1, 12), (3, 5), (4, 4), (0, 1)]


@pytest.mark.parametrize("grid,P,rate", [((5, 12), 1, 1), ((6, 4), 3, 2), ((7, 7), 0, 1)])
def test_token_tiles_match_float64_too(request, device, monkeypatch, grid, P, rate):
    """The token-tile path (the Gaussian per logit), used where a grid row does not fit a key tile,
    forced on grids that would otherwise take grid tiles."""
    monkeypatch.setattr(configs, "GRID_TILES", False)
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.01, 100.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P, rate=rate)


@pytest.mark.parametrize("grid,P,rate", [((6, 10), 1, 2), ((7, 10), 0, 1), ((4, 12), 3, 2)])
def test_packed_grid_rows_match_float64(request, device, monkeypatch, grid, P, rate):
    """32-key tiles on grids 10 and 12 wide: 3 and 2 whole grid rows packed per tile (COLS = gw);
    rate 2 quantizes rows across a tile's packed rows."""
    for kernel in ("forward", "backward_dq"):
        monkeypatch.setitem(configs.OVERRIDES, kernel, (16, 32, 1, 1))
    meta = configs.launch_meta("forward", torch.empty(1, 1, P + grid[0] * grid[1], 16), grid[1], P, -1e9, rate)
    assert (meta["ROWS"], meta["COLS"]) == (32 // grid[1], grid[1])
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.01, 100.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


def test_column_chunks_of_key_tiles():
    """Two column chunks, the first 32 wide, where they fill at least a tenth more slots than grid_layout: widths
    33-48 (64-key tiles), and 16 + 8 at 24 wide on at most 4 warps; three (a middle chunk) where those take fewer
    slots than two: 49-56 as 32 + 16 + 8 (32 + 32 before v38); or the first a whole tile of at least 64 keys, where
    a grid row overflows it (widths 65-127); none at powers of two, where the first chunk would be neither, or where
    packed rows fill the tile as well; 16-bit inputs only by default."""
    bf16 = torch.bfloat16
    widths = (33, 37, 40, 41, 44, 48, 49, 52, 56, 57, 63, 24, 80, 84, 88, 16, 32, 14, 65, 96, 100, 127, 128, 17, 21,
              22, 23, 25, 28)
    two = ((2, 32), (8, 8)), ((2, 32), (4, 16))
    three = ((2, 32), (4, 16), (8, 8))
    assert {gw: configs.column_chunks(gw, 64, bf16) for gw in widths} == {
        33: two[0], 37: two[0], 40: two[0], 41: two[1], 44: two[1], 48: two[1], 49: three, 52: three, 56: three,
        57: None, 63: None, 24: ((4, 16), (8, 8)), 80: ((1, 64), (4, 16)), 84: ((1, 64), (4, 16), (8, 8)),
        88: ((1, 64), (4, 16), (8, 8)), 16: None, 32: None, 14: None, 65: ((1, 64), (8, 8)), 96: ((1, 64), (2, 32)),
        100: ((1, 64), (2, 32), (8, 8)), 127: ((1, 64), (1, 64)), 128: None, 17: None, 21: None, 22: None,
        23: None, 25: None, 28: None}
    assert configs.column_chunks(24, 64, bf16, num_warps=8) is None  # 8 warps: 36% slower with them (v35)
    assert configs.column_chunks(37, 64, bf16, num_warps=8) == two[0]
    assert configs.column_chunks(24, 32, bf16) == ((2, 16), (4, 8))  # one packed row of 24 in 32 slots: 75% filled
    assert configs.column_chunks(40, 128, bf16) is None and configs.column_chunks(48, 128, bf16) == ((4, 32), (8, 16))
    assert configs.column_chunks(56, 128, bf16) is None  # 16 rows of the last chunk's 8 columns: over MAX_CHUNK_ROWS
    assert configs.column_chunks(37, 32, bf16) is None  # one row of the first chunk a tile of 32 keys
    assert configs.column_chunks(37, 64, torch.float32) is None
    with configs.switched({"COLUMN_CHUNKS": True}):
        assert configs.column_chunks(37, 64, torch.float32) == two[0]
    with configs.switched({"MID_CHUNKS": False}):
        assert configs.column_chunks(56, 64, bf16) is None and configs.column_chunks(88, 64, bf16) == ((1, 64), (2, 32))


def launched_chunks(meta: dict) -> tuple[tuple[int, int], ...]:
    """The (rows, columns) of each column chunk a launch's constexprs sweep."""
    return tuple((meta[name + "ROWS"], meta[name + "COLS"]) for name in ("", "MID_", "TAIL_") if meta[name + "COLS"])


def test_launch_meta_of_three_column_chunks():
    """56 wide: chunks of 32, 16 and 8 columns from columns 0, 32 and 48, each flagged full (no padding slot, no
    partial last tile) where it is: every slot a key, so no masks but where the grid's rows do not fill the last
    tile of a chunk."""
    q = torch.empty(1, 2, 1 + 6 * 56, 64, dtype=torch.bfloat16)
    with configs.switched({}, {"forward": (64, 64, 4, 3)}):
        meta = configs.launch_meta("forward", q, 56, 1, -8.0, 1)
    chunks = ("ROWS", "COLS", "FULL_TILES", "MID_ROWS", "MID_COLS", "MID_FULL", "TAIL_ROWS", "TAIL_COLS", "TAIL_FULL")
    assert tuple(meta[k] for k in chunks) == (2, 32, True, 4, 16, False, 8, 8, False)  # 6 rows: 4 and 8 do not divide
    q = torch.empty(1, 2, 1 + 8 * 52, 64, dtype=torch.bfloat16)
    with configs.switched({}, {"backward_dq": (64, 64, 4, 3)}):
        meta = configs.launch_meta("backward_dq", q, 52, 1, -8.0, 1)
    assert tuple(meta[k] for k in chunks) == (2, 32, True, 4, 16, True, 8, 8, False)  # 52: the last chunk pads 4


def test_a_launchs_warps_decide_its_16_wide_first_chunk():
    """At 24 wide the 16 + 8 column chunks go to configs of at most 4 warps (the layers' forward, dq); an 8-warp
    config (the public op's gw24 forward) keeps two packed rows of 24 a tile (v35: 36% slower with the chunks)."""
    q = torch.empty(2, 12, 1 + 24 * 24, 64, dtype=torch.bfloat16)
    with configs.switched({}, {"forward": (64, 64, 4, 3), "forward_radius": (128, 64, 8, 3)}):
        meta = configs.launch_meta("forward", q, 24, 1, -8.0, 1)
        assert launched_chunks(meta) == ((4, 16), (8, 8))
        meta = configs.launch_meta("forward_radius", q, 24, 1, -8.0, 1)
        assert (meta["ROWS"], meta["COLS"], meta["TAIL_COLS"]) == (2, 24, 0)


@pytest.mark.parametrize("grid,P,rate,block_n", [((3, 33), 1, 1, 64), ((4, 44), 0, 2, 64), ((3, 37), 3, 1, 64),
                                                 ((2, 48), 1, 2, 64), ((2, 44), 2, 2, 128), ((3, 70), 1, 1, 64),
                                                 ((2, 80), 2, 2, 64), ((5, 24), 1, 1, 64), ((4, 24), 2, 2, 32),
                                                 ((3, 24), 0, 1, 32), ((5, 56), 1, 1, 64), ((4, 52), 2, 2, 64),
                                                 ((2, 84), 0, 1, 64)])
def test_column_chunks_match_float64(request, device, monkeypatch, grid, P, rate, block_n):
    """The forward's and dq's key tiles in two or three column chunks (configs.column_chunks), each swept with
    its own column tables: a chunk skipped or a column misplaced shows as an O(1) error in out, dq, dvar or
    dalpha. 5 x 56: three chunks whose columns fill their slots, each with a partial last tile (5 rows: 2, 4 and 8
    rows a tile; 9 x 56 until v43: 293 s of a CI worker under the interpreter)."""
    monkeypatch.setattr(configs, "COLUMN_CHUNKS", True)  # fp32 and fp64 too
    for kernel in ("forward", "forward_radius", "backward_dq"):
        monkeypatch.setitem(configs.OVERRIDES, kernel, (16, block_n, 1, 1))
    for kernel in ("forward", "backward_dq"):
        meta = configs.launch_meta(kernel, torch.empty(1, 1, P + grid[0] * grid[1], 16), grid[1], P, -1e9, rate)
        assert launched_chunks(meta) == configs.column_chunks(grid[1], block_n, torch.float32)
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.01, 100.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


@pytest.mark.parametrize("grid,P,rate", [((10, 7), 1, 1), ((12, 6), 2, 2)])
def test_eight_grid_rows_of_eight_match_float64(request, device, monkeypatch, grid, P, rate):
    """64-key tiles on grids 7 and 6 wide: 8 grid rows of 8 slots a tile (each register's row known at compile
    time), more rows than MAX_GRID_ROWS (token tiles before v32); rate 2 quantizes rows across the tile's rows."""
    for kernel in ("forward", "forward_radius", "backward_dq"):
        monkeypatch.setitem(configs.OVERRIDES, kernel, (16, 64, 1, 1))
    meta = configs.launch_meta("backward_dq", torch.empty(1, 1, P + grid[0] * grid[1], 16), grid[1], P, -1e9, rate)
    assert (meta["ROWS"], meta["COLS"]) == (8, 8)
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.01, 100.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


@pytest.mark.parametrize("grid,P,rate,init", [((7, 7), 1, 1, None), ((4, 6), 5, 2, None), ((7, 7), 0, 1, (4, 4)),
                                             ((20, 1), 1, 1, None), ((16, 3), 2, 1, None), ((8, 8), 0, 2, None),
                                             ((3, 40), 1, 1, None), ((2, 34), 3, 2, None)])
def test_factored_dkdv_gaussian_matches_float64(request, device, monkeypatch, grid, P, rate, init):
    """The dk/dv kernel's factored Gaussian (one-hot matmuls of fp16 row and column factors; on by
    default for 16-bit inputs) forced for fp32: exact but for the factors' fp16 rounding (2^-11), so
    a misplaced row, column, prefix key or rate would show as an O(1) error. Grids of one column
    and of three make a 16-key tile span up to 18 rows (KEY_ROWS 32); 40 and 34 columns take 64-column
    tables (KEY_COLS 64, on by default up to that width)."""
    monkeypatch.setattr(configs, "FACTORED_DKDV", True)
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.3, 30.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), fp32_tol=2e-3, grid_size=grid,
                             num_prefix_tokens=P, rate=rate, init_grid_size=init)


@pytest.mark.parametrize("grid,P,rate", [((7, 7), 1, 1), ((4, 6), 5, 2), ((3, 40), 1, 1)])
def test_factor_remainders_make_the_factored_gaussian_exact(request, device, monkeypatch, grid, P, rate):
    """With the factors' fp16 remainders (FACTOR_LO, on by default for fp16 inputs) the factored dk/dv
    Gaussian holds each factor to ~2^-22: forced for fp32, within fp32's 1e-5 of float64. The fp16
    factors alone (2^-11) put dk 4-5e-3 off on these inputs (alpha up to 20)."""
    monkeypatch.setattr(configs, "FACTORED_DKDV", True)
    monkeypatch.setattr(configs, "FACTOR_LO", True)
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.3, 30.0), alpha_max=20.0)
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


@pytest.mark.parametrize("grid,P,rate,factored", [((7, 7), 1, 1, False), ((4, 6), 5, 2, True), ((20, 3), 0, 1, True),
                                                 ((3, 16), 1, 1, False)])
def test_radius_below_minus_gh_leaves_no_gaussian(device, monkeypatch, grid, P, rate, factored):
    """The kernels given a radius below -gh (``locat_bench.kernel_profile``'s "no_gaussian" variant)
    skip the Gaussian on every key tile and stay in bounds: out and dq, dk, dv equal the float64
    reference with alpha = 0, grid and token tiles, prefix tokens, rate 2; on (3, 16) the interpreter's
    grid tiles are full (no bounds masks), so a far range past the last tile would show."""
    from locat_kernels import fused, gaussian_clamp, gaussian_eps

    monkeypatch.setattr(configs, "FACTORED_DKDV", factored)  # outputs start as NaN (conftest)
    q, k, v, var, alpha = (t.detach() for t in make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.3, 30.0)))
    do = torch.randn_like(q)
    radius = torch.full((4,), -(grid[0] + 2), dtype=torch.int32, device=device)
    common = (grid[1], P, gaussian_eps(grid), gaussian_clamp(grid), rate, 16 ** -0.5)
    out, lse, _ = fused.attention_forward(q, k, v, var, alpha, radius, *common)
    dq, dk, dv, _, _ = fused.attention_backward(do, q, k, v, var, alpha, out, lse, radius, *common)
    ref = run(gaussian_attention_reference, [t.double().cpu().requires_grad_() for t in (q, k, v, var, 0 * alpha)],
              do.double().cpu(), grid_size=grid, num_prefix_tokens=P, rate=rate)
    for name, got, want in zip(NAMES, (out, dq, dk, dv), ref):
        assert rel_err(got, want) < 1e-5, name


@pytest.mark.parametrize("grid,P,rate", [((8, 8), 1, 1), ((10, 3), 3, 1), ((4, 8), 2, 2)])
def test_dkdv_prefix_keys_in_a_tile_of_their_own(request, device, grid, P, rate):
    """Where the prefix tokens would add a key tile, the dk/dv kernel tiles the keys from the first
    patch and gives the prefix keys a BLOCK_P tile of their own (SPLIT_PREFIX): exact against float64,
    rate 2 included (under the interpreter's 16-key tiles and fp32's 32-key tiles alike)."""
    inputs = make_inputs(2, 2, grid, P, 16, device=device, var_range=(0.3, 30.0))
    meta = configs.launch_meta("backward_dkdv", inputs[0], grid[1], P, -8.0, rate)
    assert meta["SPLIT_PREFIX"], meta
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P,
                             rate=rate)


def test_split_prefix_only_where_the_prefix_adds_a_key_tile(monkeypatch):
    """ViT-B at 384 px (577 tokens, 64-key tiles): 9 patch tiles and a prefix tile, not 10 token tiles
    whose last holds one key; at 224 px with 128-key tiles (197 tokens: 2 tiles either way), without
    prefix tokens, and with more prefix tokens than one BLOCK_P tile holds, the tiles stay token tiles."""
    q = torch.empty(1, 1, 1, 64, device="meta")
    def meta(n, gw, p):
        m = configs.launch_meta("backward_dkdv", q.expand(1, 1, n, 64), gw, p, -8.0, 1)
        return m["SPLIT_PREFIX"], configs.key_tiles(n, p, m)

    monkeypatch.setitem(configs.OVERRIDES, "backward_dkdv", (64, 64, 4, 2))
    assert meta(577, 24, 1) == (True, 10)  # 9 patch tiles + the prefix keys' tile
    assert meta(576, 24, 0) == (False, 9)
    assert meta(576 + 65, 24, 65) == (False, 11)  # more prefix keys than BLOCK_P holds
    assert configs.launch_meta("backward_dkdv", q.expand(1, 1, 576 + 65, 64), 24, 65, -8.0, 1)["BLOCK_P"] < 65
    monkeypatch.setitem(configs.OVERRIDES, "backward_dkdv", (16, 128, 4, 3))
    assert meta(197, 14, 1) == (False, 2)


@pytest.mark.parametrize("kernel", ["forward", "backward_dq"])
def test_prefix_rows_get_a_program_of_their_own(monkeypatch, kernel):
    """The forward and dq split their query tiles the same way: at 384 px (577 tokens, 64-query tiles)
    9 patch tiles with no bounds masks and one program of the prefix row, not 10 tiles whose last holds
    one token; at 224 px with 128-query tiles (2 tiles either way), without prefix tokens, and with more
    prefix tokens than a BLOCK_P program holds, token tiles from 0. The float64 cases of SMALL run the
    split under the interpreter ((8, 8) and (3, 16) with 1 prefix token, (10, 3) with 3)."""
    q = torch.empty(1, 1, 1, 64, device="meta")

    def meta(n, gw, p, config=(64, 64, 4, 3)):
        monkeypatch.setitem(configs.OVERRIDES, kernel, config)
        m = configs.launch_meta(kernel, q.expand(1, 1, n, 64), gw, p, -8.0, 1)
        return m["SPLIT_PREFIX"], m["EVEN_M"], configs.query_tiles(n, p, m)

    assert meta(577, 24, 1) == (True, True, 10)  # 9 patch tiles + the prefix program
    assert meta(576, 24, 0) == (False, True, 9)
    assert meta(576 + 17, 24, 17) == (True, True, 10)  # BLOCK_P 32 (next_pow2(17)) holds them
    assert meta(576 + 65, 24, 65) == (False, False, 11)  # more than BLOCK_P (at most BLOCK_N) holds
    assert meta(197, 14, 1, (128, 64, 4, 3)) == (False, False, 2)


def test_factored_dkdv_only_where_its_tables_stay_small():
    """The factored Gaussian's tables hold gh + next_pow2(gw) values per patch query: grids taller than
    MAX_FACTORED_ROWS take the Gaussian per logit instead (a 2^20-token grid 8 wide would need 256 GB),
    forced or "auto"."""
    for setting in ("auto", True):
        flags = []
        for gh in (configs.MAX_FACTORED_ROWS, configs.MAX_FACTORED_ROWS + 1):
            q = torch.empty(1, 1, 1 + gh * 8, 64, dtype=torch.bfloat16, device="meta")
            with configs.switched({"FACTORED_DKDV": setting}):
                flags.append(configs.launch_meta("backward_dkdv", q, 8, 1, -8.0, 1)["FACTORED"])
        assert flags == [True, False], setting


def test_factored_key_rows_hold_every_key_tile():
    """KEY_ROWS covers the quantized rows of every key tile's patches (counted from the first
    patch's), at every tile start, grid width, rate and prefix, brute force."""
    q = torch.empty(1, 1, 1, 16, device="meta")
    for block_n in (16, 32, 64, 128):
        configs.OVERRIDES["backward_dkdv"] = (32, block_n, 4, 2)
        try:
            for gw in range(1, 40):
                for rate in (1, 2):
                    for P in (0, 1, 5):
                        N = P + 3 * gw * rate * (block_n // gw + 2)
                        meta = configs.launch_meta("backward_dkdv", q.expand(1, 1, N, 16), gw * rate, P, -8.0, rate)
                        for start in range(0, N, block_n):
                            rows = [(p // (gw * rate)) // rate * rate for p in range(max(start - P, 0), min(start + block_n, N) - P)]
                            if rows:
                                assert max(rows) - rows[0] < meta["KEY_ROWS"], (block_n, gw, rate, P, start)
        finally:
            del configs.OVERRIDES["backward_dkdv"]


@triton.jit
def _positions_kernel(row, col, is_patch, N, GW, P, RATE: tl.constexpr, PATCHES: tl.constexpr,
                      IN_BOUNDS: tl.constexpr, BLOCK: tl.constexpr):
    """grid: (tokens / BLOCK,); tiles.positions of BLOCK tokens per program (from token P with PATCHES)."""
    offs = P * PATCHES + tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    r, c, m, _ = positions(offs, N, GW, P, RATE, False, PATCHES, IN_BOUNDS)
    tl.store(row + offs, r.to(tl.int32))
    tl.store(col + offs, c.to(tl.int32))
    tl.store(is_patch + offs, m.to(tl.int32))


@pytest.mark.parametrize("flags", [(False, False), (True, False), (True, True)], ids=["any", "patches", "in_bounds"])
def test_positions_divide_exactly_up_to_2_pow_20(device, flags):
    """``tiles.positions`` divides by the grid width through a float32 reciprocal: row and column equal
    integer division for every patch index below 2^20 (configs.MAX_TOKENS), at widths 1 to 4096 (odd,
    prime, powers of two), rates 1 and 2, a prefix, and each mask variant (tokens past N with PATCHES:
    the last patch's)."""
    patches, in_bounds = flags
    P, block = 3, 1 << 16
    for gw in (1, 3, 14, 24, 37, 64, 97, 1021, 4096):
        for rate in (1, 2):
            N = P + configs.MAX_TOKENS - (0 if in_bounds else 5)  # IN_BOUNDS: whole blocks, no token past N
            offs = torch.arange(P * patches, P * patches + triton.cdiv(N - P * patches, block) * block, device=device)
            row, col, is_patch = (torch.full((offs[-1] + 1,), -1, dtype=torch.int32, device=device) for _ in range(3))
            _positions_kernel[(len(offs) // block,)](row, col, is_patch, N, gw, P, rate, patches, in_bounds, block)
            p = (offs - P).clamp(0, N - 1 - P) if patches else torch.where((offs >= P) & (offs < N), offs - P, 0)
            assert torch.equal(row[offs], (p // gw // rate * rate).int()), (gw, rate)
            assert torch.equal(col[offs], (p % gw // rate * rate).int()), (gw, rate)
            assert torch.equal(is_patch[offs].bool(), (offs >= P) & (offs < N)), (gw, rate)


def test_alpha_with_trailing_dim_and_float64_reference_dtype(device):
    q, k, v, var, alpha = make_inputs(1, 3, (4, 4), 1, 16, device=device)
    alpha4 = alpha.detach().unsqueeze(-1).requires_grad_()
    out = gaussian_attention(q, k, v, var, alpha4, (4, 4), num_prefix_tokens=1, backend="triton")
    (dalpha,) = torch.autograd.grad(out.sum(), alpha4)
    assert dalpha.shape == alpha4.shape
    ref = gaussian_attention_reference(*(t.detach().cpu().double() for t in (q, k, v, var, alpha4)),
                                       (4, 4), num_prefix_tokens=1)
    assert rel_err(out, ref) < 1e-5


def test_output_layout_makes_head_merge_free(device):
    q, k, v, var, alpha = make_inputs(2, 3, (3, 3), 1, 16, device=device)
    out = gaussian_attention(q, k, v, var, alpha, (3, 3), num_prefix_tokens=1, backend="triton")
    merged = out.transpose(1, 2)
    assert merged.is_contiguous()  # (B, N, H, D) in memory: reshape to (B, N, C) is a view
    assert merged.reshape(2, 10, 48).data_ptr() == out.data_ptr()


def test_compile_fullgraph_traces_the_op(device):
    inputs = make_inputs(1, 2, (3, 3), 1, 16, device=device)
    kwargs = dict(grid_size=(3, 3), num_prefix_tokens=1, backend="triton")
    do = torch.randn_like(inputs[0])
    eager = run(gaussian_attention, inputs, do, **kwargs)
    backend = "inductor" if device == "cuda" else "eager"  # dynamo alone on CPU: fast, still fullgraph
    compiled = torch.compile(gaussian_attention, fullgraph=True, backend=backend)
    got = run(compiled, inputs, do, **kwargs)
    for name, g, e in zip(NAMES, got, eager):
        assert torch.equal(g, e), name


def test_opcheck(device):
    """torch.library's own checks of the ops: schema, fake tensor, autograd registration."""
    from locat_kernels import gaussian_clamp

    q, k, v, var, alpha = make_inputs(1, 2, (3, 3), 1, 16, device=device)
    checks = ("test_schema", "test_faketensor", "test_autograd_registration")
    args = (q, k, v, var, alpha, 3, 1, 0.1, gaussian_clamp((3, 3)), 1, 0.25)
    torch.library.opcheck(torch.ops.locat.gaussian_attention.default, args, test_utils=checks)
    layers = make_layers(16, device=device)
    args = (q, k, v, *layers, 3, 3, 1, 0.1, gaussian_clamp((3, 3)), 2.0, 9.0, 1, 0.25)
    torch.library.opcheck(torch.ops.locat.locat_attention.default, args, test_utils=checks)


# ----------------------------------------------------------------------------------------------
# CUDA: realistic sizes and low precision; the kernel's error against float64 must be at most 2x
# the error of eager PyTorch (the reference run in the same dtype).

LOW = [torch.bfloat16, torch.float16]
CUDA_SHAPES = [  # (B, H, grid, P, D)
    (4, 3, (14, 14), 1, 64),  # N = 197
    (1, 2, (32, 32), 1, 64),  # N = 1025
    (1, 1, (64, 64), 1, 64),  # N = 4097
    (2, 2, (13, 17), 3, 128),  # odd sizes, D = 128
    (2, 2, (24, 24), 1, 80),  # 384 px grid, ViT-H/14's head_dim (as 64 + 16 columns, head-dim class 80)
    (1, 2, (37, 37), 4, 96),  # patch 14 at 518 px with 4 registers, head_dim 96
    (2, 2, (24, 24), 1, 64),  # 384 px at head_dim 64: the op's forward entry of width 24 (8 warps)
    (1, 2, (20, 37), 5, 48),  # 37 wide: column chunks (32 + 8), rectangular, 5 prefix tokens, head_dim 48
    (1, 3, (36, 40), 0, 64),  # 40 wide: column chunks, no prefix
    (1, 2, (10, 48), 1, 64),  # 48 wide: column chunks (32 + 16) and that width's entry
    (1, 2, (5, 80), 1, 64),  # 80 wide: column chunks of one 64-wide row a tile (64 + 16)
    (1, 2, (11, 56), 1, 64),  # 56 wide: three column chunks (32 + 16 + 8), partial last tiles
    (1, 2, (6, 84), 2, 64),  # 84 wide: three column chunks (64 + 16 + 8), the last padded
    (1, 1, (4, 96), 2, 64),  # 96 wide: column chunks (64 + 32), 2 prefix tokens
    (1, 2, (40, 7), 1, 64),  # 7 wide: 8 grid rows of 8 slots a tile
    (1, 2, (11, 28), 2, 64),  # 28 wide: dq's entry of that width (24 and 32 above too), 2 prefix tokens
    (1, 2, (12, 40), 1, 128),  # 40 wide at head_dim 128: class 128's "wide" entry (48, 64 below; 37 above at 96)
    (1, 2, (9, 48), 2, 112),  # 48 wide, head_dim 112 (padded to 128)
    (1, 1, (20, 64), 1, 128),
    (1, 2, (6, 80), 1, 80),  # 80 wide at head_dim 80: class 80's "wide" entry, column chunks (64 + 16)
    (1, 2, (10, 12), 1, 256),
    (2, 1, (7, 9), 1, 72),
    (1, 4, (27, 27), 0, 72),  # SigLIP at 384 px: head_dim 72 (64 + 16) and its strides, multiples of 8 not 16 (ALIGN8)
    (2, 3, (14, 14), 1, 24),  # head_dim 24, 40, 56: strides multiples of 8 not 16 as well
    (1, 2, (16, 16), 1, 40),
    (1, 2, (12, 20), 2, 56),
    (3, 5, (9, 7), 0, 32),
    (1, 3, (6, 10), 4, 16),
]


@cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}g{s[2][0]}x{s[2][1]}P{s[3]}D{s[4]}")
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_cuda_low_precision_within_2x_of_eager(request, shape, dtype):
    B, H, grid, P, D = shape
    inputs = make_inputs(B, H, grid, P, D, device="cuda", dtype=dtype, var_range=(0.5, grid[0] + 0.5))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P)


@cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES[:3], ids=lambda s: f"B{s[0]}H{s[1]}g{s[2][0]}x{s[2][1]}P{s[3]}D{s[4]}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_cuda_init_regime_where_most_tiles_skip(request, shape, dtype):
    """A freshly initialized model (var ~ 1, alpha ~ 0.69): far tile pairs skip the Gaussian."""
    B, H, grid, P, D = shape
    inputs = make_inputs(B, H, grid, P, D, device="cuda", dtype=dtype, var_range=(0.9, 1.1), alpha_max=1.4)
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P)


@cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}g{s[2][0]}x{s[2][1]}P{s[3]}D{s[4]}")
@pytest.mark.parametrize("precision", configs.FP32_PRECISIONS)
def test_cuda_fp32_matches_float64(request, shape, precision, monkeypatch):
    """fp32 within 1e-5 of float64, exact products and ``set_fp32_precision("tf32x3")`` alike."""
    monkeypatch.setattr(configs, "FP32_PRECISION", precision)
    B, H, grid, P, D = shape
    inputs = make_inputs(B, H, grid, P, D, device="cuda", var_range=(0.5, grid[0] + 0.5))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=grid, num_prefix_tokens=P)


@cuda
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_cuda_backward_is_deterministic(dtype):
    inputs = make_inputs(8, 3, (14, 14), 1, 64, device="cuda", dtype=dtype)
    do = torch.randn_like(inputs[0])
    first = run(gaussian_attention, inputs, do, grid_size=(14, 14), num_prefix_tokens=1)
    second = run(gaussian_attention, inputs, do, grid_size=(14, 14), num_prefix_tokens=1)
    for name, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), name


@cuda
def test_cuda_many_programs_beyond_65535(request):
    # B*H = 70000 rows of programs in one grid dimension would overflow CUDA's y/z limit.
    inputs = make_inputs(70000, 1, (1, 3), 1, 16, device="cuda", dtype=torch.bfloat16, var_range=(0.5, 3.0))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=(1, 3), num_prefix_tokens=1)
