"""Encoder + implicit decoder: image (B, C, H, W) -> code (B, code_size) -> image at any shape.

The submodule names (`encoder`, `decoder`) follow the seed's `EncoderDecoder`.
"""
from typing import Optional, Tuple

import torch
from torch import nn


class EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor, shape: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """Reconstruction of x; `shape` renders it at another (H, W) through the decoder."""
        return self.decoder(self.encoder(x), shape)
