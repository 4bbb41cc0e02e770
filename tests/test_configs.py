"""The kernels' block configs: the per-architecture table (locat_kernels/fused/configs.json), its
lookup, and the tune mode that measures and writes it (the measuring itself needs CUDA)."""
import json
import shutil

import pytest
import torch

from locat_bench import tune
from locat_bench.bench_attention import Shape
from locat_kernels.fused import configs


def test_every_table_entry_is_timed_on_a_shape_of_its_own_class():
    """``tune --table`` times each entry on TABLE_SHAPES: the shape must fall in the entry's class,
    or the tune would measure (and write) another entry's config."""
    for key in configs.TABLE[configs.DEFAULT_ARCH]:
        spec, dtype, candidates = tune.table_plan(key)
        shape = Shape.parse(spec)
        (gh, gw), D = shape.grid, shape.D
        factored = key[0] == "backward_dkdv" and configs.dkdv_factored(dtype, D, gh, gw, "auto")
        precision = "tf32x3" if key[2] == "tf32x3" else "ieee"
        got = configs.config_key(key[0], D, shape.P + gh * gw, dtype, gw, factored, precision)
        assert configs.table_key(configs.TABLE[configs.DEFAULT_ARCH], got) == key, (key, spec)
        assert candidates


def test_the_committed_table_is_in_the_format_tune_writes():
    """``tune --write`` rewrites the whole file: in the committed format its diff shows only the entries it changed."""
    text = configs.TABLE_PATH.read_text()
    assert tune.dump_table(json.loads(text)) == text


