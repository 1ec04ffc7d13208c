"""Statistics over a batch split across processes (the decode contract's `reducer`), in one process.

A fake process group of threads: each thread decodes its share of the batch with a reducer that
sums its tensor with the other threads' (in thread order, so every thread gets the same total).
The threads take turns (one computes while the others wait at a reduction), so the Triton
interpreter never runs two kernels at once. The shares' colors, code gradients and statistics
must be the whole batch's, and their parameter gradients must add up to the whole batch's: in
float64 to 1e-10 of each tensor's scale (the torch and native backends), and for the Triton
kernels (float32 only) within 2x the whole-batch Triton call's own float32 error against float64.
"""
import threading

import pytest
import torch

from fastinr import backends
from fastinr.contract import DecoderParams, DecoderSpec, InputOffset

BACKENDS = ["torch", "native", "triton"]
# (spec kwargs, shape, batch, split): widths that change across blocks, a block without layers,
# modulation with an input offset; unequal shares
CONFIGS = [
    (dict(hidden=12, concat=(True, False)), (4, 5), 5, (2, 3)),
    (dict(hidden=8, concat=(False, True), layers_per_block=0), (3, 4), 3, (1, 2)),
    (dict(hidden=8, concat=(False, False), modulation="film", offset=2), (4, 3), 4, (2, 2)),
]


