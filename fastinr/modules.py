"""Drop-in nn.Modules.

`ImageManifoldDecoder` has the seed's constructor, submodule tree and state_dict keys, so a seed
checkpoint loads with strict=True both ways; its forward evaluates all images of a batch at once
through the chosen backend instead of looping over images.
"""
from collections import OrderedDict
from typing import Iterable, Optional, Tuple, Union

import torch
from torch import nn

from fastinr import backends
from fastinr.activations import activation_module, canonical_activation
from fastinr.contract import DecoderParams, DecoderSpec, check_codes, check_shape
from fastinr.embedding import pos_embedding_size
from fastinr.points import check_points, decode_points
from fastinr.running_stats import batch_reducer, decode_norm_stats, fold_decode_stats

BATCH_NORM_STATS = ("image", "batch")


class ResidualLinearBlock(nn.Module):
    """One block: [BatchNorm1d] + num_layers x (Linear(w, w), act); residual add or concat."""

    def __init__(self, num_hidden: int, num_layers: int, batch_norm: bool, concat: bool,
                 activation: str):
        super().__init__()
        self.do_concat = concat
        layers = OrderedDict()
        if batch_norm:
            layers["norm"] = nn.BatchNorm1d(num_hidden)
        for j in range(num_layers):
            layers[f"layer_{j + 1}"] = nn.Sequential(OrderedDict(
                linear=nn.Linear(num_hidden, num_hidden), act=activation_module(activation)))
        self.layers = nn.Sequential(layers)

    def extra_repr(self):
        return "concat=True" if self.do_concat else ""


