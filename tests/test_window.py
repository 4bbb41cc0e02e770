"""``gaussian_attention`` with ``attn_bias`` and ``window_mask`` (LocAt Swin's windows): the window
kernel against the float64 reference, out and all six gradients (the bias's summed over windows),
its input checks, and the op under torch.compile.

Small shapes run everywhere (CPU through the Triton interpreter, two windows per program there, so
the bias gradient's partial sums are exercised); low precision needs CUDA.
"""
import pytest
import torch

from helpers import make_inputs, make_layers, rel_err
from locat_kernels import gaussian_attention, locat_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
NAMES = ("out", "dq", "dk", "dv", "dvar", "dalpha", "dbias")


def _inputs(Bw, H, window, D, nW, device, dtype=torch.float32, with_bias=True):
    q, k, v, var, alpha = make_inputs(Bw, H, window, 0, D, device=device, dtype=dtype, var_range=(0.3, 30.0))
    N = window[0] * window[1]
    bias = (0.5 * torch.randn(H, N, N, device=device)).requires_grad_() if with_bias else None
    # Swin's shift mask: 0 within a region, -100 across; None for unshifted blocks
    mask = torch.where(torch.rand(nW, N, N, device=device) < 0.3, -100.0, 0.0) if nW else None
    return [q, k, v, var, alpha] + ([bias] if with_bias else []), mask


def _run(backend, inputs, mask, do, window):
    bias = inputs[5] if len(inputs) > 5 else None
    out = gaussian_attention(*inputs[:5], window, attn_bias=bias, window_mask=mask, backend=backend)
    return [out, *torch.autograd.grad(out, inputs, do)]


def _reference(inputs, mask, do, window):
    return _run("reference", [t.detach().cpu().double().requires_grad_() for t in inputs],
                None if mask is None else mask.cpu().double(), do.cpu().double(), window)


# (windows, heads, window grid, head_dim, mask positions nW): Swin's 7 x 7, a window of 1 token,
# rectangular, 64 tokens (one full tile), a padded head dim, 5 windows (a partial program group)
SMALL = [(6, 2, (7, 7), 16, 3), (4, 1, (1, 1), 16, 2), (4, 2, (4, 6), 32, 0), (2, 1, (8, 8), 16, 1),
         (5, 2, (3, 5), 24, 5)]


@pytest.mark.parametrize("Bw,H,window,D,nW", SMALL, ids=lambda x: str(x).replace(" ", ""))
def test_small_fp32_matches_float64(device, Bw, H, window, D, nW):
    inputs, mask = _inputs(Bw, H, window, D, nW, device)
    do = torch.randn_like(inputs[0])
    for name, g, r in zip(NAMES, _run("triton", inputs, mask, do, window), _reference(inputs, mask, do, window)):
        assert g.shape == r.shape and g.dtype == torch.float32, name
        # dbias sums Bw windows' dS: its rounding grows as sqrt(Bw) where it is 0 in exact arithmetic (N = 1)
        tol = 1e-5 * (Bw ** 0.5 if name == "dbias" else 1)
        assert rel_err(g, r) <= tol, f"{name}: {rel_err(g, r):.2e}"


@pytest.mark.parametrize("window,nW", [((7, 7), 3), ((4, 6), 0)])
def test_locat_attention_with_window_inputs_matches_float64(device, window, nW):
    """``locat_attention`` with attn_bias and window_mask (LocAt Swin's call): var and alpha by the
    Gaussian-augmentation kernel, then the window kernel; out and the gradients to q (both paths),
    k, v, the four layer tensors and the bias against the float64 reference."""
    (q, k, v, _, _, bias), mask = _inputs(6, 2, window, 16, nW, device)
    inputs = [q, k, v, *make_layers(16, device=device), bias]
    do = torch.randn_like(q)

    def run(backend, ts, m):
        out = locat_attention(*ts[:7], window, attn_bias=ts[7], window_mask=m, backend=backend)
        return [out, *torch.autograd.grad(out, ts, do.to(out))]

    got = run("triton", inputs, mask)
    ref = run("reference", [t.detach().cpu().double().requires_grad_() for t in inputs],
              None if mask is None else mask.cpu().double())
    names = ("out", "dq", "dk", "dv", "dw_var", "db_var", "dw_alpha", "db_alpha", "dbias")
    for name, g, r in zip(names, got, ref):
        assert rel_err(g, r) <= 1e-5 * (6 ** 0.5 if name == "dbias" else 1), f"{name}: {rel_err(g, r):.2e}"


def test_a_mask_alone_and_the_nan_poisoned_outputs(device, monkeypatch):
    """Only the shift mask (no learned bias): the kernel reads a zero bias tile; every output
    element is written (the buffers start as NaN)."""
    from locat_kernels.fused import configs

    monkeypatch.setattr(configs, "POISON_OUTPUTS", True)
    inputs, mask = _inputs(4, 2, (7, 7), 16, 2, device, with_bias=False)
    do = torch.randn_like(inputs[0])
    got, ref = _run("triton", inputs, mask, do, (7, 7)), _reference(inputs, mask, do, (7, 7))
    for name, g, r in zip(NAMES, got, ref):
        assert torch.isfinite(g).all() and rel_err(g, r) <= 1e-5, name


