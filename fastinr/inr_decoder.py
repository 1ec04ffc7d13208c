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

Fused paths: colors on the pixel grid (every variant) run through fastinr's decode contract
(`backend`: "auto" picks Triton on CUDA, native on CPU; see fastinr.backends), forward and backward
fused: every normalization (LayerNorm included) and conditioning. What the kernels do not compute
themselves enters the contract as its `input_offset` (a fixed basis per pixel times cells per
image):
  * the local latent grid: projected cells per image, fixed bilinear weights per pixel (with
    grid_blend="area": the 4 members run as 4 batches of images in one call, each member's
    one-hot cell weights a block of the basis, its cells block-diagonal);
  * the Gaussian features (the kernels embed only (x, y)): the features per pixel, W_e's columns;
  * a sub-pixel `jitter` of the query points (one offset per pixel, shared by the batch):
    W_e·emb(p + jitter) = [the kernels' embedding of p] + W_e·(emb(p + jitter) - emb(p)).
The wide sigmoid is the kernels' sigmoid and one elementwise op. Arbitrary query points (`coords`)
run the plain PyTorch path below, which is also the fused paths' oracle in the tests.
"""
import itertools
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastinr import backends
from fastinr.activations import apply_activation, canonical_activation
from fastinr.contract import (DecoderParams, DecoderSpec, InputOffset, check_codes, check_norm_pixels,
                              check_shape)
from fastinr.embedding import embed_coordinates, pixel_coordinates, pos_embedding_size
from fastinr.reference import normalize
from fastinr.running_stats import decode_norm_stats, fold_decode_stats

CONDITIONINGS = ("concat", "shift", "film")
NORMS = ("none", "image-bn", "instance", "batch-bn", "layer")
OUTPUTS = ("linear", "sigmoid", "wide-sigmoid")
EMBEDDINGS = ("seed", "log", "gaussian")
GRID_BLENDS = ("bilinear", "area")
AREA_MEMBERS = 4   # grid_blend="area": the cell centres around each query point


def _choice(value: str, choices: Sequence[str], argument: str) -> str:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {', '.join(choices)}; got {value!r}")
    return value


def nyquist_frequency(size: int) -> float:
    """Angular frequency of one cycle per two pixels for `size` pixels over [-1, 1]."""
    return math.pi * (size - 1) / 2


def concat_offsets(offsets: Sequence[Optional[InputOffset]]) -> Optional[InputOffset]:
    """One input offset that adds up those of `offsets` that are not None (their bases and cells
    side by side); None if there are none."""
    offsets = [o for o in offsets if o is not None]
    if len(offsets) <= 1:
        return offsets[0] if offsets else None
    return InputOffset(torch.cat([o.basis for o in offsets], dim=-1).contiguous(),
                       torch.cat([o.cells for o in offsets], dim=1))


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
        self.running_stats_group = None  # a process group: fastinr.sync_running_stats
        self.default_shape = None if default_shape is None else check_shape(default_shape, "default_shape")
        if self.global_size < 0:
            raise ValueError(f"grid_size**2 * grid_channels = {self.grid_floats} floats do not fit "
                             f"in code_size={self.code_size}")
        if self.grid_size and self.grid_channels < 1:
            raise ValueError("grid_channels must be >= 1 when grid_size is set")
        if self.conditioning != "concat" and self.global_size == 0:
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
        self.code_in = (nn.Linear(self.global_size, h, bias=False)
                        if self.conditioning == "concat" and self.global_size else None)
        self.grid_in = nn.Linear(self.grid_channels + 2, h, bias=False) if self.grid_size else None
        self.blocks = nn.ModuleList(nn.ModuleList(nn.Linear(h, h) for _ in range(layers_per_block))
                                    for _ in range(num_blocks))
        self.norms = nn.ModuleList(self._make_norm() for _ in range(num_blocks)) \
            if self.norm != "none" else None
        self.linear_out = nn.Linear(h, self.out_channels)
        self.modulated_layers = 1 + num_blocks * layers_per_block
        self.modulation = None
        if self.conditioning != "concat":
            per_layer = 2 * h if self.conditioning == "film" else h
            self.modulation = nn.Linear(self.global_size, self.modulated_layers * per_layer)
            if self.conditioning == "film":  # identity at init: scale 1 + 0, shift 0
                nn.init.zeros_(self.modulation.weight)
                nn.init.zeros_(self.modulation.bias)

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
        per_image = sum(m.in_features * m.out_features
                        for m in (self.code_in, self.modulation) if m is not None)
        return macs + per_image / (height * width)

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

    def grid_offset(self, grid: torch.Tensor, shape: Tuple[int, int],
                    jitter: Optional[torch.Tensor] = None) -> InputOffset:
        """grid_in(sample_grid(grid, pixel centres [+ jitter])) in the decode contract's low-rank form.

        Bilinear sampling at fixed points is linear in the cells, one weight per axis: so the
        cells are projected once per image (B, g*g, hidden) and each pixel blends them with its
        fixed weights, the basis (H, W, g*g); the relative position's projection rides along as two
        more basis columns (the position) and cells (the grid Linear's weights for it). The
        weights come from grid_sample itself (sampling an identity grid): exactly sample_grid's."""
        g = self.grid_size
        height, width = shape
        xy = self._query_points(shape, jitter, grid)
        weight_x, rel_x = self._cell_weights(xy[:, 0])               # (H*W, g), (H*W,)
        weight_y, rel_y = self._cell_weights(xy[:, 1])
        bilinear = (weight_y[:, :, None] * weight_x[:, None, :]).reshape(height, width, g * g)
        rel = torch.stack([rel_x, rel_y], dim=-1).reshape(height, width, 2)
        return InputOffset(torch.cat([bilinear, rel], dim=-1).contiguous(), self._projected_cells(grid))

    def _projected_cells(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, g*g + 2, hidden): grid_in's projection of every cell, then grid_in's weights for
        the relative position (the cells of the basis columns that hold it)."""
        c = self.grid_channels
        w_sample, w_rel = self.grid_in.weight.split([c, 2], dim=1)   # (hidden, c), (hidden, 2)
        cells = grid.reshape(grid.shape[0], c, -1).transpose(1, 2) @ w_sample.t()  # (B, g*g, hidden)
        return torch.cat([cells, w_rel.t().expand(grid.shape[0], -1, -1)], dim=1)

    def area_grid_offset(self, grid: torch.Tensor, shape: Tuple[int, int],
                         jitter: Optional[torch.Tensor] = None) -> Tuple[InputOffset, torch.Tensor]:
        """grid_blend="area": the 4 members' grid_in(cell values ⊕ rel) as one input offset for a
        batch of 4B images (member-major), and the members' blend weights (4, 1, 1, H, W).

        Member m's pixels weight one cell each (a one-hot basis block); its images' cells are the
        projected cells in block m and zero elsewhere, so each member sees only its own block."""
        g = self.grid_size
        batch, (height, width) = grid.shape[0], shape
        xy = self._query_points(shape, jitter, grid)
        cells = self._projected_cells(grid)                                         # (B, K, hidden)
        bases, weights = [], []
        for index, rel, weight in self._area_members(xy):
            bases.append(torch.cat([F.one_hot(index, g * g).to(xy.dtype), rel], dim=-1))
            weights.append(weight)
        members = torch.eye(AREA_MEMBERS, dtype=cells.dtype, device=cells.device)
        block_cells = members[:, None, :, None, None] * cells[None, :, None]       # (4, B, 4, K, hidden)
        basis = torch.cat(bases, dim=-1).reshape(height, width, -1).contiguous()
        blend = torch.stack(weights).reshape(AREA_MEMBERS, 1, 1, height, width)
        return InputOffset(basis, block_cells.reshape(AREA_MEMBERS * batch, -1, self.hidden)), blend

    def _area_members(self, xy: torch.Tensor):
        """For query points xy (..., 2), the 4 cell centres around each (LIIF's local ensemble),
        rows then columns: per member its flat cell index (...), xy relative to that centre in
        cells (..., 2) and its blend weight (...); the weights sum to 1. Past the outer centres
        both sides clamp to the border cell, whose prediction then gets the whole weight."""
        g = self.grid_size
        axes = []
        for t in (xy[..., 1], xy[..., 0]):   # y, x
            u = (t + 1) * (g / 2) - 0.5      # in cells; the centres are at 0 .. g-1
            below = u.floor()
            axes.append([((below + a).clamp(0, g - 1), u - (below + a).clamp(0, g - 1),
                          1 - (u - below - a).abs()) for a in (0, 1)])
        return [((iy * g + ix).long(), torch.stack([rx, ry], dim=-1), wy * wx)
                for (iy, ry, wy), (ix, rx, wx) in itertools.product(*axes)]

    def area_features(self, grid: torch.Tensor, xy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """grid_blend="area" at query points xy (B, P, 2) of the grid (B, c, g, g): each member's
        cell values ⊕ rel, (4B, P, c + 2) member-major, and the blend weights (4, B, P, 1)."""
        c = self.grid_channels
        cells = grid.reshape(grid.shape[0], c, -1)
        features, weights = [], []
        for index, rel, weight in self._area_members(xy):
            values = cells.gather(2, index[:, None].expand(-1, c, -1)).transpose(1, 2)
            features.append(torch.cat([values, rel], dim=-1))
            weights.append(weight[..., None])
        return torch.cat(features), torch.stack(weights)

    def embedding_offset(self, batch: int, shape: Tuple[int, int], like: torch.Tensor,
                         jitter: Optional[torch.Tensor] = None) -> Optional[InputOffset]:
        """The part of W_e·emb(p + jitter) that the fused kernels do not compute, as an input offset
        whose cells are W_e's columns (so W_e's gradient flows through them); None if no part.

        The kernels embed the pixel centres p with self.freqs: all of the seed and log embeddings,
        only (x, y) of the Gaussian one. So the basis holds the Gaussian features at p, and with a
        jitter emb(p + jitter) minus what the kernels embed at p."""
        own = pos_embedding_size(self.freqs)    # the kernels' columns of emb
        if jitter is None and own == self.embed_in.in_features:
            return None
        centres = self._query_points(shape, None, like)
        if jitter is None:
            basis, weight = self.embed(centres)[:, own:], self.embed_in.weight[:, own:]
        else:
            moved = self.embed(self._query_points(shape, jitter, like))
            own_part = moved[:, :own] - embed_coordinates(centres, self.freqs)
            basis, weight = torch.cat([own_part, moved[:, own:]], dim=1), self.embed_in.weight
        cells = weight.t().expand(batch, -1, -1).contiguous()                   # (B, E, hidden)
        return InputOffset(basis.reshape(*shape, -1), cells)

    def _query_points(self, shape: Tuple[int, int], jitter: Optional[torch.Tensor],
                      like: torch.Tensor) -> torch.Tensor:
        """(H*W, 2): the pixel centres of `shape`, moved by `jitter` (H, W, 2) when given."""
        xy = pixel_coordinates(*shape, device=like.device, dtype=like.dtype)
        return xy if jitter is None else xy + jitter.reshape(-1, 2)

    def _check_jitter(self, jitter, shape: Tuple[int, int], codes: torch.Tensor) -> torch.Tensor:
        expected = (int(shape[0]), int(shape[1]), 2)
        if not isinstance(jitter, torch.Tensor) or tuple(jitter.shape) != expected \
                or not jitter.is_floating_point():
            raise ValueError(f"jitter must be a float tensor of shape {expected} (H, W, 2): one offset "
                             f"per pixel from its centre, in [-1, 1] units; got "
                             f"{tuple(jitter.shape) if isinstance(jitter, torch.Tensor) else type(jitter).__name__}")
        if jitter.requires_grad:
            raise ValueError("jitter moves the query points by constants; detach it (no gradient flows to it)")
        return jitter.to(device=codes.device, dtype=codes.dtype)

    def _cell_weights(self, t: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """For coordinates t (n,) along one axis: their bilinear weights over the g cells (n, g) and
        their position relative to their cell (n,), as sample_grid computes them."""
        g = self.grid_size
        identity = torch.eye(g, device=t.device, dtype=t.dtype).reshape(1, g, 1, g)
        at = torch.stack([t, torch.zeros_like(t)], dim=1).reshape(1, 1, -1, 2)
        weights = F.grid_sample(identity, at, mode="bilinear", padding_mode="border",
                                align_corners=False)[0, :, 0].t()
        return weights, self._relative_to_cell(t)

    def sample_grid(self, grid: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
        """(B, P, c + 2): the grid sampled bilinearly at xy (B, P, 2), and xy relative to its cell."""
        sampled = F.grid_sample(grid, xy[:, None], mode="bilinear", padding_mode="border",
                                align_corners=False)[:, :, 0].transpose(1, 2)
        return torch.cat([sampled, self._relative_to_cell(xy)], dim=-1)

    def _relative_to_cell(self, t: torch.Tensor) -> torch.Tensor:
        """Coordinates in [-1, 1] relative to the centre of their grid cell, in cells (-0.5 .. 0.5)."""
        g = self.grid_size
        cell = ((t + 1) * (g / 2)).floor().clamp(0, g - 1)
        return (t + 1) * (g / 2) - cell - 0.5

    def forward(self, codes: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
                coords: Optional[torch.Tensor] = None, jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Colors (B, out, H, W) on the pixel grid of `shape`, or (B, out, P) at `coords` (P, 2) or
        (B, P, 2) in [-1, 1] (x, y); one code (C,) gives one image without the batch dimension.

        `jitter` (H, W, 2) moves each pixel's query point off its centre (same [-1, 1] units, the
        same offset for every image): sub-pixel training, fused like the pixel grid."""
        check_codes(codes, self.code_size, "code_size", single=True)
        batch_codes = codes.reshape(-1, self.code_size)
        batch = batch_codes.shape[0]
        if coords is None:   # the pixel grid: through the decode contract, fused
            shape = self.default_shape if shape is None else shape
            if shape is None:
                raise ValueError("shape must be given as (H, W): this decoder has no default_shape")
            shape = check_shape(shape, "shape")
            if jitter is not None:
                jitter = self._check_jitter(jitter, shape, codes)
            colors = self._fused_forward(batch_codes, shape, jitter)
            return colors[0] if codes.ndim == 1 else colors
        if jitter is not None:
            raise ValueError("jitter moves the pixel grid's query points; with coords, give the "
                             "points themselves")
        if coords.shape[-1] != 2 or coords.ndim not in (2, 3) or \
                (coords.ndim == 3 and coords.shape[0] != batch):
            raise ValueError(f"coords must have shape (P, 2) or ({batch}, P, 2), got "
                             f"{tuple(coords.shape)}")
        xy = coords.to(codes.dtype)
        xy = xy.expand(batch, -1, -1) if xy.ndim == 2 else xy
        pixels = xy.shape[1]

        grid, global_code = batch_codes.split([self.grid_floats, self.global_size], dim=1)
        z = self.embed_in(self.embed(xy))
        if self.code_in is not None:
            z = z + self.code_in(global_code)[:, None]
        blend = None
        if self.grid_in is not None:
            grid = grid.reshape(batch, self.grid_channels, self.grid_size, self.grid_size)
            if self.grid_blend == "area":   # the members run as 4 batches of images
                features, blend = self.area_features(grid, xy)
                z = z.repeat(self.members, 1, 1) + self.grid_in(features)
                global_code = global_code.repeat(self.members, 1)
            else:
                z = z + self.grid_in(self.sample_grid(grid, xy))
        mods = None
        if self.modulation is not None:
            mods = self.modulation(global_code).reshape(global_code.shape[0], self.modulated_layers, -1,
                                                        self.hidden)

        h = self._act(self._modulate(z, mods, 0))
        layer = 1
        for i, block in enumerate(self.blocks):
            x = self._normalize(i, h, pixels) if self.norms is not None else h
            for linear in block:
                x = self._act(self._modulate(linear(x), mods, layer))
                layer += 1
            h = h + x
        colors = self._output(self.linear_out(h))                      # (B [x 4], P, out)
        if blend is not None:
            colors = (colors.reshape(self.members, batch, pixels, -1) * blend).sum(0)
        colors = colors.transpose(1, 2)                                 # (B, out, P)
        return colors[0] if codes.ndim == 1 else colors

    def _fused_spec(self) -> DecoderSpec:
        return DecoderSpec(
            code_size=self.global_size if self.code_in is not None else 0,
            out_channels=self.out_channels, hidden=self.hidden,
            concat=(False,) * len(self.blocks), layers_per_block=len(self.blocks[0]) if len(self.blocks) else 0,
            freqs=self.freqs, batch_norm=self.norms is not None and self.norm != "layer",
            layer_norm=self.norm == "layer", activation=self.activation,
            activation_out="none" if self.output == "linear" else "sigmoid",
            eps=self.norms[0].eps if self.norms is not None and len(self.norms) else 1e-5,
            modulation="none" if self.conditioning == "concat" else self.conditioning)

    def _fused_params(self) -> DecoderParams:
        """This module's tensors in the decode contract's layout (differentiable views and cats):
        the first layer takes code ⊕ embedding, and the linear output's +0.5 is its bias's."""
        norms = list(self.norms) if self.norms is not None else []
        b_out = self.linear_out.bias + 0.5 if self.output == "linear" else self.linear_out.bias
        w_embed = self.embed_in.weight[:, :pos_embedding_size(self.freqs)]   # the rest: embedding_offset
        return DecoderParams(
            w_in=torch.cat([self.code_in.weight, w_embed], dim=1) if self.code_in is not None else w_embed,
            b_in=self.embed_in.bias,
            norm_weight=tuple(n.weight for n in norms), norm_bias=tuple(n.bias for n in norms),
            weights=tuple(tuple(lin.weight for lin in block) for block in self.blocks),
            biases=tuple(tuple(lin.bias for lin in block) for block in self.blocks),
            w_out=self.linear_out.weight, b_out=b_out)

    def _fused_forward(self, codes: torch.Tensor, shape: Tuple[int, int],
                       jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
        norms = list(self.norms) if self.norms is not None and self.norm != "layer" else []   # BatchNorms
        norm_stats, running = decode_norm_stats(self, norms, "batch" if self.norm == "batch-bn" else "image")
        grid_part, blend = None, None
        if self.grid_in is not None:
            grid, codes = codes.split([self.grid_floats, self.global_size], dim=1)
            if self.grid_blend == "area":
                grid_part, blend = self.area_grid_offset(grid, shape, jitter)
            else:
                grid_part = self.grid_offset(grid, shape, jitter)
        # Every area member is a copy of the batch but for its grid part.
        embedding_part = self.embedding_offset(codes.shape[0] * self.members, shape, codes, jitter)
        codes = codes.repeat(self.members, 1) if self.members > 1 else codes
        offset = concat_offsets([grid_part, embedding_part])
        mods = None
        if self.modulation is not None:  # the per-image shift / FiLM constants, (B, M, k, hidden)
            mods = self.modulation(codes).reshape(codes.shape[0], self.modulated_layers, -1, self.hidden)
        if self.code_in is None:
            codes = codes[:, :0]
        colors, stats = backends.decode(codes, self._fused_params(), self._fused_spec(), shape, norm_stats,
                                        running, mods=mods, input_offset=offset, backend=self.backend)
        if blend is not None:
            colors = (colors.reshape(self.members, -1, *colors.shape[1:]) * blend).sum(0)
        if self.output == "wide-sigmoid":   # the kernels' sigmoid, widened by one elementwise op
            colors = colors * 1.002 - 0.001
        fold_decode_stats(self, norms, stats, self.members)
        return colors

    def _act(self, x):
        return apply_activation(self.activation, x)

    def _modulate(self, z, mods, layer):
        if mods is None:
            return z
        if self.conditioning == "shift":
            return z + mods[:, layer, 0, None]
        return z * (1 + mods[:, layer, 0, None]) + mods[:, layer, 1, None]

    def _normalize(self, i: int, h: torch.Tensor, pixels: int) -> torch.Tensor:
        norm = self.norms[i]
        if self.norm == "layer":
            return norm(h)
        stats, running = decode_norm_stats(self, [norm], "batch" if self.norm == "batch-bn" else "image")
        check_norm_pixels(stats, h.shape[0], pixels)
        x, block_stats = normalize(h, norm.weight, norm.bias, norm.eps, stats, running[0] if running else None)
        fold_decode_stats(self, [norm], [block_stats] if block_stats is not None else [], self.members)
        return x

    def _output(self, x):
        if self.output == "linear":
            return x + 0.5
        if self.output == "sigmoid":
            return torch.sigmoid(x)
        return torch.sigmoid(x) * 1.002 - 0.001
