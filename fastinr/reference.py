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
With a `reducer` ("batch" only, fastinr.contract) the batch is this process's share of a batch split
across processes: the moments are those of the global batch (global_moments), and autograd's
backward through them reduces their gradients (the sums of dy and dy * xhat, in effect).
"""
import functools
from typing import Optional, Sequence, Tuple

import torch

from fastinr.activations import apply_activation
from fastinr.contract import BlockStats, DecoderParams, DecoderSpec, InputOffset, reduced_rows
from fastinr.embedding import embed_coordinates, pos_embedding


class _SumAcross(torch.autograd.Function):
    """The reducer's sum over the processes; its gradient is the sum of the processes' gradients
    (every process uses the total)."""

    @staticmethod
    def forward(ctx, values, reducer):
        ctx.reducer = reducer
        total = values.detach().clone()
        reducer(total)
        return total

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        ctx.reducer(grad)
        return grad, None


def global_moments(mean: torch.Tensor, var: torch.Tensor, rows: int, total: int, reducer):
    """(mean, biased var) in float64 over the `total` rows of every process, from this process's
    mean and biased var (w,) over its `rows` rows: the sums of x, then the sums of squares about
    the global mean (Chan et al.: sum_p (m2_p + n_p (mean_p - mean)^2)), each summed by `reducer`.
    Differentiable: the backward reduces the gradients of both sums."""
    mean, var = mean.double(), var.double()
    global_mean = _SumAcross.apply(mean * rows, reducer) / total
    m2 = _SumAcross.apply(var * rows + rows * (mean - global_mean) ** 2, reducer)
    return global_mean, m2 / total


def normalize(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
              norm_stats: str, running: Optional[Tuple[torch.Tensor, torch.Tensor]],
              reducer=None, total: Optional[int] = None):
    """BatchNorm of x (B, P, w). Returns (normalized x, BlockStats or None). With `reducer`
    ("batch"), x is this process's share of `total` rows (fastinr.contract.reduced_rows; None:
    reduced here)."""
    if norm_stats == "running":
        mean, var = running
        scale = weight * torch.rsqrt(var + eps)
        return x * scale + (bias - mean * scale), None
    dims = (1,) if norm_stats == "image" else (0, 1)
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, correction=0)
    count = x.shape[1] if norm_stats == "image" else x.shape[0] * x.shape[1]
    if reducer is not None and norm_stats == "batch":
        total = reduced_rows(reducer, count, x.device) if total is None else total
        mean, var = global_moments(mean, var, count, total, reducer)
        mean, var, count = mean.to(x.dtype), var.to(x.dtype), total
    y = (x - mean) * torch.rsqrt(var + eps) * weight + bias
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
           points: Optional[torch.Tensor] = None, reducer=None):
    """Colors (B, out, H, W) for codes (B, C), and the BlockStats of each normalized block.

    `running` holds (running_mean, running_var) per block, used when norm_stats == "running";
    `mods` the per-image modulation when spec.modulation is not "none"; `input_offset`, if
    given, is added to the input layer's pre-activation (see InputOffset). The arguments are
    those fastinr.contract.validate accepts. `points` (H*W, 2) shared by the batch or (B, H*W, 2)
    per image, if given, are the query points (x, y) in place of the pixel centres (the oracle of
    fastinr.points.decode_points). `reducer`: statistics over a batch split across processes
    (fastinr.contract).
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
    synced = reducer is not None and spec.batch_norm and spec.num_blocks > 0
    total = reduced_rows(reducer, h.shape[0] * h.shape[1], h.device) if synced else None
    for i in range(spec.num_blocks):
        x = h
        if spec.batch_norm:
            x, block_stats = normalize(x, params.norm_weight[i], params.norm_bias[i], spec.eps,
                                       norm_stats, running[i] if norm_stats == "running" else None,
                                       reducer if synced else None, total)
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
