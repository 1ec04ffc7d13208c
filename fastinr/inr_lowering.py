"""INRDecoder lowered to the decode contract (fastinr.contract), so every backend runs it fused.

`lower(decoder, codes, shape, jitter)` gives the contract's codes, spec, params, mods and
input_offset for colors on the pixel grid of `shape`. What the kernels do not compute themselves
enters as the input offset (a fixed basis per pixel times cells per image):
  * the local latent grid: projected cells per image, fixed bilinear weights per pixel (with
    grid_blend="area": the 4 members run as 4 batches of images in one call, each member's
    one-hot cell weights a block of the basis, its cells block-diagonal; `blend` then holds the
    members' weights, applied to the colors by `blend_members`);
  * the Gaussian features (the kernels embed only (x, y)): the features per pixel, W_e's columns;
  * a sub-pixel `jitter` of the query points (one offset per pixel, (H, W, 2) shared by the
    batch or (B, H, W, 2) per image; then the bases above are per image too):
    W_e·emb(p + jitter) = [the kernels' embedding of p] + W_e·(emb(p + jitter) - emb(p)).
    Query points (P, 2) or (B, P, 2) are a 1 x P grid so jittered (INRDecoder's `coords`).
A new conditioning that lowers to the contract is a class in fastinr/conditioning.py; this file
only asks it for its code weight and modulation.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from fastinr.contract import DecoderParams, DecoderSpec, InputOffset, concat_offsets
from fastinr.embedding import embed_coordinates, pixel_coordinates, pos_embedding_size
from fastinr.latent_grid import AREA_MEMBERS


class Lowered(NamedTuple):
    codes: torch.Tensor                     # (B [x 4 members], C) the contract's codes
    params: DecoderParams
    spec: DecoderSpec
    mods: Optional[torch.Tensor]            # per-image shift / FiLM constants, or None
    input_offset: Optional[InputOffset]
    blend: Optional[torch.Tensor]           # (4, 1 or B, 1, H, W) member weights (grid_blend="area")


def lower(decoder, codes: torch.Tensor, shape: Tuple[int, int],
          jitter: Optional[torch.Tensor] = None) -> Lowered:
    """The decode contract's arguments for `decoder` (an INRDecoder) and codes (B, code_size)."""
    grid_part, blend = None, None
    if decoder.grid_in is not None:
        grid, codes = codes.split([decoder.grid_floats, decoder.global_size], dim=1)
        if decoder.grid_blend == "area":
            grid_part, blend = area_grid_offset(decoder, grid, shape, jitter)
        else:
            grid_part = grid_offset(decoder, grid, shape, jitter)
    # Every area member is a copy of the batch but for its grid part.
    embedding_part = embedding_offset(decoder, codes.shape[0] * decoder.members, shape, codes, jitter)
    codes = codes.repeat(decoder.members, 1) if decoder.members > 1 else codes
    mods = decoder.conditioner.mods(decoder, codes)   # (B, M, k, hidden) or None
    if decoder.conditioner.code_weight(decoder) is None:
        codes = codes[:, :0]
    return Lowered(codes, fused_params(decoder), fused_spec(decoder), mods,
                   concat_offsets([grid_part, embedding_part]), blend)


def blend_members(colors: torch.Tensor, blend: Optional[torch.Tensor]) -> torch.Tensor:
    """The area members' colors (4B, out, H, W) blended into (B, out, H, W) by `blend` (4, 1 or B,
    1, H, W); as is without."""
    if blend is None:
        return colors
    return (colors.reshape(blend.shape[0], -1, *colors.shape[1:]) * blend).sum(0)


def fused_spec(decoder) -> DecoderSpec:
    norms = decoder.norms
    return DecoderSpec(
        code_size=decoder.global_size if decoder.conditioner.code_weight(decoder) is not None else 0,
        out_channels=decoder.out_channels, hidden=decoder.hidden,
        concat=(False,) * len(decoder.blocks),
        layers_per_block=len(decoder.blocks[0]) if len(decoder.blocks) else 0,
        freqs=decoder.freqs, batch_norm=norms is not None and decoder.norm != "layer",
        layer_norm=decoder.norm == "layer", activation=decoder.activation,
        activation_out="none" if decoder.output == "linear" else "sigmoid",
        eps=norms[0].eps if norms is not None and len(norms) else 1e-5,
        modulation=decoder.conditioner.modulation)


def fused_params(decoder) -> DecoderParams:
    """The decoder's tensors in the contract's layout (differentiable views and cats): the first
    layer takes code ⊕ embedding, and the linear output's +0.5 is its bias's."""
    norms = list(decoder.norms) if decoder.norms is not None else []
    b_out = decoder.linear_out.bias + 0.5 if decoder.output == "linear" else decoder.linear_out.bias
    w_embed = decoder.embed_in.weight[:, :pos_embedding_size(decoder.freqs)]  # the rest: embedding_offset
    w_code = decoder.conditioner.code_weight(decoder)
    w_in = torch.cat([w_code, w_embed], dim=1) if w_code is not None else w_embed
    return DecoderParams(
        w_in=w_in, b_in=decoder.embed_in.bias,
        norm_weight=tuple(n.weight for n in norms), norm_bias=tuple(n.bias for n in norms),
        weights=tuple(tuple(lin.weight for lin in block) for block in decoder.blocks),
        biases=tuple(tuple(lin.bias for lin in block) for block in decoder.blocks),
        w_out=decoder.linear_out.weight, b_out=b_out)


def query_points(shape: Tuple[int, int], jitter: Optional[torch.Tensor],
                 like: torch.Tensor) -> torch.Tensor:
    """(H*W, 2): the pixel centres of `shape`, moved by `jitter` (H, W, 2) when given; (B, H*W, 2)
    with a per-image jitter (B, H, W, 2)."""
    xy = pixel_coordinates(*shape, device=like.device, dtype=like.dtype)
    return xy if jitter is None else xy + jitter.reshape(*jitter.shape[:-3], -1, 2)


