"""One-shot GPU report for the triton backend: correctness on the GPU, then speed side by side.

    PYTHONPATH=. python benchmarks/gpu_report.py [--out gpu_report] [--budget 450]

1. Checks fastinr-triton against the reference on the GPU (colors, every gradient, BlockStats;
   float32 against float64, and bf16 autocast against torch's own bf16 error).
2. Times, for each workload, the providers side by side:
     seed-loop  the seed's per-image loop (tests/seed_decoder.py SeedLoopDecoder)
     torch      the batched reference, eager
     compiled   torch.compile(mode="max-autotune") of the batched reference
     triton     fastinr's Triton kernels
     native     fastinr.native's CUDA render (only if the extension was built with nvcc)
   workloads: a training step of the seed configuration (batch 64, 32x32, code 102, hidden 256,
   2x2 blocks, BatchNorm per image; forward + backward + Adam) in fp32 with TF32 and in bf16
   autocast; eval renders of 64 codes at 128x128 and of one code at 2048x2048.
   Reported: median time (CUDA events), pixels/s, achieved TFLOP/s (decoder FLOPs counted
   analytically), peak memory above what the case held before it started, compile/first-call
   time. Each case runs in its own subprocess with a time cap, so one failure (or a slow
   max-autotune compile) is reported and the rest go on; the whole run stays inside --budget.
The table is printed last and written as report.md / report.json into --out.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SEED = dict(code=102, out=3, hidden=256, blocks=2, layers=2, freqs=(7.0, 17.0))
WORKLOADS = {
    # name: (kind, batch, (H, W), precision)
    "train 64x32x32 tf32": ("train", 64, (32, 32), "tf32"),
    "train 64x32x32 bf16": ("train", 64, (32, 32), "bf16"),
    "render 64x128x128 tf32": ("render", 64, (128, 128), "tf32"),
    "render 1x2048x2048 tf32": ("render", 1, (2048, 2048), "tf32"),
    "render 64x128x128 bf16": ("render", 64, (128, 128), "bf16"),
}
PROVIDERS = ("seed-loop", "torch", "compiled", "triton", "native")
# Per-case wall-clock caps (seconds, including the subprocess start and CUDA init).
CASE_CAP = {"compiled": 180, "seed-loop": 45}
DEFAULT_CAP = 40


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_report", help="folder for report.md / report.json")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds for the whole run (cases that would not fit are skipped)")
    parser.add_argument("--reps", type=int, default=20, help="timed repetitions per case (max)")
    parser.add_argument("--case-seconds", type=float, default=6.0,
                        help="time spent in timed repetitions per case (max)")
    parser.add_argument("--only", default="", help="comma-separated substrings of case names")
    parser.add_argument("--skip-check", action="store_true", help="skip the correctness check")
    parser.add_argument("--case", help=argparse.SUPPRESS)   # internal: run one case, print JSON
    return parser.parse_args(argv)


def decoder_flops(batch, pixels, code=SEED["code"], out=SEED["out"], hidden=SEED["hidden"],
                  blocks=SEED["blocks"], layers=SEED["layers"], freqs=SEED["freqs"],
                  concat=None):
    """Multiply-adds x 2 of one forward pass: per image the code projection, per pixel the
    embedding projection, every block Linear and linear_out (activations and norms not counted)."""
    concat = concat or (False,) * blocks
    embedding = (2 * len(freqs) + 1) * 2
    per_pixel, width = embedding * hidden, hidden
    for c in concat:
        per_pixel += layers * width * width
        width *= 2 if c else 1
    per_pixel += width * out
    return 2 * (batch * code * hidden + batch * pixels * per_pixel)


def train_flops(batch, pixels):
    """Forward + backward: backward costs two forward matmuls (input and weight gradients),
    less the input gradient of the embedding projection, which nothing needs."""
    forward = decoder_flops(batch, pixels)
    embedding = (2 * len(SEED["freqs"]) + 1) * 2
    return 3 * forward - 2 * batch * pixels * embedding * SEED["hidden"]


def case_names(only=""):
    """Every (workload, provider) case; the max-autotune compiles come last, being the slowest
    to start, so a budget overrun costs only them."""
    names = [f"{w} | {p}" for p in PROVIDERS for w in WORKLOADS
             if not (p == "native" and WORKLOADS[w][0] == "train")]
    names.sort(key=lambda n: (n.endswith("compiled"), list(WORKLOADS).index(n.split(" | ")[0])))
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    return [n for n in names if not wanted or any(s in n for s in wanted)]


# ----------------------------------------------------------------------------- inside a case

def _seed_model(device):
    """The seed's per-image loop (tests/seed_decoder.py SeedLoopDecoder)."""
    sys.path.insert(0, ROOT)
    from tests.seed_decoder import SeedLoopDecoder
    return SeedLoopDecoder(SEED["code"], SEED["out"], SEED["hidden"], SEED["blocks"],
                           SEED["layers"], pos_embedding_freqs=SEED["freqs"]).to(device)


