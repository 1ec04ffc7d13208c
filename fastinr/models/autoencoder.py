"""Encoder + decoder: image (B, C, H, W) -> code (B, code_size) -> image at any shape.

The submodule names (`encoder`, `decoder`) follow the seed's `EncoderDecoder`. The decoder is an
implicit one (ImageManifoldDecoder, INRDecoder: any shape, and INRDecoder also query points) or
the fixed-resolution ConvDecoder baseline, whose other shapes are bilinear resamples.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastinr.conv_decoder import ConvDecoder


class EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
                coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Reconstruction of x; `shape` renders it at another (H, W) through the decoder;
        `coords` (B, P, 2) in [-1, 1] gives colors (B, C, P) at those points (INRDecoder only)."""
        return self.decode(self.encoder(x), shape, coords)

    def decode(self, codes: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
               coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        if isinstance(self.decoder, ConvDecoder):
            if coords is not None:
                raise ValueError("coords: the conv decoder renders a fixed pixel grid, it cannot "
                                 "be queried at points")
            colors = self.decoder(codes)
            if shape is not None and tuple(shape) != tuple(colors.shape[-2:]):
                colors = F.interpolate(colors, size=tuple(shape), mode="bilinear",
                                       align_corners=False)
            return colors
        if coords is not None:
            return self.decoder(codes, coords=coords)
        return self.decoder(codes, shape)
