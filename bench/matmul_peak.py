"""The matrix-product rate a device reaches in this run: MFU's attainable ceiling."""

from __future__ import annotations

import time

import torch


def matmul_flops_per_s(
    n: int, dtype: torch.dtype, device: str, warmup: int = 3, repeats: int = 10
) -> float:
    """FLOP/s of an n x n x n product (2 n^3 FLOPs) on random data, mean over `repeats`."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), generator=generator, device=device).to(dtype)
    b = torch.randn((n, n), generator=generator, device=device).to(dtype)
    out = torch.empty((n, n), device=device, dtype=dtype)
    for _ in range(warmup):
        torch.matmul(a, b, out=out)
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        seconds = start.elapsed_time(end) / 1000
    else:
        began = time.perf_counter()
        for _ in range(repeats):
            torch.matmul(a, b, out=out)
        seconds = time.perf_counter() - began
    return 2 * n**3 * repeats / seconds
