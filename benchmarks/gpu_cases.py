"""One workload of benchmarks/gpu_report.py: every provider set up, then timed in paired rounds.

A workload (a training step or an eval render of the seed decoder at one size and precision) is
run by one process. Each provider is built from the same initial weights, codes and target, and
set up outside the timed region: its first step (printed with its loss, and timed as the
compile / first-call cost), two warm steps, one step for its peak memory and, for fastinr's
providers, one step under fastinr.ops.launches.LaunchCounter (launches per step). Then every
round times each provider once, in an order rotated from round to round, with the L2 cache
flushed before each timed step (cold, as in training where each step streams new activations).

Every result is printed as one JSON line as soon as it exists, so the parent keeps whatever a
crash or a timeout leaves.

Providers:
  seed-loop             the seed's per-image loop (fastinr/seed_loop.py)
  eager                 fastinr's batched reference (backend "torch")
  compile-default       torch.compile of it, mode "default"
  compile-max-autotune  torch.compile of it, mode "max-autotune"
  triton                fastinr's Triton kernels
  triton-graph          the same, the whole step (forward, backward, Adam) replayed as one CUDA graph
  native                fastinr.backends.native_backend's CUDA render (when the extension was built with nvcc)
"""
import json
import statistics
import time

import torch

from benchmarks.gpu_checks import precision_context
from benchmarks.measure import decoder_flops

SEED = dict(num_input_channels=102, num_output_channels=3, num_hidden=256, num_blocks=2,
            num_layers_per_block=2, pos_embedding_freqs=(7.0, 17.0))
DRY_RUN_HIDDEN = 32
L2_FLUSH_BYTES = 512 * 2 ** 20      # well above the H200's 60 MiB L2


class Skipped(Exception):
    """A provider that cannot run here (e.g. native without its CUDA build)."""


def emit(**row):
    print(json.dumps(row), flush=True)


def seed_spec(dry_run: bool) -> dict:
    return dict(SEED, num_hidden=DRY_RUN_HIDDEN) if dry_run else dict(SEED)


def spec_flops(spec, batch, pixels, train):
    """The FLOP convention of every table (benchmarks/measure.py) for a decoder spec."""
    return decoder_flops(batch, pixels, spec["num_input_channels"],
                         (2 * len(spec["pos_embedding_freqs"]) + 1) * 2, spec["num_hidden"],
                         spec["num_blocks"] * spec["num_layers_per_block"],
                         spec["num_output_channels"], train)


def _model(provider, spec, state, device):
    from fastinr import ImageManifoldDecoder
    from fastinr.seed_loop import SeedLoopDecoder
    if provider == "seed-loop":
        model = SeedLoopDecoder(**spec)
    else:
        backend = "triton" if provider.startswith("triton") else "torch"
        model = ImageManifoldDecoder(**spec, backend=backend)
    model.load_state_dict(state)
    return model.to(device)


def _compiled(forward, provider, dry_run):
    if not provider.startswith("compile-"):
        return forward
    # The dry run proves the plumbing through dynamo without inductor's minutes of C++ builds.
    if dry_run:
        return torch.compile(forward, backend="eager")
    return torch.compile(forward, mode=provider[len("compile-"):])


def _train_step(provider, model, codes, target, shape, precision, device, dry_run):
    """A step function returning the loss tensor: zero grads, forward, L1 loss, backward, Adam."""
    codes = codes.clone().requires_grad_()
    graph = provider == "triton-graph" and device.type == "cuda"
    optimizer = torch.optim.Adam(list(model.parameters()) + [codes], lr=1e-4,
                                 capturable=graph)
    forward = _compiled(lambda c: model(c, shape), provider, dry_run)
    autocast, tf32 = precision_context(precision, device, cache_casts=not graph)
    torch.backends.cuda.matmul.allow_tf32 = tf32

    def body():
        with autocast:
            colors = forward(codes)
        loss = (colors.float() - target).abs().mean()
        loss.backward()
        optimizer.step()
        return loss

    def step():
        optimizer.zero_grad(set_to_none=True)
        return body()
    if not graph:
        return step
    # Whole-step capture (torch.cuda.graphs): warm up on a side stream, then capture once. The
    # first warm-up step is this provider's first step (its loss is the one to compare).
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        first_loss = step().item()
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    cuda_graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(cuda_graph):
        static_loss = body()

    def replay():
        cuda_graph.replay()
        return static_loss
    replay.first_loss = first_loss
    return replay


