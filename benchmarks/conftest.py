"""Speed runs (pytest-benchmark), kept out of the default test run: `python -m pytest benchmarks`.

A shared machine's load changes during a run, so no provider is timed alone: every provider's
test runs in paired rounds with the baseline (`seed-loop`, the seed's per-image loop in float32),
one call of each per round, and records per round the speed-up `baseline time / provider time`.
Load that arrives mid-run slows both calls of a round alike, so the ratios stay put where the
plain times do not. pytest-benchmark's own table holds the provider's times from those rounds.

The summary at the end gives, per workload and provider: the median time with its quartiles,
GFLOP/s under one FLOP convention (`measure.decoder_flops`: the work of the batched algorithm, credited
alike to every provider, so GFLOP/s ratios are speed ratios), its share of the GEMM rate measured
in the same run (float32 or bfloat16 by the provider's precision), and the median speed-up over
the baseline with its quartiles. A winner is called only where its speed-up's lower quartile
is above every other provider's upper quartile; otherwise the summary says the spread is too
large to call one.

FASTINR_BENCH_DEVICE=cpu|cuda picks the device (default: cuda when available);
FASTINR_BENCH_ROUNDS the paired rounds per provider (default 7).
"""
import os
import statistics
from collections import defaultdict

import pytest
import torch

from measure import gemm_rate, has_bf16_units, quartiles, timed, verdict

DEVICE = torch.device(os.environ.get("FASTINR_BENCH_DEVICE")
                      or ("cuda" if torch.cuda.is_available() else "cpu"))
ROUNDS = int(os.environ.get("FASTINR_BENCH_ROUNDS", "7"))
BASELINE = "seed-loop"

# workload -> provider -> Measurement
RESULTS = defaultdict(dict)
GEMM_RATES = {}   # "start"/"end" -> {dtype name: GFLOP/s}


def measure_gemm_rates(when: str):
    dtypes = [torch.float32] + ([torch.bfloat16] if has_bf16_units(DEVICE) else [])
    GEMM_RATES[when] = {str(d).replace("torch.", ""): gemm_rate(d, DEVICE) for d in dtypes}


class Measurement:
    def __init__(self, times, ratios, flops, precision):
        self.times, self.ratios, self.flops, self.precision = times, ratios, flops, precision



@pytest.fixture(scope="session", autouse=True)
def gemm_ceiling():
    """The GEMM rate at the start and at the end of the session (the ceiling moves with load)."""
    measure_gemm_rates("start")
    yield
    measure_gemm_rates("end")


@pytest.fixture
def paired(benchmark):
    """paired(workload, provider, run, baseline_run, flops, precision): time `run` in ROUNDS
    rounds, each preceded by one `baseline_run` (None: the provider is the baseline itself)."""
    def _paired(workload, provider, run, baseline_run, flops, precision):
        run()  # warm-up (and compilation) outside the timed rounds
        if baseline_run is not None:
            baseline_run()
        baseline_times = []

        def setup():
            if baseline_run is not None:
                baseline_times.append(timed(baseline_run, DEVICE))

        benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=0)
        times = list(benchmark.stats.stats.data)
        ratios = ([b / t for b, t in zip(baseline_times, times)] if baseline_run is not None
                  else [1.0] * len(times))
        benchmark.extra_info.update(speedup_vs_baseline=statistics.median(ratios),
                                    gflops=flops / statistics.median(times) / 1e9)
        RESULTS[workload][provider] = Measurement(times, ratios, flops, precision)
    return _paired


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    write = terminalreporter.write_line
    write("")
    write(f"fastinr speed on {describe_device(DEVICE)}: {ROUNDS} rounds per provider, each paired "
          f"with one {BASELINE} call")
    for when, rates in GEMM_RATES.items():
        write(f"GEMM ceiling ({when} of the run, torch.mm 16384x256 @ 256x256): "
              + ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in rates.items()))
    # The best rate seen: the closest to the machine's own ceiling on a shared host.
    ceiling = {name: max(r[name] for r in GEMM_RATES.values() if name in r)
               for name in next(iter(GEMM_RATES.values()), {})}
    write(f"{'workload':<24} {'provider':<14} {'median ms':>10} {'q1-q3 ms':>15} {'GFLOP/s':>8} "
          f"{'% GEMM':>7} {'vs ' + BASELINE:>13} {'q1-q3':>12}")
    for workload, by_provider in RESULTS.items():
        for provider, m in by_provider.items():
            q1, med, q3 = quartiles([t * 1e3 for t in m.times])
            r1, rmed, r3 = quartiles(m.ratios)
            gflops = m.flops / (med / 1e3) / 1e9
            peak = ceiling.get(m.precision)
            share = f"{100 * gflops / peak:.0f}%" if peak else "-"
            write(f"{workload:<24} {provider:<14} {med:>10.1f} {f'{q1:.0f}-{q3:.0f}':>15} "
                  f"{gflops:>8.1f} {share:>7} {rmed:>12.2f}x {f'{r1:.2f}-{r3:.2f}':>12}")
        write(f"{workload:<24} {verdict({p: m.ratios for p, m in by_provider.items()})}")


def describe_device(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads, torch {torch.__version__})"
