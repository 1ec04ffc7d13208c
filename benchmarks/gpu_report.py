"""One-shot GPU report for the triton backend, in the order that matters, within 8 minutes.

    PYTHONPATH=. python benchmarks/gpu_report.py [--out gpu_report] [--budget 420]
    PYTHONPATH=. python benchmarks/gpu_report.py --dry-run --out DIR     (any CPU, ~1 minute)

1. Correctness of exactly the binaries that are timed (benchmarks/gpu_checks.py): the seed
   decoder's training step at batch 64, 32x32 and its render, with TF32 and under bf16 autocast,
   against the float64 reference. A failure skips every timing: a fast wrong kernel is no result.
2. The seed configuration's training step (forward, L1 loss, backward, Adam): seed-loop, eager,
   torch.compile default and max-autotune, triton, triton replayed as a CUDA graph; then bf16.
3. Renders (eval, running statistics): 64 codes at 128x128, one at 2048x2048 and at 4096x4096.

Each workload runs in its own process (benchmarks/gpu_cases.py) under a time cap: every provider
is set up and pre-warmed outside the timed region (its first-step loss is printed), then the
providers are timed in paired rounds (each round runs every provider once, rotating the order)
with the L2 cache flushed before each timed step; medians with quartiles. If a provider's set-up
hangs past the cap (a max-autotune compile), the workload is rerun without it. report.md and
report.json are rewritten after the checks and after every workload, so a crash loses nothing.

--dry-run runs all of it on the CPU: Triton under its interpreter, tiny sizes (hidden 32), one
round, torch.compile with the "eager" backend; the report files have the same layout. CI runs it
(tests/test_gpu_report.py).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TRAIN_PROVIDERS = ("seed-loop", "eager", "compile-default", "compile-max-autotune", "triton",
                   "triton-graph")
RENDER_PROVIDERS = ("seed-loop", "eager", "compile-max-autotune", "triton", "native")
# name: (kind, batch, (H, W), precision, providers, time cap in seconds)
WORKLOADS = {
    "train 64x32x32 tf32": ("train", 64, (32, 32), "tf32", TRAIN_PROVIDERS, 200),
    "train 64x32x32 bf16": ("train", 64, (32, 32), "bf16", ("eager", "triton", "triton-graph"), 45),
    "render 64x128x128 tf32": ("render", 64, (128, 128), "tf32", RENDER_PROVIDERS, 100),
    "render 1x2048x2048 tf32": ("render", 1, (2048, 2048), "tf32", ("eager", "triton", "native"), 40),
    "render 1x4096x4096 tf32": ("render", 1, (4096, 4096), "tf32", ("eager", "triton", "native"), 45),
    "render 64x128x128 bf16": ("render", 64, (128, 128), "bf16", ("eager", "triton"), 30),
}
DRY_RUN_SIZES = {"train": (2, (5, 7)), "render": (2, (8, 8))}
# (what, kind, batch, (H, W), precision): the timed binaries.
CHECKS = [("train", 64, (32, 32), "tf32"), ("train", 64, (32, 32), "bf16"),
          ("render", 64, (128, 128), "tf32"), ("render", 64, (128, 128), "bf16")]
# Dense tensor-core peaks of an H200 SXM (TFLOP/s), for "% of peak".
PEAK_TFLOPS = {"tf32": 494.7, "bf16": 989.4}
CHECKS_CAP = 120
COMPILE_CAP = 150


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu_report", help="folder for report.md / report.json")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    parser.add_argument("--rounds", type=int, default=15, help="paired timing rounds")
    parser.add_argument("--only", default="", help="comma-separated substrings of workload names")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, Triton interpreter, tiny sizes, one round: the plumbing only")
    parser.add_argument("--no-l2-flush", action="store_true", help="time warm-cache steps")
    parser.add_argument("--workload", help=argparse.SUPPRESS)   # internal: run one workload
    parser.add_argument("--exclude", default="", help=argparse.SUPPRESS)
    parser.add_argument("--checks", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--compile-check", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def workload_size(name, dry_run):
    kind, batch, shape = WORKLOADS[name][:3]
    return DRY_RUN_SIZES[kind] if dry_run else (batch, shape)


# ----------------------------------------------------------------------------- child processes

def run_checks(dry_run):
    import torch

    from benchmarks.gpu_cases import emit, seed_spec
    from benchmarks.gpu_checks import check_render, check_training
    from fastinr.ops import config as ops_config
    ops_config.POISON_OUTPUTS = True        # an unwritten element fails instead of matching
    device = torch.device("cpu" if dry_run else "cuda")
    for kind, batch, shape, precision in CHECKS:
        if dry_run:   # the interpreter's bf16 tl.dot is wrong (tests/test_triton.py): fp16 stands in
            batch, shape = DRY_RUN_SIZES[kind]
            precision = "fp16" if precision == "bf16" else precision
        torch.manual_seed(1)
        check = check_training if kind == "train" else check_render
        try:
            for row in check(seed_spec(dry_run), batch, shape, precision, torch.device(device)):
                emit(event="check", size=f"{batch}x{shape[0]}x{shape[1]}", **row)
        except Exception as err:
            emit(event="check", what=f"{kind} {precision}", ok=False,
                 error=f"{type(err).__name__}: {str(err)[:300]}")


def run_compile_check(dry_run):
    """A finding, not a gate of the timings (run last): does the triton backend compile with
    fullgraph=True, and does the compiled step match?"""
    import torch

    from benchmarks.gpu_cases import emit, seed_spec
    from benchmarks.gpu_checks import check_compiled
    if dry_run:   # Inductor runs no Triton kernels on CPU tensors
        emit(event="compile", what="compiled train fp32", ok=None, error="skipped: needs a CUDA GPU")
        return
    device, batch, shape = torch.device("cuda"), 64, (32, 32)
    torch.manual_seed(1)
    try:
        for row in check_compiled(seed_spec(dry_run), batch, shape, device):
            emit(event="compile", size=f"{batch}x{shape[0]}x{shape[1]}", **row)
    except Exception as err:
        emit(event="compile", what="compiled train fp32", ok=False,
             error=f"{type(err).__name__}: {str(err)[:600]}")


def run_one_workload(args):
    from benchmarks.gpu_cases import run_workload
    kind, _, _, precision, providers, _ = WORKLOADS[args.workload]
    batch, shape = workload_size(args.workload, args.dry_run)
    if args.dry_run and precision == "bf16":   # as in run_checks
        precision = "fp16"
    excluded = set(filter(None, args.exclude.split(",")))
    run_workload(args.workload, kind, batch, shape, precision,
                 [p for p in providers if p not in excluded], 1 if args.dry_run else args.rounds,
                 args.dry_run, flush_l2=not args.no_l2_flush)


# ----------------------------------------------------------------------------- driver

def _child(args, extra, timeout):
    """JSON lines a child printed, and an error line if it failed or ran past `timeout`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--rounds", str(args.rounds)] + extra
    cmd += ["--dry-run"] * args.dry_run + ["--no-l2-flush"] * args.no_l2_flush
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.dry_run:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    failure = None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
        stdout = done.stdout
        if done.returncode != 0:
            failure = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout or ""
        stdout = stdout.decode() if isinstance(stdout, bytes) else stdout
        failure = f"timed out after {timeout:.0f} s"
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return rows, failure