def test_launch_config_reads_the_architectures_entry(monkeypatch, tmp_path):
    """A launch takes its architecture's table entry; head dims go by the columns they load, a grid
    class an architecture (or a kernel) lacks falls back to "any"."""
    table = json.loads(configs.TABLE_PATH.read_text())
    for e in table["archs"]["sm_90"]["entries"]:  # distinct configs, so a wrong entry shows
        e["config"] = [16 * (i + 1) for i in range(3)] + [len(e["kernel"]) + e["head_dim"] + len(e["grid"])]
    table["archs"]["sm_80"] = dict(gpus=["test"], entries=[dict(e, config=[1, 2, 3, 4]) for e in
                                                           table["archs"]["sm_90"]["entries"]])
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(configs, "TABLE", configs.load_table(path))
    monkeypatch.setattr(configs, "INTERPRET", False)

    def stages(*args, **kwargs):
        return configs.launch_config(*args, **kwargs)["num_stages"]

    bf16 = torch.bfloat16
    assert stages("forward", 64, 1025, bf16, 32) == len("forward") + 64 + len("any")
    # 80 loads as 64 + 16 columns: class 80's entries; a kernel without any there takes class 128's (dk/dv), as do
    # head dims that load as 128 (112) and fp32 (no class-80 entries)
    assert stages("forward", 80, 1025, bf16, 32) == len("forward") + 80 + len("any")
    assert stages("forward", 72, 2305, bf16, 48) == len("forward") + 80 + len("wide")
    assert stages("backward_dq", 72, 2305, bf16, 48) == len("backward_dq") + 80 + len("any")
    assert stages("backward_dq", 72, 729, bf16, 27) == len("backward_dq") + 80 + len("gw27")  # SigLIP at 384 px
    assert stages("backward_dkdv", 80, 1025, bf16, 32) == len("backward_dkdv") + 128 + len("any")
    assert stages("forward", 112, 2305, bf16, 48) == len("forward") + 128 + len("wide")
    assert stages("forward", 80, 1025, torch.float32, 32) == len("forward") + 128 + len("any")
    assert stages("forward", 32, 197, bf16, 14) == len("forward") + 64 + len("small")
    assert stages("forward", 64, 2305, bf16, 48) == len("forward") + 64 + len("gw48")  # a width of its own
    assert stages("forward", 64, 785, bf16, 28) == len("forward") + 64 + len("any")  # a width without
    # the forward that finds its radius: its own entries, else the forward's (a width, then "any")
    assert stages("forward", 64, 577, bf16, 24) == len("forward") + 64 + len("gw24")
    assert stages("forward_radius", 64, 577, bf16, 24) == len("forward_radius") + 64 + len("gw24")
    assert stages("forward_radius", 64, 1374, bf16, 37) == len("forward") + 64 + len("gw37")
    assert stages("forward_radius", 64, 1601, bf16, 40) == len("forward") + 64 + len("any")
    assert stages("forward_radius", 64, 2305, bf16, 48) == len("forward_radius") + 64 + len("gw48")
    # head-dim class 128 over 32 wide: "wide" (the "any" config's 32-key tiles hold no such grid row); not at 32
    for gw in (33, 37, 40, 64, 80, 127):
        assert stages("forward", 128, gw * gw + 1, bf16, gw) == len("forward") + 128 + len("wide"), gw
        assert stages("forward_radius", 96, gw * gw + 1, bf16, gw) == len("forward") + 128 + len("wide"), gw
    assert stages("forward", 128, 1025, bf16, 32) == len("forward") + 128 + len("any")
    assert stages("backward_dq", 128, 1601, bf16, 40) == len("backward_dq") + 128 + len("any")  # no "wide" entry
    assert stages("forward_radius", 64, 785, bf16, 28) == len("forward") + 64 + len("any")
    assert stages("backward_dq", 64, 577, bf16, 24) == len("backward_dq") + 64 + len("gw24")
    assert stages("backward_dq", 64, 1601, bf16, 40) == len("backward_dq") + 64 + len("any")
    assert stages("forward", 128, 197, bf16, 14) == len("forward") + 128 + len("any")  # no "small" at 128
    assert stages("backward_dkdv", 64, 1025, bf16, 32, True) == len("backward_dkdv") + 64 + len("factored_wide")
    assert stages("backward_dkdv", 64, 4097, bf16, 64, True) == len("backward_dkdv") + 64 + len("factored_wide")
    assert stages("backward_dkdv", 64, 197, bf16, 14, True) == len("backward_dkdv") + 64 + len("factored")
    assert stages("backward_dkdv", 128, 1025, bf16, 32, True) == len("backward_dkdv") + 128 + len("factored")
    assert stages("backward_dkdv", 64, 1025, torch.float32, 32, True) == len("backward_dkdv") + 64 + len("any")
    assert stages("forward", 256, 1025, bf16, 32) == len("forward") + 256 + len("any")
    fp32 = torch.float32  # "tf32x3": its own entries, else fp32's
    assert stages("forward", 64, 197, fp32, 14, fp32_precision="tf32x3") == len("forward") + 64 + len("any")
    assert configs.config_key("forward", 64, 197, fp32, 14, fp32_precision="tf32x3")[2] == "tf32x3"
    assert configs.config_key("forward", 64, 197, fp32, 14)[2] == "fp32"  # FP32_PRECISION's default: ieee
    assert configs.table_key(configs.TABLE["sm_90"], ("forward", 128, "tf32x3", "any")) == ("forward", 128, "fp32", "any")
    assert configs.launch_config("forward", 64, 1025, bf16, 32, arch="sm_80") == dict(
        BLOCK_M=1, BLOCK_N=2, num_warps=3, num_stages=4)


def test_the_tables_16bit_configs_give_grid_tiles_at_every_width_5_to_127(monkeypatch):
    """The forward's and dq's launches from the table take grid-shaped key tiles (the Gaussian as a row factor
    times a column table) at every grid width from 5 to 127 and head dims up to 128, not token tiles (an exp2 per
    logit, 2.3-2.5x SDPA's forward): before v40 the forward at head-dim class 128 took them at widths 33-127 but
    40, 48 and 64 (its "any" config's 32-key tiles hold no grid row that wide)."""
    monkeypatch.setattr(configs, "INTERPRET", False)
    token = []
    for D in (64, 80, 128):
        for gw in range(5, 128):
            gh = 256 // gw + 1  # N > 256: past the "small" class
            q = torch.empty(1, 1, 1 + gh * gw, D, dtype=torch.bfloat16, device="meta")
            for kernel in ("forward", "forward_radius", "backward_dq"):
                if configs.launch_meta(kernel, q, gw, 1, -1e9, 1)["ROWS"] == 0:
                    token.append((D, gw, kernel))
    assert not token


