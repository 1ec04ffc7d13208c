"""The decoder math in plain PyTorch, batched over images: the oracle and the `torch` backend.

Math only: the arguments (fastinr.contract) are checked by fastinr.contract.validate before a
call through fastinr.backends.decode reaches this file.

For B codes (B, C) and an H x W image (P = H*W pixels, embedding emb (P, E)):

    h0 = act(code_proj[b] + pos_proj[p])        code_proj = codes @ W_code^T + b_in   (B, hidden)
                                                 pos_proj  = emb @ W_pos^T            (P, hidden)
    per block i (input width w_i):
        x = norm_i(h)                            (BatchNorm if spec.batch_norm, LayerNorm over
                                                  each pixel's features if spec.layer_norm)
        y = act(W_{i,L} ... act(W_{i,1} x + b_{i,1}) ... + b_{i,L})
        h = h + y          or   h = h ⊕ y  (concat; width doubles)
    colors = act_out(h @ W_out^T + b_out)       (B, P, out) -> (B, out, H, W)

With spec.modulation, every pre-activation z of the input layer and of the block layers (M =
1 + blocks * layers_per_block of them, in that order) is modulated per image by `mods`
(B, M, k, hidden): "shift" (k = 1) z + mods[b, m, 0]; "film" (k = 2) z * (1 + mods[b, m, 0]) +
mods[b, m, 1]. Modulation needs blocks of constant width (no concat).

An optional `input_offset` (InputOffset: basis (H, W, K) or, per image, (B, H, W, K); cells
(B, K, hidden)) adds basis[y, x] @ cells[b] (basis[b, y, x] @ cells[b]) to the input layer's
pre-activation of pixel (x, y) of image b, before modulation: per-pixel inputs that the decomposed first layer cannot express. A local latent grid
is one: its cells projected by the grid's Linear, blended by fixed bilinear weights per pixel
(fastinr.INRDecoder.grid_offset builds it). The basis is a constant (no gradient).

The first layer is decomposed, W_in = [W_code | W_pos], so `code ⊕ emb` is never built per pixel.
Normalization statistics come from `norm_stats`:
    "image"   - per image over its pixels (the seed's per-image loop, in training)
    "batch"   - over all pixels of the batch
    "running" - the running statistics (eval mode)
"""
import functools
from typing import Optional, Sequence, Tuple

import torch

from fastinr.activations import apply_activation
from fastinr.contract import BlockStats, DecoderParams, DecoderSpec, InputOffset
from fastinr.embedding import embed_coordinates, pos_embedding


def normalize(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
              norm_stats: str, running: Optional[Tuple[torch.Tensor, torch.Tensor]]):
    """BatchNorm of x (B, P, w). Returns (normalized x, BlockStats or None)."""
    if norm_stats == "running":
        mean, var = running
        scale = weight * torch.rsqrt(var + eps)
        return x * scale + (bias - mean * scale), None
    dims = (1,) if norm_stats == "image" else (0, 1)
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    y = (x - mean) * torch.rsqrt(var + eps) * weight + bias
    count = x.shape[1] if norm_stats == "image" else x.shape[0] * x.shape[1]
    unbiased = var * (count / max(count - 1, 1))
    stat_shape = (-1, x.shape[2]) if norm_stats == "image" else (x.shape[2],)
    return y, BlockStats(mean.detach().reshape(stat_shape), unbiased.detach().reshape(stat_shape),
                         count)


def modulate(z: torch.Tensor, spec: DecoderSpec, mods: Optional[torch.Tensor], layer: int) -> torch.Tensor:
    """Pre-activation z (B, P, hidden) modulated per image (identity without modulation)."""
    if mods is None:
        return z
    if spec.modulation == "shift":
        return z + mods[:, layer, 0, None]
    return z * (1 + mods[:, layer, 0, None]) + mods[:, layer, 1, None]


