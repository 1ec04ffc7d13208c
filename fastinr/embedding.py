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


def subpixel_coordinates(height: int, width: int, scale: int, device=None,
                         dtype=torch.float32) -> torch.Tensor:
    """(H*s * W*s, 2) (x, y) of an s-times finer grid over the same H x W pixels, row-major: the
    centre of sub-pixel k (0 .. s-1) of pixel i lies (k + 1/2) / s - 1/2 pixel spacings from
    pixel i's centre, so every sub-pixel's nearest pixel centre is its own pixel's. Decoding
    there renders the image enlarged s times with each pixel covering its own area, the frame of
    a nearest-neighbour enlargement (a grid of `shape` (s H, s W) instead spans the outer pixels'
    centres, not their areas). scale 1 gives pixel_coordinates."""
    for name, value in (("height", height), ("width", width), ("scale", scale)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if scale == 1:
        return pixel_coordinates(height, width, device=device, dtype=dtype)
    if min(height, width) < 2:
        raise ValueError(f"a pixel's extent is the spacing of the pixel centres: height and width "
                         f"must be >= 2 to subdivide pixels, got {height} x {width}")

    def axis(size):
        k = torch.arange(size * scale, device=device, dtype=torch.float64)
        pixel, sub = torch.div(k, scale, rounding_mode="floor"), k % scale
        return -1 + (pixel + (sub + 0.5) / scale - 0.5) * (2 / (size - 1))

    y, x = torch.meshgrid(axis(height), axis(width), indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1)], dim=1).to(dtype)


def embed_coordinates(xy: torch.Tensor, freqs: Sequence[float]) -> torch.Tensor:
    """(..., pos_embedding_size(freqs)) seed-order embedding of (..., 2) coordinates (x, y)."""
    return torch.cat([xy] + [(xy * freq).sin() for freq in freqs]
                     + [(xy * freq).cos() for freq in freqs], dim=-1)


def pos_embedding(height: int, width: int, freqs: Sequence[float], device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """(H*W, pos_embedding_size(freqs)) positional embedding in the seed's order."""
    return embed_coordinates(pixel_coordinates(height, width, device=device, dtype=dtype), freqs)