def test_dkdv_stage_rule_applies_to_overrides_as_to_table_entries(monkeypatch):
    """The per-logit dk/dv kernel runs 2 stages where its patch query tiles need bounds masks (1369
    patches in 32-query tiles), 3 where they do not (1600): the same for an override, so that `tune`
    times what a table entry of that config launches."""
    monkeypatch.setitem(configs.OVERRIDES, "backward_dkdv", (32, 128, 4, 3))
    monkeypatch.setattr(configs, "FACTORED_DKDV", False)  # these grids would take the factored Gaussian
    for (gh, gw, P), stages in (((37, 37, 5), 2), ((40, 40, 1), 3)):
        q = torch.empty(1, 1, P + gh * gw, 64, dtype=torch.bfloat16)
        meta = configs.launch_meta("backward_dkdv", q, gw, P, -8.0, 1)
        config = (meta["BLOCK_M"], meta["BLOCK_N"], meta["num_warps"], meta["num_stages"])
        assert config == (32, 128, 4, stages)


def test_a_fifth_config_element_caps_the_registers_of_that_launch_only(monkeypatch, tmp_path):
    """A config (M, N, warps, stages, maxnreg) passes ``maxnreg`` (ptxas's cap on registers a thread) to
    its launch, from the table as from an override; a four-element config's launch has no cap. (The table
    through launch_config: launch_meta's cache is keyed on the overrides, not on the table.)"""
    table = json.loads(configs.TABLE_PATH.read_text())
    for e in table["archs"]["sm_90"]["entries"]:
        if (e["kernel"], e["head_dim"], e["dtype"], e["grid"]) == ("forward", 64, "16bit", "small"):
            e["config"] = [64, 32, 4, 3, 88]  # a cap the committed table does not hold
    path = tmp_path / "configs.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(configs, "TABLE", configs.load_table(path))
    monkeypatch.setattr(configs, "INTERPRET", False)
    bf16 = torch.bfloat16
    assert configs.launch_config("forward", 64, 197, bf16, 14)["maxnreg"] == 88
    assert configs.launch_config("forward_radius", 64, 197, bf16, 14)["maxnreg"] == 88  # the forward's entry
    assert configs.launch_config("backward_dq", 64, 197, bf16, 14)["maxnreg"] == 128  # the table's own cap
    assert "maxnreg" not in configs.launch_config("backward_dkdv", 64, 197, bf16, 14, factored=True)
    q = torch.empty(2, 3, 197, 64, dtype=bf16)
    with configs.switched({}, {"forward": (64, 32, 4, 3, 88)}):
        assert configs.launch_meta("forward", q, 14, 1, -1e9, 1)["maxnreg"] == 88
    with configs.switched({}, {"forward": (64, 32, 4, 3)}):
        assert "maxnreg" not in configs.launch_meta("forward", q, 14, 1, -1e9, 1)
    with configs.switched({}, {"backward_dq": (64, 32, 4, 3, 112)}):
        assert configs.launch_meta("backward_dq", q, 14, 1, -1e9, 1)["maxnreg"] == 112
    with configs.switched({}, {"backward_dq": (64, 32, 4, 3)}):
        assert "maxnreg" not in configs.launch_meta("backward_dq", q, 14, 1, -1e9, 1)


