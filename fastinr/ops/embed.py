"""The decoder's input layer for training, with the positional embedding assembled in registers.

For B images of H x W (P = H*W pixels, row r = b * P + p):

    emb[p] = [x, y, sin(f1 x), sin(f1 y), ..., cos(f1 x), cos(f1 y), ...]   (E = 4F + 2 values)
    z[r]   = code_proj[b] + emb[p] @ W_pos^T (+ offset[r])   code_proj = codes @ W_code^T + b_in (B, N)
    h[r]   = act(z[r])

Backward (dz = dh * act'(z)): d code_proj[b] = Σ_{p} dz[b, p] (per image, per-tile partials),
d W_pos = Σ_r dz[r]^T emb[p] (split over tiles, partials, one torch sum), d offset = dz (its own
elementwise kernel, only when the offset needs it). (B*P, E) is never built.
"""
import functools

import torch
import triton
import triton.language as tl

from fastinr.embedding import pos_embedding, pos_embedding_size
from fastinr.ops.activation import activation, activation_grad
from fastinr.ops import config as config_module
from fastinr.ops.config import LaunchConfig, feature_block, unit_stride
from fastinr.ops.library import CONFIG_SCHEMA, call, config_args, define, register_autograd, split_config
from fastinr.ops.tiling import tile_rows


@triton.jit
def pixel_embedding(pix, pix_mask, width, x_table_ptr, y_table_ptr,
                     E: tl.constexpr, E_PAD: tl.constexpr):
    """(len(pix), E_PAD) float32 embedding of row-major pixel indices pix; zero past E and on rows
    where pix_mask is false.

    Even entries depend on the column only and odd ones on the row only, so they are gathered
    from two small tables (W, E) and (H, E) built by fastinr.embedding itself: bit-identical to
    the reference, and no trigonometry (whose slow path spills registers) in the kernels. A tile's
    rows past the image would read past the (H, E) table: they read row 0 and are zeroed (masking
    the loads per row instead made _embed_bwd_kernel spill registers)."""
    py = pix // width
    px = pix - py * width
    py = tl.where(pix_mask, py, 0)
    e = tl.arange(0, E_PAD)
    even = (e % 2 == 0) & (e < E)
    odd = (e % 2 == 1) & (e < E)
    from_x = tl.load(x_table_ptr + px[:, None] * E + e[None, :], mask=even[None, :], other=0.0)
    from_y = tl.load(y_table_ptr + py[:, None] * E + e[None, :], mask=odd[None, :], other=0.0)
    return tl.where(pix_mask[:, None], from_x + from_y, 0.0)


