"""Reconstruction metrics and the metrics table.

For images in [0, 1] (outputs are clamped to [0, 1] first):
    l1   = mean |x - y|
    psnr = 10 log10(1 / mean (x - y)^2)    over all pixels of the set (not per-image PSNRs averaged)
    spread = mean over pixels of the std over images: ~0 for reconstructions that do not depend
             on the input (a collapsed decoder), while the tiles themselves measure ~0.2.
    edge_l1 = mean |sobel(x) - sobel(y)| over both directions, channels and interior pixels:
             the L1 of the Sobel gradients, which a blurry reconstruction misses most.
"""
import csv
import io
import math
from typing import Dict, List, Sequence

import torch

from fastinr.training.atomic import atomic_write

__all__ = ["COLLAPSE_RATIO", "is_collapsed", "psnr_from_mse", "reconstruction_spread",
           "sobel_edge_l1_sum", "write_csv"]

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


def write_csv(path, rows: Sequence[Dict], columns: List[str]) -> None:
    """Write `rows` (dicts; missing keys left empty) to `path` atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    atomic_write(path, lambda f: f.write(buffer.getvalue()), mode="w")
