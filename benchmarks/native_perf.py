"""Side-by-side CPU measurement of the native backend against the seed loop and torch.

    python benchmarks/native_perf.py [--repeat 5] [--no-compiled] [--precision auto|fp32|bf16|both]

1. Training step (forward + backward + Adam), the seed configuration: batch 64, 32x32, code 102,
   hidden 256, 2 blocks x 2 layers, BatchNorm per image. Providers: seed-loop
   (fastinr/seed_loop.py SeedLoopDecoder), torch (batched reference), compiled (torch.compile of the reference),
   native.
2. Eval render of 16 codes at 256x256: the same providers; and the peak-RSS growth of each
   render in a fresh subprocess.
With --precision bf16 or both (auto, the default, is both where the CPU has AMX-BF16 or
AVX512-BF16, as the pytest speed runs decide), every provider also runs under
torch.autocast("cpu", dtype=torch.bfloat16) ("<provider> bf16"; native then takes its bf16 GEMMs
where the CPU has AVX512-BF16, see fastinr.backends.native_backend), and "native-<kernel> bf16" runs
native with each other bf16 GEMM kernel the machine has (oneDNN's brgemm or ours, whichever is not
the default).
Times are medians over rounds that call every provider once (the load of a shared machine
changes during a run); speed-ups are medians of the per-round ratios with their quartiles, and a
winner is called by benchmarks/measure.py's rule (as the pytest speed runs call it); GFLOP/s counts the FLOPs of benchmarks/measure.py's convention (the
batched algorithm's work, credited alike to every provider) and is compared with GEMM rates timed in the same rounds (torch.mm 4096x256 @ 256x256, eight per round,
float32 and bfloat16) on the same threads: float32 providers against the float32 rate, bf16
providers against the bf16 one.
"""
import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fastinr  # noqa: E402
from benchmarks.measure import decoder_flops, has_bf16_units, quartiles, verdict  # noqa: E402
from fastinr.seed_loop import SeedLoopDecoder  # noqa: E402

CODE, HIDDEN, BLOCKS, LAYERS, OUT, FREQS = 102, 256, 2, 2, 3, (7, 17)


def split(provider):
    """('native', True) for 'native bf16': the model and whether it runs under bf16 autocast."""
    name, _, precision = provider.partition(" ")
    return name, precision == "bf16"


def gemm_kernel(provider):
    """The bf16 GEMM kernel a 'native-<kernel> bf16' provider asks for (None: the default one)."""
    name = split(provider)[0]
    return name[len("native-"):] if name.startswith("native-") else None


@contextlib.contextmanager
def precision_context(provider):
    """Autocast for the bf16 providers; a native-<kernel> provider's bf16 GEMMs in that kernel."""
    from fastinr.backends import native_backend as native
    kernel, before = gemm_kernel(provider), None
    if kernel:
        before = native.bf16_gemm_kernel()
        native.set_bf16_gemm_kernel(kernel)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16) if split(provider)[1] else contextlib.nullcontext():
            yield
    finally:
        if before:
            native.set_bf16_gemm_kernel(before)


def make_model(provider):
    provider = split(provider)[0]
    kwargs = dict(num_hidden=HIDDEN, num_blocks=BLOCKS, num_layers_per_block=LAYERS,
                  pos_embedding_freqs=FREQS)
    if provider == "seed-loop":
        return SeedLoopDecoder(CODE, OUT, **kwargs)
    model = fastinr.ImageManifoldDecoder(CODE, OUT, backend="native" if provider.startswith("native") else "torch",
                                         **kwargs)
    return torch.compile(model) if provider == "compiled" else model


def flops(batch, pixels, train):
    return decoder_flops(batch, pixels, CODE, (2 * len(FREQS) + 1) * 2, HIDDEN, BLOCKS * LAYERS,
                         OUT, train)


