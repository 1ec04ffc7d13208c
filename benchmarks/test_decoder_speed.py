"""Training step and rendering of the seed's decoder, per provider.

Providers: `seed-loop` (the seed's per-image loop), `torch` (the batched reference), `compiled`
(torch.compile of the batched reference) and every other fastinr backend that runs here
(`native`, `triton`).
"""
import os

import pytest
import torch

import fastinr
from fastinr.seed_loop import SeedLoopDecoder

from conftest import DEVICE

SEED_CONFIG = dict(num_input_channels=102, num_hidden=256, num_blocks=2, num_layers_per_block=2,
                   batch_norm=True, activation="gelu", activation_out="sigmoid")
ROUNDS = int(os.environ.get("FASTINR_BENCH_ROUNDS", "5"))
TRAIN_BATCH, TRAIN_SHAPE = 64, (32, 32)
# Rendering: eval mode, no autograd. Smaller on a CPU so the seed loop finishes in seconds.
RENDER_BATCH, RENDER_SHAPE = (64, (128, 128)) if DEVICE.type == "cuda" else (16, (128, 128))

OTHER_BACKENDS = [b for b in fastinr.available_backends(DEVICE) if b != "torch"]
PROVIDERS = ["seed-loop", "torch", "compiled", *OTHER_BACKENDS]


def make_decoder(provider):
    torch.manual_seed(0)
    if provider == "seed-loop":
        return SeedLoopDecoder(**SEED_CONFIG).to(DEVICE)
    backend = "torch" if provider == "compiled" else provider
    model = fastinr.ImageManifoldDecoder(**SEED_CONFIG, backend=backend).to(DEVICE)
    return torch.compile(model) if provider == "compiled" else model


def synchronized(fn):
    def run():
        out = fn()
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(benchmark, record, provider):
    """Forward + backward (codes and parameters) + Adam, L1 loss, the seed's configuration."""
    model = make_decoder(provider).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    codes = torch.randn(TRAIN_BATCH, 102, device=DEVICE, requires_grad=True)
    target = torch.rand(TRAIN_BATCH, 3, *TRAIN_SHAPE, device=DEVICE)

    @synchronized
    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = (model(codes, TRAIN_SHAPE) - target).abs().mean()
        loss.backward()
        optimizer.step()
        return loss

    step()  # warm-up (and compilation) outside the timed rounds
    benchmark.pedantic(step, rounds=ROUNDS, warmup_rounds=1)
    record(f"train step {TRAIN_BATCH}x{TRAIN_SHAPE[0]}x{TRAIN_SHAPE[1]}", provider, benchmark,
           TRAIN_BATCH * TRAIN_SHAPE[0] * TRAIN_SHAPE[1])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_render(benchmark, record, provider):
    """Eval-mode colors of a batch of codes at a larger shape (BatchNorm from running stats)."""
    model = make_decoder(provider).eval()
    codes = torch.randn(RENDER_BATCH, 102, device=DEVICE)

    @synchronized
    def render():
        with torch.inference_mode():
            return model(codes, RENDER_SHAPE)

    render()
    benchmark.pedantic(render, rounds=ROUNDS, warmup_rounds=1)
    record(f"render {RENDER_BATCH}x{RENDER_SHAPE[0]}x{RENDER_SHAPE[1]}", provider, benchmark,
           RENDER_BATCH * RENDER_SHAPE[0] * RENDER_SHAPE[1])