def run_workload_with_retry(name, args, cap):
    """Rows of one workload; a provider whose set-up ran past the cap is dropped and the
    workload rerun once without it, within what is left of the cap."""
    start = time.monotonic()
    rows, failure = _child(args, ["--workload", name], cap)
    providers = WORKLOADS[name][4]
    done = {r["provider"] for r in rows if r.get("event") in ("setup", "error")}
    if failure and not any(r.get("event") == "timing" for r in rows):
        stuck = [p for p in providers if p not in done][:1]
        left = cap - (time.monotonic() - start)
        if stuck and left > 20:
            for row in rows:
                print(json.dumps(row), flush=True)
            retry, failure = _child(args, ["--workload", name, "--exclude", stuck[0]], left)
            rows = retry + [dict(event="error", workload=name, provider=stuck[0],
                                 error=f"set-up did not finish within the cap ({cap} s)")]
    if failure:
        rows.append(dict(event="error", workload=name, provider="(process)", error=failure))
    return rows


def _fmt(value, scale=1.0, digits=3):
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value * scale:.{digits}f}"


def _check_line(c):
    status = {True: "PASS", False: "FAIL", None: "SKIP"}[c["ok"]]
    if "error" in c:
        return f"- {status} {c['what']}: {c['error']}"
    return (f"- {status} {c['what']} ({c.get('size', '')}): error {c['max_error']:.3e}, "
            f"torch's own {c['torch_error']:.3e}, allowed {c['allowed']:.3e}")


