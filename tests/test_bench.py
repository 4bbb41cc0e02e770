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


def test_op_report_runs_every_peer_through_the_interpreter(capsys):
    assert cli.main(["--no-save", "--shapes", "tiny 4x6+5"]) == 0
    out = capsys.readouterr().out
    assert "No ratio table on CPU" in out
    for peer in ("locat", "eager", "sdpa_bias", "sdpa"):
        assert f" {peer} " in out, out


def test_host_profile_of_a_layer_and_the_compiled_step_needs_cuda(capsys):
    from locat_bench import host_profile

    assert host_profile.main(["--calls", "3", "--top", "5"]) == 0
    assert "Ordered by: internal time" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        host_profile.main(["--compiled-step", "tiny:224:8"])
    assert "--compiled-step needs CUDA" in capsys.readouterr().err
