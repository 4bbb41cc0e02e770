"""The reference against formulas written out directly in float64, and gradcheck."""
import math

import pytest
import torch

from locat_kernels import gaussian_attention_reference, gaussian_bias, gaussian_clamp, gaussian_eps


@pytest.mark.parametrize("side,eps", [(14, 0.1), (32, 0.2), (64, 0.4)])
def test_eps_follows_the_published_rule(side, eps):
    # docs/method.md: 14 -> 0.1, 32 -> 0.2, 64 -> 0.4.
    assert gaussian_eps(side) == pytest.approx(eps)
    assert gaussian_eps((side // 2, side)) == pytest.approx(eps)  # the larger side decides


def test_clamp_value():
    assert gaussian_clamp((14, 14)) == -0.5 * 13**2
    assert gaussian_clamp((200, 100)) == -6550.0  # float16-safe floor


def _direct_bias(var, alpha, gh, gw, P, eps, cmin, rate=1):
    """The formula of docs/method.md element by element, in float64 Python arithmetic."""
    B, H = var.shape[:2]
    N = P + gh * gw
    out = torch.zeros(B, H, N, N, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(gh * gw):
                ri, ci = (i // gw) // rate * rate, (i % gw) // rate * rate
                for j in range(gh * gw):
                    rj, cj = (j // gw) // rate * rate, (j % gw) // rate * rate
                    cr = max(-0.5 * (ri - rj) ** 2, cmin)
                    cc = max(-0.5 * (ci - cj) ** 2, cmin)
                    e = cr / (float(var[b, h, i, 0]) + eps) + cc / (float(var[b, h, i, 1]) + eps)
                    out[b, h, P + i, P + j] = float(alpha[b, h, i]) * math.exp(e)
    return out


@pytest.mark.parametrize("grid,P,rate,init", [((3, 4), 1, 1, None), ((4, 4), 0, 2, None), ((5, 3), 3, 1, (2, 2))])
def test_bias_matches_direct_formula(grid, P, rate, init):
    gh, gw = grid
    var = torch.rand(2, 2, gh * gw, 2, dtype=torch.float64) * 3 + 0.05
    alpha = torch.rand(2, 2, gh * gw, dtype=torch.float64) * 2
    got = gaussian_bias(var, alpha, grid, num_prefix_tokens=P, init_grid_size=init, rate=rate)
    init = grid if init is None else init
    want = _direct_bias(var, alpha, gh, gw, P, gaussian_eps(init), gaussian_clamp(init), rate)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_attention_matches_direct_softmax():
    B, H, gh, gw, P, D = 1, 2, 3, 3, 1, 8
    N = P + gh * gw
    q, k, v = torch.randn(3, B, H, N, D, dtype=torch.float64)
    var = torch.rand(B, H, gh * gw, 2, dtype=torch.float64) + 0.5
    alpha = torch.rand(B, H, gh * gw, 1, dtype=torch.float64)
    bias = _direct_bias(var, alpha[..., 0], gh, gw, P, gaussian_eps(3), gaussian_clamp(3))
    logits = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(D) + bias
    want = torch.einsum("bhij,bhjd->bhid", torch.softmax(logits, -1), v)
    got = gaussian_attention_reference(q, k, v, var, alpha, (gh, gw), num_prefix_tokens=P)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_rate2_bias_is_constant_per_block_pair():
    """Rate 2 with var/alpha shared per 2x2 block: the bias is the same for every query/key pair of
    two blocks (positions snap to each block's top-left corner), as the published approximation."""
    gh, gw, P = 4, 6, 1
    up = lambda t: t.repeat_interleave(2, 2).repeat_interleave(2, 3)  # noqa: E731
    var = up(torch.rand(1, 2, gh // 2, gw // 2, 2, dtype=torch.float64) + 0.3).reshape(1, 2, gh * gw, 2)
    alpha = up(torch.rand(1, 2, gh // 2, gw // 2, dtype=torch.float64)).reshape(1, 2, gh * gw)
    got = gaussian_bias(var, alpha, (gh, gw), num_prefix_tokens=P, rate=2)
    want = _direct_bias(var, alpha, gh, gw, P, gaussian_eps((gh, gw)), gaussian_clamp((gh, gw)), rate=2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    blocks = got[0, :, P:, P:].reshape(2, gh // 2, 2, gw // 2, 2, gh // 2, 2, gw // 2, 2)
    assert torch.equal(blocks, blocks[:, :, :1, :, :1, :, :1, :, :1].expand_as(blocks))


def test_gradcheck_all_inputs():
    B, H, gh, gw, P, D = 1, 2, 2, 3, 1, 4
    N = P + gh * gw
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    var = (torch.rand(B, H, gh * gw, 2, dtype=torch.float64) + 0.3).requires_grad_()
    alpha = torch.rand(B, H, gh * gw, dtype=torch.float64).requires_grad_()
    fn = lambda *t: gaussian_attention_reference(*t, (gh, gw), num_prefix_tokens=P)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, var, alpha))


def test_gradcheck_with_the_window_bias():
    """The reference's gradients to Swin's relative position bias (H, N, N), added over every
    window with a shift mask, and to q, k, v, var and alpha beside it, against finite differences
    (the kernel's bias gradient is tested against this reference: tests/test_window.py)."""
    B, H, gh, gw, nW, D = 4, 2, 2, 2, 2, 4
    N = gh * gw
    q, k, v = (torch.randn(B, H, N, D, dtype=torch.float64, requires_grad=True) for _ in range(3))
    var = (torch.rand(B, H, N, 2, dtype=torch.float64) + 0.3).requires_grad_()
    alpha = torch.rand(B, H, N, dtype=torch.float64).requires_grad_()
    bias = (0.5 * torch.randn(H, N, N, dtype=torch.float64)).requires_grad_()
    mask = torch.where(torch.rand(nW, N, N) < 0.3, -100.0, 0.0).double()
    fn = lambda *t: gaussian_attention_reference(*t[:5], (gh, gw), attn_bias=t[5], window_mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, var, alpha, bias))


def test_reference_keeps_float64():
    q = torch.randn(1, 1, 5, 4, dtype=torch.float64)
    var = torch.ones(1, 1, 4, 2, dtype=torch.float64)
    alpha = torch.ones(1, 1, 4, dtype=torch.float64)
    assert gaussian_attention_reference(q, q, q, var, alpha, (2, 2), num_prefix_tokens=1).dtype == torch.float64