def _fastinr_model(device, backend):
    from fastinr import ImageManifoldDecoder
    return ImageManifoldDecoder(SEED["code"], SEED["out"], SEED["hidden"], SEED["blocks"],
                                SEED["layers"], pos_embedding_freqs=SEED["freqs"],
                                backend=backend).to(device)


def _native_render_fn(model, shape):
    from fastinr import backend
    module, reason = backend._load("native")
    if module is None or not getattr(module, "renders_on_cuda", lambda: False)():
        raise RuntimeError(f"fastinr.native has no CUDA render here ({reason or 'built without nvcc'})")
    running = [(n.running_mean, n.running_var) for n in model._norms()]

    def render(codes):
        return module.decode(codes, model.decoder_params(), model.spec, shape, "running",
                             running)[0]
    return render


def run_case(name, reps, case_seconds):
    import torch
    workload, provider = [s.strip() for s in name.split("|")]
    kind, batch, shape, precision = WORKLOADS[workload]
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    if provider == "seed-loop":
        model = _seed_model(device)
    else:
        model = _fastinr_model(device, "triton" if provider == "triton" else "torch")
    pixels = shape[0] * shape[1]
    codes = torch.randn(batch, SEED["code"], device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")

    if kind == "train":
        model.train()
        codes.requires_grad_(True)
        target = torch.rand(batch, SEED["out"], *shape, device=device)
        forward = torch.compile(model, mode="max-autotune") if provider == "compiled" else model
        optimizer = torch.optim.Adam(list(model.parameters()) + [codes], lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                colors = forward(codes, shape)
            loss = (colors.float() - target).abs().mean()
            loss.backward()
            optimizer.step()
        flops = train_flops(batch, pixels)
    else:
        model.eval()
        if provider == "native":
            forward = _native_render_fn(model, shape)
        elif provider == "compiled":
            forward = torch.compile(lambda c: model(c, shape), mode="max-autotune")
        else:
            forward = lambda c: model(c, shape)  # noqa: E731

        def step():
            with torch.no_grad(), autocast:
                forward(codes)
        flops = decoder_flops(batch, pixels)

    torch.cuda.synchronize()
    start = time.perf_counter()
    step()                                   # compile / autotune / first launch
    torch.cuda.synchronize()
    first_call = time.perf_counter() - start
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times, spent = [], 0.0
    while len(times) < reps and (spent < case_seconds or len(times) < 3):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        step()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end) / 1e3)
        spent += times[-1]
    median = statistics.median(times)
    output_bytes = batch * SEED["out"] * pixels * 4
    return dict(case=name, workload=workload, provider=provider, median_s=median,
                reps=len(times), pixels_per_s=batch * pixels / median,
                tflops=flops / median / 1e12, peak_extra_bytes=torch.cuda.max_memory_allocated() - held,
                output_bytes=output_bytes, first_call_s=first_call)


# ----------------------------------------------------------------------------- correctness

