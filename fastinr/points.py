"""Decoding at arbitrary query points: sub-pixel renders, crops, non-grid samples; fused on every
backend, forward and backward.

The kernels embed the pixel centres of an H x W grid themselves. P query points q shared by the
batch are the centres c of a 1 x P grid, moved:

    W_pos·emb(q) = W_pos·emb(c) + (emb(q) - emb(c))·W_pos^T

and the second term is an input offset of the decode contract (basis emb(q) - emb(c) per point,
cells W_pos^T per image). So the call is an ordinary decode of shape (1, P), and W_pos's gradient
flows through both terms. BatchNorm's per-image statistics are over an image's P points.
Per-image point sets (B, P, 2) do not fit the contract's shared basis: they are refused.
"""
from typing import Optional

import torch

from fastinr import backends
from fastinr.contract import (DecoderParams, DecoderSpec, InputOffset, check_codes, check_params,
                              concat_offsets)
from fastinr.embedding import embed_coordinates, pixel_coordinates

__all__ = ["decode_points", "check_points", "points_offset"]


def check_points(points, codes: torch.Tensor, argument: str = "points") -> None:
    """Clear errors for query points that are not a constant (P, 2) float tensor beside the codes."""
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor of shape (P, 2), got {type(points).__name__}")
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
        per_image = " (per-image points (B, P, 2) are not supported here)" if points.ndim == 3 else ""
        raise ValueError(f"{argument} must have shape (P, 2): (x, y) in [-1, 1] shared by every "
                         f"image, P >= 1{per_image}; got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{argument} must be a floating-point tensor, got {points.dtype}")
    if points.device != codes.device:
        raise ValueError(f"{argument} are on {points.device} but codes are on {codes.device}")
    if points.requires_grad:
        raise ValueError(f"{argument} are constants of the call; detach them (no gradient flows to them)")


def points_offset(points: torch.Tensor, spec: DecoderSpec, w_pos: torch.Tensor, batch: int) -> InputOffset:
    """The input offset that moves the 1 x P grid's centres to `points` (P, 2) for a decode of
    `batch` images whose first layer's embedding weights are w_pos (hidden, E)."""
    count = points.shape[0]
    centres = pixel_coordinates(1, count, device=points.device, dtype=torch.float64)
    moved = (embed_coordinates(points.double(), spec.freqs) - embed_coordinates(centres, spec.freqs))
    basis = moved.to(w_pos.dtype).reshape(1, count, -1)
    return InputOffset(basis, w_pos.t().expand(batch, -1, -1).contiguous())


def decode_points(codes: torch.Tensor, params: DecoderParams, spec: DecoderSpec, points: torch.Tensor,
                  norm_stats: str = "image", running=(), mods=None,
                  input_offset: Optional[InputOffset] = None, backend: str = "auto"):
    """Colors (B, out, P) at the query points (P, 2), and the BlockStats of each BatchNorm block:
    fastinr.backends.decode's contract with points instead of a pixel grid (an `input_offset`,
    if given, has a basis (1, P, K))."""
    check_codes(codes, spec.code_size, "spec.code_size")
    check_params(params, spec)
    check_points(points, codes)
    offset = points_offset(points, spec, params.w_in[:, spec.code_size:], codes.shape[0])
    colors, stats = backends.decode(codes, params, spec, (1, points.shape[0]), norm_stats, running,
                                    mods=mods, input_offset=concat_offsets([input_offset, offset]),
                                    backend=backend)
    return colors.reshape(colors.shape[0], spec.out_channels, points.shape[0]), stats
