"""Test-time refinement of codes: gradient steps on each image's code through a fixed decoder.

An encoder gives a code in one pass; how well that code reproduces an image is limited by the
encoder as much as by the decoder (the amortization gap). `refine_codes` closes that gap for
the images at hand: a few Adam steps on the codes alone, the decoder unchanged, minimising the
reconstruction loss of each image (auto-decoding, as in DeepSDF and COIN++). The code keeps its
size; only the way it is found changes, at the price of `steps` decoder forward and backward
passes per image.
"""
import math
from typing import Callable, Iterable

import torch

LOSSES = ("l1", "mse")


def refine_codes(decode: Callable[[torch.Tensor], torch.Tensor], targets: torch.Tensor,
                 codes: torch.Tensor, steps: int = 20, lr: float = 0.05, loss: str = "l1",
                 parameters: Iterable[torch.nn.Parameter] = (), chunk: int = 256) -> torch.Tensor:
    """Codes (B, C) refined by `steps` Adam steps (learning rate `lr`) so that `decode(codes)`
    comes closer to `targets` (the same shape as decode's output, batch first).

    Each image's loss is the mean over its own values (`loss` "l1" or "mse"), and the images'
    losses are summed: Adam's steps are elementwise, so every code moves as if refined alone,
    whatever the batch and `chunk` (images refined together, to bound memory). `parameters`
    (e.g. the decoder's) are frozen meanwhile, so no work goes into their gradients; their
    `requires_grad` is restored afterwards. Call it with the decoder in eval mode where its
    normalization differs between modes. Returns new detached codes; `codes` is not changed.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2 or not codes.is_floating_point():
        raise ValueError(f"codes must be a float tensor (B, C), got "
                         f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
    if not isinstance(targets, torch.Tensor) or targets.shape[:1] != codes.shape[:1]:
        raise ValueError(f"targets must be a tensor with one image per code ({codes.shape[0]}), "
                         f"got {tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    codes = codes.detach()
    if steps == 0:
        return codes.clone()
    frozen = [p for p in parameters if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            return torch.cat([_refine_chunk(decode, targets[start:start + chunk],
                                            codes[start:start + chunk], steps, lr, loss)
                              for start in range(0, len(codes), chunk)])
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _refine_chunk(decode, targets, codes, steps, lr, loss):
    codes = codes.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([codes], lr=lr)
    targets = targets.float()
    for _ in range(steps):
        out = decode(codes)
        if out.shape != targets.shape:
            raise ValueError(f"targets must have the shape of decode's output {tuple(out.shape)}, "
                             f"got {tuple(targets.shape)}")
        error = out.float() - targets
        error = error.abs() if loss == "l1" else error.square()
        total = error.flatten(1).mean(1).sum()
        codes.grad, = torch.autograd.grad(total, codes)
        optimizer.step()
    return codes.detach()