def check_correctness():
    """fastinr-triton against the reference on the GPU; returns a list of (what, ok, detail)."""
    import torch
    sys.path.insert(0, ROOT)
    from tests.test_triton import check_decode, make_spec
    from fastinr.ops import config as ops_config
    ops_config.POISON_OUTPUTS = True
    torch.backends.cuda.matmul.allow_tf32 = False
    results = []
    cases = [
        ("seed 2x2 image", make_spec(hidden=256, blocks=2, layers=2, freqs=2, code=102), 4,
         (32, 32), "image"),
        ("concat mixed batch", make_spec(hidden=96, blocks=3, layers=2, concat=(True, False, True),
                                         freqs=3, activation="silu"), 3, (31, 17), "batch"),
        ("512 relu running", make_spec(hidden=512, blocks=1, layers=2, freqs=2,
                                       activation="relu"), 2, (9, 11), "running"),
        ("film 128 image", make_spec(hidden=128, blocks=2, layers=2, freqs=2, modulation="film"), 4,
         (32, 32), "image"),
        ("layernorm shift 256", make_spec(hidden=256, blocks=2, layers=1, freqs=2, batch_norm=False,
                                          layer_norm=True, modulation="shift"), 3, (31, 17), "image"),
    ]
    for label, spec, batch, shape, norm_stats in cases:
        for grad in (True, False):
            what = f"{label} {'train' if grad else 'render'}"
            if not grad and norm_stats != "running":
                continue
            try:
                with torch.set_grad_enabled(grad):
                    check_decode(spec, batch, shape, norm_stats, grad=grad)
                results.append((what, True, ""))
            except Exception as err:
                results.append((what, False, f"{type(err).__name__}: {str(err)[:300]}"))
    try:
        from tests.test_triton import test_autocast_half_precision_dots
        for dtype in (torch.bfloat16, torch.float16):
            test_autocast_half_precision_dots(dtype)
            results.append((f"autocast {dtype}", True, ""))
    except Exception as err:
        results.append(("autocast", False, f"{type(err).__name__}: {str(err)[:300]}"))
    return results


# ----------------------------------------------------------------------------- driver

def _run_subprocess(name, args, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--case", name, "--reps", str(args.reps),
           "--case-seconds", str(args.case_seconds)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TRITON_INTERPRET", None)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(case=name, error=f"timed out after {timeout:.0f} s")
    for line in reversed(done.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return dict(case=name, error=(done.stderr.strip().splitlines() or ["no output"])[-1][:300])


def format_table(rows):
    lines = ["| workload | provider | median ms | Mpixel/s | TFLOP/s | peak extra MiB | "
             "output MiB | first call s | vs seed-loop |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    seed = {r["workload"]: r["median_s"] for r in rows
            if r.get("provider") == "seed-loop" and "median_s" in r}
    order = lambda r: tuple(list(keys).index(k) for keys, k in  # noqa: E731
                            zip((WORKLOADS, PROVIDERS), r["case"].split(" | ")))
    for r in sorted(rows, key=order):
        workload, provider = [s.strip() for s in r["case"].split("|")]
        if "error" in r:
            lines.append(f"| {workload} | {provider} | {r['error']} | | | | | | |")
            continue
        speedup = seed.get(workload, math.nan) / r["median_s"]
        lines.append(f"| {workload} | {provider} | {r['median_s'] * 1e3:.3f} | "
                     f"{r['pixels_per_s'] / 1e6:.1f} | {r['tflops']:.2f} | "
                     f"{r['peak_extra_bytes'] / 2**20:.1f} | {r['output_bytes'] / 2**20:.1f} | "
                     f"{r['first_call_s']:.2f} | {speedup:.1f}x |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.reps, args.case_seconds)))
        return 0
    import torch
    if not torch.cuda.is_available():
        sys.exit("gpu_report.py needs a CUDA GPU")
    deadline = time.monotonic() + args.budget
    os.makedirs(args.out, exist_ok=True)
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    checks = []
    if not args.skip_check:
        start = time.perf_counter()
        checks = check_correctness()
        for what, ok, detail in checks:
            print(f"check {'PASS' if ok else 'FAIL'} {what} {detail}", flush=True)
        print(f"checks took {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for name in case_names(args.only):
        provider = name.split("|")[1].strip()
        remaining = deadline - time.monotonic()
        cap = min(CASE_CAP.get(provider, DEFAULT_CAP), remaining - 5)
        if cap < 15:
            rows.append(dict(case=name, error="skipped: out of time budget"))
            continue
        row = _run_subprocess(name, args, cap)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = format_table(rows)
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                       checks=checks, cases=rows), f, indent=1)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}\n\n")
        f.write("\n".join(f"- check {'PASS' if ok else 'FAIL'}: {w} {d}" for w, ok, d in checks))
        f.write("\n\n" + table + "\n")
    print("\n" + table)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
