"""INRDecoder at arbitrary query points, in plain PyTorch: the path for query points that need a
gradient (INRDecoder runs every other call fused), and the oracle of the fused paths in the tests.

    z0(p)  = W_e·emb(p) + b  [+ W_c·global]  [+ W_g·(grid(p) ⊕ rel(p))]
    h      = act(mod_0(z0)); per block: x = norm(h), x = act(mod_l(W_l x + b_l)), h = h + x
    colors = out(W_out h + b_out)
"""
import torch

from fastinr.activations import apply_activation
from fastinr.contract import check_norm_pixels
from fastinr.inr_lowering import fused_spec
from fastinr.reference import modulate, normalize
from fastinr.running_stats import batch_reducer, decode_norm_stats, fold_decode_stats


def evaluate_at_points(decoder, codes: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Colors (B, out, P) of `decoder` (an INRDecoder) for codes (B, C) at xy (B, P, 2)."""
    batch, pixels = codes.shape[0], xy.shape[1]
    grid, global_code = codes.split([decoder.grid_floats, decoder.global_size], dim=1)
    z = decoder.embed_in(decoder.embed(xy))
    w_code = decoder.conditioner.code_weight(decoder)
    if w_code is not None:
        z = z + (global_code @ w_code.t())[:, None]
    blend = None
    if decoder.grid_in is not None:
        grid = grid.reshape(batch, decoder.grid.channels, decoder.grid.size, decoder.grid.size)
        if decoder.grid_blend == "area":   # the members run as 4 batches of images
            features, blend = decoder.grid.area_features(grid, xy)
            z = z.repeat(decoder.members, 1, 1) + decoder.grid_in(features)
            global_code = global_code.repeat(decoder.members, 1)
        else:
            z = z + decoder.grid_in(decoder.grid.sample(grid, xy))
    mods = decoder.conditioner.mods(decoder, global_code)
    spec = fused_spec(decoder)   # its modulation is the conditioning's
    act = lambda x: apply_activation(decoder.activation, x)  # noqa: E731
    h = act(modulate(z, spec, mods, 0))
    layer = 1
    for i, block in enumerate(decoder.blocks):
        x = _normalize(decoder, i, h, pixels) if decoder.norms is not None else h
        for linear in block:
            x = act(modulate(linear(x), spec, mods, layer))
            layer += 1
        h = h + x
    colors = output(decoder.output, decoder.linear_out(h))            # (B [x 4], P, out)
    if blend is not None:
        colors = (colors.reshape(decoder.members, batch, pixels, -1) * blend).sum(0)
    return colors.transpose(1, 2)                                       # (B, out, P)


def output(kind: str, x: torch.Tensor) -> torch.Tensor:
    """INRDecoder's output head: "linear" (x + 0.5), "sigmoid", "wide-sigmoid"."""
    if kind == "linear":
        return x + 0.5
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return torch.sigmoid(x) * 1.002 - 0.001


def _normalize(decoder, i: int, h: torch.Tensor, pixels: int) -> torch.Tensor:
    norm = decoder.norms[i]
    if decoder.norm == "layer":
        return norm(h)
    stats, running = decode_norm_stats(decoder, [norm], "batch" if decoder.norm == "batch-bn" else "image")
    check_norm_pixels(stats, h.shape[0], pixels)
    x, block_stats = normalize(h, norm.weight, norm.bias, norm.eps, stats, running[0] if running else None,
                               batch_reducer(decoder, stats))
    fold_decode_stats(decoder, [norm], [block_stats] if block_stats is not None else [], decoder.members)
    return x
