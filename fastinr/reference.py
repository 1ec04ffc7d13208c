"""The decoder math in plain PyTorch, batched over images: the oracle and the `torch` backend.

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

An optional `input_offset` (InputOffset: basis (H, W, K), cells (B, K, hidden)) adds
basis[y, x] @ cells[b] to the input layer's pre-activation of pixel (x, y) of image b, before
modulation: per-pixel inputs that the decomposed first layer cannot express. A local latent grid
is one: its cells projected by the grid's Linear, blended by fixed bilinear weights per pixel
(fastinr.INRDecoder.grid_offset builds it). The basis is a constant (no gradient).

The first layer is decomposed, W_in = [W_code | W_pos], so `code ⊕ emb` is never built per pixel.
Normalization statistics come from `norm_stats`:
    "image"   - per image over its pixels (the seed's per-image loop, in training)
    "batch"   - over all pixels of the batch
    "running" - the running statistics (eval mode)
"""
import functools
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from fastinr.activations import apply_activation
from fastinr.embedding import pos_embedding, pos_embedding_size

NORM_STATS = ("image", "batch", "running")
MODULATIONS = ("none", "shift", "film")


@dataclass(frozen=True)
class DecoderSpec:
    """Everything about a decoder that is not a tensor (kernels specialise on it)."""
    code_size: int
    out_channels: int
    hidden: int
    concat: Tuple[bool, ...]            # per block
    layers_per_block: int
    freqs: Tuple[float, ...]
    batch_norm: bool
    activation: str
    activation_out: str
    eps: float = 1e-5
    modulation: str = "none"            # "none" | "shift" | "film" (see the module docstring)
    layer_norm: bool = False            # per pixel over its features (no statistics to keep)

    def __post_init__(self):
        if self.batch_norm and self.layer_norm:
            raise ValueError("a DecoderSpec normalizes with BatchNorm or LayerNorm, not both")

    @property
    def normalized(self) -> bool:
        """Whether each block starts with a normalization (and has its affine parameters)."""
        return self.batch_norm or self.layer_norm

    @property
    def num_blocks(self) -> int:
        return len(self.concat)

    @property
    def embedding_size(self) -> int:
        return pos_embedding_size(self.freqs)

    @property
    def block_widths(self) -> Tuple[int, ...]:
        """Input width of each block; concatenating blocks double the width after them."""
        widths, width = [], self.hidden
        for concat in self.concat:
            widths.append(width)
            width *= 2 if concat else 1
        return tuple(widths)

    @property
    def modulated_layers(self) -> int:
        return 1 + self.num_blocks * self.layers_per_block

    def mods_shape(self, batch: int) -> Tuple[int, int, int, int]:
        return (batch, self.modulated_layers, 2 if self.modulation == "film" else 1, self.hidden)

    @property
    def out_width(self) -> int:
        """Width of the hidden state entering linear_out."""
        return self.hidden * 2 ** sum(self.concat)


class DecoderParams(NamedTuple):
    """The decoder's tensors, in the seed's layout (nn.Linear weights are (out, in))."""
    w_in: torch.Tensor                          # (hidden, C + E)
    b_in: torch.Tensor                          # (hidden,)
    norm_weight: Tuple[torch.Tensor, ...]       # per block (w_i,), empty without a norm
    norm_bias: Tuple[torch.Tensor, ...]
    weights: Tuple[Tuple[torch.Tensor, ...], ...]   # [block][layer] (w_i, w_i)
    biases: Tuple[Tuple[torch.Tensor, ...], ...]    # [block][layer] (w_i,)
    w_out: torch.Tensor                         # (out, out_width)
    b_out: torch.Tensor                         # (out,)

    def flat(self) -> List[torch.Tensor]:
        """All tensors in one list (for autograd.Function); inverse of `from_flat`."""
        tensors = [self.w_in, self.b_in, *self.norm_weight, *self.norm_bias]
        for ws, bs in zip(self.weights, self.biases):
            tensors += [*ws, *bs]
        return tensors + [self.w_out, self.b_out]

    @staticmethod
    def from_flat(spec: DecoderSpec, tensors: Sequence[torch.Tensor]) -> "DecoderParams":
        it = iter(tensors)
        take = lambda n: tuple(next(it) for _ in range(n))  # noqa: E731
        w_in, b_in = take(2)
        n_norm = spec.num_blocks if spec.normalized else 0
        norm_weight, norm_bias = take(n_norm), take(n_norm)
        weights, biases = [], []
        for _ in range(spec.num_blocks):
            weights.append(take(spec.layers_per_block))
            biases.append(take(spec.layers_per_block))
        w_out, b_out = take(2)
        return DecoderParams(w_in, b_in, norm_weight, norm_bias, tuple(weights), tuple(biases),
                             w_out, b_out)


