"""v35 probe (benchmarks/NOTES.md, v35 "Next"): the host-time floor of an eager op shaped like
``locat_attention_qkvpacked``'s autograd Function on a CPU: the qkv split, a Function with its five inputs and twelve
saved tensors, one output and five gradients allocated, and nothing else (no checks, plans or launches). Microseconds
per call (B = 1, 17 tokens, 3 heads of 64, fp32), median of 7 rounds, forward (recording the gradient) and
forward+backward, to set beside ``v31_host_path_cpu.py``'s timing of the op itself on the same machine.

    PYTHONPATH=. python benchmarks/probes/v35_function_floor_cpu.py
"""
import torch

from locat_bench.timing import wall_ms

B, N, H, D = 1, 17, 3, 64


class Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, wv, bv, wa, ba, views):
        out = torch.empty(B, H, N, D)
        ctx.save_for_backward(*views, wv, bv, wa, ba, out, out, out, out, out)  # as many as the op saves
        return out

    @staticmethod
    def backward(ctx, dout):
        ctx.saved_tensors
        return (torch.empty(B, N, 3, H, D), torch.empty(2, D), torch.empty(2), torch.empty(1, D), torch.empty(1),
                None)


qkv = torch.randn(B, N, 3, H, D, requires_grad=True)
layers = [torch.randn(*shape, requires_grad=True) for shape in ((2, D), (2,), (1, D), (1,))]
do = torch.ones(B, H, N, D)


def forward():
    return Floor.apply(qkv, *layers, qkv.permute(2, 0, 3, 1, 4).unbind(0))


def forward_backward():
    forward().backward(do)


def median_us(fn, calls=2000, rounds=7):
    """The median of ``rounds`` timings of ``calls`` calls, after 200 calls' warm-up (v31's probe times the same way)."""
    return sorted(wall_ms(fn, calls, warmup=200 if r == 0 else 0) for r in range(rounds))[rounds // 2] * 1e3


if __name__ == "__main__":
    print(f"the Function's floor: forward {median_us(forward):.1f} us, forward+backward {median_us(forward_backward):.1f} us")