def test_compile_fullgraph_equals_eager(device):
    """The triton ops locat::window_attention and its backward under torch.compile give eager's
    out and gradients exactly."""
    inputs, mask = _inputs(4, 2, (4, 4), 16, 2, device)
    do = torch.randn_like(inputs[0])

    def fn(q, k, v, var, alpha, bias):
        return gaussian_attention(q, k, v, var, alpha, (4, 4), attn_bias=bias, window_mask=mask, backend="triton")

    compiled = torch.compile(fn, fullgraph=True, backend="inductor" if device == "cuda" else "eager")
    for name, f in zip(NAMES, zip(*(
            [fn_(*inputs), *torch.autograd.grad(fn_(*inputs), inputs, do)] for fn_ in (compiled, fn)))):
        assert torch.equal(*f), name


def test_bad_bias_and_mask_fail_before_any_launch_naming_them(device):
    inputs, mask = _inputs(4, 2, (4, 4), 16, 2, device)
    q, k, v, var, alpha, bias = inputs
    N = 16

    def call(**kwargs):
        return gaussian_attention(q, k, v, var, alpha, (4, 4), backend="triton", **kwargs)

    with pytest.raises(ValueError, match=r"attn_bias must have shape \(H, N, N\) = \(2, 16, 16\)"):
        call(attn_bias=bias[0])
    with pytest.raises(TypeError, match="attn_bias must be float32 or q's dtype"):
        call(attn_bias=bias.detach().to(torch.int32))
    with pytest.raises(TypeError, match="window_mask must be a torch.Tensor"):
        call(window_mask=[[0.0]])
    with pytest.raises(ValueError, match="window_mask must have shape .* multiple of nW"):
        call(window_mask=torch.zeros(3, N, N, device=device))
    with pytest.raises(ValueError, match="window_mask must have shape"):
        call(window_mask=torch.zeros(2, N, N - 1, device=device))
    with pytest.raises(ValueError, match="window_mask must have shape"):
        call(window_mask=torch.zeros(0, N, N, device=device))  # no window position: not a division by zero
    with pytest.raises(ValueError, match="window_mask gets no gradient"):
        call(window_mask=mask.clone().requires_grad_())
    q5, k5, v5, var5, alpha5 = make_inputs(2, 2, (4, 4), 1, 16, device=device)
    with pytest.raises(ValueError, match="without prefix tokens"):
        gaussian_attention(q5, k5, v5, var5, alpha5, (4, 4), num_prefix_tokens=1, backend="triton",
                           attn_bias=torch.zeros(2, 17, 17, device=device))
    q9, k9, v9, var9, alpha9 = make_inputs(1, 1, (9, 9), 0, 16, device=device)
    with pytest.raises(ValueError, match="at most 64 tokens, got N=81"):
        gaussian_attention(q9, k9, v9, var9, alpha9, (9, 9), backend="triton", attn_bias=torch.zeros(1, 81, 81, device=device))


def test_fp16_within_twice_eager(device):
    """fp16 (the interpreter runs it too; bf16 it cannot): each tensor's error against float64 at most
    twice eager PyTorch's in fp16."""
    inputs, mask = _inputs(4, 2, (7, 7), 32, 2, device, torch.float16)
    inputs[5] = inputs[5].detach().half().requires_grad_()
    do = torch.randn_like(inputs[0])
    got, ref = _run("triton", inputs, mask.half(), do, (7, 7)), _reference(inputs, mask, do, (7, 7))
    eager = _run("reference", inputs, mask.half(), do, (7, 7))
    for name, g, r, e in zip(NAMES, got, ref, eager):
        assert rel_err(g, r) <= 2 * rel_err(e, r), f"{name}: {rel_err(g, r):.2e} vs eager {rel_err(e, r):.2e}"


LOW = [torch.bfloat16, torch.float16]


@cuda
@pytest.mark.parametrize("dtype", LOW + [torch.float32, "tf32x3"], ids=str)
def test_swin_shapes_on_cuda(dtype, monkeypatch):
    """Swin-T's first stage (batch 8: 512 windows of 7 x 7, 3 heads of 32) and its last (24 heads):
    fp32 within 1e-5 of float64 (also with ``set_fp32_precision("tf32x3")``); fp16/bf16 within twice
    eager PyTorch's error at the same dtype."""
    if dtype == "tf32x3":
        from locat_kernels.fused import configs

        monkeypatch.setattr(configs, "FP32_PRECISION", "tf32x3")
        dtype = torch.float32
    for Bw, H, D, nW in ((512, 3, 32, 64), (8, 24, 32, 1)):
        inputs, mask = _inputs(Bw, H, (7, 7), D, nW, "cuda", dtype)
        inputs[5] = inputs[5].detach().to(dtype).requires_grad_() if dtype != torch.float32 else inputs[5]
        do = torch.randn_like(inputs[0])
        got, ref = _run("triton", inputs, mask.to(dtype), do, (7, 7)), _reference(inputs, mask, do, (7, 7))
        eager = _run("reference", inputs, mask.to(dtype), do, (7, 7)) if dtype != torch.float32 else None
        for i, (name, g, r) in enumerate(zip(NAMES, got, ref)):
            bound = 1e-5 if eager is None else 2 * rel_err(eager[i], r)
            assert rel_err(g, r) <= bound, f"{name}: {rel_err(g, r):.2e} > {bound:.2e}"
