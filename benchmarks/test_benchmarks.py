"""pytest-benchmark cases (CUDA): ``pytest benchmarks/ --benchmark-only``. They skip without a GPU.

The op at ViT-B 224 and 512 (forward+backward, every backend that fits) and a LocAtViT-Base training
step per attention backend. ``locat-bench`` is the full report; these track regressions.
"""
import pytest
import torch

from locat_bench.bench_attention import GPU_SHAPES, make_inputs
from locat_bench.bench_model import ModelCase, build
from locat_kernels import gaussian_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="benchmarks need CUDA")


def _sync(fn):
    def run():
        fn()
        torch.cuda.synchronize()
    return run


@pytest.mark.parametrize("shape", GPU_SHAPES[::2], ids=lambda s: s.name.replace(" ", "_"))
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_op_forward_backward(benchmark, shape, backend):
    inputs = make_inputs(shape, "broad", torch.bfloat16, "cuda")
    do = torch.randn_like(inputs[0])

    def step():
        out = gaussian_attention(*inputs, shape.grid, num_prefix_tokens=shape.P, backend=backend)
        torch.autograd.grad(out, inputs, do)

    step()
    benchmark(_sync(step))


@pytest.mark.parametrize("variant", ["vit", "locat_triton", "locat_sdpa"])
def test_model_train_step(benchmark, variant):
    case = ModelCase("base", 224, 64)
    model = build(case, variant, "cuda")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(case.batch, 3, 224, 224, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    benchmark(_sync(step))