def decode(codes: torch.Tensor, params: DecoderParams, spec: DecoderSpec, shape: Tuple[int, int],
           norm_stats: str = "image",
           running: Sequence[Tuple[torch.Tensor, torch.Tensor]] = (),
           mods: Optional[torch.Tensor] = None, input_offset: Optional[InputOffset] = None,
           points: Optional[torch.Tensor] = None):
    """Colors (B, out, H, W) for codes (B, C), and the BlockStats of each normalized block.

    `running` holds (running_mean, running_var) per block, used when norm_stats == "running";
    `mods` the per-image modulation when spec.modulation is not "none"; `input_offset`, if
    given, is added to the input layer's pre-activation (see InputOffset). The arguments are
    those fastinr.contract.validate accepts. `points` (H*W, 2) shared by the batch or (B, H*W, 2)
    per image, if given, are the query points (x, y) in place of the pixel centres (the oracle of
    fastinr.points.decode_points).
    """
    batch, height, width = codes.shape[0], shape[0], shape[1]
    emb = (pos_embedding(height, width, spec.freqs, device=codes.device, dtype=params.w_in.dtype)
           if points is None else embed_coordinates(points.to(params.w_in.dtype), spec.freqs))
    w_code, w_pos = params.w_in[:, :spec.code_size], params.w_in[:, spec.code_size:]
    code_proj = torch.addmm(params.b_in, codes, w_code.t())                # (B, hidden)
    pos_proj = emb @ w_pos.t()                                             # ([B,] P, hidden)
    z = code_proj[:, None, :] + (pos_proj if pos_proj.ndim == 3 else pos_proj[None, :, :])
    if input_offset is not None:
        z = z + input_offset.dense()
    h = apply_activation(spec.activation, modulate(z, spec, mods, 0))
    layer = 1

    stats = []
    for i in range(spec.num_blocks):
        x = h
        if spec.batch_norm:
            x, block_stats = normalize(x, params.norm_weight[i], params.norm_bias[i], spec.eps,
                                       norm_stats, running[i] if norm_stats == "running" else None)
            if block_stats is not None:
                stats.append(block_stats)
        elif spec.layer_norm:
            x = torch.nn.functional.layer_norm(x, (x.shape[-1],), params.norm_weight[i],
                                               params.norm_bias[i], spec.eps)
        for weight, bias in zip(params.weights[i], params.biases[i]):
            x = apply_activation(spec.activation, modulate(torch.matmul(x, weight.t()) + bias,
                                                           spec, mods, layer))
            layer += 1
        h = torch.cat([h, x], dim=-1) if spec.concat[i] else h + x

    colors = apply_activation(spec.activation_out, torch.matmul(h, params.w_out.t()) + params.b_out)
    return colors.permute(0, 2, 1).reshape(batch, spec.out_channels, height, width), stats


def update_running_stats(running_mean: torch.Tensor, running_var: torch.Tensor,
                         num_batches_tracked: torch.Tensor, stats: BlockStats,
                         momentum: Optional[float]) -> None:
    """Update the buffers in place as nn.BatchNorm1d would, once per image for per-image stats.

    With per-image statistics the seed called its BatchNorm once per image in batch order, so
    r <- (1 - m) r + m s_b for b = 1..B, i.e. r_B = (1-m)^B r_0 + sum_b m (1-m)^(B-b) s_b.
    """
    mean, var = stats.mean, stats.var
    if mean.ndim == 1:
        mean, var = mean[None], var[None]
    steps = mean.shape[0]
    with torch.no_grad():
        if momentum is None:  # cumulative average: the factor changes every call
            for b in range(steps):
                factor = 1.0 / float(num_batches_tracked + b + 1)
                running_mean.lerp_(mean[b].to(running_mean.dtype), factor)
                running_var.lerp_(var[b].to(running_var.dtype), factor)
        else:   # r <- decay * r + coeffs @ s: one fused op per buffer (a GPU step is launch-bound)
            # (traced by torch.compile: built in the graph, where a cached tensor would be a guess)
            weights = _momentum_weights.__wrapped__ if torch.compiler.is_compiling() else _momentum_weights
            coeffs = weights(steps, float(momentum), running_mean.device, running_mean.dtype)
            decay = (1.0 - momentum) ** steps
            running_mean.addmv_(mean.to(running_mean.dtype).t(), coeffs, beta=decay)
            running_var.addmv_(var.to(running_var.dtype).t(), coeffs, beta=decay)
        num_batches_tracked.add_(steps)


@functools.lru_cache(maxsize=64)
def _momentum_weights(steps: int, momentum: float, device: torch.device, dtype: torch.dtype):
    """m (1-m)^(B-b) for b = 1..B: the weight of each image's statistics in the update (a
    constant, built once rather than in 4 small ops every step)."""
    with torch.inference_mode(False):
        exponents = torch.arange(steps - 1, -1, -1, device=device, dtype=torch.float64)
        return (momentum * (1.0 - momentum) ** exponents).to(dtype)
