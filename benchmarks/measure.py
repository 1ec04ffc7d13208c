"""What every speed run shares: the FLOP convention, the GEMM ceiling, bf16 hardware, timing.

One FLOP convention for every table (`decoder_flops`), stated once here; benchmarks/conftest.py,
native_perf.py and gpu_report.py credit every provider with it.
"""
import statistics
import time

import torch


def decoder_flops(batch: int, pixels: int, code: int, embedding: int, hidden: int, layers: int,
                  out: int, train: bool) -> float:
    """FLOPs (2 per multiply-add) of one decode by the batched algorithm: per image the code's
    share of the first layer, per pixel the embedding's share, the hidden layers and the output
    layer; a training step adds two more of each for the gradients, less the embedding
    projection's input gradient, which nothing needs. Normalizations and activations are not
    counted. The seed's loop does more (its first layer sees code + embedding at every pixel),
    but every provider is credited with this same count, so GFLOP/s ratios are speed ratios."""
    per_pixel = embedding * hidden + layers * hidden * hidden + hidden * out
    forward = 2.0 * (batch * code * hidden + batch * pixels * per_pixel)
    return 3 * forward - 2.0 * batch * pixels * embedding * hidden if train else forward


def has_bf16_units(device: torch.device) -> bool:
    """Whether the device multiplies bfloat16 matrices in hardware (where autocast pays off)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of fn, the device's queued work included."""
    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def gemm_rate(dtype: torch.dtype, device: torch.device, repeat: int = 7) -> float:
    """GFLOP/s of torch.mm (16384 x 256) @ (256 x 256), the decoder's hidden-layer shape."""
    a = torch.randn(16384, 256, device=device, dtype=dtype)
    b = torch.randn(256, 256, device=device, dtype=dtype)
    torch.mm(a, b)
    seconds = statistics.median(timed(lambda: torch.mm(a, b), device) for _ in range(repeat))
    return 2 * 16384 * 256 * 256 / seconds / 1e9
