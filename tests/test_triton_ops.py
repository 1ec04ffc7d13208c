"""The Triton launches as custom ops (fastinr/ops/library.py): torch.library.opcheck checks each
op's schema, fake kernel (static and dynamic shapes, against the real outputs' shapes, dtypes and
strides) and autograd registration, on small inputs under TRITON_INTERPRET=1 (conftest.py).

That the ops compute the contract is test_triton.py's claim (every kernel against the float64
reference); that torch.compile(fullgraph=True) traces a whole decoder through them is
test_compile.py's.
"""
import pytest
import torch

from fastinr.activations import activation_code
from fastinr.embedding import pos_embedding_size

from .conftest import DEVICE
from .test_triton import make_params, make_running, make_spec

pytest.importorskip("triton")
from fastinr.ops.config import LaunchConfig  # noqa: E402
from fastinr.ops.library import BODIES, config_args  # noqa: E402
from fastinr.ops.linear import RES_ADD, RES_CONCAT, RES_NONE  # noqa: E402

BATCH, HEIGHT, WIDTH, HIDDEN = 2, 5, 3, 16      # P = 15 pixels: row tiles end inside an image
ROWS = BATCH * HEIGHT * WIDTH
ACT = activation_code("gelu")


def config():
    return config_args(LaunchConfig.for_call(torch.device(DEVICE)))


def rand(*shape, grad=False):
    return torch.randn(*shape, device=DEVICE).requires_grad_(grad)


def linear_cases():
    norm = (rand(BATCH, HIDDEN, grad=True), 1 + 0.1 * rand(BATCH, HIDDEN), rand(HIDDEN, grad=True))
    for res_mode, with_norm in ((RES_ADD, True), (RES_CONCAT, False), (RES_NONE, True)):
        mean, scale, beta = norm if with_norm else (None, None, None)
        residual = rand(ROWS, HIDDEN, grad=True) if res_mode != RES_NONE else None
        yield (f"res{res_mode}-norm{with_norm}", torch.ops.fastinr.triton_linear,
               (rand(ROWS, HIDDEN, grad=True), rand(HIDDEN, HIDDEN, grad=True), rand(HIDDEN, grad=True),
                mean, scale.requires_grad_() if scale is not None else None, beta, residual),
               dict(act=ACT, groups=BATCH if with_norm else 1, res_mode=res_mode, store_z=True, **config()))


def backward_cases():
    x, weight, z, dy = rand(ROWS, HIDDEN), rand(HIDDEN, HIDDEN), rand(ROWS, HIDDEN), rand(ROWS, HIDDEN)
    mean, scale, beta = rand(BATCH, HIDDEN), rand(BATCH, HIDDEN), rand(HIDDEN)
    yield ("linear_backward", torch.ops.fastinr.triton_linear_backward,
           (dy, z, x, weight, mean, scale, beta), dict(act=ACT, groups=BATCH, need_dx=True, **config()))
    yield ("linear_backward-no-norm", torch.ops.fastinr.triton_linear_backward,
           (dy, z, x, weight, None, None, None), dict(act=ACT, groups=1, need_dx=False, **config()))
    freqs = [7.0, 17.0]
    embed = dict(freqs=freqs, height=HEIGHT, width=WIDTH, act=ACT, **config())
    yield ("embed_backward", torch.ops.fastinr.triton_embed_linear_backward, (dy, z),
           dict(embed, need_dz=True))
    yield ("modulate_backward", torch.ops.fastinr.triton_modulate_backward,
           (dy, z, rand(BATCH, 2, HIDDEN)), dict(film=True, act=ACT, pixels=HEIGHT * WIDTH, **config()))
    yield ("norm_stats_backward", torch.ops.fastinr.triton_norm_stats_backward,
           (x, mean, rand(BATCH, HIDDEN).abs(), rand(HIDDEN), rand(BATCH, HIDDEN), rand(BATCH, HIDDEN)),
           dict(groups=BATCH, **config()))


def forward_cases():
    yield from linear_cases()
    freqs = [7.0, 17.0]
    e_size = pos_embedding_size(freqs)
    for offset in (None, rand(ROWS, HIDDEN, grad=True)):
        yield (f"embed-offset{offset is not None}", torch.ops.fastinr.triton_embed_linear,
               (rand(BATCH, HIDDEN, grad=True), rand(HIDDEN, e_size, grad=True), offset),
               dict(freqs=freqs, height=HEIGHT, width=WIDTH, act=ACT, **config()))
    for film, residual in ((True, rand(ROWS, HIDDEN, grad=True)), (False, None)):
        yield (f"modulate-film{film}", torch.ops.fastinr.triton_modulate,
               (rand(ROWS, HIDDEN, grad=True), rand(BATCH, 2 if film else 1, HIDDEN, grad=True), residual),
               dict(film=film, act=ACT, pixels=HEIGHT * WIDTH, **config()))
    for groups in (BATCH, 1):
        yield (f"norm_stats-groups{groups}", torch.ops.fastinr.triton_norm_stats,
               (rand(ROWS, HIDDEN, grad=True), (1 + 0.1 * rand(HIDDEN)).requires_grad_()),
               dict(groups=groups, eps=1e-5, **config()))
    spec = make_spec(hidden=HIDDEN)
    running = [t for pair in make_running(spec) for t in pair]
    yield ("render", torch.ops.fastinr.triton_render,
           (rand(BATCH, spec.code_size), make_params(spec).flat(), running),
           dict(spec.op_fields(), height=HEIGHT, width=WIDTH, **config()))


def cases() -> dict:
    """name -> (op, args, kwargs), with fresh random inputs (drawn under the test's seed)."""
    return {name: rest for name, *rest in (*forward_cases(), *backward_cases())}


@pytest.mark.parametrize("name", list(cases()))
def test_opcheck(name):
    op, args, kwargs = cases()[name]
    torch.library.opcheck(op, args, kwargs)


def test_every_op_is_checked():
    checked = {op._qualified_op_name for op, _, _ in cases().values()}
    assert checked == {f"fastinr::{name}" for name in BODIES}, \
        "an op registered through fastinr/ops/library.py has no opcheck case here"
