"""Decoding at arbitrary query points: sub-pixel renders, crops, non-grid samples, shared by the
batch or per image; fused on every backend, forward and backward.

The kernels embed the pixel centres of an H x W grid themselves. P query points q are the
centres c of a 1 x P grid, moved:

    W_pos·emb(q) = W_pos·emb(c) + (emb(q) - emb(c))·W_pos^T

and the second term is an input offset of the decode contract (basis emb(q) - emb(c) per point,
cells W_pos^T per image). So the call is an ordinary decode of shape (1, P), and W_pos's gradient
flows through both terms. Points (P, 2) shared by the batch give a shared basis (1, P, K); points
(B, P, 2), a set per image, give a per-image basis (B, 1, P, K). BatchNorm's per-image statistics
are over an image's P points.
"""
from typing import Optional

import torch

from fastinr import backends
from fastinr.contract import (DecoderParams, DecoderSpec, InputOffset, check_codes, check_params,
                              concat_offsets)
from fastinr.embedding import embed_coordinates, pixel_coordinates

__all__ = ["decode_points", "check_points", "points_offset"]


def check_points(points, codes: torch.Tensor, argument: str = "points") -> None:
    """Clear errors for query points that are not a constant float tensor (P, 2) shared by the
    batch or (B, P, 2) per image, beside the codes (B, C)."""
    batch = codes.shape[0]
    expected = f"(P, 2) or ({batch}, P, 2)"
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor of shape {expected}, got {type(points).__name__}")
    if (points.ndim not in (2, 3) or points.shape[-1] != 2 or points.shape[-2] < 1
            or (points.ndim == 3 and points.shape[0] != batch)):
        raise ValueError(f"{argument} must have shape {expected}: (x, y) in [-1, 1] shared by every "
                         f"image or one set per image, P >= 1; got {tuple(points.shape)}")
    if not points.is_floating_point():
        raise TypeError(f"{argument} must be a floating-point tensor, got {points.dtype}")
    if points.device != codes.device:
        raise ValueError(f"{argument} are on {points.device} but codes are on {codes.device}")
    if points.requires_grad:
        raise ValueError(f"{argument} are constants of the call; detach them (no gradient flows to them)")


def points_offset(points: torch.Tensor, spec: DecoderSpec, w_pos: torch.Tensor, batch: int) -> InputOffset:
    """The input offset that moves the 1 x P grid's centres to `points` (P, 2) or (B, P, 2) for a
    decode of `batch` images whose first layer's embedding weights are w_pos (hidden, E); its
    basis is (1, P, K) or (B, 1, P, K)."""
    count = points.shape[-2]
    centres = pixel_coordinates(1, count, device=points.device, dtype=torch.float64)
    moved = (embed_coordinates(points.double(), spec.freqs) - embed_coordinates(centres, spec.freqs))
    basis = moved.to(w_pos.dtype).reshape(*points.shape[:-2], 1, count, -1)
    return InputOffset(basis, w_pos.t().expand(batch, -1, -1).contiguous())


def decode_points(codes: torch.Tensor, params: DecoderParams, spec: DecoderSpec, points: torch.Tensor,
                  norm_stats: str = "image", running=(), mods=None,
                  input_offset: Optional[InputOffset] = None, backend: str = "auto", reducer=None):
    """Colors (B, out, P) at the query points, (P, 2) shared by the batch or (B, P, 2) per image,
    and the BlockStats of each BatchNorm block: fastinr.backends.decode's contract with points
    instead of a pixel grid (an `input_offset`, if given, has a basis (1, P, K) or (B, 1, P, K))."""
    check_codes(codes, spec.code_size, "spec.code_size")
    check_params(params, spec)
    check_points(points, codes)
    count = points.shape[-2]
    offset = points_offset(points, spec, params.w_in[:, spec.code_size:], codes.shape[0])
    colors, stats = backends.decode(codes, params, spec, (1, count), norm_stats, running,
                                    mods=mods, input_offset=concat_offsets([input_offset, offset]),
                                    backend=backend, reducer=reducer)
    return colors.reshape(colors.shape[0], spec.out_channels, count), stats