class ThreadGroup:
    """`size` threads that run one function each and reduce through a barrier."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=120)
        self.turn = threading.Lock()
        self.slots = [None] * size
        self.calls = [[] for _ in range(size)]

    def reducer(self, rank):
        def reduce_(tensor):
            assert tensor.dtype == torch.float64, tensor.dtype
            self.calls[rank].append(tensor.numel())
            self.slots[rank] = tensor.detach().clone()
            self.turn.release()
            try:
                self.barrier.wait()
                total = self.slots[0].clone()
                for slot in self.slots[1:]:
                    total += slot
                self.barrier.wait()
            finally:
                self.turn.acquire()
            tensor.copy_(total)
        return reduce_

    def run(self, functions):
        results, errors = [None] * self.size, []

        def work(rank):
            try:
                with self.turn:
                    results[rank] = functions[rank](self.reducer(rank))
            except BaseException as err:
                errors.append(err)
                self.barrier.abort()
        threads = [threading.Thread(target=work, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


def make_call(kwargs, shape, batch, dtype):
    kwargs = dict(kwargs)
    rank = kwargs.pop("offset", 0)
    spec = DecoderSpec(code_size=5, out_channels=3, layers_per_block=kwargs.pop("layers_per_block", 2),
                       freqs=(3.0,), batch_norm=True, activation="gelu", activation_out="sigmoid", **kwargs)

    def uniform(*size, bound=1.0):
        return torch.empty(*size, dtype=dtype).uniform_(-bound, bound).requires_grad_()
    shapes = DecoderParams.shapes(spec)
    params = shapes.map(lambda s: uniform(*s, bound=s[-1] ** -0.5))
    params = params._replace(norm_weight=tuple(torch.empty(s, dtype=dtype).uniform_(0.5, 1.5).requires_grad_()
                                               for s in shapes.norm_weight))
    codes = uniform(batch, spec.code_size)
    mods = uniform(*spec.mods_shape(batch), bound=0.3) if spec.modulation != "none" else None
    offset = (InputOffset(torch.rand(*shape, rank, dtype=dtype), uniform(batch, rank, spec.hidden, bound=0.3))
              if rank else None)
    return spec, params, codes, mods, offset


def run_decode(backend, spec, params, codes, mods, offset, shape, grad_colors, reducer=None):
    """(colors, BlockStats, gradients of codes, mods, cells and every params tensor)."""
    colors, stats = backends.decode(codes, params, spec, shape, "batch", mods=mods, input_offset=offset,
                                    backend=backend, reducer=reducer)
    inputs = [t for t in (codes, mods, offset.cells if offset is not None else None) if t is not None]
    grads = torch.autograd.grad((colors * grad_colors).sum(), inputs + params.flat())
    return colors.detach(), stats, grads[:len(inputs)], grads[len(inputs):]


def split_decode(backend, spec, params, codes, mods, offset, shape, grad_colors, split):
    """The same call with the batch split over threads that reduce their statistics."""
    bounds = torch.tensor((0,) + split).cumsum(0).tolist()
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:])]
    group = ThreadGroup(len(split))

    def share(part):
        # each share's inputs are leaves of their own, as they would be in another process
        own = lambda t: None if t is None else t[part].detach().requires_grad_()  # noqa: E731
        cells = None if offset is None else InputOffset(offset.basis, own(offset.cells))
        return lambda reducer: run_decode(backend, spec, params, own(codes), own(mods), cells, shape,
                                          grad_colors[part], reducer)
    return group, group.run([share(part) for part in parts])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kwargs, shape, batch, split", CONFIGS)
def test_split_batch_matches_whole_batch(backend, kwargs, shape, batch, split):
    if backend not in backends.available_backends():
        pytest.skip(f"backend {backend} is not available here")
    float64 = backend != "triton"
    dtype = torch.float64 if float64 else torch.float32
    spec, params, codes, mods, offset = make_call(kwargs, shape, batch, dtype)
    grad_colors = torch.randn(batch, spec.out_channels, *shape, dtype=dtype)
    whole = run_decode(backend, spec, params, codes, mods, offset, shape, grad_colors)
    group, shares = split_decode(backend, spec, params, codes, mods, offset, shape, grad_colors, split)

    # The reductions every process makes in the forward, in order: the row count, then per block
    # the sums of x and of the squares about the global mean.
    widths = spec.block_widths
    forward = [1] + [w for w in widths for _ in range(2)]
    for calls in group.calls:
        assert calls[:len(forward)] == forward, calls
        assert len(calls) > len(forward), "the backward made no reduction"

    def flatten(result):   # [(name, tensor)] of one decode's results, shares joined as one batch
        colors, stats, inputs, params_ = result
        named = [("colors", colors)] + [(f"grad {n}", g) for n, g in zip(("codes", "mods", "cells"), inputs)]
        named += [(f"grad {n}", g) for n, g in zip(DecoderParams.names(spec).flat(), params_)]
        return named + [(f"stats[{i}].{k}", getattr(s, k)) for i, s in enumerate(stats) for k in ("mean", "var")]
    joined = (torch.cat([s[0] for s in shares]), shares[0][1],
              [torch.cat(parts) for parts in zip(*(s[2] for s in shares))],
              [sum(parts) for parts in zip(*(s[3] for s in shares))])
    for rank, share in enumerate(shares):   # every process gets the global statistics
        for got, want in zip(share[1], shares[0][1]):
            assert got.count == batch * shape[0] * shape[1]
            assert torch.equal(got.mean, want.mean) and torch.equal(got.var, want.var), rank
    ours, theirs = flatten(joined), flatten(whole)
    assert [n for n, _ in ours] == [n for n, _ in theirs]
    if float64:
        for (name, got), (_, want) in zip(ours, theirs):
            check(f"{backend} {name}", got, want, 1e-10 * max(want.abs().max().item(), 1e-3))
        return
    # float32: the whole-batch call's error against float64 sets the scale of float32 rounding
    as64 = lambda t: None if t is None else t.detach().double().requires_grad_()  # noqa: E731
    exact = flatten(run_decode("torch", spec, params.map(as64), as64(codes), as64(mods),
                               None if offset is None else InputOffset(offset.basis.double(), as64(offset.cells)),
                               shape, grad_colors.double()))
    for (name, got), (_, want), (_, truth) in zip(ours, theirs, exact):
        own = (want.double() - truth).abs().max().item()
        floor = 8 * torch.finfo(torch.float32).eps * max(truth.abs().max().item(), 1e-3)
        check(f"{backend} {name}", got, truth, 2 * own + floor)


def check(name, actual, expected, allowed):
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= allowed, f"{name}: {err:.3g} apart, allowed {allowed:.3g}"


def test_reducer_needs_batch_statistics():
    spec, params, codes, _, _ = make_call(dict(hidden=8, concat=(False,)), (2, 2), 2, torch.float32)
    with pytest.raises(ValueError, match="norm_stats='batch'"):
        backends.decode(codes, params, spec, (2, 2), "image", reducer=lambda t: None)
    with pytest.raises(TypeError, match="reducer must be a callable"):
        backends.decode(codes, params, spec, (2, 2), "batch", reducer=3)