def grid_offset(decoder, grid: torch.Tensor, shape: Tuple[int, int],
                jitter: Optional[torch.Tensor] = None) -> InputOffset:
    """grid_in(grid sampled at the pixel centres [+ jitter]) in the contract's low-rank form.

    Bilinear sampling at fixed points is linear in the cells, one weight per axis: so the cells
    are projected once per image (B, g*g, hidden) and each pixel blends them with its fixed
    weights, the basis (H, W, g*g) ((B, H, W, g*g) with a per-image jitter); the relative
    position's projection rides along as two more basis columns (the position) and cells (the
    grid Linear's weights for it)."""
    g = decoder.grid.size
    xy = query_points(shape, jitter, grid)
    lead = (*xy.shape[:-2], *shape)                                # ([B,] H, W)
    flat = xy.reshape(-1, 2)
    weight_x, rel_x = decoder.grid.cell_weights(flat[:, 0])        # (n, g), (n,)
    weight_y, rel_y = decoder.grid.cell_weights(flat[:, 1])
    bilinear = (weight_y[:, :, None] * weight_x[:, None, :]).reshape(*lead, g * g)
    rel = torch.stack([rel_x, rel_y], dim=-1).reshape(*lead, 2)
    return InputOffset(torch.cat([bilinear, rel], dim=-1).contiguous(), _projected_cells(decoder, grid))


def area_grid_offset(decoder, grid: torch.Tensor, shape: Tuple[int, int],
                     jitter: Optional[torch.Tensor] = None) -> Tuple[InputOffset, torch.Tensor]:
    """grid_blend="area": the 4 members' grid_in(cell values ⊕ rel) as one input offset for a
    batch of 4B images (member-major), and the members' blend weights (4, 1, 1, H, W), or
    (4, B, 1, H, W) with a per-image jitter (the basis (B, H, W, K) then repeats per member).

    Member m's pixels weight one cell each (a one-hot basis block); its images' cells are the
    projected cells in block m and zero elsewhere, so each member sees only its own block."""
    g, batch = decoder.grid.size, grid.shape[0]
    xy = query_points(shape, jitter, grid)
    lead = (*xy.shape[:-2], *shape)                                # ([B,] H, W)
    cells = _projected_cells(decoder, grid)                                    # (B, K, hidden)
    bases, weights = [], []
    for index, rel, weight in decoder.grid.area_members(xy):
        bases.append(torch.cat([F.one_hot(index, g * g).to(xy.dtype), rel], dim=-1))
        weights.append(weight)
    members = torch.eye(AREA_MEMBERS, dtype=cells.dtype, device=cells.device)
    block_cells = members[:, None, :, None, None] * cells[None, :, None]      # (4, B, 4, K, hidden)
    basis = torch.cat(bases, dim=-1).reshape(*lead, -1)
    if basis.ndim == 4:   # per image: the same basis for each member's copy of the batch
        basis = basis.repeat(AREA_MEMBERS, 1, 1, 1)
    blend = torch.stack(weights).reshape(AREA_MEMBERS, -1, 1, *shape)
    basis = basis.contiguous()
    return InputOffset(basis, block_cells.reshape(AREA_MEMBERS * batch, -1, decoder.hidden)), blend


def _projected_cells(decoder, grid: torch.Tensor) -> torch.Tensor:
    """(B, g*g + 2, hidden): grid_in's projection of every cell, then grid_in's weights for the
    relative position (the cells of the basis columns that hold it)."""
    c = decoder.grid.channels
    w_sample, w_rel = decoder.grid_in.weight.split([c, 2], dim=1)   # (hidden, c), (hidden, 2)
    cells = grid.reshape(grid.shape[0], c, -1).transpose(1, 2) @ w_sample.t()  # (B, g*g, hidden)
    return torch.cat([cells, w_rel.t().expand(grid.shape[0], -1, -1)], dim=1)


def embedding_offset(decoder, batch: int, shape: Tuple[int, int], like: torch.Tensor,
                     jitter: Optional[torch.Tensor] = None) -> Optional[InputOffset]:
    """The part of W_e·emb(p + jitter) that the kernels do not compute, as an input offset whose
    cells are W_e's columns (so W_e's gradient flows through them); None if no part.

    The kernels embed the pixel centres p with decoder.freqs: all of the seed and log
    embeddings, only (x, y) of the Gaussian one. So the basis holds the Gaussian features at p,
    and with a jitter emb(p + jitter) minus what the kernels embed at p (per image with a
    per-image jitter, repeated for the `batch` / B copies of the batch that area members are)."""
    own = pos_embedding_size(decoder.freqs)    # the kernels' columns of emb
    if jitter is None and own == decoder.embed_in.in_features:
        return None
    centres = query_points(shape, None, like)
    if jitter is None:
        basis, weight = decoder.embed(centres)[:, own:], decoder.embed_in.weight[:, own:]
    else:
        moved = decoder.embed(query_points(shape, jitter, like))
        own_part = moved[..., :own] - embed_coordinates(centres, decoder.freqs)
        basis, weight = torch.cat([own_part, moved[..., own:]], dim=-1), decoder.embed_in.weight
    cells = weight.t().expand(batch, -1, -1).contiguous()                  # (B, E, hidden)
    basis = basis.reshape(*basis.shape[:-2], *shape, -1)
    if basis.ndim == 4 and basis.shape[0] != batch:
        basis = basis.repeat(batch // basis.shape[0], 1, 1, 1)
    return InputOffset(basis.contiguous(), cells)
