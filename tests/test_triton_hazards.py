"""What the interpreter's float results cannot show: reads past a table on ragged tiles, and
launches on the wrong GPU.

- The pixel embedding of a tile's rows past the image must read nothing: the memory after the
  (H, E) row table is poisoned with NaN, and every embedding the helper returns is checked,
  including the masked rows that the kernels then drop (so a read there is invisible in their
  outputs).
- Every Triton launch of a training step (forward and backward, BatchNorm, FiLM, input offset)
  and of a render runs inside fastinr.ops.config.device_guard of its tensors.
"""
import contextlib

import pytest
import torch

from fastinr.embedding import pos_embedding, pos_embedding_size
from fastinr.contract import InputOffset

from .conftest import DEVICE
from .test_triton import make_params, make_running, make_spec

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from fastinr.ops import config as ops_config  # noqa: E402
from fastinr.backends import triton_backend as ops_decoder  # noqa: E402
from fastinr.ops.embed import pixel_embedding, embedding_tables  # noqa: E402
from fastinr.ops.launches import LaunchCounter  # noqa: E402


@triton.jit
def _embedding_of_tile_kernel(out_ptr, x_table_ptr, y_table_ptr, P, width, tiles,
                              E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """out[tile, i] = the embedding of row i of the last tile of image 0 (rows past the image
    included)."""
    local = (tiles - 1) * BLOCK_M + tl.arange(0, BLOCK_M)
    emb = pixel_embedding(local, local < P, width, x_table_ptr, y_table_ptr, E, E_PAD)
    e = tl.arange(0, E_PAD)
    tl.store(out_ptr + tl.arange(0, BLOCK_M)[:, None] * E_PAD + e[None, :], emb)


@pytest.mark.parametrize("shape", [(1, 7), (3, 5), (2, 1), (1, 1), (5, 3), (7, 13)])
@pytest.mark.parametrize("block_m", [16, 32])
def test_pixel_embedding_reads_nothing_past_the_image(shape, block_m):
    height, width = shape
    freqs = (7.0, 17.0)
    e_size = pos_embedding_size(freqs)
    e_pad = triton.next_power_of_2(e_size)
    x_table, y_table = embedding_tables(freqs, shape, DEVICE)
    # The row table followed by NaN, as far as the last tile's rows could reach.
    poisoned = torch.full((height + block_m, e_size), float("nan"), device=DEVICE)
    poisoned[:height] = y_table
    pixels = height * width
    tiles = triton.cdiv(pixels, block_m)
    out = torch.full((block_m, e_pad), float("nan"), device=DEVICE)
    _embedding_of_tile_kernel[(1,)](out, x_table, poisoned, pixels, width, tiles,
                                    E=e_size, E_PAD=e_pad, BLOCK_M=block_m)
    first = (tiles - 1) * block_m
    inside = pixels - first
    expected = pos_embedding(height, width, freqs, device=DEVICE)[first:]
    assert torch.isfinite(out).all(), "the embedding read past the end of the row table"
    torch.testing.assert_close(out[:inside, :e_size], expected, rtol=0, atol=0)
    assert (out[inside:] == 0).all(), "rows past the image must embed to zero"
    assert (out[:, e_size:] == 0).all(), "padding columns past E must be zero"


class _GuardRecorder:
    """Stands in for device_guard: records the device of each guarded region, and whether a
    launch happened outside any guard."""

    def __init__(self):
        self.active = []
        self.unguarded = []
        self.guarded = []

    @contextlib.contextmanager
    def __call__(self, tensor):
        self.active.append(tensor.device)
        try:
            yield
        finally:
            self.active.pop()

    def on_launch(self, name):
        (self.guarded if self.active else self.unguarded).append(name)


def test_every_launch_runs_under_a_device_guard(monkeypatch):
    recorder = _GuardRecorder()
    monkeypatch.setattr(ops_config, "device_guard", recorder)
    spec = make_spec(hidden=16, blocks=2, layers=2, modulation="film")
    params = make_params(spec)
    flat = [t.clone().requires_grad_() for t in params.flat()]
    codes = torch.randn(2, spec.code_size, device=DEVICE, requires_grad=True)
    mods = torch.randn(spec.mods_shape(2), device=DEVICE, requires_grad=True)
    basis = torch.rand(3, 5, 4, device=DEVICE)
    cells = torch.randn(2, 4, spec.hidden, device=DEVICE, requires_grad=True)
    plain = make_spec(hidden=16, blocks=2, layers=2)
    with LaunchCounter(on_launch=recorder.on_launch) as launches:
        colors, _ = ops_decoder.decode(codes, type(params).from_flat(spec, flat), spec, (3, 5),
                                       "image", mods=mods, input_offset=InputOffset(basis, cells))
        colors.sum().backward()
        with torch.no_grad():
            ops_decoder.decode(codes.detach(), make_params(plain), plain, (3, 5), "running",
                               make_running(plain))
    # Every kernel of the training path and the render ran (so the check covers them all).
    assert set(launches.triton) == {
        "_embed_fwd_kernel", "_embed_bwd_kernel", "_dz_kernel", "_linear_fwd_kernel",
        "_linear_bwd_dx_kernel", "_linear_bwd_dw_kernel", "_modulate_fwd_kernel",
        "_modulate_bwd_kernel", "_norm_stats_bwd_kernel", "_render_fwd_kernel"}, dict(launches.triton)
    assert not recorder.unguarded, f"launched outside a device guard: {recorder.unguarded}"
    assert len(recorder.guarded) == sum(launches.triton.values())


def test_device_guard_selects_the_tensors_device():
    if not torch.cuda.is_available():
        assert isinstance(ops_config.device_guard(torch.zeros(1)), contextlib.nullcontext)
        return
    last = torch.device("cuda", torch.cuda.device_count() - 1)
    with ops_config.device_guard(torch.zeros(1, device=last)):
        assert torch.cuda.current_device() == last.index
