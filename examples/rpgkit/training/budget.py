"""The CPU default budget: as many training images as this machine trains in a fixed time.

A fixed image count is minutes on one CPU and seconds on the next (an AVX2 core trains the default
preset at ~93 images/s, a core with bf16 matrix units over 300). So a CPU run without
--max-inputs first times a few training steps of a throwaway copy of its model, then takes the
images of CPU_TRAIN_SECONDS at that rate. The count goes into the run's config like any
--max-inputs, so the run, its checkpoints and --resume stay exact; two fresh runs may differ by
the machine's noise, and --max-inputs fixes the budget where runs are compared.
"""
import statistics
import time

import torch

from rpgkit.config import SHAPE, precision_of
from rpgkit.models import build_autoencoder
from rpgkit.training.step import make_optimizer, subpixel_jitter, train_step

CPU_TRAIN_SECONDS = 170   # with validation, references and refinement: ~5 minutes in all
WARMUP_STEPS, TIMED_STEPS = 3, 8


def training_rate(cfg: dict, device: torch.device, steps: int = TIMED_STEPS,
                  warmup: int = WARMUP_STEPS, batch: int = None) -> float:
    """Median training images/s of the run's model (encoder, decoder, Adam, its precision) on
    random tiles, over `steps` steps after `warmup`; the global random state is left as it was."""
    batch = batch or cfg["batch_size"]
    with torch.random.fork_rng(devices=[]):
        model = build_autoencoder(cfg).to(device)
        optimizer = make_optimizer(model, cfg["lr"], device)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        images = torch.rand(batch, *SHAPE, device=device)
        precision = precision_of(cfg, device)
        rates = []
        for step in range(warmup + steps):
            start = time.perf_counter()
            jitter = subpixel_jitter(step, cfg, device) if cfg["subpixel"] else None
            train_step(model, optimizer, scheduler, images, jitter, precision=precision)
            if step >= warmup:
                rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def timed_budget(rate: float, batch: int, seconds: float = CPU_TRAIN_SECONDS) -> int:
    """Training images for `seconds` at `rate` images/s: whole batches, at least one, and rounded
    down to a multiple of 1,000 images first where that leaves a batch (a readable number)."""
    images = int(rate * seconds)
    if images >= 1000 + batch:
        images = images // 1000 * 1000
    return max(batch, images // batch * batch)