def median_time(fn, repeat, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(functions, repeat, warmup=1):
    """Seconds of each function in every round ({name: [seconds per round]}), timed in rounds
    (one call of each per round) so that a change of machine load during the run hits every
    provider alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in functions}
    for _ in range(repeat):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


GEMM_PROBES = {"torch.mm fp32": torch.float32, "torch.mm bf16": torch.bfloat16}
GEMM_PROBE_FLOP = 8 * 2 * 4096 * 256 * 256


def gemm_probe(dtype):
    """Eight torch.mm 4096x256 @ 256x256: timed among the providers, the machine's GEMM rate."""
    a, b = torch.randn(4096, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)

    def run():
        for _ in range(8):
            torch.mm(a, b)
    return run


def timed_with_gemm_rates(functions, repeat, warmup=1):
    """interleaved() of the providers and the GEMM probes; (provider times per round,
    {bf16?: GFLOP/s})."""
    probes = {name: gemm_probe(dtype) for name, dtype in GEMM_PROBES.items()}
    times = interleaved({**functions, **probes}, repeat, warmup)
    rates = {dtype == torch.bfloat16: GEMM_PROBE_FLOP / statistics.median(times.pop(name)) / 1e9
             for name, dtype in GEMM_PROBES.items()}
    print(f"  (torch.mm in the same rounds: float32 {rates[False]:.1f} GFLOP/s, bfloat16 {rates[True]:.1f})")
    return times, rates


def train_step(provider, batch, shape):
    model = make_model(provider)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    codes = torch.randn(batch, CODE, requires_grad=True)
    target = torch.rand(batch, OUT, *shape)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with precision_context(provider):
            loss = torch.nn.functional.mse_loss(model(codes, shape).float(), target)
        loss.backward()
        optimizer.step()
    return step


def render(provider, batch, shape):
    model = make_model(provider).eval()
    codes = torch.randn(batch, CODE)

    def run():
        with torch.no_grad(), precision_context(provider):
            return model(codes, shape)
    return run


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_child(provider, batch, size):
    """Peak-RSS growth (MiB) of one render in this fresh process, after a warm-up on a tiny shape.

    The peak (VmHWM) is reset first (Linux: clear_refs 5), so the import's transient peak does not
    hide the render's; growth = peak during the render - resident size before it."""
    run_small = render(provider, 1, (4, 4))
    run_small()
    run = render(provider, batch, (size, size))
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _status_kib("VmRSS")
    colors = run()
    peak = _status_kib("VmHWM")
    assert colors.shape == (batch, OUT, size, size)
    print((peak - before) / 1024.0)


def rss_growth(provider, batch, size):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", provider,
                          "--render-batch", str(batch), "--render-size", str(size)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--render-batch", type=int, default=16)
    parser.add_argument("--render-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-compiled", action="store_true", help="skip torch.compile (slow to build)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "both"), default="auto",
                        help="float32 providers, their bf16-autocast twins, or both side by side "
                             "(auto: both where the CPU has bf16 matrix units, else fp32)")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.render_batch, args.render_size)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    from fastinr import _C
    from fastinr.backends import native_backend as native
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, native float kernels "
          f"{_C.elementwise_isa()}, tile {_C.tile_rows()} rows, packed float weights "
          f"{'yes' if _C.blas_packs_weights() else 'no'}, native bf16 GEMMs "
          f"{'yes' if native.bf16_matmul() else 'no (float32 GEMMs under autocast)'}"
          + (f" in {native.bf16_gemm_kernel()} (of {', '.join(native.bf16_gemm_kernels())})"
             if native.bf16_matmul() else ""))
    if args.precision == "auto":   # without bf16 units autocast only emulates bf16: not a user's choice
        args.precision = "both" if has_bf16_units(torch.device("cpu")) else "fp32"
    precisions = {"fp32": [""], "bf16": [" bf16"], "both": ["", " bf16"]}[args.precision]

    def with_precisions(names):
        return [name + suffix for suffix in precisions for name in names]

    def report(results, rates, pixels, work, extra=lambda provider: ""):
        """One line per provider: median, rates, speed-up over its own precision's seed loop
        (median of the per-round ratios [quartiles]); native against compiled in each precision
        (the same way); then the winner over the float32 seed loop
        (the bf16 one under --precision bf16), by the same rule as the pytest speed runs
        (benchmarks/measure.py verdict)."""
        def ratios(base, provider):
            return [b / t for b, t in zip(results[base], results[provider])]
        for provider, rounds in results.items():
            seconds = statistics.median(rounds)
            bf16 = split(provider)[1]
            base = "seed-loop" + (" bf16" if bf16 else "")   # each precision against its own seed loop
            gflops = work / seconds / 1e9
            q1, med, q3 = quartiles(ratios(base, provider))
            print(f"  {provider:20s} {seconds * 1e3:9.1f} ms  {pixels / seconds / 1e6:7.2f} Mpx/s  "
                  f"{gflops:6.1f} GFLOP/s ({100 * gflops / rates[bf16]:3.0f}% of torch.mm "
                  f"{'bf16' if bf16 else 'fp32'}){extra(provider)}  speed-up vs {base} "
                  f"{med:5.2f}x [{q1:.2f}, {q3:.2f}]")
        for suffix in precisions:   # the second bar: against what torch.compile makes of it
            if "compiled" + suffix in results:
                q1, med, q3 = quartiles(ratios("compiled" + suffix, "native" + suffix))
                print(f"  native{suffix} against compiled{suffix}: {med:.2f}x [{q1:.2f}, {q3:.2f}] "
                      "(median of the per-round ratios [quartiles])")
        judge = "seed-loop" if "seed-loop" in results else "seed-loop bf16"  # --precision bf16
        print("  " + verdict({provider: ratios(judge, provider) for provider in results}))

    shape = (32, 32)
    pixels = args.batch * shape[0] * shape[1]
    providers = with_precisions(["seed-loop", "torch"] + ([] if args.no_compiled else ["compiled"]) + ["native"])
    if " bf16" in precisions and native.bf16_matmul():   # the other bf16 GEMM kernels, side by side
        providers += [f"native-{kernel} bf16" for kernel in native.bf16_gemm_kernels()
                      if kernel != native.bf16_gemm_kernel()]
    print(f"\ntraining step, batch {args.batch} at {shape[0]}x{shape[1]}, BatchNorm per image "
          f"(median of {args.repeat})")
    results, rates = timed_with_gemm_rates({provider: train_step(provider, args.batch, shape)
                                            for provider in providers}, args.repeat, warmup=2)
    report(results, rates, pixels, flops(args.batch, shape[0] * shape[1], train=True))

    size, batch = args.render_size, args.render_batch
    print(f"\neval render, {batch} codes at {size}x{size} (median of {args.repeat}), peak-RSS growth "
          "in a fresh process")
    render_results, rates = timed_with_gemm_rates({provider: render(provider, batch, (size, size))
                                                   for provider in providers}, args.repeat)
    report(render_results, rates, batch * size * size, flops(batch, size * size, train=False),
           lambda provider: f"  peak-RSS growth {rss_growth(provider, batch, size):8.1f} MiB")


if __name__ == "__main__":
    main()
