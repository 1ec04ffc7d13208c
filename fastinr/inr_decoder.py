"""INRDecoder: the seed's per-pixel MLP with the choices that attack its blur, fused.

For codes (B, C) = [grid (g*g*c floats, channels first) | global (the rest)] and query points p:

    z0(p)  = W_e·emb(p) + b  [+ W_c·global  (concat)]  [+ W_g·(grid(p) ⊕ rel(p))  (local grid)]
    h      = act(mod_0(z0))
    block  : x = norm(h); x = act(mod_l(W_l x + b_l)) for each layer l; h = h + x
    colors = out(W_out h + b_out)

    mod_l(z) = z                                   conditioning="concat" (the seed)
               z + s_l(global)                     "shift"
               z * (1 + g_l(global)) + s_l(global) "film"  (g, s start at 0: identity at init)

grid(p) samples the g x g x c grid bilinearly at p; rel(p) is p relative to its cell's centre, in
cell units ([-0.5, 0.5]); so nearby pixels can differ even where the global code is smooth.
grid_blend="area" is LIIF's local ensemble instead: the MLP runs once for each of the 4 cell centres
around p, with that cell's values and p relative to it ([-1, 1]), and the 4 colors are blended
with the bilinear weights (the area of the rectangle between p and the opposite centre); 4x the
per-pixel work, and the members are 4 images to the normalizations.

norm: "image-bn" (the seed: per-image statistics in training, running statistics in eval),
"instance" (per-image statistics in training AND eval: a function of the code, so a valid model),
"batch-bn", "layer" (per pixel), "none". output: "linear" (x + 0.5; clamp when showing),
"sigmoid" (the seed), "wide-sigmoid" (1.002 sigmoid(x) - 0.001). embedding: "seed" (`freqs`),
"log" (`num_freqs` log-spaced frequencies up to `max_freq`, by default the Nyquist frequency of
a `train_size`-pixel side), "gaussian" (Gaussian Fourier features, scale `sigma`, a seeded
buffer saved in the state_dict).

Where the work happens: the parameters and options are here; colors on the pixel grid (every
variant) are lowered to the decode contract by fastinr/inr_lowering.py and run fused, forward and
backward, by the chosen backend (`backend`: "auto" picks Triton on CUDA, native on CPU; see
fastinr.backends); so do query points (`coords` (P, 2) shared by the batch or (B, P, 2) per image:
a 1 x P grid moved by a jitter); points that need a gradient run fastinr/inr_points.py, plain
PyTorch and the fused path's oracle in the tests; the grid's geometry is fastinr/latent_grid.py.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from fastinr import backends
from fastinr.activations import canonical_activation
from fastinr.conditioning import CONDITIONINGS as CONDITIONING_KINDS
from fastinr.contract import check_codes, check_shape
from fastinr.embedding import embed_coordinates, pixel_coordinates, pos_embedding_size
from fastinr.inr_lowering import blend_members, lower
from fastinr.inr_points import evaluate_at_points
from fastinr.latent_grid import AREA_MEMBERS, LatentGrid
from fastinr.running_stats import batch_reducer, decode_norm_stats, fold_decode_stats

CONDITIONINGS = tuple(CONDITIONING_KINDS)
NORMS = ("none", "image-bn", "instance", "batch-bn", "layer")
OUTPUTS = ("linear", "sigmoid", "wide-sigmoid")
EMBEDDINGS = ("seed", "log", "gaussian")
GRID_BLENDS = ("bilinear", "area")


def _choice(value: str, choices: Sequence[str], argument: str) -> str:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(choices)}; got {value!r}")
    return value


def nyquist_frequency(size: int) -> float:
    """Angular frequency of one cycle per two pixels for `size` pixels over [-1, 1]."""
    return math.pi * (size - 1) / 2


class INRDecoder(nn.Module):
    def __init__(self, code_size: int, out_channels: int = 3, hidden: int = 256,
                 num_blocks: int = 2, layers_per_block: int = 2, activation: str = "gelu",
                 conditioning: str = "concat", norm: str = "none", output: str = "linear",
                 embedding: str = "seed", freqs: Sequence[float] = (7, 17), num_freqs: int = 6,
                 max_freq: Optional[float] = None, train_size: int = 32, sigma: float = 10.0,
                 grid_size: int = 0, grid_channels: int = 0, grid_blend: str = "bilinear",
                 default_shape: Optional[Tuple[int, int]] = None, seed: int = 0,
                 backend: str = "auto"):
        super().__init__()
        self.backend = backend
        self.code_size, self.out_channels, self.hidden = int(code_size), int(out_channels), int(hidden)
        self.activation = canonical_activation(activation, "activation")
        self.conditioning = _choice(conditioning, CONDITIONINGS, "conditioning")
        self.conditioner = CONDITIONING_KINDS[self.conditioning]   # fastinr/conditioning.py
        self.norm = _choice(norm, NORMS, "norm")
        self.output = _choice(output, OUTPUTS, "output")
        self.embedding = _choice(embedding, EMBEDDINGS, "embedding")
        self.grid_size, self.grid_channels = int(grid_size), int(grid_channels)
        self.grid_floats = self.grid_size ** 2 * self.grid_channels if self.grid_size else 0
        self.global_size = self.code_size - self.grid_floats
        self.grid_blend = _choice(grid_blend, GRID_BLENDS, "grid_blend")
        if self.grid_blend == "area" and not self.grid_size:
            raise ValueError("grid_blend='area' blends the predictions of the 4 grid cells around "
                             "each pixel; it needs grid_size >= 1")
        self.members = AREA_MEMBERS if self.grid_blend == "area" else 1
        self.grid = LatentGrid(self.grid_size, self.grid_channels)
        self.running_stats_group = None  # a process group: fastinr.sync_running_stats
        self.default_shape = None if default_shape is None else check_shape(default_shape, "default_shape")
        if self.global_size < 0:
            raise ValueError(f"grid_size**2 * grid_channels = {self.grid_floats} floats do not fit "
                             f"in code_size={self.code_size}")
        if self.grid_size and self.grid_channels < 1:
            raise ValueError("grid_channels must be >= 1 when grid_size is set")
        if self.conditioner.needs_global and self.global_size == 0:
            raise ValueError(f"conditioning={conditioning!r} modulates with the global part of "
                             f"the code, but the grid takes all {self.code_size} floats")

        if self.embedding == "gaussian":
            generator = torch.Generator().manual_seed(seed)
            self.register_buffer("fourier_matrix", torch.randn(num_freqs, 2, generator=generator) * sigma)
            self.freqs = ()
            embedding_size = 2 + 2 * num_freqs
        else:
            if self.embedding == "log":
                top = nyquist_frequency(train_size) if max_freq is None else float(max_freq)
                freqs = torch.logspace(0, math.log10(top), num_freqs).tolist() if num_freqs else ()
            self.freqs = tuple(float(f) for f in freqs)
            embedding_size = pos_embedding_size(self.freqs)

        h = self.hidden
        self.embed_in = nn.Linear(embedding_size, h)
        self.conditioner.build_input(self, self.global_size, h)
        self.grid_in = nn.Linear(self.grid_channels + 2, h, bias=False) if self.grid_size else None
        self.blocks = nn.ModuleList(nn.ModuleList(nn.Linear(h, h) for _ in range(layers_per_block))
                                    for _ in range(num_blocks))
        self.norms = nn.ModuleList(self._make_norm() for _ in range(num_blocks)) \
            if self.norm != "none" else None
        self.linear_out = nn.Linear(h, self.out_channels)
        self.modulated_layers = 1 + num_blocks * layers_per_block
        self.conditioner.build_modulation(self, self.global_size, h)

    def _make_norm(self) -> nn.Module:
        if self.norm == "layer":
            return nn.LayerNorm(self.hidden)
        return nn.BatchNorm1d(self.hidden, track_running_stats=self.norm != "instance")

    def extra_repr(self):
        return (f"code_size={self.code_size}, conditioning={self.conditioning!r}, norm={self.norm!r}, "
                f"output={self.output!r}, embedding={self.embedding!r}, "
                f"grid={self.grid_size}x{self.grid_size}x{self.grid_channels}, "
                f"grid_blend={self.grid_blend!r}")

    def macs_per_pixel(self, shape: Optional[Tuple[int, int]] = None) -> float:
        """Multiply-adds per query point; the area blend's 4 members count 4 times. The per-image
        work (the code projection, the modulation) is left out, or with `shape` (H, W) spread
        over the H*W pixels of one image. Normalization, activations and grid sampling are not
        counted."""
        h = self.hidden
        layers = sum(len(block) for block in self.blocks)
        macs = self.embed_in.in_features * h + layers * h * h + h * self.out_channels
        macs += self.grid_in.in_features * h if self.grid_in is not None else 0
        macs *= self.members
        if shape is None:
            return macs
        height, width = check_shape(shape, "shape")
        return macs + self.conditioner.per_image_macs(self) / (height * width)

    @torch.no_grad()
    def init_output_bias(self, value: float) -> "INRDecoder":
        """Fill linear_out's bias with `value` (the output "linear" adds its 0.5 on top); returns
        the decoder."""
        self.linear_out.bias.fill_(value)
        return self

    def embed(self, xy: torch.Tensor) -> torch.Tensor:
        if self.embedding == "gaussian":
            proj = xy @ self.fourier_matrix.to(xy.dtype).t()
            return torch.cat([xy, proj.sin(), proj.cos()], dim=-1)
        return embed_coordinates(xy, self.freqs)

    def _check_jitter(self, jitter, shape: Tuple[int, int], codes: torch.Tensor, batch: int) -> torch.Tensor:
        expected = (int(shape[0]), int(shape[1]), 2)
        if not isinstance(jitter, torch.Tensor) or tuple(jitter.shape) not in (expected, (batch, *expected)) \
                or not jitter.is_floating_point():
            raise ValueError(f"jitter must be a float tensor of shape {expected} (H, W, 2) or "
                             f"{(batch, *expected)} (B, H, W, 2): one offset per pixel from its centre, "
                             f"shared by the batch or per image, in [-1, 1] units; got "
                             f"{tuple(jitter.shape) if isinstance(jitter, torch.Tensor) else type(jitter).__name__}")
        if jitter.requires_grad:
            raise ValueError("jitter moves the query points by constants; detach it (no gradient flows to it)")
        return jitter.to(device=codes.device, dtype=codes.dtype)

    def forward(self, codes: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
                coords: Optional[torch.Tensor] = None, jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Colors (B, out, H, W) on the pixel grid of `shape`, or (B, out, P) at `coords` (P, 2) or
        (B, P, 2) in [-1, 1] (x, y); one code (C,) gives one image without the batch dimension.

        `jitter` (H, W, 2) moves each pixel's query point off its centre (same [-1, 1] units, the
        same offset for every image; (B, H, W, 2): one per image): sub-pixel training, fused like
        the pixel grid. Query points run fused too, but for points that need a gradient (plain
        PyTorch, fastinr/inr_points.py)."""
        check_codes(codes, self.code_size, "code_size", single=True)
        batch_codes = codes.reshape(-1, self.code_size)
        batch = batch_codes.shape[0]
        if coords is None:   # the pixel grid: through the decode contract, fused
            shape = self.default_shape if shape is None else shape
            if shape is None:
                raise ValueError("shape must be given as (H, W): this decoder has no default_shape")
            shape = check_shape(shape, "shape")
            if jitter is not None:
                jitter = self._check_jitter(jitter, shape, codes, batch)
            colors = self._fused_forward(batch_codes, shape, jitter)
            return colors[0] if codes.ndim == 1 else colors
        if jitter is not None:
            raise ValueError("jitter moves the pixel grid's query points; with coords, give the "
                             "points themselves")
        if coords.shape[-1] != 2 or coords.ndim not in (2, 3) or \
                (coords.ndim == 3 and coords.shape[0] != batch):
            raise ValueError(f"coords must have shape (P, 2) or ({batch}, P, 2), got "
                             f"{tuple(coords.shape)}")
        if coords.device != codes.device or not coords.is_floating_point():
            raise ValueError(f"coords must be a floating-point tensor on the codes' device ({codes.device}), "
                             f"got {coords.dtype} on {coords.device}")
        xy = coords.to(codes.dtype)
        if not xy.requires_grad:
            # The pixel centres of a 1 x P grid, moved by a jitter (shared or per image).
            count = xy.shape[-2]
            centres = pixel_coordinates(1, count, device=xy.device, dtype=xy.dtype)
            jitter = (xy - centres).reshape(*xy.shape[:-2], 1, count, 2)
            colors = self._fused_forward(batch_codes, (1, count), jitter)
            colors = colors.reshape(batch, self.out_channels, count)
        else:   # a gradient to the points: plain PyTorch
            colors = evaluate_at_points(self, batch_codes, xy.expand(batch, -1, -1) if xy.ndim == 2 else xy)
        return colors[0] if codes.ndim == 1 else colors

    def _fused_forward(self, codes: torch.Tensor, shape: Tuple[int, int],
                       jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Colors on the pixel grid: lowered to the decode contract, run by a fused backend."""
        norms = list(self.norms) if self.norms is not None and self.norm != "layer" else []   # BatchNorms
        norm_stats, running = decode_norm_stats(self, norms, "batch" if self.norm == "batch-bn" else "image")
        lowered = lower(self, codes, shape, jitter)
        colors, stats = backends.decode(lowered.codes, lowered.params, lowered.spec, shape, norm_stats,
                                        running, mods=lowered.mods, input_offset=lowered.input_offset,
                                        backend=self.backend,
                                        reducer=batch_reducer(self, norm_stats) if norms else None)
        colors = blend_members(colors, lowered.blend)
        if self.output == "wide-sigmoid":   # the kernels' sigmoid, widened by one elementwise op
            colors = colors * 1.002 - 0.001
        fold_decode_stats(self, norms, stats, self.members)
        return colors