@triton.jit
def _embed_fwd_kernel(
    code_proj_ptr,   # (B, N) float32
    x_table_ptr,     # (W, E) float32 embedding of each column (even entries used)
    y_table_ptr,     # (H, E) float32 embedding of each row (odd entries used)
    w_pos_ptr,       # (N, E) float32, row stride stride_wpos
    z_ptr,           # (B*P, N) float32 pre-activation, written
    h_ptr,           # (B*P, N) float32 act(z), written
    offset_ptr,      # (B*P, N) float32 added to z, read when HAS_OFFSET
    stride_cp, stride_wpos,
    P, N, width, tiles_per_image,
    E: tl.constexpr, E_PAD: tl.constexpr, ACT: tl.constexpr, HAS_OFFSET: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    b, pix, pix_mask, rows = tile_rows(pid_m, tiles_per_image, P, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    emb = pixel_embedding(pix, pix_mask, width, x_table_ptr, y_table_ptr, E, E_PAD)
    e = tl.arange(0, E_PAD)
    w_pos = tl.load(w_pos_ptr + n[None, :] * stride_wpos + e[:, None],
                    mask=(e < E)[:, None] & n_mask[None, :], other=0.0)        # (E_PAD, BLOCK_N)
    acc = tl.dot(emb.to(DOT_DTYPE), w_pos.to(DOT_DTYPE), input_precision=PRECISION)
    z = acc + tl.load(code_proj_ptr + b * stride_cp + n, mask=n_mask, other=0.0)[None, :]
    mask = pix_mask[:, None] & n_mask[None, :]
    if HAS_OFFSET:
        z += tl.load(offset_ptr + rows[:, None] * N + n[None, :], mask=mask, other=0.0)
    tl.store(z_ptr + rows[:, None] * N + n[None, :], z, mask=mask)
    tl.store(h_ptr + rows[:, None] * N + n[None, :], activation(z, ACT), mask=mask)


@triton.jit
def _embed_bwd_kernel(
    dh_ptr,          # (B*P, N) float32
    z_ptr,           # (B*P, N) float32
    x_table_ptr,     # (W, E) float32
    y_table_ptr,     # (H, E) float32
    dcp_ptr,         # (B*T, N) float32 per-tile Σ dz, written
    dw_ptr,          # (S, N, E) float32 partial d W_pos, written
    stride_dh,
    P, N, width, tiles_per_image, n_tiles,
    E: tl.constexpr, E_PAD: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    e = tl.arange(0, E_PAD)
    acc = tl.zeros((BLOCK_N, E_PAD), dtype=tl.float32)
    for tile in range(split, n_tiles, splits):
        b, pix, pix_mask, rows = tile_rows(tile, tiles_per_image, P, BLOCK_M)
        mask = n_mask[:, None] & pix_mask[None, :]
        dh = tl.load(dh_ptr + rows[None, :] * stride_dh + n[:, None], mask=mask, other=0.0)
        z = tl.load(z_ptr + rows[None, :] * N + n[:, None], mask=mask, other=0.0)
        dz_t = dh * activation_grad(z, ACT)                                           # (BLOCK_N, BLOCK_M)
        # int32 is enough: (B*T, N) partials pass 2**31 only when dh passes 2**31 * BLOCK_M floats.
        tl.store(dcp_ptr + tile * N + n, tl.sum(dz_t, axis=1), mask=n_mask)
        emb = pixel_embedding(pix, pix_mask, width, x_table_ptr, y_table_ptr, E, E_PAD)
        acc = tl.dot(dz_t.to(DOT_DTYPE), emb.to(DOT_DTYPE), acc, input_precision=PRECISION)
    tl.store(dw_ptr + (split * N + n[:, None]).to(tl.int64) * E + e[None, :], acc,
             mask=n_mask[:, None] & (e < E)[None, :])


@triton.jit
def _dz_kernel(dh_ptr, z_ptr, dz_ptr, numel, N, stride_dh, ACT: tl.constexpr, BLOCK: tl.constexpr):
    """dz = dh * act'(z) over (rows, N), numel = rows * N: the input offset's gradient. Storing it
    from inside _embed_bwd_kernel made that kernel spill registers (tests/test_triton_aot.py).
    The flat index is int64: batch 8 at 1024^2 with hidden 256 is 2^31 elements."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    r = i // N
    dh = tl.load(dh_ptr + r * stride_dh + (i - r * N), mask=mask, other=0.0)
    z = tl.load(z_ptr + i, mask=mask, other=0.0)
    tl.store(dz_ptr + i, dh * activation_grad(z, ACT), mask=mask)


DZ_BLOCK = 1024


@functools.lru_cache(maxsize=32)
def embedding_tables(freqs: tuple, shape: tuple, device: torch.device):
    """(x_table (W, E), y_table (H, E)): the embedding of one row and of one column.

    Cached: building them is ~20 small torch ops per call, more launches than the kernels that
    read them. Constants of (freqs, shape, device), never written; made outside inference mode so
    that a table first built by a render can serve a training step too."""
    height, width = shape
    with torch.inference_mode(False):
        return (pos_embedding(1, width, freqs, device=device).contiguous(),
                pos_embedding(height, 1, freqs, device=device).contiguous())


def embed_meta(freqs, act: int, hidden: int, config: LaunchConfig) -> dict:
    e_size = pos_embedding_size(freqs)
    e_pad = feature_block(e_size, 1024)
    return dict(E=e_size, E_PAD=e_pad, ACT=act, **config.embed(hidden, e_pad))


@define("triton_embed_linear",
        f"(Tensor code_proj, Tensor w_pos, Tensor? offset, *, float[] freqs, int height, int width, "
        f"int act, {CONFIG_SCHEMA}) -> (Tensor, Tensor)")
def _embed_linear_op(code_proj, w_pos, offset, **call):
    """(h, z): z = code_proj[b] + emb @ W_pos^T (+ offset), h = act(z), for every pixel of every
    image."""
    config, call = split_config(call)
    freqs, shape = tuple(call["freqs"]), (call["height"], call["width"])
    batch, hidden = code_proj.shape
    pixels = shape[0] * shape[1]
    meta = embed_meta(freqs, call["act"], hidden, config)
    tiles = triton.cdiv(pixels, meta["BLOCK_M"])
    x_table, y_table = embedding_tables(freqs, shape, code_proj.device)
    z = config_module.kernel_output(batch * pixels, hidden, device=code_proj.device)
    h = config_module.kernel_output(batch * pixels, hidden, device=code_proj.device)
    grid = (batch * tiles, triton.cdiv(hidden, meta["BLOCK_N"]))
    with config_module.device_guard(z):
        _embed_fwd_kernel[grid](
            code_proj, x_table, y_table, w_pos, z, h, z if offset is None else offset,
            code_proj.stride(0), w_pos.stride(0), pixels, hidden, shape[1], tiles,
            HAS_OFFSET=offset is not None, **meta)
    return h, z


@_embed_linear_op.register_fake
def _(code_proj, w_pos, offset, **call):
    rows = code_proj.shape[0] * call["height"] * call["width"]
    return (code_proj.new_empty(rows, code_proj.shape[1], dtype=torch.float32),
            code_proj.new_empty(rows, code_proj.shape[1], dtype=torch.float32))


@define("triton_embed_linear_backward",
        f"(Tensor dh, Tensor z, *, float[] freqs, int height, int width, int act, bool need_dz, "
        f"{CONFIG_SCHEMA}) -> (Tensor, Tensor, Tensor)")
def _embed_linear_backward_op(dh, z, **call):
    """(d code_proj (B, hidden), d W_pos (hidden, E), dz (B*P, hidden) or an empty tensor)."""
    config, call = split_config(call)
    freqs, (height, width) = tuple(call["freqs"]), (call["height"], call["width"])
    rows, hidden = z.shape
    batch = rows // (height * width)
    meta = embed_meta(freqs, call["act"], hidden, config)
    tiles = triton.cdiv(height * width, meta["BLOCK_M"])
    x_table, y_table = embedding_tables(freqs, (height, width), z.device)
    n_blocks = triton.cdiv(hidden, meta["BLOCK_N"])
    n_tiles = batch * tiles
    splits = min(n_tiles, config.one_wave(meta["num_warps"], n_blocks))
    dcp = config_module.kernel_output(n_tiles, hidden, device=z.device)
    dw = config_module.kernel_output(splits, hidden, meta["E"], device=z.device)
    dz = z.new_empty(0)
    with config_module.device_guard(z):
        _embed_bwd_kernel[(n_blocks, splits)](
            dh, z, x_table, y_table, dcp, dw, dh.stride(0),
            height * width, hidden, width, tiles, n_tiles, **meta)
        if call["need_dz"]:
            dz = config_module.kernel_output(*z.shape, device=z.device)
            _dz_kernel[(triton.cdiv(z.numel(), DZ_BLOCK),)](
                dh, z, dz, z.numel(), hidden, dh.stride(0), ACT=meta["ACT"], BLOCK=DZ_BLOCK)
    return dcp.view(batch, tiles, hidden).sum(1), dw.sum(0), dz


@_embed_linear_backward_op.register_fake
def _(dh, z, **call):
    rows, hidden = z.shape
    batch = rows // (call["height"] * call["width"])
    return (z.new_empty(batch, hidden), z.new_empty(hidden, pos_embedding_size(call["freqs"])),
            z.new_empty(z.shape) if call["need_dz"] else z.new_empty(0))


def _setup_embed(ctx, inputs, keyword_only_inputs, output):
    _, z = output
    ctx.mark_non_differentiable(z)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(z)
    ctx.keywords = keyword_only_inputs


def _embed_grad(ctx, dh, _):
    z, = ctx.saved_tensors
    if dh is None:
        return None, None, None
    need_dz = ctx.needs_input_grad[2]
    dcp, dw, dz = call("triton_embed_linear_backward", unit_stride(dh.float()), z, need_dz=need_dz,
                       **ctx.keywords)
    return dcp, dw, dz if need_dz else None


register_autograd(_embed_linear_op, _embed_grad, _setup_embed)


def embed_linear(code_proj, w_pos, freqs, shape, act, config, offset=None):
    """h (B*P, hidden) = act(code_proj[b] + emb @ W_pos^T (+ offset)); `offset` (B*P, hidden)
    float32, contiguous, or None."""
    h, _ = call("triton_embed_linear", code_proj, w_pos, offset, freqs=[float(f) for f in freqs],
                height=int(shape[0]), width=int(shape[1]), act=act, **config_args(config))
    return h
