"""Reconstruction metrics and the metrics table.

For images in [0, 1] (outputs are clamped to [0, 1] first):
    l1   = mean |x - y|
    psnr = 10 log10(1 / mean (x - y)^2)    over all pixels of the set (not per-image PSNRs averaged)
    spread = mean over pixels of the std over images: ~0 for reconstructions that do not depend
             on the input (a collapsed decoder), while the tiles themselves measure ~0.2.
    edge_l1 = mean |sobel(x) - sobel(y)| over both directions, channels and interior pixels:
             the L1 of the Sobel gradients, which a blurry reconstruction misses most.
    nearest_render_l1 = mean |render - nearest(y)| for a render s times larger than y: the target
             of sub-pixel training (every pixel a flat square); blur and ringing between the
             pixel centres raise it, while the L1 at the centres cannot see them.
"""
import csv
import io
import math
from typing import Dict, List, Sequence

import torch

from rpgkit.training.atomic import atomic_write

__all__ = ["COLLAPSE_RATIO", "is_collapsed", "nearest_render_l1_sum", "psnr_from_mse",
           "reconstruction_spread", "sobel_edge_l1_sum", "write_csv"]

# Spread of the reconstructions relative to that of the tiles. Measured on the DCSS tiles (spread
# 0.23): the seed's collapsed sigmoid 5e-6 (ratio 2e-5) 640 images in, a fresh model 1e-3, a
# training one 0.04-0.15 after 1,000 images; a code-blind tiny decoder on generated sprites 2e-4
# against 0.18. Under 1% the reconstructions are essentially one picture for every input.
COLLAPSE_RATIO = 0.01


def is_collapsed(recon_spread: float, target_spread: float) -> bool:
    return recon_spread < COLLAPSE_RATIO * target_spread


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)


def reconstruction_spread(reconstructions: torch.Tensor) -> float:
    """Mean over pixels of the std over the batch (dim 0) of `reconstructions` (B, ...)."""
    if reconstructions.shape[0] < 2:
        raise ValueError("reconstruction_spread needs at least two reconstructions")
    return reconstructions.float().std(dim=0).mean().item()


def sobel_edge_l1_sum(recon: torch.Tensor, target: torch.Tensor):
    """(sum, count) of |sobel(recon) - sobel(target)| for images (B, C, H, W), both directions.

    Valid convolution only (no padding), so image borders add no artificial edges; a sum and a
    count so that chunks of a validation set add up exactly.
    """
    if recon.shape != target.shape or recon.ndim != 4 or min(recon.shape[-2:]) < 3:
        raise ValueError(f"recon and target must be the same (B, C, H>=3, W>=3) shape, got "
                         f"{tuple(recon.shape)} and {tuple(target.shape)}")
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                      device=recon.device, dtype=torch.float32)
    kernels = torch.stack([kx, kx.t()])[:, None]                         # (2, 1, 3, 3)
    diff = (recon.float() - target.float()).flatten(0, 1)[:, None]       # linear: sobel(x - y)
    grads = torch.nn.functional.conv2d(diff, kernels)
    return grads.abs().sum().item(), grads.numel()


def nearest_render_l1_sum(render: torch.Tensor, target: torch.Tensor):
    """(sum, count) of |render - target enlarged by nearest neighbour| for a render (B, C, sH, sW)
    of images (B, C, H, W), s a whole number; a sum and a count, as sobel_edge_l1_sum."""
    if render.ndim != 4 or target.ndim != 4 or render.shape[:2] != target.shape[:2]:
        raise ValueError(f"render and target must be (B, C, sH, sW) and (B, C, H, W), got "
                         f"{tuple(render.shape)} and {tuple(target.shape)}")
    scale = render.shape[-1] // target.shape[-1]
    if scale < 1 or tuple(render.shape[-2:]) != (scale * target.shape[-2], scale * target.shape[-1]):
        raise ValueError(f"render {tuple(render.shape[-2:])} must be the same whole multiple of "
                         f"target {tuple(target.shape[-2:])} along both sides")
    nearest = target.float().repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    diff = (render.float() - nearest).abs()
    return diff.sum().item(), diff.numel()


def write_csv(path, rows: Sequence[Dict], columns: List[str]) -> None:
    """Write `rows` (dicts; missing keys left empty) to `path` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write(path, lambda f: f.write(buffer.getvalue()), mode="w")
