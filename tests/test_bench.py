"""``locat-bench`` on a CPU, as the README's first command runs it there: the op report through the
Triton interpreter and the whole-model report, each saying what needs CUDA."""
import pytest
import torch

from locat_bench import cli

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU report (a GPU runs the real one)")


def test_model_report_times_every_variant_and_says_what_needs_cuda(capsys):
    assert cli.main(["--model", "--no-save"]) == 0
    out = capsys.readouterr().out
    assert "torch.compile, kernel counts and memory need CUDA" in out
    for variant in ("vit", "locat_sdpa"):  # one case, its variants built before any is timed
        assert f"tiny 64   {variant:<13} eager    train" in out, out


@pytest.mark.minutes
def test_op_report_runs_every_peer_through_the_interpreter(capsys):
    assert cli.main(["--no-save", "--shapes", "tiny 4x6+5"]) == 0
    out = capsys.readouterr().out
    assert "No ratio table on CPU" in out
    for peer in ("locat", "locat_layer", "eager", "sdpa_bias", "sdpa"):
        assert f" {peer} " in out, out


@pytest.mark.minutes
@pytest.mark.parametrize("regime", ["broad", "init"])
def test_the_layer_peer_times_a_locat_layers_launches_and_matches_its_own_float64(regime):
    """``locat_layer`` runs ``locat_attention`` (var and alpha from the queries by its layers): its
    error is against the float64 attention with var and alpha made by the same layers, not the
    inputs' (which it does not use)."""
    from locat_bench import bench_attention as ba

    rows = ba.bench_shape(ba.CPU_SHAPES[1], regime, torch.float32, "cpu", peers=("locat", "locat_layer"),
                          log=lambda s: None)
    errs = {r["peer"]: r["max_abs_err"] for r in rows}
    assert errs["locat_layer"] < 2e-6 and errs["locat"] < 2e-6, errs


def test_host_profile_of_a_layer_and_the_compiled_step_needs_cuda(capsys):
    from locat_bench import host_profile

    assert host_profile.main(["--calls", "3", "--top", "5"]) == 0
    assert "Ordered by: internal time" in capsys.readouterr().out
    assert host_profile.main(["--calls", "3", "--top", "5", "--forward"]) == 0
    out = capsys.readouterr().out
    assert "=== locat forward" in out and "=== timm forward" in out and "us per call (wall)" in out
    assert host_profile.main(["--calls", "3", "--top", "5", "--op"]) == 0
    out = capsys.readouterr().out
    assert "=== gaussian_attention forward+backward" in out and "=== sdpa forward+backward" in out
    with pytest.raises(SystemExit):
        host_profile.main(["--compiled-step", "tiny:224:8"])
    assert "--compiled-step needs CUDA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        host_profile.main(["--step", "tiny:224:8"])
    assert "--step needs CUDA" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        host_profile.main(["--launches"])
    assert "--launches needs CUDA" in capsys.readouterr().err


@pytest.mark.minutes
def test_a_model_report_cut_short_keeps_the_cases_it_finished(tmp_path, monkeypatch):
    import json

    path = tmp_path / "model.json"
    seen = []
    save = cli.save

    def saved(args, kind, env, rows, ratios, **extra):  # what the file holds after each save
        out = save(args, kind, env, rows, ratios, **extra)
        seen.append((len(json.loads(out.read_text())["rows"]), extra.get("complete", True)))
        return out

    monkeypatch.setattr(cli, "save", saved)
    assert cli.main(["--model", "--cases", "tiny:64:2", "tiny:64:2", "--output", str(path)]) == 0
    assert seen == [(2, False), (4, True)]  # two variants per case: after the first case, then at the end


def test_model_repeats_reach_every_case_and_a_bad_count_is_refused(monkeypatch, capsys):
    from locat_bench import bench_model as bm

    seen = []
    monkeypatch.setattr(bm, "bench_case", lambda case, variants, device, mode, repeats, log: seen.append(repeats) or [])
    assert cli.main(["--model", "--no-save", "--repeats", "9", "--cases", "tiny:64:2", "tiny:64:4"]) == 0
    assert seen == [9, 9]
    with pytest.raises(SystemExit):
        cli.main(["--model", "--no-save", "--repeats", "0"])
    assert "--repeats must be at least 1, got 0" in capsys.readouterr().err