class ImageManifoldDecoder(nn.Module):
    """color(pixel) = act_out(MLP(code ⊕ pos_embedding(x, y))) for every pixel of every image.

    The seed's arguments, plus:
      batch_norm_stats: "image" (default, the seed's per-image loop: statistics over each image's
          pixels, running statistics updated once per image) or "batch" (over the whole batch;
          across processes after fastinr.sync_running_stats, as SyncBatchNorm).
      backend: "auto" | "torch" | "triton" | "native" (see fastinr.backends).
    """

    def __init__(
            self,
            num_input_channels: int,
            num_output_channels: int = 3,
            num_hidden: int = 256,
            num_blocks: int = 2,
            num_layers_per_block: int = 2,
            concat_residual: Union[bool, Iterable[bool]] = False,
            pos_embedding_freqs: Iterable[float] = (7, 17),
            batch_norm: bool = True,
            default_shape: Optional[Tuple[int, int]] = None,
            activation: str = "gelu",
            activation_out: str = "sigmoid",
            batch_norm_stats: str = "image",
            backend: str = "auto",
    ):
        super().__init__()
        for name, value in (("num_input_channels", num_input_channels),
                            ("num_output_channels", num_output_channels),
                            ("num_hidden", num_hidden)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name, value in (("num_blocks", num_blocks), ("num_layers_per_block", num_layers_per_block)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if isinstance(concat_residual, bool):
            concat_residual = (concat_residual,) * num_blocks
        concat_residual = tuple(bool(c) for c in concat_residual)
        if len(concat_residual) != num_blocks:
            raise ValueError(f"concat_residual must be a bool or {num_blocks} bools (one per block), "
                             f"got {len(concat_residual)}")
        if batch_norm_stats not in BATCH_NORM_STATS:
            raise ValueError(f"batch_norm_stats must be one of {BATCH_NORM_STATS}, got {batch_norm_stats!r}")
        self.num_input_channels = num_input_channels
        self.num_output_channels = num_output_channels
        self.pos_embedding_freqs = tuple(pos_embedding_freqs)
        self.pos_embedding_size = pos_embedding_size(self.pos_embedding_freqs)
        self.concat_residual = concat_residual
        self.default_shape = None if default_shape is None else check_shape(default_shape, "default_shape")
        self.batch_norm_stats = batch_norm_stats
        self.backend = backend
        self.running_stats_group = None  # a process group: fastinr.sync_running_stats
        self.spec = DecoderSpec(
            code_size=num_input_channels, out_channels=num_output_channels, hidden=num_hidden,
            concat=concat_residual, layers_per_block=num_layers_per_block,
            freqs=self.pos_embedding_freqs, batch_norm=bool(batch_norm),
            activation=canonical_activation(activation, "activation"),
            activation_out=canonical_activation(activation_out, "activation_out"),
        )

        self.pos_to_color = nn.Sequential()
        self.pos_to_color.add_module(
            "linear_in", nn.Linear(num_input_channels + self.pos_embedding_size, num_hidden))
        self.pos_to_color.add_module("act_in", activation_module(self.spec.activation))
        self.pos_to_color.add_module("resblocks", nn.Sequential(OrderedDict(
            (f"resblock_{i + 1}", ResidualLinearBlock(width, num_layers_per_block, bool(batch_norm),
                                                      concat, self.spec.activation))
            for i, (concat, width) in enumerate(zip(concat_residual, self.spec.block_widths)))))
        self.pos_to_color.add_module("linear_out", nn.Linear(self.spec.out_width, num_output_channels))
        self.pos_to_color.add_module("act_out", activation_module(self.spec.activation_out))

    def extra_repr(self):
        args = [f"pos_embedding_freqs={self.pos_embedding_freqs}",
                f"concat_residual={self.concat_residual}"]
        if self.default_shape is not None:
            args.append(f"default_shape={self.default_shape}")
        if self.spec.batch_norm:
            args.append(f"batch_norm_stats={self.batch_norm_stats!r}")
        args.append(f"backend={self.backend!r}")
        return ", ".join(args)

    def macs_per_pixel(self, shape: Optional[Tuple[int, int]] = None) -> int:
        """Multiply-adds per output pixel, counted as the seed computes them: every pixel takes
        code ⊕ embedding through linear_in, so nothing is per image and `shape` changes nothing."""
        return sum(m.in_features * m.out_features for m in self.modules() if isinstance(m, nn.Linear))

    @torch.no_grad()
    def init_output_bias(self, value: float) -> "ImageManifoldDecoder":
        """Fill the output layer's bias (before activation_out) with `value`, e.g. 0.5 to start a
        linear output at mid grey; returns the decoder."""
        self.pos_to_color.linear_out.bias.fill_(value)
        return self

    def _blocks(self):
        return list(self.pos_to_color.resblocks)

    def _norms(self):
        return [block.layers.norm for block in self._blocks()] if self.spec.batch_norm else []

    def decoder_params(self) -> DecoderParams:
        blocks = self._blocks()
        linears = [[block.layers[j + int(self.spec.batch_norm)].linear
                    for j in range(self.spec.layers_per_block)] for block in blocks]
        norms = self._norms()
        return DecoderParams(
            w_in=self.pos_to_color.linear_in.weight, b_in=self.pos_to_color.linear_in.bias,
            norm_weight=tuple(n.weight for n in norms), norm_bias=tuple(n.bias for n in norms),
            weights=tuple(tuple(lin.weight for lin in block) for block in linears),
            biases=tuple(tuple(lin.bias for lin in block) for block in linears),
            w_out=self.pos_to_color.linear_out.weight, b_out=self.pos_to_color.linear_out.bias)

    def forward(self, x: torch.Tensor, shape: Optional[Tuple[int, int]] = None,
                coords: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Colors (B, out, H, W) for codes x (B, C), or (out, H, W) for one code (C,); with
        `coords` (P, 2) shared by the batch or (B, P, 2) per image, (x, y) in [-1, 1], colors
        (B, out, P) at those points instead of a pixel grid (fastinr.points: fused like the grid)."""
        check_codes(x, self.num_input_channels, "num_input_channels", single=True)
        if coords is not None:
            if shape is not None:
                raise ValueError("give shape (a pixel grid) or coords (query points), not both")
            check_points(coords, x.reshape(-1, self.num_input_channels), "coords")
        if shape is None and coords is None:
            if self.default_shape is None:
                raise ValueError("shape must be given as (H, W): this decoder has no default_shape")
            shape = self.default_shape
        norms = self._norms()
        norm_stats, running = decode_norm_stats(self, norms, self.batch_norm_stats)
        reducer = batch_reducer(self, norm_stats) if norms else None
        codes = x.reshape(-1, self.num_input_channels)
        if coords is None:
            colors, stats = backends.decode(codes, self.decoder_params(), self.spec, shape, norm_stats,
                                            running, backend=self.backend, reducer=reducer)
        else:
            colors, stats = decode_points(codes, self.decoder_params(), self.spec, coords, norm_stats,
                                          running, backend=self.backend, reducer=reducer)
        fold_decode_stats(self, norms, stats)
        return colors[0] if x.ndim == 1 else colors
