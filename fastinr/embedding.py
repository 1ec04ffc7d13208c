"""Pixel coordinates and the seed's positional embedding.

For an H x W image, pixel (row, col) has x = linspace(-1, 1, W)[col], y = linspace(-1, 1, H)[row];
pixels are in row-major order. Its embedding, of size (2 * len(freqs) + 1) * 2, is

    [x, y, sin(f1 x), sin(f1 y), ..., sin(fn x), sin(fn y), cos(f1 x), cos(f1 y), ..., cos(fn y)]
"""
from typing import Sequence

import torch


def pos_embedding_size(freqs: Sequence[float]) -> int:
    return (2 * len(freqs) + 1) * 2


def pixel_coordinates(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(H*W, 2) tensor of (x, y) per pixel, row-major."""
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, height, device=device, dtype=dtype),
        torch.linspace(-1, 1, width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1)


def embed_coordinates(xy: torch.Tensor, freqs: Sequence[float]) -> torch.Tensor:
    """(..., pos_embedding_size(freqs)) seed-order embedding of (..., 2) coordinates (x, y)."""
    return torch.cat([xy] + [(xy * freq).sin() for freq in freqs]
                     + [(xy * freq).cos() for freq in freqs], dim=-1)


def pos_embedding(height: int, width: int, freqs: Sequence[float], device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """(H*W, pos_embedding_size(freqs)) positional embedding in the seed's order."""
    return embed_coordinates(pixel_coordinates(height, width, device=device, dtype=dtype), freqs)