def format_report(meta, checks, rows, compiled=()):
    lines = [f"{meta['device']}, torch {meta['torch']}, Triton {meta['triton']}"
             + (" (DRY RUN: CPU, Triton interpreter, tiny sizes; no timing means anything)"
                if meta["dry_run"] else ""),
             "", f"L2 flushed before every timed step: "
             f"{'yes (cold)' if meta['l2_flushed'] else 'no (warm)'}; "
             f"{meta['rounds']} paired rounds; median [quartiles] per step.", "",
             "## Correctness of the timed binaries (gates the timings)", ""]
    lines += [_check_line(c) for c in checks]
    lines += ["", "## torch.compile(model, fullgraph=True) on the triton backend (vs eager triton's "
              "own error; not a gate)", ""]
    lines += [_check_line(c) for c in compiled] or ["- not run"]
    lines += ["", "## Timings", "",
              "| workload | provider | median ms | [q25, q75] ms | vs seed-loop | Mpixel/s | TFLOP/s "
              "| % of peak | peak extra MiB | first-step loss | first call s | launches/step |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    merged = {}
    for r in rows:
        merged.setdefault((r["workload"], r["provider"]), {}).update(r)
    seed = {w: r["median_s"] for (w, p), r in merged.items() if p == "seed-loop" and "median_s" in r}
    for (workload, provider), r in merged.items():
        if "median_s" not in r:
            lines.append(f"| {workload} | {provider} | {r.get('error', 'no timing')} |"
                         + " |" * 10)
            continue
        precision = WORKLOADS[workload][3]
        peak = PEAK_TFLOPS.get(precision)
        launches = r.get("launches")
        launches = f"{launches['triton']} triton + {launches['torch']} torch" if launches else ""
        speedup = seed.get(workload, math.nan) / r["median_s"]
        lines.append(
            f"| {workload} | {provider} | {_fmt(r['median_s'], 1e3)} | "
            f"[{_fmt(r['q25_s'], 1e3)}, {_fmt(r['q75_s'], 1e3)}] | "
            f"{_fmt(speedup, digits=1) + 'x' if math.isfinite(speedup) else ''} | "
            f"{_fmt(r['pixels_per_s'], 1e-6, 1)} | {_fmt(r['tflops'], digits=2)} | "
            f"{_fmt(r['tflops'] / peak * 100 if peak else None, digits=1)} | "
            f"{_fmt(r.get('peak_extra_bytes'), 2 ** -20, 1)} | "
            f"{_fmt(r.get('first_step_loss'), digits=5)} | {_fmt(r.get('first_call_s'), digits=2)} | "
            f"{launches} |")
    return "\n".join(lines) + "\n"


def write_report(out, meta, checks, rows, compiled=()):
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(dict(meta, checks=checks, compiled=list(compiled), rows=rows), f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(format_report(meta, checks, rows, compiled))


def main(argv=None):
    args = parse_args(argv)
    if args.checks:
        return run_checks(args.dry_run) or 0
    if args.compile_check:
        return run_compile_check(args.dry_run) or 0
    if args.workload:
        return run_one_workload(args) or 0
    import torch
    import triton
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_report.py needs a CUDA GPU (or --dry-run)")
    deadline = time.monotonic() + args.budget
    os.makedirs(args.out, exist_ok=True)
    meta = dict(device="CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(),
                torch=torch.__version__, triton=triton.__version__, dry_run=args.dry_run,
                l2_flushed=not args.no_l2_flush, rounds=1 if args.dry_run else args.rounds)
    print(f"{meta['device']}, torch {meta['torch']}, Triton {meta['triton']}", flush=True)
    checks, failure = _child(args, ["--checks"], min(CHECKS_CAP, args.budget))
    checks = [c for c in checks if c.get("event") == "check"]
    compiled = []
    if failure or not checks:
        checks.append(dict(what="checks", ok=False, error=failure or "no check ran"))
    for c in checks:
        print(f"check {'PASS' if c['ok'] else 'FAIL'} {json.dumps(c)}", flush=True)
    rows = []
    write_report(args.out, meta, checks, rows, compiled)
    passed = all(c["ok"] for c in checks)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    for name, (kind, _, _, _, providers, cap) in WORKLOADS.items():
        if wanted and not any(s in name for s in wanted):
            continue
        remaining = deadline - time.monotonic() - 5
        if not passed or remaining < 15:
            why = "correctness check failed" if not passed else "out of the time budget"
            rows += [dict(event="error", workload=name, provider=p, error=f"skipped: {why}")
                     for p in providers]
        else:
            for row in run_workload_with_retry(name, args, min(cap, remaining)):
                rows.append(row)
                if row.get("event") == "setup":
                    print(f"{name} | {row['provider']}: first-step loss {row['first_step_loss']:.6f}",
                          flush=True)
                print(json.dumps(row), flush=True)
        write_report(args.out, meta, checks, rows, compiled)
    remaining = deadline - time.monotonic() - 5
    if remaining >= 30:
        compiled, failure = _child(args, ["--compile-check"], min(COMPILE_CAP, remaining))
        compiled = [c for c in compiled if c.get("event") == "compile"]
        if failure or not compiled:
            compiled.append(dict(what="compiled train fp32", ok=False, error=failure or "no row"))
    else:
        compiled = [dict(what="compiled train fp32", ok=None, error="skipped: out of the time budget")]
    write_report(args.out, meta, checks, rows, compiled)
    print("\n" + format_report(meta, checks, rows, compiled))
    return 0 if passed and not any(r.get("event") == "error" and not r["error"].startswith("skipped")
                                   for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