def test_model_cases_of_every_family_build_the_backbone_and_its_locat_model():
    """``[family:]size:img:batch``: the "vit" variant is the family's backbone without LocAt, the
    locat variants its LocAt model."""
    from locat_bench import bench_model as bm

    expect = {"base:384:32": ("VisionTransformer", "LocAtViT"), "rope:tiny:64:2": ("Eva", "LocAtRoPEViT"),
              "swin:tiny:224:2": ("SwinTransformer", "LocAtSwin"), "jumbo:tiny:64:2": ("Jumbo", "Jumbo")}
    for spec, (backbone, locat) in expect.items():
        case = bm.ModelCase.parse(spec)
        if spec.startswith("base"):
            assert case == bm.ModelCase("base", 384, 32)
            continue
        b, m = bm.build(case, "vit", "cpu"), bm.build(case, "locat_sdpa", "cpu")
        assert type(b).__name__ == backbone and type(m).__name__ == locat, (spec, type(b), type(m))
        assert not any(".gaug." in k for k in b.state_dict()) and any(".gaug." in k for k in m.state_dict())
    assert bm.build(bm.ModelCase.parse("rope:tiny:64:2"), "vit", "cpu").embed_dim == 192
    with pytest.raises(ValueError, match="unknown model family 'deit'"):
        bm.ModelCase.parse("deit:tiny:224:2")
    with pytest.raises(ValueError, match=r"\[family:\]size:img:batch"):
        bm.ModelCase.parse("tiny:224")


def test_window_benchmark_says_it_needs_cuda(capsys, tmp_path):
    from locat_bench import bench_window

    with pytest.raises(SystemExit):
        bench_window.main(["--output", str(tmp_path / "w.json")])
    assert "needs CUDA" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_kernel_profile_says_it_needs_cuda(capsys):
    from locat_bench import kernel_profile

    with pytest.raises(SystemExit):
        kernel_profile.main(["--shapes", "2,2,4,4,1,16"])
    assert "need CUDA" in capsys.readouterr().err


def test_write_rows_records_the_command(monkeypatch, tmp_path):
    """The GPU tools' JSON: the rows, and the environment with the command that made them."""
    import json

    monkeypatch.setattr(cli, "environment", lambda device: dict(device=device))
    cli.write_rows(tmp_path / "r.json", "locat_bench.tune_gaug", ["--shapes", "1,2"], [dict(ms=0.5)])
    assert json.loads((tmp_path / "r.json").read_text()) == dict(
        environment=dict(device="cuda", command="python -m locat_bench.tune_gaug --shapes 1,2"), rows=[dict(ms=0.5)])


def test_tune_gaug_checks_shapes_then_needs_cuda(capsys, tmp_path):
    """``tune_gaug`` refuses a malformed shape by name (before anything runs), and without CUDA says so."""
    from locat_bench import tune_gaug

    with pytest.raises(SystemExit):
        tune_gaug.main(["--output", str(tmp_path / "g.json"), "--shapes", "2,2,4,4,1,16"])
    assert "seven integers" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            tune_gaug.main(["--output", str(tmp_path / "g.json"), "--shapes", "2,2,4,4,1,16,1"])
        assert "needs CUDA" in capsys.readouterr().err


