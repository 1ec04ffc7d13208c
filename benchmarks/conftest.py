"""Speed runs (pytest-benchmark), kept out of the default test run: `python -m pytest benchmarks`.

Every workload is timed for every provider side by side in one session; the summary at the end
prints pixels/s and the speed-up over `seed-loop` (the seed's per-image loop).
FASTINR_BENCH_DEVICE=cpu|cuda picks the device (default: cuda when available).
"""
import os
from collections import defaultdict

import pytest
import torch

DEVICE = torch.device(os.environ.get("FASTINR_BENCH_DEVICE")
                      or ("cuda" if torch.cuda.is_available() else "cpu"))

# workload -> provider -> (median seconds, pixels per call)
RESULTS = defaultdict(dict)


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def record():
    """record(workload, provider, benchmark, pixels): keep the median for the summary table."""
    def _record(workload, provider, benchmark, pixels):
        median = benchmark.stats.stats.median
        benchmark.extra_info.update(pixels=pixels, pixels_per_second=pixels / median)
        RESULTS[workload][provider] = (median, pixels)
    return _record


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"fastinr speed on {describe_device(DEVICE)} (median of the rounds above)")
    write(f"{'workload':<34} {'provider':<11} {'median ms':>10} {'Mpixels/s':>10} {'vs seed-loop':>13}")
    for workload, by_provider in RESULTS.items():
        seed = by_provider.get("seed-loop")
        for provider, (median, pixels) in by_provider.items():
            ratio = f"{seed[0] / median:.2f}x" if seed else "n/a"
            write(f"{workload:<34} {provider:<11} {median * 1e3:>10.1f} "
                  f"{pixels / median / 1e6:>10.3f} {ratio:>13}")


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__})"