def test_an_architecture_the_table_lacks_uses_the_default_and_says_so(monkeypatch):
    monkeypatch.setattr(configs, "INTERPRET", False)
    with pytest.warns(UserWarning, match="no kernel configs measured on sm_test.*untested"):
        got = configs.launch_config("forward", 64, 1025, torch.bfloat16, 32, arch="sm_test")
    assert got == configs.launch_config("forward", 64, 1025, torch.bfloat16, 32, arch=configs.DEFAULT_ARCH)


def test_tune_table_writes_the_fastest_candidates_for_a_new_architecture(tmp_path):
    """measure_table picks each entry's fastest candidate (failures skipped); write_table puts them
    under the new architecture, naming the GPU, and leaves sm_90 and what was not measured alone."""
    path = tmp_path / "configs.json"
    shutil.copy(configs.TABLE_PATH, path)
    keys = list(configs.TABLE[configs.DEFAULT_ARCH])
    unmeasured = keys[-1]

    failing = (unmeasured[0], *tune.table_plan(unmeasured)[:2])

    def speed(cand):  # the fastest: the largest BLOCK_N, then the fewest warps, ...; a cap of 128 a little faster
        return 1.0 / cand[1] + cand[2] * 1e-3 + cand[0] * 1e-6 + cand[3] * 1e-9 - (cand[4:] == (128,)) * 1e-12

    def timer(kernel, spec, dtype, cand, switch=None, value=None):
        switches.add((dtype, switch, value))
        return None if (kernel, spec, dtype) == failing else speed(cand)  # None: the candidate failed

    switches = set()
    winners = tune.measure_table(keys, timer)
    # fp32 entries of the "tf32x3" class are timed under that precision, the others as they are
    assert switches == {(torch.bfloat16, None, None), (torch.float32, None, None),
                        (torch.float32, "FP32_PRECISION", "tf32x3")}
    assert unmeasured not in winners and len(winners) == len(keys) - 1
    tune.write_table(path, "sm_80", "Test GPU", winners, "python -m locat_bench.tune --table")
    table = configs.load_table(path)
    assert table[configs.DEFAULT_ARCH] == configs.TABLE[configs.DEFAULT_ARCH]
    for key in winners:  # the uncapped winner, then capped at 128 (the other caps slower)
        assert table["sm_80"][key] == (*min(tune.table_plan(key)[2], key=speed), 128)
    assert table["sm_80"][unmeasured] == configs.TABLE[configs.DEFAULT_ARCH][unmeasured]
    sources = {(e["kernel"], e["head_dim"], e["dtype"], e["grid"]): e["source"]
               for e in json.loads(path.read_text())["archs"]["sm_80"]["entries"]}
    assert "not measured on sm_80" in sources[unmeasured]
    assert all("Test GPU" in sources[k] for k in winners)


def test_tune_table_caps_the_runners_up_within_the_slack():
    """measure_table tries the register caps on every uncapped candidate within CAP_SLACK of the fastest, not only on
    the fastest (v36: at 384 px (64, 32, 4, 3) read 0.5% behind (64, 64, 4, 3) uncapped, 3.5% ahead at 96 registers),
    and on none beyond it: torch.compile's launches drop the cap, so they lose at most CAP_SLACK to the choice."""
    key = ("forward", 64, "16bit", "gw24")
    cands = tune.table_plan(key)[2]
    uncapped = {cand: 2.0 for cand in cands}
    uncapped.update({(64, 64, 4, 3): 1.0, (64, 32, 4, 3): 1.0 + tune.CAP_SLACK / 2,
                     (128, 64, 4, 3): 1.0 + 2 * tune.CAP_SLACK})
    capped = {(64, 64, 4, 3, 168): 0.99, (64, 32, 4, 3, 96): 0.965, (128, 64, 4, 3, 96): 0.5}
    timed = []

    def timer(kernel, spec, dtype, cand, switch=None, value=None):
        timed.append(cand)
        return capped.get(cand, 1.5) if len(cand) == 5 else uncapped[cand]

    winner = tune.measure_table([key], timer)[key]
    assert winner["config"] == [64, 32, 4, 3, 96] and winner["ms"] == 0.965
    assert {c for c in timed if len(c) == 5} == {(*c, r) for c in ((64, 64, 4, 3), (64, 32, 4, 3)) for r in tune.CAPS}