def _render_step(provider, model, codes, shape, precision, device, dry_run):
    model.eval()
    autocast, tf32 = precision_context(precision, device)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    if provider == "native":
        from fastinr import backends as backend
        module, reason = backend._load("native")
        if module is None or (device.type == "cuda"
                              and not getattr(module, "renders_on_cuda", lambda: False)()):
            raise Skipped(f"fastinr.backends.native_backend has no CUDA render here ({reason or 'built without nvcc'})")
        running = [(n.running_mean, n.running_var) for n in model._norms()]
        forward = lambda c: module.decode(c, model.decoder_params(), model.spec, shape,  # noqa: E731
                                          "running", running)[0]
    else:
        forward = _compiled(lambda c: model(c, shape), provider, dry_run)

    def step():
        with torch.no_grad(), autocast:
            return forward(codes)
    return step


class _Timer:
    """Per-step times: CUDA events on a GPU (read after the rounds), perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.pending = []

    def time(self, step):
        if self.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            self.pending.append((begin, end))
            return lambda: begin.elapsed_time(end) / 1e3
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
        return lambda: elapsed


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_workload(name, kind, batch, shape, precision, providers, rounds, dry_run, flush_l2=True):
    """Set up and time every provider; prints JSON lines (event "setup", "timing", "error")."""
    from fastinr import ImageManifoldDecoder
    from fastinr.ops.launches import LaunchCounter
    device = torch.device("cpu" if dry_run else "cuda")
    spec = seed_spec(dry_run)
    torch.manual_seed(0)
    state = ImageManifoldDecoder(**spec, backend="torch").state_dict()
    codes = torch.randn(batch, spec["num_input_channels"], device=device)
    target = torch.rand(batch, spec["num_output_channels"], *shape, device=device)
    pixels = shape[0] * shape[1]
    flops = spec_flops(spec, batch, pixels, kind == "train")
    flush = torch.empty(L2_FLUSH_BYTES if device.type == "cuda" else 2 ** 20, dtype=torch.int8,
                        device=device)
    steps = {}
    for provider in providers:
        try:
            _sync(device)
            start = time.perf_counter()     # the CUDA graph's capture counts as its first call
            model = _model(provider, spec, state, device)
            if kind == "train":
                step = _train_step(provider, model.train(), codes, target, shape, precision,
                                   device, dry_run)
            else:
                step = _render_step(provider, model, codes, shape, precision, device, dry_run)
            first = step()
            _sync(device)
            first_call_s = time.perf_counter() - start
            first_loss = getattr(step, "first_loss", None)
            if first_loss is None:   # a render's "loss": its colors against the same target
                loss = (first.float() - target).abs().mean() if kind == "render" else first
                first_loss = loss.item()
            for _ in range(2):
                step()
            _sync(device)
            peak = None
            if device.type == "cuda":
                held = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
                step()
                _sync(device)
                peak = torch.cuda.max_memory_allocated() - held
            launches = None
            if provider in ("eager", "triton"):
                with LaunchCounter() as counter:
                    step()
                _sync(device)
                launches = dict(triton=sum(counter.triton.values()), torch=sum(counter.torch.values()))
            steps[provider] = step
            emit(event="setup", workload=name, provider=provider, first_step_loss=first_loss,
                 first_call_s=first_call_s, peak_extra_bytes=peak, launches=launches)
        except Skipped as why:
            emit(event="error", workload=name, provider=provider, error=f"skipped: {why}")
        except Exception as err:  # reported as this provider's row; the others go on
            emit(event="error", workload=name, provider=provider,
                 error=f"{type(err).__name__}: {str(err)[:300]}")
    times = {provider: [] for provider in steps}
    timer = _Timer(device)
    order = list(steps)
    for r in range(rounds):
        for provider in order[r % len(order):] + order[:r % len(order)] if order else []:
            if flush_l2:
                flush.zero_()
            times[provider].append(timer.time(steps[provider]))
    _sync(device)
    for provider, readings in times.items():
        seconds = sorted(read() for read in readings)
        median = statistics.median(seconds)
        q25, q75 = (statistics.quantiles(seconds, n=4)[::2] if len(seconds) >= 2
                    else (seconds[0], seconds[0]))
        emit(event="timing", workload=name, provider=provider, rounds=len(seconds),
             median_s=median, q25_s=q25, q75_s=q75, min_s=seconds[0],
             pixels_per_s=batch * pixels / median, tflops=flops / median / 1e12,
             l2_flushed=flush_l2)