def test_kernel_profile_switch_sets_and_restores_configs(capsys):
    """``--switch NAME=V1,V2``: each fused call runs under each value, SDPA once, the setting restored
    after each call; a name configs lacks, or a value that is not a literal, is refused by name."""
    from locat_bench import kernel_profile
    from locat_kernels.fused import configs

    seen = []
    calls = dict(gaussian=lambda: seen.append(("g", configs.MAX_GRID_ROWS)),
                 sdpa=lambda: seen.append(("s", configs.MAX_GRID_ROWS)))
    before = configs.MAX_GRID_ROWS
    names = [name for name, call in kernel_profile.switched(calls, "MAX_GRID_ROWS", [2, 7]) if call() or True]
    assert names == ["gaussian[MAX_GRID_ROWS=2]", "gaussian[MAX_GRID_ROWS=7]", "sdpa"]
    assert seen == [("g", 2), ("g", 7), ("s", before)] and configs.MAX_GRID_ROWS == before
    from locat_bench import tune

    for bad, message in (("NO_SUCH=1", "no switch 'NO_SUCH'"), ("MAX_GRID_ROWS=x y", "Python literals")):
        with pytest.raises(SystemExit):
            kernel_profile.main(["--shapes", "2,2,4,4,1,16", "--switch", bad])
        assert message in capsys.readouterr().err
        with pytest.raises(SystemExit):  # tune's sweep takes the same --switch
            tune.main(["--output", "unused.json", "--switch", bad])
        assert message in capsys.readouterr().err


def test_tune_sweep_times_every_shape_under_each_switch_value(monkeypatch, tmp_path):
    """The sweep: each shape x kernel x switch value x config timed once, ``--switch`` in place of each
    kernel's own switch for every shape (not only the first), the rows written as JSON; ``--dtype``: the
    inputs' dtype, and for float32 the small-tile candidates."""
    import json

    from locat_bench import tune

    timed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tune, "environment", lambda device: dict(device=device))
    monkeypatch.setattr(tune, "time_config", lambda kernel, spec, dtype, cand, regime, switch, value: (
        timed.append((spec, kernel, switch, value, cand)), (1.0, ""))[1])
    out = tmp_path / "t.json"
    shapes = ["2,2,4,4,1,16", "1,2,3,5,0,32"]
    assert tune.main(["--output", str(out), "--kernels", "forward", "backward_dkdv", "--shapes", *shapes,
                      "--configs", "16,16,1,1", "32,16,4,2", "--switch", "MAX_GRID_ROWS=2,4"]) == 0
    assert timed == [(spec, kernel, "MAX_GRID_ROWS", value, cand) for spec in shapes
                     for kernel in ("forward", "backward_dkdv") for value in (2, 4)
                     for cand in ((16, 16, 1, 1), (32, 16, 4, 2))]
    assert len(json.loads(out.read_text())["rows"]) == len(timed)
    timed.clear()  # without --switch: each kernel's own A/B
    tune.main(["--output", str(out), "--kernels", "backward_dkdv", "--shapes", shapes[0], "--configs", "16,16,1,1"])
    assert [t[2:4] for t in timed] == [("FACTORED_DKDV", "auto"), ("FACTORED_DKDV", False)]
    timed.clear()  # --dtype float32: the small-tile candidates, each timed in float32 (bfloat16 by default)
    dtypes = []
    monkeypatch.setattr(tune, "time_config", lambda kernel, spec, dtype, cand, regime, switch, value: (
        timed.append(cand), dtypes.append(dtype), (1.0, ""))[2])
    tune.main(["--output", str(out), "--kernels", "forward", "--shapes", shapes[0], "--default-switch",
               "--dtype", "float32"])
    assert timed == tune.SMALL_TILES and set(dtypes) == {torch.float32}
    timed.clear(), dtypes.clear()
    tune.main(["--output", str(out), "--kernels", "forward", "--shapes", shapes[0], "--default-switch"])
    assert timed == tune.CANDIDATES["forward"] and set(dtypes) == {torch.bfloat16}