def test_tune_table_replaces_an_entry_only_where_the_winner_beats_it_by_min_gain(tmp_path):
    """Each entry's own config is timed beside the candidates (v39: dq's 37-wide entry had gone 7% slower than another
    config since it was measured), and ``--write`` replaces it only where the winner is ``MIN_GAIN`` faster: an entry
    within that of the winner keeps its config and source (re-timings of unchanged code read 1-3% apart)."""
    path = tmp_path / "configs.json"
    shutil.copy(configs.TABLE_PATH, path)
    entries = configs.TABLE[configs.DEFAULT_ARCH]
    stale, close = ("backward_dq", 64, "16bit", "gw24"), ("forward", 64, "16bit", "gw24")
    # the entries, (64, 32, 4, 3) and (64, 32, 4, 3, 96), left out of the candidates timed; the winners' ms over theirs
    best = {stale: ((64, 64, 4, 2), 0.93), close: ((64, 64, 4, 3), 0.99)}
    timed = []

    def timer(kernel, spec, dtype, cand, switch=None, value=None):
        key = next(k for k in (stale, close) if k[0] == kernel)
        timed.append((key, cand))
        return 1.0 if cand == tuple(entries[key]) else best[key][1] if cand == best[key][0] else 2.0

    winners = tune.measure_table([stale, close], timer, [(64, 64, 4, 2), (64, 64, 4, 3)], entries)
    for key in (stale, close):
        assert (key, tuple(entries[key])) in timed  # the entry, though not a candidate
        assert winners[key]["entry"] == list(entries[key]) and winners[key]["entry_ms"] == 1.0
    assert [tune.replaces(winners[k], tune.MIN_GAIN) for k in (stale, close)] == [True, False]
    tune.write_table(path, configs.DEFAULT_ARCH, "Test GPU", winners, "python -m locat_bench.tune --table",
                     tune.MIN_GAIN)
    table = configs.load_table(path)
    assert table[configs.DEFAULT_ARCH][stale] == (64, 64, 4, 2)
    assert table[configs.DEFAULT_ARCH][close] == entries[close]
    assert {k: v for k, v in table[configs.DEFAULT_ARCH].items() if k != stale} == \
        {k: v for k, v in entries.items() if k != stale}

    def sources(text):
        return {(e["kernel"], e["head_dim"], e["dtype"], e["grid"]): e["source"]
                for e in json.loads(text)["archs"][configs.DEFAULT_ARCH]["entries"]}
    before, after = sources(configs.TABLE_PATH.read_text()), sources(path.read_text())
    assert after[close] == before[close] and "Test GPU" in after[stale]


def test_tune_table_entries_selects_by_shell_pattern():
    """``--entries`` splits the table into device calls: a pattern matches ``kernel/head_dim/dtype/grid``."""
    keys = list(configs.TABLE[configs.DEFAULT_ARCH])
    d64 = tune.select_entries(keys, ["*/64/16bit/*"])
    assert d64 and all(k[1] == 64 and k[2] == "16bit" for k in d64)
    assert len(d64) == sum(k[1] == 64 and k[2] == "16bit" for k in keys)
    assert tune.select_entries(keys, ["backward_dq/64/16bit/gw2?"]) == [
        k for k in keys if k[0] == "backward_dq" and k[3] in ("gw24", "gw28")]
    assert tune.select_entries(keys, ["forward/*/fp32/any", "backward_dkdv/128/*/*"]) == [
        k for k in keys if (k[0], k[2], k[3]) == ("forward", "fp32", "any") or k[:2] == ("backward_dkdv", 128)]
    assert tune.select_entries(keys, None) == keys and tune.select_entries(keys, ["nothing"]) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the arguments before the CUDA message")
