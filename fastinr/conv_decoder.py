"""ConvDecoder: a transposed-convolution decoder with the same code size, as a baseline.

It separates the blur that the 30:1 bottleneck forces from the blur an implicit decoder adds:
if it reconstructs sharper from the same 102 floats, the decoder is to blame, not the code.
code -> Linear -> (channels, 4, 4) -> 3 x [2x nearest upsample, conv3x3, GELU, conv3x3, GELU]
-> conv1x1 -> colors + 0.5 at 32 x 32 (fixed resolution: it cannot render other sizes).
"""
from typing import Optional, Tuple

import torch
from torch import nn


class ConvDecoder(nn.Module):
    def __init__(self, code_size: int, out_channels: int = 3, channels: int = 64, size: int = 32):
        super().__init__()
        if size < 4 or size & (size - 1):
            raise ValueError(f"size must be a power of two >= 4, got {size}")
        self.code_size, self.channels, self.size = code_size, channels, size
        self.project = nn.Linear(code_size, channels * 16)
        stages = []
        for _ in range(size.bit_length() - 3):  # 4 -> size by doubling
            stages += [nn.Upsample(scale_factor=2, mode="nearest"),
                       nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(),
                       nn.Conv2d(channels, channels, 3, padding=1), nn.GELU()]
        self.body = nn.Sequential(*stages)
        self.to_colors = nn.Conv2d(channels, out_channels, 1)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise ValueError(f"codes must have shape (B, {self.code_size}), got {tuple(codes.shape)}")
        x = self.project(codes).reshape(-1, self.channels, 4, 4)
        return self.to_colors(self.body(x)) + 0.5

    def macs_per_pixel(self, shape: Optional[Tuple[int, int]] = None) -> float:
        """Multiply-adds of one image's decode divided by its size x size pixels (the projection
        and the low-resolution stages included); `shape`, if given, must be that size."""
        if shape is not None and tuple(shape) != (self.size, self.size):
            raise ValueError(f"shape: this ConvDecoder decodes only {self.size}x{self.size}, got "
                             f"{tuple(shape)}")
        macs, side = self.project.in_features * self.project.out_features, 4
        for layer in self.body:
            if isinstance(layer, nn.Upsample):
                side *= 2
            elif isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                macs += side * side * layer.out_channels * layer.in_channels * kh * kw
        macs += self.size ** 2 * self.to_colors.in_channels * self.to_colors.out_channels
        return macs / self.size ** 2

    @torch.no_grad()
    def init_output_bias(self, value: float) -> "ConvDecoder":
        """Fill the last convolution's bias with `value` (the colors add their 0.5 on top);
        returns the decoder."""
        self.to_colors.bias.fill_(value)
        return self
