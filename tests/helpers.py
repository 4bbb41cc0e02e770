"""Inputs and error measures shared by the tests (the reference itself lives in locat_kernels)."""
import torch

from locat_kernels import gaussian_attention, gaussian_attention_reference, locat_attention


def make_inputs(B, H, grid, P, D, *, device, dtype=torch.float32, var_range=(0.01, 100.0), alpha_max=2.0):
    """q, k, v as strided views of one qkv tensor (as timm makes them); var log-uniform in var_range."""
    gh, gw = grid
    N = P + gh * gw
    qkv = torch.randn(B, N, 3, H, D, device=device, dtype=dtype).permute(2, 0, 3, 1, 4)
    q, k, v = (t.requires_grad_() for t in qkv.detach().unbind(0))
    lo, hi = torch.log(torch.tensor(var_range, dtype=torch.float64))
    var = torch.exp(lo + (hi - lo) * torch.rand(B, H, gh * gw, 2, dtype=torch.float64)).float().to(device)
    alpha = (alpha_max * torch.rand(B, H, gh * gw, device=device)).float()
    return q, k, v, var.requires_grad_(), alpha.requires_grad_()


def make_layers(D, *, device, scale=0.3):
    """Random ``gaug`` layer tensors (log_var weight and bias, log_alpha weight and bias), large
    enough that var and alpha vary over the grid and their gradients matter."""
    return [(scale * torch.randn(*shape, device=device)).requires_grad_()
            for shape in ((2, D), (2,), (1, D), (1,))]


def run(fn, inputs, do, **kwargs):
    """out and the gradients of (out * do).sum() w.r.t. all five inputs."""
    out = fn(*inputs, **kwargs)
    return [out, *torch.autograd.grad(out, inputs, do)]


def record(request, tensor: str, err: float) -> float:
    """Keep a test's error in its report (``user_properties``, which pytest-xdist carries too), so
    ``LOCAT_TEST_SUMMARY`` can list the worst errors of a run. ``request`` None: not kept."""
    if request is not None:
        request.node.user_properties.append((f"rel_err::{tensor}", err))
    return err


def rel_err(x, ref):
    """||x - ref|| / ||ref|| in float64; NaN anywhere gives NaN, which fails every comparison.

    The denominator is floored at an RMS of 0.1 (inputs are O(1)), so gradients that are exactly zero
    in exact arithmetic (N = 1) are judged by their absolute rounding error, not divided by zero.
    """
    x = x.detach().cpu().double()
    return ((x - ref).norm() / ref.norm().clamp_min(0.1 * ref.numel() ** 0.5)).item()


NAMES = ("out", "dq", "dk", "dv", "dvar", "dalpha")
LOCAT_NAMES = ("out", "dq", "dk", "dv", "dw_var", "db_var", "dw_alpha", "db_alpha")


def _locat_reference(q, k, v, *layers, **kwargs):
    return locat_attention(q, k, v, *layers, **kwargs, backend="reference")


def reference_errors(request, inputs, do, fp32_tol=1e-5, locat=False, **kwargs) -> list[tuple[str, float, float]]:
    """(name, error, bound) of the fused op's out and gradients against the float64 reference:
    the bound is ``fp32_tol`` for fp32 inputs; for fp16/bf16, 2x the error of eager PyTorch (the
    reference in that dtype). Shapes and dtypes are asserted. ``locat``: ``locat_attention`` on
    (q, k, v, *layers), else ``gaussian_attention`` on (q, k, v, var, alpha)."""
    fn, ref_fn, names = ((locat_attention, _locat_reference, LOCAT_NAMES) if locat
                         else (gaussian_attention, gaussian_attention_reference, NAMES))
    got = run(fn, inputs, do, backend="triton", **kwargs)
    ref = run(ref_fn, [t.detach().cpu().double().requires_grad_() for t in inputs], do.detach().cpu().double(),
              **kwargs)
    low = inputs[0].dtype != torch.float32
    eager = run(ref_fn, inputs, do, **kwargs) if low else [None] * len(names)
    dtypes = [inputs[0].dtype] + [t.dtype for t in inputs]
    errors = []
    for name, g, e, r, dtype in zip(names, got, eager, ref, dtypes):
        assert g.shape == r.shape and g.dtype == dtype, f"{name}: {g.shape} {g.dtype}"
        err = record(request, name, rel_err(g, r))
        bound = 2 * record(request, f"{name}_eager", rel_err(e, r)) if low else fp32_tol
        errors.append((name, err, bound))
    return errors


def assert_matches_reference(request, inputs, do, fp32_tol=1e-5, locat=False, **kwargs):
    """Every error of ``reference_errors`` within its bound."""
    for name, err, bound in reference_errors(request, inputs, do, fp32_tol, locat, **kwargs):
        assert err <= bound, f"{name}: relative error {err:.2e}, bound {bound:.2e}"


def check_locatify(model, built, x, **kwargs):
    """``locat_vit.locatify(model, **kwargs)``: the same object, every weight kept under its name,
    only ``.attn.gaug.`` keys added, and the function of ``built`` (the registered LocAt model, in
    eval mode) loaded strictly with the result's state. Returns the converted model."""
    import locat_vit

    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = locat_vit.locatify(model, **kwargs)
    assert out is model
    after = out.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert {k for k in after if k not in before} == {k for k in after if ".attn.gaug." in k} != set()
    built.load_state_dict(after, strict=True)
    torch.testing.assert_close(out.eval()(x), built.eval()(x), rtol=0, atol=0)
    return out


def check_fused_model(fused, ref, x, grad_tol=1e-4):
    """A model on the triton backend (float32, on its device) against the same weights in the eager
    float64 model ``ref`` (CPU): the output within 1e-5 and every parameter's gradient within
    ``grad_tol`` (relative), for the loss ``sum(out^2)`` on the float64 input ``x``."""
    outs = [m(x.to(next(m.parameters()).device, next(m.parameters()).dtype)) for m in (fused, ref)]
    for out in outs:
        out.double().cpu().square().sum().backward()
    assert (outs[0].detach().double().cpu() - outs[1]).norm() <= 1e-5 * outs[1].norm()
    grads = dict(ref.named_parameters())
    for name, p in fused.named_parameters():
        r = grads[name].grad
        assert (p.grad.double().cpu() - r).norm() <= grad_tol * r.norm() + 1e-12, name
