"""Vectorised, reproducible batch augmentation for tile images.

``augment_batch(images, generator)`` maps a batch ``(B, C, H, W)`` (any dtype,
any device) to a new tensor of the same shape, dtype and device.  Each image
independently gets

* a random shift ``(dy, dx)``, each uniform in ``[-max_shift, max_shift]``:
  ``out[y, x] = img[y - dy, x - dx]``, zero where that falls outside the image.
  This is exactly zero-padding by ``max_shift`` then cropping ``H x W`` at
  offset ``(max_shift - dy, max_shift - dx)`` (the "pad + random crop" recipe);
* then a horizontal flip with probability ``p_hflip`` and a vertical flip with
  probability ``p_vflip``.

The whole batch is one ``gather`` (no per-image Python loop), so it is fast on
GPU.  Pixel values are copied, never interpolated: every output value is
either 0 or a value of the same image and channel.

Determinism: the random numbers are drawn from ``generator`` on the
generator's own device (a CPU generator works for CUDA images; the few
numbers are then copied over), always in the same order and amount
(``randint`` of shape ``(B, 2)``, then ``rand(B)`` for horizontal and
``rand(B)`` for vertical flips) whatever the probabilities, so saving
``generator.get_state()`` is enough to resume training exactly.
"""

from __future__ import annotations

import torch

__all__ = ["augment_batch"]


def augment_batch(images: torch.Tensor, generator: torch.Generator, max_shift: int = 4,
                  p_hflip: float = 0.4, p_vflip: float = 0.2) -> torch.Tensor:
    """Randomly shift (zero fill) and flip each image of ``images`` ``(B, C, H, W)``."""
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    b, c, h, w = images.shape
    gdev = generator.device
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator, device=gdev)
    hflip = torch.rand(b, generator=generator, device=gdev) < p_hflip
    vflip = torch.rand(b, generator=generator, device=gdev) < p_vflip
    dev = images.device
    shift, hflip, vflip = shift.to(dev), hflip.to(dev), vflip.to(dev)

    ys = torch.arange(h, device=dev)
    xs = torch.arange(w, device=dev)
    # Flip is applied after the shift: output (y, x) reads the shifted image at
    # the flipped coordinate, which reads the input at that minus the shift.
    src_y = torch.where(vflip[:, None], h - 1 - ys, ys) - shift[:, 0:1]  # (B, H)
    src_x = torch.where(hflip[:, None], w - 1 - xs, xs) - shift[:, 1:2]  # (B, W)
    inside = ((src_y >= 0) & (src_y < h))[:, :, None] & ((src_x >= 0) & (src_x < w))[:, None, :]
    flat = src_y.clamp(0, h - 1)[:, :, None] * w + src_x.clamp(0, w - 1)[:, None, :]
    index = flat.reshape(b, 1, h * w).expand(b, c, h * w)
    out = images.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return torch.where(inside[:, None], out, 0)
