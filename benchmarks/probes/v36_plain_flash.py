"""v36 probe (benchmarks/NOTES.md, v36): what a plain Triton flash-attention forward (no bias, one loop over the keys,
no prefix tile, no column tables) takes against SDPA's forward (cuDNN / flash) at N = 577 and N = 1025 (CUDA).

v35's kernel profile read the fused forward without its Gaussian at 1.35-1.46x cuDNN's at 17 and 24 wide (N = 577-579)
and 0.92x at 32 wide (N = 1025). If this one-loop kernel reads the same at N = 577, the gap is what Triton's code does
with programs of ten key tiles, not the fused kernel's extra loops (prefix keys, column chunks) or per-program tables.

    PYTHONPATH=. python benchmarks/probes/v36_plain_flash.py [--output F.json]
"""
import argparse
import json

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from locat_bench.cli import environment
from locat_kernels.fused.tiles import LOG2E

SHAPES = ((32, 12, 577), (32, 12, 576), (16, 12, 1025), (16, 12, 1153), (128, 12, 197))  # (B, H, N), head_dim 64
CONFIGS = ((64, 64, 4, 3), (128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 128, 4, 3))


@triton.jit
def _plain_forward(q, k, v, o, N, qk_scale, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   EVEN_N: tl.constexpr):
    """grid: (cdiv(N, BLOCK_M), B * H); a program owns BLOCK_M query rows of one contiguous (B, H, N, D) head."""
    start_m, bh = tl.program_id(0) * BLOCK_M, tl.program_id(1).to(tl.int64)
    offs_m, offs_n, offs_d = start_m + tl.arange(0, BLOCK_M), tl.arange(0, BLOCK_N), tl.arange(0, D)
    base = bh * N * D
    b_q = tl.load(q + base + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    b_l = tl.zeros([BLOCK_M], tl.float32)
    b_acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start_n in range(0, N, BLOCK_N):
        o_n = start_n + offs_n
        m_n = o_n < N
        p_n = tl.minimum(o_n, N - 1)  # no load masks: past-the-end slots read the last key, masked below
        b_k = tl.load(k + base + p_n[:, None] * D + offs_d[None, :])  # (BLOCK_N, D)
        b_v = tl.load(v + base + p_n[:, None] * D + offs_d[None, :])
        b_s = tl.dot(b_q, tl.trans(b_k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if not EVEN_N:
            b_s = tl.where(m_n[None, :], b_s, float("-inf"))
        b_m_new = tl.maximum(b_m, tl.max(b_s, 1))
        b_corr = tl.exp2(b_m - b_m_new)
        b_p = tl.exp2(b_s - b_m_new[:, None])
        b_l = b_l * b_corr + tl.sum(b_p, 1)
        b_acc = b_acc * b_corr[:, None] + tl.dot(b_p.to(b_v.dtype), b_v)
        b_m = b_m_new
    b_acc = b_acc / b_l[:, None]
    tl.store(o + base + offs_m[:, None] * D + offs_d[None, :], b_acc.to(o.dtype.element_ty), mask=offs_m[:, None] < N)


def plain_forward(q, k, v, config):
    B, H, N, D = q.shape
    block_m, block_n, warps, stages = config
    o = torch.empty_like(q)
    _plain_forward[(triton.cdiv(N, block_m), B * H)](q, k, v, o, N, D ** -0.5 * LOG2E, D=D,
                                                     BLOCK_M=block_m, BLOCK_N=block_n, EVEN_N=N % block_n == 0,
                                                     num_warps=warps, num_stages=stages)
    return o


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("the probe times CUDA kernels: it needs a GPU")
    rows = []
    for B, H, N in SHAPES:
        q, k, v = (torch.randn(B, H, N, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
        row = dict(B=B, H=H, N=N, D=64)
        for name, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
            with sdpa_kernel(backend):
                row[name] = triton.testing.do_bench(lambda: F.scaled_dot_product_attention(q, k, v),
                                                    return_mode="median")
        for config in CONFIGS:
            err = (plain_forward(q, k, v, config).float() - ref).abs().max().item()
            assert err < 2e-2, (config, err)
            row[str(config)] = triton.testing.do_bench(lambda: plain_forward(q, k, v, config), return_mode="median")
        best = min(row[str(c)] for c in CONFIGS)
        print(f"B={B} H={H} N={N}: cuDNN {row['cudnn']:.4f} flash {row['flash']:.4f} ms; plain Triton "
              + ", ".join(f"{c} {row[str(c)]:.4f}" for c in CONFIGS) + f"; best / cuDNN {best / row['cudnn']:.3f}")
        rows.append(row)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(environment=environment("cuda"), command="python benchmarks/probes/v36_plain_flash.py",
                           rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