def test_tune_names_a_bad_configs_argument(capsys):
    """``--configs`` takes four integers per config, or five (a register cap), ``--min-gain`` a fraction; anything
    else is refused naming the flag (before the CUDA check), not a traceback."""
    for bad in (["64,64,4"], ["64,64,4,x"], ["64,64,4,3,168,1"]):
        with pytest.raises(SystemExit):
            tune.main(["--output", "t.json", "--configs", *bad])
        assert "--configs takes BLOCK_M,BLOCK_N,warps,stages" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tune.main(["--output", "t.json", "--table", "--min-gain", "1.5"])
    assert "--min-gain takes a fraction in [0, 1), got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tune.main(["--output", "t.json", "--entries", "*/64/*/*"])
    assert "--write and --entries go with --table" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tune.main(["--output", "t.json", "--configs", "64,64,4,3", "64,64,4,3,168"])
    assert "tuning needs CUDA" in capsys.readouterr().err


def test_fp32_precision_is_a_checked_setting_that_every_launch_follows(monkeypatch):
    """``set_fp32_precision``: fp32 launches take its products ("ieee" by default), fp16 / bf16 ones
    keep theirs; a value that is not a precision is refused by name."""
    import locat_kernels

    monkeypatch.setattr(configs, "FP32_PRECISION", configs.FP32_PRECISION)  # restored after the test
    q = torch.empty(1, 1, 17, 64)
    assert {configs.launch_meta(k, q, 4, 1, -8.0, 1)["DOT_PRECISION"] for k in configs.KERNELS} == {"ieee"}
    locat_kernels.set_fp32_precision("tf32x3")
    assert {configs.launch_meta(k, q, 4, 1, -8.0, 1)["DOT_PRECISION"] for k in configs.KERNELS} == {"tf32x3"}
    assert configs.launch_meta("forward", q.bfloat16(), 4, 1, -8.0, 1)["DOT_PRECISION"] == "tf32"
    with pytest.raises(ValueError, match=r"one of \('ieee', 'tf32x3'\), got 'tf32'"):
        locat_kernels.set_fp32_precision("tf32")
    assert configs.FP32_PRECISION == "tf32x3"


def test_switched_sets_switches_and_overrides_and_restores_them_on_an_error():
    before = (configs.GRID_TILES, configs.FP32_PRECISION, dict(configs.OVERRIDES))
    with pytest.raises(RuntimeError):
        with configs.switched({"GRID_TILES": not before[0], "FP32_PRECISION": "tf32x3"}, {"forward": (16, 16, 1, 1)}):
            assert (configs.GRID_TILES, configs.FP32_PRECISION) == (not before[0], "tf32x3")
            assert configs.OVERRIDES["forward"] == (16, 16, 1, 1)
            raise RuntimeError
    assert (configs.GRID_TILES, configs.FP32_PRECISION, dict(configs.OVERRIDES)) == before


@pytest.mark.parametrize("kernel,switch,value,field,gw", [
    ("forward", "GRID_TILES", False, "ROWS", 24), ("backward_dq", "MAX_GRID_ROWS", 1, "ROWS", 20),
    ("forward", "COLUMN_CHUNKS", False, "TAIL_COLS", 40), ("forward", "MAX_CHUNK_ROWS", 2, "TAIL_COLS", 40),
    ("forward", "CHUNK_COLS", 32, "TAIL_COLS", 24), ("backward_dq", "MID_CHUNKS", False, "MID_COLS", 56),
    ("backward_dkdv", "FACTORED_DKDV", False, "FACTORED", 24),
    ("backward_dkdv", "MAX_FACTORED_COLS", 16, "FACTORED", 24),
    ("backward_dkdv", "MAX_FACTORED_ROWS", 8, "FACTORED", 24),
    ("backward_dkdv", "FACTOR_LO", True, "FACTOR_LO", 24),
    ("backward_dkdv", "MAX_FACTORED_LO_COLS", 64, "FACTORED", 40),
    ("forward", "FP32_PRECISION", "tf32x3", "DOT_PRECISION", 24)])
def test_a_launch_follows_each_switch_it_reads_though_cached(kernel, switch, value, field, gw):
    """launch_meta caches its launches: one made under a switch's other value is never read back (the
    A/B of ``tune --switch`` timed one layout twice when a switch was not in the cache's key)."""
    dtype = {"FP32_PRECISION": torch.float32, "MAX_FACTORED_LO_COLS": torch.float16}.get(switch, torch.bfloat16)
    q = torch.empty(2, 1, 1 + 24 * gw, 64, dtype=dtype)
    with configs.switched({}, {kernel: (64, 64, 4, 3)}):
        before = configs.launch_meta(kernel, q, gw, 1, -1e9, 1)[field]
        with configs.switched({switch: value}):
            assert configs.launch_meta(kernel, q, gw, 1, -1e9, 1)[field] != before
        assert configs.launch_meta(kernel, q, gw, 1, -1e9, 1)[field] == before


def test_the_forward_takes_the_radius_finding_configs_only_when_it_finds_the_radius(monkeypatch):
    """The public op's forward finds its skip radius ("forward_radius" configs); the LocAt layers' is
    given it ("forward"). Overrides of "forward" serve both unless "forward_radius" has its own."""
    from locat_kernels import fused

    q, k, v = (torch.randn(1, 2, 17, 16) for _ in range(3))
    var, alpha = torch.rand(1, 2, 16, 2) + 0.5, torch.rand(1, 2, 16)
    radius = torch.full((2,), 4, dtype=torch.int32)

    def block_m(r):
        with configs.recorded_launches() as launches:
            fused.attention_forward(q, k, v, var, alpha, r, 4, 1, 1e-6, -1e9, 1, 0.25)
        (_, _, _, meta), = launches
        return meta["BLOCK_M"], meta["FIND_RADIUS"]

    monkeypatch.setitem(configs.OVERRIDES, "forward", (32, 16, 1, 1))
    assert block_m(radius) == (32, False) and block_m(None) == (32, True)
    monkeypatch.setitem(configs.OVERRIDES, "forward_radius", (64, 16, 1, 1))
    assert block_m(radius) == (32, False) and block_m(None) == (64, True)


def test_factored_dkdv_where_measured_faster():
    """"auto": the factored Gaussian for 16-bit inputs, head_dim <= 128, up to 64 columns (next_pow2(gw);
    fp16, whose tables carry remainders, 32) and MAX_FACTORED_ROWS rows; the Gaussian per logit for fp32, wider
    or taller grids, or head_dim 256."""
    bf16, fp16, fp32 = torch.bfloat16, torch.float16, torch.float32
    cases = {(bf16, 64, 14, 14): True, (fp16, 64, 37, 37): False, (fp16, 64, 24, 24): True, (fp16, 64, 32, 32): True,
             (bf16, 64, 37, 37): True, (bf16, 128, 40, 40): True, (bf16, 64, 64, 64): True,
             (bf16, 64, 65, 65): False, (bf16, 64, 8, 96): False, (fp32, 64, 14, 14): False,
             (bf16, 256, 14, 14): False, (bf16, 64, configs.MAX_FACTORED_ROWS + 1, 8): False}
    assert {case: configs.dkdv_factored(*case, setting="auto") for case in cases} == cases


def test_cdiv_is_the_ceiling_of_the_quotient():
    """The launch sequences size grids with ``configs.cdiv`` (plain integers, no host call of Triton's constexpr
    ``cdiv``); a grid one program short would leave outputs unwritten."""
    import math

    for a in range(0, 300):
        for b in (1, 2, 3, 7, 16, 64, 128):
            assert configs.cdiv(a, b) == math.ceil(a / b), (a, b)
