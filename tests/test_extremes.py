"""Extreme but valid inputs, the opt-in value check, and a seeded fuzz against the float64 reference.

CPU cases run through the Triton interpreter in CI; the large and low-precision ones need CUDA.
``LOCAT_FUZZ_CASES=N`` sets the fuzz length (default 12; on CUDA each new variant compiles),
``LOCAT_FUZZ_SECONDS=S`` stops it earlier after S seconds, and ``LOCAT_FUZZ_SUMMARY=path.json``
writes the counts of cases tried and failed (rewritten after every case, so a killed run keeps them).
"""
import json
import os
import random
import time

import pytest
import torch

from helpers import assert_matches_reference, make_inputs, reference_errors
from locat_kernels import gaussian_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("case", ["var_1e-6", "var_at_coef", "alpha_0", "alpha_50", "large_logits"])
def test_extreme_values(request, device, case):
    grid, P = (5, 6), 1
    var_range, alpha_max = (0.5, 2.0), 2.0
    if case == "var_1e-6":
        var_range = (1e-6, 2e-6)
    elif case == "var_at_coef":
        var_range = (35.9, 36.0)  # coef = max(gh0, gw0)^2 = 36: the largest variance the model makes
    elif case == "alpha_50":
        alpha_max = 50.0
    q, k, v, var, alpha = make_inputs(2, 2, grid, P, 16, device=device, var_range=var_range, alpha_max=alpha_max)
    if case == "alpha_0":
        alpha = torch.zeros_like(alpha).requires_grad_()
    if case == "large_logits":  # logits of several hundred: a naive exp overflows
        q = (q.detach() * 12).requires_grad_()
    assert_matches_reference(request, [q, k, v, var, alpha], torch.randn_like(q), grid_size=grid, num_prefix_tokens=P)


@pytest.mark.parametrize("grid,P,init", [((1, 1), 0, None), ((1, 23), 2, None), ((9, 9), 1, (5, 5))],
                         ids=["1x1", "1xN", "clamp"])
def test_extreme_grids(request, device, grid, P, init):
    inputs = make_inputs(1, 3, grid, P, 32, device=device, var_range=(0.05, 30.0))
    # N = 1: dS = p (dP - delta) is zero in exact arithmetic, and what the kernel leaves is the rounding
    # of dP (a dot product) against delta (a row sum of dO * O): about eps |dO| |V| ~ 2e-6 per element.
    tol = 3e-5 if grid == (1, 1) and P == 0 else 1e-5
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), fp32_tol=tol,
                             grid_size=grid, num_prefix_tokens=P, init_grid_size=init)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN inputs, on purpose
def test_value_check_is_opt_in(device):
    q, k, v, var, alpha = (t.detach() for t in make_inputs(1, 1, (2, 2), 1, 16, device=device))
    bad = var.clone()
    bad[0, 0, 1, 0] = -1.0
    bad[0, 0, 2, 1] = float("nan")
    gaussian_attention(q, k, v, bad, alpha, (2, 2), num_prefix_tokens=1)  # not checked: no device sync
    with pytest.raises(ValueError, match="2 bad var values, 0 bad alpha values"):
        gaussian_attention(q, k, v, bad, alpha, (2, 2), num_prefix_tokens=1, check_values=True)
    gaussian_attention(q, k, v, var, alpha, (2, 2), num_prefix_tokens=1, check_values=True)


def test_fuzz_against_reference(device):
    """Random shapes, prefixes, rates, dtypes and values; every case against the float64 reference."""
    n = int(os.environ.get("LOCAT_FUZZ_CASES", 12))
    deadline = time.monotonic() + float(os.environ.get("LOCAT_FUZZ_SECONDS", "inf"))
    path = os.environ.get("LOCAT_FUZZ_SUMMARY")
    seed = int.from_bytes(os.urandom(4), "little") if os.environ.get("LOCAT_FRESH_SEED") else 1234
    rng = random.Random(seed)
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if device == "cuda" else [])
    dims = [16, 24, 32, 40] + ([48, 56, 64, 72, 80, 96, 120, 128, 192, 256] if device == "cuda" else [])  # 40, 48: 32 + 16
    failures, tried = [], 0
    for i in range(n):
        if time.monotonic() > deadline:
            break
        rate = rng.choice([1, 1, 2])
        # CUDA: rate-1 widths 1 to 127 (every key-tile layout: packed rows, 8 rows of 8, column chunks, one-row
        # chunks at 65-127), rate-2 even widths to 96
        gh, gw = (rate * rng.randint(1, 6), rate * rng.randint(1, 6)) if device == "cpu" else \
            (rate * rng.randint(1, 24), rng.randint(1, 127) if rate == 1 else 2 * rng.randint(1, 48))
        P, D, dtype = rng.randint(0, 5), rng.choice(dims), rng.choice(dtypes)
        B, H = rng.randint(1, 3), rng.randint(1, 4)
        lo = 10 ** rng.uniform(-3, 1)
        init = rng.choice([None, (max(1, gh // 2), max(1, gw // 2))])
        inputs = make_inputs(B, H, (gh, gw), P, D, device=device, dtype=dtype, var_range=(lo, lo * 10 ** rng.uniform(0, 2)),
                             alpha_max=rng.choice([0.5, 2.0, 10.0]))
        errors = reference_errors(None, inputs, torch.randn_like(inputs[0]), grid_size=(gh, gw),
                                  num_prefix_tokens=P, rate=rate, init_grid_size=init)
        for name, err, bound in errors:
            if not err <= bound:
                failures.append(dict(case=i, tensor=name, err=err, bound=bound, shape=[B, H, gh, gw, P, D],
                                     rate=rate, dtype=str(dtype), init=init))
        tried += 1
        if path:
            with open(path, "w") as f:
                json.dump(dict(device=str(torch.cuda.get_device_name() if device == "cuda" else "cpu"),
                               torch=torch.__version__, seed=seed, cases=tried, failed_cases=len({f["case"] for f in failures}),
                               failures=failures), f, indent=1)
    assert tried > 0, "LOCAT_FUZZ_SECONDS left no time for a single case"
    assert not failures, failures[:5]


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_large_logits_low_precision(request, dtype):
    q, k, v, var, alpha = make_inputs(2, 4, (14, 14), 1, 64, device="cuda", dtype=dtype, alpha_max=50.0)
    q = (q.detach() * 8).requires_grad_()  # logits in the hundreds: exp overflows fp16 without the max shift
    assert_matches_reference(request, [q, k, v, var, alpha], torch.randn_like(q), grid_size=(14, 14), num_prefix_tokens=1)


@cuda
def test_cuda_96x96_grid(request):
    # one (batch, head): the float64 reference on the CPU holds several 9217 x 9217 matrices
    inputs = make_inputs(1, 1, (96, 96), 1, 64, device="cuda", dtype=torch.bfloat16, var_range=(0.5, 96.5))
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), grid_size=(96, 96), num_prefix_tokens=1)
