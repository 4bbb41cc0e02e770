"""Timing and memory helpers shared by the op and model benchmarks."""
from __future__ import annotations

import time

import torch


def cpu_median_ms(fn, reps: int) -> float:
    """Median wall-clock ms of ``reps`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def wall_ms(fn, calls: int, warmup: int = 3) -> float:
    """Wall-clock ms per call of ``calls`` calls after ``warmup``, the device (if any) synchronized at both ends."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(warmup):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t) / calls * 1e3


def cuda_median_ms(fn, *, graph: bool, warmup: int = 25, rep: int = 100) -> float:
    """Median ms of ``triton.testing.do_bench``. With ``graph``, over replays of ``fn`` captured as a
    CUDA graph, so Python and launch overhead (large against a 0.1 ms kernel) stays out of the number;
    a function that cannot be captured is timed by plain calls, and says so."""
    import triton.testing

    if graph:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up (compilation, autotuning) outside the capture
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        captured = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(captured):
                fn()
            fn = captured.replay
        except RuntimeError as e:
            print(f"  (no CUDA graph: {str(e).splitlines()[0][:100]}; timing plain calls)")
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def peak_memory_gb(fn, device, *, above_current: bool) -> float | None:
    """Peak allocated GiB during one call on CUDA (None elsewhere); with ``above_current``, only what
    the call adds to the memory already allocated (the inputs)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated() if above_current else 0
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30