def test_tune_rounds_time_every_config_in_turn_and_summarize(monkeypatch, tmp_path, capsys):
    """``--rounds 3``: all of a shape's configs, then all again (not one config three times running), every
    timing kept as a row with its round, and per config the median of the rounds that ran and their
    spread; a config that failed in one round keeps the others' median. ``--rounds 0`` is refused."""
    import json

    from locat_bench import tune

    ticks = iter([1.0, 4.0, 3.0, None, 2.0, 8.0])  # (a, b) in rounds 1, 2, 3
    timed = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tune, "environment", lambda device: dict(device=device))

    def fake(kernel, spec, dtype, cand, regime, switch, value):
        timed.append(cand)
        ms = next(ticks)
        return ms, "" if ms is not None else "failed to compile"

    monkeypatch.setattr(tune, "time_config", fake)
    out = tmp_path / "t.json"
    a, b = (16, 16, 1, 1), (32, 16, 4, 2)
    assert tune.main(["--output", str(out), "--kernels", "forward", "--shapes", "2,2,4,4,1,16", "--configs",
                      "16,16,1,1", "32,16,4,2", "--default-switch", "--rounds", "3"]) == 0
    assert timed == [a, b, a, b, a, b]
    result = json.loads(out.read_text())
    assert [(r["config"], r["round"], r["ms"]) for r in result["rows"]] == [
        (list(a), 0, 1.0), (list(b), 0, 4.0), (list(a), 1, 3.0), (list(b), 1, None), (list(a), 2, 2.0),
        (list(b), 2, 8.0)]
    (sa, sb) = result["summary"]
    assert (sa["config"], sa["ms"], sa["spread"], sa["runs"]) == (list(a), 2.0, 2.0, [1.0, 3.0, 2.0])
    assert (sb["config"], sb["ms"], sb["spread"], sb["runs"]) == (list(b), 6.0, 1.0, [4.0, None, 8.0])
    assert "median   6.0000 ms, spread 100.0% of 2/3" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        tune.main(["--output", str(out), "--rounds", "0"])
    assert "--rounds takes a count >= 1, got 0" in capsys.readouterr().err


def test_baseline_times_the_ops_in_rounds_each_op_in_turn():
    """``baseline run --op-rounds``: every round times each op in turn (forward and forward+backward,
    plain and replayed); the median round, its spread, and the ratio over SDPA's median."""
    from locat_bench import baseline
    from locat_bench.bench_attention import Shape, make_inputs

    shape = Shape.parse("1,2,3,3,1,16")
    inputs = make_inputs(shape, "broad", torch.float32, "cpu")
    called = []
    ops = {"after": lambda q, k, v, var, alpha, s: (called.append("after"), q + k + v + var.sum() + alpha.sum())[1],
           "sdpa": lambda q, k, v, var, alpha, s: (called.append("sdpa"), q + k + v)[1]}
    ticks = iter(range(1, 100))

    def timer(fn, graph):  # one call, then the next tick as its "time"
        fn()
        return float(next(ticks))

    row = baseline.time_ops(ops, inputs, shape, 3, timer)
    assert called == (["after"] * 4 + ["sdpa"] * 4) * 3
    # after: fwd plain 1, 9, 17; fwd+bwd replayed 4, 12, 20; sdpa's fwd plain 5, 13, 21
    assert row["after_fwd_plain_ms"] == 9 and row["after_fwd_plain_spread"] == 16
    assert row["after_fwd_bwd_graph_ms"] == 12 and row["sdpa_fwd_plain_ms"] == 13
    assert row["after_fwd_plain_over_sdpa"] == 9 / 13 and "sdpa_fwd_plain_over_sdpa" not in row
    assert "after_fwd_plain_spread" not in baseline.time_ops(ops, inputs, shape, 1, timer)


