"""Launches per training step on the triton backend, held to a budget.

A step of the seed's structure (2 blocks of 2 layers, per-image BatchNorm, gelu, sigmoid
output; forward, L1 loss, backward, fused Adam) is counted by fastinr.ops.launches.LaunchCounter:
Triton kernels, and the torch ops that run a kernel of their own. The step is memory- and
launch-bound on a GPU, so an op that sneaks in (a table rebuilt per call, a partial sum split
in two) is a regression even when every number stays right. Sizes are small (the interpreter);
the counts do not depend on them.

Counted per step (2x2 blocks, torch 2.14.1): Triton 19 (embedding forward and backward, 5 Linear
forwards, 5 input- and 5 weight-gradient kernels, 2 BatchNorm-statistics gradients) and torch 52:
forward 20 (code projection 1, BatchNorm statistics 5 per block, running-statistics update 3 per
block, loss 3), backward 30 (second stage of the partial sums 11, d gamma 2 per block, the
gradient sums autograd adds at block inputs, code projection and the slices of W_in 6, loss ~5),
Adam 2. Before the embedding tables were cached, the partial sums shared buffers, the
running-statistics update was fused and the statistics' gradient became one kernel, the same
step launched 17 + 123.
"""
import pytest
import torch

from fastinr import ImageManifoldDecoder

from .conftest import DEVICE

pytest.importorskip("triton")
from fastinr.ops.launches import LaunchCounter  # noqa: E402

TRITON_BUDGET = 19
TORCH_BUDGET = 56        # 52 measured on torch 2.14.1; a little room for other torch versions


def _seed_structure_step():
    model = ImageManifoldDecoder(10, 3, 32, 2, 2, pos_embedding_freqs=(7, 17), backend="triton")
    model.to(DEVICE).train()
    codes = torch.randn(3, 10, device=DEVICE, requires_grad=True)
    target = torch.rand(3, 3, 5, 7, device=DEVICE)
    optimizer = torch.optim.Adam(list(model.parameters()) + [codes], lr=1e-3, fused=True)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (model(codes, (5, 7)) - target).abs().mean()
        loss.backward()
        optimizer.step()
    return step


def test_training_step_launches_within_budget():
    step = _seed_structure_step()
    step()                                  # first call: caches fill
    with LaunchCounter() as launches:
        step()
    detail = f"triton {dict(launches.triton)}, torch {dict(launches.torch)}"
    assert sum(launches.triton.values()) <= TRITON_BUDGET, detail
    assert sum(launches.torch.values()) <= TORCH_BUDGET, detail
    # The embedding tables are cached, not rebuilt from trigonometry every step.
    assert not {"sin", "cos", "linspace"} & set(launches.torch), detail
    # One second-stage sum per Linear backward (weight and bias partials share a buffer).
    assert launches.torch["sum"] <= 14, detail


def test_launch_counter_sees_every_kernel_and_op():
    """The counter itself: a known sequence gives known counts."""
    from fastinr.backends import triton_backend as ops_decoder
    model = ImageManifoldDecoder(6, 3, 16, 1, 1, backend="triton").to(DEVICE).eval()
    codes = torch.randn(2, 6, device=DEVICE)
    with LaunchCounter() as launches, torch.no_grad():
        torch.add(codes, 1)
        ops_decoder.decode(codes, model.decoder_params(), model.spec, (3, 4), "running",
                           [(n.running_mean, n.running_var) for n in model._norms()])
    assert launches.triton == {"_render_fwd_kernel": 1}
    assert launches.torch["add"] >= 1 and "view" not in launches.torch
    # Nothing is counted once the block is left, and the kernels run unpatched again.
    counted = launches.total
    torch.add(codes, 1)
    with torch.no_grad():
        model(codes, (3, 4))
    assert launches.total == counted


def test_step_analysis_counts_the_gpu_launches():
    """benchmarks/step_analysis.py (an H200's launch configuration, kernels recorded): launches per
    phase, and bytes per launch at least the activations each kernel must write."""
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks.step_analysis import analyse
    batch, size, hidden = 2, 5, 16
    phases = analyse("tf32", batch, size, hidden)
    assert {name: sum(c.triton.values()) for name, c in phases.items()} == \
        {"forward + loss": 6, "backward": 13, "Adam": 0}
    activation = batch * size * size * hidden * 4
    forward = phases["forward + loss"]
    # The embedding kernel writes z and h; each Linear reads its input and writes z and out.
    assert forward.bytes["_embed_fwd_kernel"] >= 2 * activation
    assert forward.bytes["_linear_fwd_kernel"] >= 4 * 3 * activation


def test_gradient_reductions_fill_an_h200_once():
    """The seed's weight-gradient reductions on 132 SMs: as many programs as are sure to be
    resident at once (one of 8 warps, two of 4 per SM), so no second, partial wave; and more
    than half of them (splits are whole BLOCK_M chunks, so the count rounds down)."""
    import triton.language as tl

    from fastinr.ops.config import LaunchConfig
    rows = 64 * 32 * 32
    for dot_dtype, precision in ((tl.float32, "ieee"), (tl.float32, "tf32"), (tl.bfloat16, "ieee")):
        config = LaunchConfig(dot_dtype, precision, sm_count=132)
        for k, n in ((256, 256), (256, 3)):
            meta = config.linear_dw(k, n)
            tiles = -(-n // meta["BLOCK_N"]) * -(-k // meta["BLOCK_K"])
            splits, rows_per_split = config.row_splits(rows, meta, tiles)
            assert splits * rows_per_split >= rows > (splits - 1) * rows_per_split
            resident = 132 * (1 if meta["num_warps"] == 8 else 2)
            assert resident // 2 < splits * tiles <= resident, (meta, splits, tiles)
