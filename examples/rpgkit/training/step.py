"""One training step and what it needs: seeds, optimizer, schedule, the batch of a step, the
sub-pixel jitter and the precision (autocast) it runs in."""
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F

from rpgkit.config import SHAPE
from rpgkit.data import augment_batch, stream_indices


def set_seeds(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device):
    """Adam; its fused kernel where torch has one (one pass over all parameters instead of a
    dozen foreach passes: about 7x faster on a 2-core CPU, which matters at small batches)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)


def make_scheduler(optimizer, total_steps: int, warmup_steps: int):
    """Cosine decay over the run, after `warmup_steps` of linear warm-up when asked."""
    if not warmup_steps:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    def factor(step):
        warm = min(1.0, (step + 1) / warmup_steps)
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def batch_for_step(step: int, cfg: dict, train_tiles: torch.Tensor, generator: torch.Generator,
                   rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of the augmented global batch of `step`.

    Every rank builds and augments the whole global batch (cheap: tiles are in memory) so the
    augmentation generator advances identically everywhere and matches a single-process run.
    """
    batch = cfg["batch_size"]
    idx = stream_indices(step * batch, batch, len(train_tiles), cfg["seed"])
    images = train_tiles[idx.to(train_tiles.device)].float().div_(255.0)
    images = augment_batch(images, generator)
    share = batch // world_size
    return images[rank * share:(rank + 1) * share]


def subpixel_jitter(step: int, cfg: dict, device: torch.device) -> torch.Tensor:
    """(H, W, 2): one uniform random offset inside every pixel, shared by the step's images.

    Pixel (i, j)'s query point stays within half a pixel of its centre, so its target is that
    pixel (the nearest one). One offset per pixel for the whole batch keeps the step fused (the
    decoder's input offset); every step draws anew. From a generator seeded by the step: the same
    on every rank and after a resume, and independent of every other random stream.
    """
    height, width = SHAPE[1:]
    generator = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)
    pixel = torch.tensor([2 / (width - 1), 2 / (height - 1)])   # pixel centres span [-1, 1]
    jitter = (torch.rand(height, width, 2, generator=generator) - 0.5) * pixel
    return jitter.to(device)


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model, optimizer, scheduler, images: torch.Tensor,
               jitter: torch.Tensor = None, precision: str = "fp32", check=None) -> torch.Tensor:
    """One optimizer step on the L1 reconstruction loss; returns the loss (detached).

    With `jitter` (H, W, 2), each pixel is queried off its centre and its target stays that pixel.
    `check(loss)` runs after backward and before the optimizer step (it raises to skip the step)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, images.device):
        out = model(images) if jitter is None else model(images, jitter=jitter)
    loss = F.l1_loss(out.float(), images)
    loss.backward()
    if check is not None:
        check(loss)
    optimizer.step()
    scheduler.step()
    return loss.detach()

