"""What every speed run shares: the FLOP convention, the GEMM ceiling, bf16 hardware, timing,
and how a winner is called.

One FLOP convention for every table (`decoder_flops`), stated once here; benchmarks/conftest.py,
native_perf.py and gpu_report.py credit every provider with it. One rule for calling a winner
(`verdict`), used by the pytest speed runs and native_perf.py alike.
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


def quartiles(values) -> tuple:
    """(q1, median, q3) of values (all three the value itself for one value)."""
    values = list(values)
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def verdict(ratios: dict) -> str:
    """The winner among providers, from each one's per-round speed-ups over a common baseline
    ({provider: [ratio per round]}): called only where the fastest median's lower quartile is
    above every other provider's upper quartile; otherwise the spread is too large to call one."""
    ranked = sorted(ratios.items(), key=lambda kv: -statistics.median(kv[1]))
    if len(ranked) < 2:
        return ""
    (best, best_ratios), others = ranked[0], ranked[1:]
    if len(best_ratios) < 3:
        return f"fastest median: {best}; too few rounds ({len(best_ratios)}) to call a winner"
    low = quartiles(best_ratios)[0]
    rival, rival_ratios = max(others, key=lambda kv: quartiles(kv[1])[2])
    high = quartiles(rival_ratios)[2]
    if low > high:
        return (f"winner: {best} (its speed-up's lower quartile {low:.2f}x is above every other "
                f"provider's upper quartile, at most {high:.2f}x for {rival})")
    return (f"fastest median: {best}, but the spread is too large to call a winner (its lower "
            f"quartile {low:.2f}x <= {rival}'s upper quartile {high:.2f}x)")
