"""``locat_attention``: var and alpha made from the queries inside the fused kernels (one launch each
way), against the float64 reference (``gaussian_parameters`` + ``gaussian_attention_reference``):
out, dq (through the attention and through var and alpha), dk, dv and the four layer gradients.

Small shapes run everywhere (CPU through the Triton interpreter, in CI); low precision at ViT sizes
needs CUDA.
"""
import pytest
import torch

from helpers import assert_matches_reference, make_inputs, make_layers
from locat_kernels import gaussian_attention, gaussian_parameters, locat_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (grid, prefix tokens, head_dim, rate, build grid): rate 2, rectangular grids, padded head dims,
# a grid larger than the build grid (variance rescale, clamp), N = 1.
SMALL = [
    ((4, 6), 1, 16, 1, None),
    ((4, 4), 0, 16, 2, None),
    ((6, 4), 3, 24, 2, None),
    ((5, 7), 1, 16, 1, (4, 4)),
    ((6, 8), 2, 40, 2, (4, 4)),
    ((1, 1), 0, 16, 1, None),
    ((3, 16), 1, 32, 1, None),
]


def _inputs(B, H, grid, P, D, device, dtype=torch.float32):
    q, k, v, _, _ = make_inputs(B, H, grid, P, D, device=device, dtype=dtype)
    return [q, k, v, *make_layers(D, device=device)]


@pytest.mark.parametrize("grid,P,D,rate,init", SMALL, ids=lambda x: str(x).replace(" ", ""))
def test_small_fp32_matches_float64(request, device, grid, P, D, rate, init):
    inputs = _inputs(2, 2, grid, P, D, device)
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), locat=True, grid_size=grid,
                             num_prefix_tokens=P, rate=rate, init_grid_size=init)


def test_gradient_through_var_and_alpha_is_not_dropped(device):
    """dq includes the path through var and alpha: with var and alpha detached, dq differs by far
    more than rounding, so the comparisons above would see that path missing."""
    q, k, v, *layers = _inputs(1, 2, (4, 4), 1, 16, device)
    do = torch.randn_like(q)
    (dq,) = torch.autograd.grad(locat_attention(q, k, v, *layers, (4, 4), num_prefix_tokens=1, backend="triton"), q, do)
    var, alpha = gaussian_parameters(q.detach()[:, :, 1:], *layers, (4, 4))
    out = gaussian_attention(q, k, v, var.detach(), alpha.detach(), (4, 4), num_prefix_tokens=1, backend="triton")
    (dq_attention_only,) = torch.autograd.grad(out, q, do)
    assert (dq - dq_attention_only).norm() > 1e-2 * dq.norm()


def test_layer_gradients_have_the_parameters_strides(device):
    """DistributedDataParallel copies each gradient into a bucket view with the parameter's strides,
    and warns (slower) when they differ: the four layer gradients come laid out as the layers."""
    q, k, v, *layers = _inputs(2, 2, (4, 4), 1, 16, device)
    out = locat_attention(q, k, v, *layers, (4, 4), num_prefix_tokens=1, backend="triton")
    for g, w in zip(torch.autograd.grad(out, layers, torch.randn_like(out)), layers):
        assert g.shape == w.shape and g.stride() == w.stride(), (g.stride(), w.stride())


def test_compile_fullgraph_equals_eager(device):
    """Under torch.compile the triton ops (locat::locat_attention and its backward) give eager's
    out and gradients exactly."""
    from helpers import LOCAT_NAMES, run

    inputs = _inputs(1, 2, (4, 4), 1, 16, device)
    kwargs = dict(grid_size=(4, 4), num_prefix_tokens=1, backend="triton")
    do = torch.randn_like(inputs[0])
    eager = run(locat_attention, inputs, do, **kwargs)
    compiled = torch.compile(locat_attention, fullgraph=True, backend="inductor" if device == "cuda" else "eager")
    for name, g, e in zip(LOCAT_NAMES, run(compiled, inputs, do, **kwargs), eager):
        assert torch.equal(g, e), name


LOW = [torch.bfloat16, torch.float16]
CUDA_SHAPES = [  # (B, H, grid, P, D, rate)
    (4, 3, (14, 14), 1, 64, 1),
    (2, 2, (32, 32), 1, 64, 2),
    (1, 2, (24, 24), 1, 64, 1),
    (2, 2, (13, 17), 3, 80, 1),
    (1, 2, (16, 16), 5, 96, 2),
]


@cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=lambda s: f"B{s[0]}H{s[1]}g{s[2][0]}x{s[2][1]}P{s[3]}D{s[4]}r{s[5]}")
@pytest.mark.parametrize("dtype", LOW + [torch.float32], ids=str)
def test_cuda_matches_float64(request, shape, dtype):
    B, H, grid, P, D, rate = shape
    inputs = _inputs(B, H, grid, P, D, "cuda", dtype)
    assert_matches_reference(request, inputs, torch.randn_like(inputs[0]), locat=True, grid_size=grid,
                             num_prefix_tokens=P, rate=rate)
