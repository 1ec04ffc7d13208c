"""Training step and rendering of the seed's decoder, per provider, paired with the seed's loop.

Providers: what a user could pick instead of fastinr, and fastinr's backends:
`seed-loop` (the seed's per-image loop), `torch` (the batched reference, eager), `compiled`
(torch.compile of the batched reference) and every fastinr backend that runs here (`native`,
`triton`); on hardware with bfloat16 units each of them also under
torch.autocast(bfloat16) (`...-bf16`), as a user would add it with one line.
"""
import contextlib
import os

import pytest
import torch

import fastinr
from conftest import BASELINE, DEVICE
from fastinr.seed_loop import SeedLoopDecoder
from measure import decoder_flops, has_bf16_units

SEED_CONFIG = dict(num_input_channels=102, num_hidden=256, num_blocks=2, num_layers_per_block=2,
                   batch_norm=True, activation="gelu", activation_out="sigmoid")
EMBEDDING = fastinr.pos_embedding_size((7, 17))
TRAIN_BATCH, TRAIN_SHAPE = 64, (32, 32)
# Rendering: eval mode, no autograd. Smaller on a CPU so the seed loop finishes in seconds.
RENDER_BATCH, RENDER_SHAPE = (64, (128, 128)) if DEVICE.type == "cuda" else (16, (128, 128))

BACKENDS = [b for b in fastinr.available_backends(DEVICE) if b != "torch"]
BASES = ["seed-loop", "torch", "compiled", *BACKENDS]
PROVIDERS = BASES + ([f"{p}-bf16" for p in BASES] if has_bf16_units(DEVICE) else [])
if os.environ.get("FASTINR_BENCH_PROVIDERS"):  # e.g. "seed-loop,native,native-bf16"
    PROVIDERS = [p for p in PROVIDERS if p in os.environ["FASTINR_BENCH_PROVIDERS"].split(",")]


def precision(provider: str) -> str:
    return "bfloat16" if provider.endswith("-bf16") else "float32"


def make_decoder(provider):
    torch.manual_seed(0)
    base = provider.removesuffix("-bf16")
    if base == "seed-loop":
        return SeedLoopDecoder(**SEED_CONFIG).to(DEVICE)
    backend = "torch" if base == "compiled" else base
    model = fastinr.ImageManifoldDecoder(**SEED_CONFIG, backend=backend).to(DEVICE)
    return torch.compile(model) if base == "compiled" else model


def autocast(provider):
    if precision(provider) == "bfloat16":
        return torch.autocast(DEVICE.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step_fn(provider):
    """Forward + backward (codes and parameters) + Adam, L1 loss, the seed's configuration."""
    model = make_decoder(provider).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    codes = torch.randn(TRAIN_BATCH, 102, device=DEVICE, requires_grad=True)
    target = torch.rand(TRAIN_BATCH, 3, *TRAIN_SHAPE, device=DEVICE)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(provider):
            loss = (model(codes, TRAIN_SHAPE).float() - target).abs().mean()
        loss.backward()
        optimizer.step()
        return loss
    return step


def render_fn(provider):
    """Eval-mode colors of a batch of codes at a larger shape (BatchNorm from running stats)."""
    model = make_decoder(provider).eval()
    codes = torch.randn(RENDER_BATCH, 102, device=DEVICE)

    def render():
        with torch.inference_mode(), autocast(provider):
            return model(codes, RENDER_SHAPE)
    return render


WORKLOADS = {
    f"train step {TRAIN_BATCH}x{TRAIN_SHAPE[0]}x{TRAIN_SHAPE[1]}":
        (train_step_fn, decoder_flops(TRAIN_BATCH, TRAIN_SHAPE[0] * TRAIN_SHAPE[1], 102,
                                      EMBEDDING, 256, 4, 3, train=True)),
    f"render {RENDER_BATCH}x{RENDER_SHAPE[0]}x{RENDER_SHAPE[1]}":
        (render_fn, decoder_flops(RENDER_BATCH, RENDER_SHAPE[0] * RENDER_SHAPE[1], 102, EMBEDDING,
                                  256, 4, 3, train=False)),
}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_speed(paired, workload, provider):
    make, flops = WORKLOADS[workload]
    baseline = None if provider == BASELINE else make(BASELINE)
    paired(workload, provider, make(provider), baseline, flops, precision(provider))