class InputOffset(NamedTuple):
    """basis[y, x] @ cells[b] is added to pixel (x, y) of image b before the input activation."""
    basis: torch.Tensor    # (H, W, K), fixed per pixel
    cells: torch.Tensor    # (B, K, hidden), per image

    def dense(self) -> torch.Tensor:
        """(B, H*W, hidden)."""
        return self.basis.reshape(-1, self.basis.shape[-1]) @ self.cells


class BlockStats(NamedTuple):
    """Normalization statistics of one block's input, for the running-statistics update."""
    mean: torch.Tensor      # (B, w) per image, or (w,) per batch
    var: torch.Tensor       # unbiased, same shape
    count: int              # values per statistic


def check_norm_pixels(norm_stats: str, batch: int, pixels: int) -> None:
    """BatchNorm in training needs more than one value per channel, as nn.BatchNorm1d does."""
    count = pixels if norm_stats == "image" else batch * pixels
    if norm_stats != "running" and count < 2:
        raise ValueError(
            f"BatchNorm with {norm_stats} statistics needs more than one value per channel, got "
            f"{batch} image(s) of {pixels} pixel(s); use a larger shape or eval mode")


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


def check_mods(spec: DecoderSpec, batch: int, mods: Optional[torch.Tensor]) -> None:
    """Clear errors for a `mods` that does not fit spec.modulation."""
    if spec.modulation not in MODULATIONS:
        raise ValueError(f"spec.modulation must be one of {MODULATIONS}, got {spec.modulation!r}")
    if spec.modulation == "none":
        if mods is not None:
            raise ValueError("mods were given but spec.modulation is 'none'")
        return
    if any(spec.concat):
        raise ValueError(f"modulation={spec.modulation!r} needs blocks of constant width (no concat)")
    expected = spec.mods_shape(batch)
    if not isinstance(mods, torch.Tensor) or tuple(mods.shape) != expected:
        raise ValueError(f"mods must be a tensor of shape {expected} (B, layers, k, hidden) for "
                         f"modulation={spec.modulation!r}, got "
                         f"{tuple(mods.shape) if isinstance(mods, torch.Tensor) else mods!r}")


def check_input_offset(spec: DecoderSpec, batch: int, shape, input_offset: Optional[InputOffset]) -> None:
    """Clear errors for an `input_offset` that does not fit: basis (H, W, K), cells (B, K, hidden)."""
    if input_offset is None:
        return
    if not isinstance(input_offset, InputOffset):
        raise TypeError(f"input_offset must be an InputOffset(basis, cells), got {type(input_offset).__name__}")
    basis, cells = input_offset
    if basis.ndim != 3 or tuple(basis.shape[:2]) != (int(shape[0]), int(shape[1])) or basis.shape[2] < 1:
        raise ValueError(f"input_offset.basis must have shape ({shape[0]}, {shape[1]}, K) (H, W, K) with "
                         f"K >= 1, got {tuple(basis.shape)}")
    if tuple(cells.shape) != (batch, basis.shape[2], spec.hidden):
        raise ValueError(f"input_offset.cells must have shape {(batch, basis.shape[2], spec.hidden)} "
                         f"(B, K, hidden), got {tuple(cells.shape)}")
    if basis.requires_grad:
        raise ValueError("input_offset.basis is a constant of the pixel grid; detach it (no gradient "
                         "flows to it)")


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
           mods: Optional[torch.Tensor] = None, input_offset: Optional[InputOffset] = None):
    """Colors (B, out, H, W) for codes (B, C), and the BlockStats of each normalized block.

    `running` holds (running_mean, running_var) per block, used when norm_stats == "running";
    `mods` the per-image modulation when spec.modulation is not "none"; `input_offset`, if
    given, is added to the input layer's pre-activation (see InputOffset).
    """
    batch, height, width = codes.shape[0], shape[0], shape[1]
    if spec.batch_norm and spec.num_blocks:
        check_norm_pixels(norm_stats, batch, height * width)
    check_mods(spec, batch, mods)
    check_input_offset(spec, batch, shape, input_offset)
    emb = pos_embedding(height, width, spec.freqs, device=codes.device, dtype=params.w_in.dtype)
    w_code, w_pos = params.w_in[:, :spec.code_size], params.w_in[:, spec.code_size:]
    code_proj = torch.addmm(params.b_in, codes, w_code.t())                # (B, hidden)
    pos_proj = emb @ w_pos.t()                                             # (P, hidden)
    z = code_proj[:, None, :] + pos_proj[None, :, :]
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
