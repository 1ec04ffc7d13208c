"""A deliberately naive re-implementation of the seed's decoder, written from DESIGN.md.

It loops over the images of a batch, builds `code ⊕ embedding` for every pixel and runs plain
nn.Modules on it, exactly as the seed did. It is the oracle for the drop-in module; its subclass
SeedLoopDecoder is the `seed-loop` provider of the benchmarks. Never optimise them.
"""
import math
from collections import OrderedDict

import torch
from torch import nn

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU,
                "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": nn.Identity,
                "identity": nn.Identity}


class SeedBlock(nn.Module):
    def __init__(self, width, num_layers, batch_norm, concat, activation):
        super().__init__()
        self.concat = concat
        layers = OrderedDict()
        if batch_norm:
            layers["norm"] = nn.BatchNorm1d(width)
        for j in range(num_layers):
            layers[f"layer_{j + 1}"] = nn.Sequential(OrderedDict(
                linear=nn.Linear(width, width), act=_ACTIVATIONS[activation]()))
        self.layers = nn.Sequential(layers)

    def forward(self, h):
        y = self.layers(h)
        return torch.cat([h, y], dim=-1) if self.concat else h + y


class SeedImageManifoldDecoder(nn.Module):
    def __init__(self, num_input_channels, num_output_channels=3, num_hidden=256, num_blocks=2,
                 num_layers_per_block=2, concat_residual=False, pos_embedding_freqs=(7, 17),
                 batch_norm=True, default_shape=None, activation="gelu", activation_out="sigmoid"):
        super().__init__()
        self.num_output_channels = num_output_channels
        self.freqs = tuple(pos_embedding_freqs)
        self.default_shape = default_shape
        if isinstance(concat_residual, bool):
            concat_residual = (concat_residual,) * num_blocks
        emb_size = (len(self.freqs) * 2 + 1) * 2
        widths = [num_hidden]
        for concat in concat_residual:
            widths.append(widths[-1] * (2 if concat else 1))
        self.pos_to_color = nn.Sequential(OrderedDict(
            linear_in=nn.Linear(num_input_channels + emb_size, num_hidden),
            act_in=_ACTIVATIONS[activation](),
            resblocks=nn.Sequential(OrderedDict(
                (f"resblock_{i + 1}", SeedBlock(widths[i], num_layers_per_block, batch_norm,
                                                concat_residual[i], activation))
                for i in range(num_blocks))),
            linear_out=nn.Linear(widths[-1], num_output_channels),
            act_out=_ACTIVATIONS[activation_out](),
        ))

    def embedding(self, height, width, like):
        rows = []
        for row in range(height):
            for col in range(width):
                x = -1 + 2 * col / (width - 1) if width > 1 else -1.0
                y = -1 + 2 * row / (height - 1) if height > 1 else -1.0
                rows.append([x, y]
                            + [v for f in self.freqs for v in (math.sin(f * x), math.sin(f * y))]
                            + [v for f in self.freqs for v in (math.cos(f * x), math.cos(f * y))])
        return torch.tensor(rows, dtype=like.dtype, device=like.device)

    def forward(self, x, shape=None):
        if x.ndim == 2:
            return torch.stack([self.forward(code, shape) for code in x])
        shape = shape or self.default_shape
        emb = self.embedding(*shape, like=self.pos_to_color.linear_in.weight)
        inputs = torch.cat([x[None].expand(emb.shape[0], -1), emb], dim=1)
        colors = self.pos_to_color(inputs)
        return colors.t().reshape(self.num_output_channels, *shape)


class SeedLoopDecoder(SeedImageManifoldDecoder):
    """The `seed-loop` provider of every benchmark: the seed's per-image loop, with the embedding
    built by tensor ops on every call as the seed did. The oracle's pixel-by-pixel Python
    embedding is there for independence, not for timing."""

    def embedding(self, height, width, like):
        from fastinr.embedding import pos_embedding
        return pos_embedding(height, width, self.freqs, device=like.device, dtype=like.dtype)
