"""Encoder + decoder: image (B, C, H, W) -> code (B, code_size) -> image at any shape.

`build_autoencoder(cfg)` makes the example's model from a run's config (rpgkit.config). The
submodule names (`encoder`, `decoder`) follow the seed's `EncoderDecoder`. The decoder is an
implicit one (ImageManifoldDecoder, INRDecoder: any shape, and INRDecoder also query points) or
the fixed-resolution ConvDecoder baseline, whose other shapes are bilinear resamples.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastinr.conv_decoder import ConvDecoder
from fastinr.embedding import subpixel_coordinates
from fastinr.inr_decoder import INRDecoder
from rpgkit.config import SHAPE
from rpgkit.models.decoders import build_decoder
from rpgkit.models.encoders import build_encoder


class EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
                coords: Optional[torch.Tensor] = None, jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reconstruction of x; `shape` renders it at another (H, W) through the decoder;
        `coords` (B, P, 2) in [-1, 1] gives colors (B, C, P) at those points, and `jitter`
        (H, W, 2) moves every pixel's query point off its centre (INRDecoder only)."""
        return self.decode(self.encoder(x), shape, coords, jitter)

    def decode(self, codes: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
               coords: Optional[torch.Tensor] = None, jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(self.decoder, INRDecoder):
            for name, value in (("coords", coords), ("jitter", jitter)):
                if value is not None:
                    raise ValueError(f"{name}: only an INRDecoder is queried off the pixel grid, this "
                                     f"decoder is a {type(self.decoder).__name__}")
        if isinstance(self.decoder, ConvDecoder):
            colors = self.decoder(codes)
            if shape is not None and tuple(shape) != tuple(colors.shape[-2:]):
                colors = F.interpolate(colors, size=tuple(shape), mode="bilinear",
                                       align_corners=False)
            return colors
        if coords is not None:
            return self.decoder(codes, coords=coords)
        if jitter is not None:
            return self.decoder(codes, tuple(jitter.shape[:2]) if shape is None else shape, jitter=jitter)
        return self.decoder(codes, shape)

    def render(self, codes: torch.Tensor, scale: int) -> torch.Tensor:
        """The codes' tiles enlarged `scale` times (B, C, s H, s W): an implicit decoder queried at
        the centres of each pixel's s x s sub-pixels (fastinr.subpixel_coordinates), so every
        pixel fills its own area as in a nearest-neighbour enlargement; the conv decoder's tiles
        resampled bilinearly."""
        height, width = SHAPE[1:]
        if isinstance(self.decoder, ConvDecoder):
            return self.decode(codes, (scale * height, scale * width))
        points = subpixel_coordinates(height, width, scale, device=codes.device)
        colors = self.decoder(codes, coords=points)
        return colors.reshape(*colors.shape[:2], scale * height, scale * width)


def build_autoencoder(cfg: dict) -> EncoderDecoder:
    """The example's encoder and decoder for SHAPE images; with an INRDecoder's local latent grid
    and the "pool" grid head, the encoder makes the grid part of the code from its features."""
    pooled_grid = cfg["decoder"] == "inr" and cfg["grid_head"] == "pool"
    grid = (cfg["grid_size"], cfg["grid_channels"]) if pooled_grid else (0, 0)
    encoder = build_encoder(cfg["encoder"], SHAPE, cfg["code_size"], cfg["encoder_weights"], *grid)
    return EncoderDecoder(encoder, build_decoder(cfg))