@pytest.mark.parametrize("layer", [False, True])
def test_baseline_ops_launch_the_op_or_the_layer_of_each_tree(layer):
    """``baseline run`` (``--layer``): "after" and "before" call their tree's op (gaussian_attention on
    q, k, v, var, alpha, or locat_attention on q, k, v and the layer tensors), "sdpa" q, k, v only; the
    gradients reach every input."""
    import locat_kernels
    from locat_bench import baseline
    from locat_bench.bench_attention import Shape, layer_weights, make_inputs

    shape = Shape.parse("1,2,3,4,1,16")
    inputs = make_inputs(shape, "broad", torch.float32, "cpu")
    if layer:
        inputs = (*inputs[:3], *layer_weights(16, "broad", "cpu"))
    ops = baseline.op_fns(locat_kernels, locat_kernels, layer)
    out = ops["after"](*inputs, shape)
    assert torch.equal(out, ops["before"](*inputs, shape))
    if layer:
        var, alpha = locat_kernels.gaussian_parameters(inputs[0][:, :, 1:].detach(), *(w.detach() for w in inputs[3:]),
                                                       shape.grid)
        args = (*inputs[:3], var, alpha)
    else:
        args = inputs
    ref = locat_kernels.gaussian_attention_reference(*(t.detach() for t in args), shape.grid, num_prefix_tokens=1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert all(g is not None for g in torch.autograd.grad(out.sum(), inputs))
    assert ops["sdpa"](*inputs, shape).shape == out.shape


def test_the_widths_group_spans_grid_widths_7_to_96_at_577_tokens_or_more(capsys):
    """``--shapes widths`` (README, v32): issue #11's widths at N >= 577, then head dims 128 and 80; a name
    outside the groups is refused with the known names."""
    from locat_bench import bench_attention as ba

    assert [s.grid[1] for s in ba.WIDTH_SHAPES] == [7, 12, 17, 20, 24, 28, 32, 37, 40, 48, 56, 64, 80, 96, 32, 32]
    assert all(s.N >= 577 for s in ba.WIDTH_SHAPES) and [s.D for s in ba.WIDTH_SHAPES[-2:]] == [128, 80]
    with pytest.raises(SystemExit):
        cli.main(["--no-save", "--shapes", "widths", "no such shape"])
    assert "or 'widths'" in capsys.readouterr().err


def test_model_ratios_pair_each_variant_with_the_backbone_of_its_own_batch():
    """Two cases of one model at two batches (a host-bound small batch beside a large one): each ratio is over the
    backbone's run at that batch and in that mode."""
    from locat_bench import bench_model as bm

    def row(variant, batch, mode, train, infer):
        return dict(model="tiny 224", batch=batch, variant=variant, mode=mode, train_img_s=train, infer_img_s=infer)

    rows = [row("vit", 16, "eager", 100.0, 200.0), row("locat_triton", 16, "eager", 90.0, 150.0),
            row("vit", 64, "eager", 400.0, 800.0), row("locat_triton", 64, "eager", 380.0, 760.0),
            row("vit", 64, "compiled", 500.0, 1000.0), row("locat_triton", 64, "compiled", 450.0, 900.0)]
    got = {(r["batch"], r["mode"]): (r["train_over_vit"], r["infer_over_vit"]) for r in bm.ratios(rows)}
    assert got == {(16, "eager"): (0.9, 0.75), (64, "eager"): (0.95, 0.95), (64, "compiled"): (0.9, 0.9)}


def test_model_ratios_from_gpu_busy_time_are_the_backbones_ms_over_ours():
    """A step that needs 1.25x the backbone's GPU time reads 0.8 (images per GPU ms), whatever the wall clock says;
    rows without the profile (CPU) get no such entry."""
    from locat_bench import bench_model as bm

    rows = [dict(model="tiny 224", batch=8, variant="vit", mode="compiled", train_img_s=100.0, infer_img_s=100.0,
                 train_gpu_busy_ms=10.0, infer_gpu_busy_ms=4.0),
            dict(model="tiny 224", batch=8, variant="locat_triton", mode="compiled", train_img_s=90.0,
                 infer_img_s=120.0, train_gpu_busy_ms=12.5, infer_gpu_busy_ms=5.0),
            dict(model="tiny 224", batch=8, variant="vit", mode="eager", train_img_s=100.0, infer_img_s=100.0),
            dict(model="tiny 224", batch=8, variant="locat_triton", mode="eager", train_img_s=90.0, infer_img_s=90.0)]
    compiled, eager = bm.ratios(rows)
    assert (compiled["train_gpu_over_vit"], compiled["infer_gpu_over_vit"]) == (0.8, 0.8)
    assert (compiled["train_over_vit"], compiled["infer_over_vit"]) == (0.9, 1.2)
    assert "train_gpu_over_vit" not in eager and "infer_gpu_over_vit" not in eager
