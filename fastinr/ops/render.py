"""Render: the whole decoder in one pass, writing only the colors (inference, eval mode).

For the flattened pixel index r of B images of H x W (b = r // P, p = r % P):

    emb   = pos_embedding(x_p, y_p)                      gathered from (W, E) and (H, E) tables
    h     = act(code_proj[b] + emb @ W_pos^T)            code_proj = codes @ W_code^T + b_in
    block i (width w_i): x = h * scale_i + shift_i       (BatchNorm folded from running stats)
                         x = act(x @ W_ij^T + b_ij)      j = 1..L
                         h = h + x   or   h = h ⊕ x
    colors[b, :, p] = act_out(h @ W_out^T + b_out)

A persistent grid of programs walks over tiles of BLOCK_P pixels (a tile may span images). Each
program stages its tile's hidden states in its own slice of a small global scratch buffer
(programs x BLOCK_P x (out_width + 2 * max block width), L2-resident), in chunks of
BLOCK_N x BLOCK_K, so memory is O(colors + programs * BLOCK_P * width): no (B*H*W, hidden) tensor.
"""
import torch
import triton
import triton.language as tl

from fastinr.activations import activation_code
from fastinr.contract import DecoderParams, DecoderSpec
from fastinr.ops.activation import activation
from fastinr.ops import config as config_module
from fastinr.ops.config import DOT_DTYPES, LaunchConfig, feature_block, unit_stride
from fastinr.ops.embed import pixel_embedding, embedding_tables
from fastinr.ops.library import CONFIG_SCHEMA, call, config_args, define, split_config

MAX_OUT_CHANNELS = 64       # the colors of a tile are one padded (BLOCK_P, OUT_PAD) tile


@triton.jit
def _folded_norm(x, scale_ptr, shift_ptr, cols, col_mask):
    """x * scale + shift over columns `cols`: BatchNorm folded from the running statistics."""
    scale = tl.load(scale_ptr + cols, mask=col_mask, other=0.0)
    shift = tl.load(shift_ptr + cols, mask=col_mask, other=0.0)
    return x * scale[None, :] + shift[None, :]


@triton.jit
def _dense_chunked(src_ptr, dst_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr,
                   SW: tl.constexpr, K: tl.constexpr, N: tl.constexpr,
                   PROLOGUE: tl.constexpr, RESIDUAL: tl.constexpr, ACT: tl.constexpr,
                   BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """dst[:, :N] (+)= act(prologue(src[:, :K]) @ W^T + b) for one tile staged in scratch.

    src/dst point at column 0 of a (BLOCK_P, SW) scratch slice; W is (N, K) row-major.
    """
    r = tl.arange(0, BLOCK_P)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < K
            x = tl.load(src_ptr + r[:, None] * SW + k[None, :], mask=k_mask[None, :], other=0.0)
            if PROLOGUE:
                x = _folded_norm(x, scale_ptr, shift_ptr, k, k_mask)
            w = tl.load(w_ptr + n[None, :] * K + k[:, None],
                        mask=k_mask[:, None] & n_mask[None, :], other=0.0)      # (BLOCK_K, BLOCK_N)
            acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION)
        bias = tl.load(b_ptr + n, mask=n_mask, other=0.0)
        y = activation(acc + bias[None, :], ACT)
        dst = dst_ptr + r[:, None] * SW + n[None, :]
        if RESIDUAL:
            y += tl.load(dst, mask=n_mask[None, :], other=0.0)
        tl.store(dst, y, mask=n_mask[None, :])
    tl.debug_barrier()  # the next layer's threads read what this one wrote


@triton.jit
def _merge_chunked(src_ptr, dst_ptr, scale_ptr, shift_ptr,
                   SW: tl.constexpr, N: tl.constexpr, PROLOGUE: tl.constexpr,
                   RESIDUAL: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """dst[:, :N] (+)= prologue(src[:, :N]): the block's output when no Linear can fuse it."""
    r = tl.arange(0, BLOCK_P)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        x = tl.load(src_ptr + r[:, None] * SW + n[None, :], mask=n_mask[None, :], other=0.0)
        if PROLOGUE:
            x = _folded_norm(x, scale_ptr, shift_ptr, n, n_mask)
        dst = dst_ptr + r[:, None] * SW + n[None, :]
        if RESIDUAL:
            x += tl.load(dst, mask=n_mask[None, :], other=0.0)
        tl.store(dst, x, mask=n_mask[None, :])
    tl.debug_barrier()


@triton.jit
def _render_fwd_kernel(
    out_ptr,          # (B, OUT, H, W) colors, written
    code_proj_ptr,    # (B, HIDDEN) float32: codes @ W_code^T + b_in
    x_table_ptr,      # (W, E) float32 embedding of each column (even entries used)
    y_table_ptr,      # (H, E) float32 embedding of each row (odd entries used)
    w_pos_ptr,        # (HIDDEN, E) float32: the embedding columns of W_in
    w_ptr,            # packed float32: W_ij (w_i, w_i) row-major, block-major then layer
    b_ptr,            # packed float32: b_ij (w_i,)
    scale_ptr,        # packed float32: folded BatchNorm scale per block (w_i,)
    shift_ptr,        # packed float32: folded BatchNorm shift per block (w_i,)
    w_out_ptr,        # (OUT, OUT_WIDTH) float32
    b_out_ptr,        # (OUT,) float32
    scratch_ptr,      # (programs, BLOCK_P, SW) float32 staging of hidden states
    stride_cp_b, stride_wpos_n, stride_wout_n,
    n_rows, pixels, width,
    HIDDEN: tl.constexpr, E: tl.constexpr, E_PAD: tl.constexpr,
    OUT: tl.constexpr, OUT_PAD: tl.constexpr, OUT_WIDTH: tl.constexpr, WMAX: tl.constexpr,
    NUM_BLOCKS: tl.constexpr, LAYERS: tl.constexpr, CONCAT_MASK: tl.constexpr,
    HAS_BN: tl.constexpr, ACT: tl.constexpr, ACT_OUT: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    SW: tl.constexpr = OUT_WIDTH + 2 * WMAX
    pid = tl.program_id(0)
    n_programs = tl.num_programs(0)
    h_ptr = scratch_ptr + pid.to(tl.int64) * (BLOCK_P * SW)   # residual stream, columns [0, OUT_WIDTH)
    r = tl.arange(0, BLOCK_P)
    o = tl.arange(0, OUT_PAD)
    n_tiles = tl.cdiv(n_rows, BLOCK_P)
    for tile in range(pid, n_tiles, n_programs):
        rows = tl.cast(tile, tl.int64) * BLOCK_P + r   # int64 before the product, not after
        row_mask = rows < n_rows
        img = rows // pixels
        pix = rows - img * pixels
        emb = pixel_embedding(pix, row_mask, width, x_table_ptr, y_table_ptr, E, E_PAD)
        e = tl.arange(0, E_PAD)

        # Input layer -> h[:, :HIDDEN].
        for n0 in range(0, HIDDEN, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            n_mask = n < HIDDEN
            w_pos = tl.load(w_pos_ptr + n[None, :] * stride_wpos_n + e[:, None],
                            mask=(e < E)[:, None] & n_mask[None, :], other=0.0)   # (E_PAD, BLOCK_N)
            acc = tl.dot(emb.to(DOT_DTYPE), w_pos.to(DOT_DTYPE), input_precision=PRECISION)
            cp = tl.load(code_proj_ptr + img[:, None] * stride_cp_b + n[None, :],
                         mask=row_mask[:, None] & n_mask[None, :], other=0.0)
            tl.store(h_ptr + r[:, None] * SW + n[None, :], activation(acc + cp, ACT), mask=n_mask[None, :])
        tl.debug_barrier()

        # Residual blocks. Layer j of a block reads h (j = 0) or ping-pong buffer (j-1)%2 and
        # writes buffer j%2; the last layer writes straight into h unless it would read h too.
        blk_w_ptr = w_ptr
        blk_b_ptr = b_ptr
        blk_scale_ptr = scale_ptr
        blk_shift_ptr = shift_ptr
        w = HIDDEN
        for i in tl.static_range(NUM_BLOCKS):
            concat = (CONCAT_MASK >> i) & 1
            for j in tl.static_range(LAYERS):
                src_col = 0 if j == 0 else OUT_WIDTH + ((j - 1) % 2) * WMAX
                dst_col = OUT_WIDTH + (j % 2) * WMAX
                residual = False
                if j == LAYERS - 1:
                    if concat == 1:
                        dst_col = w
                    elif LAYERS >= 2:
                        dst_col = 0
                        residual = True
                _dense_chunked(h_ptr + src_col, h_ptr + dst_col, blk_w_ptr + j * w * w,
                               blk_b_ptr + j * w, blk_scale_ptr, blk_shift_ptr,
                               SW, w, w, HAS_BN and j == 0, residual, ACT,
                               BLOCK_P, BLOCK_N, BLOCK_K, DOT_DTYPE, PRECISION)
            if LAYERS == 0:
                _merge_chunked(h_ptr, h_ptr + concat * w, blk_scale_ptr, blk_shift_ptr,
                               SW, w, HAS_BN, concat == 0, BLOCK_P, BLOCK_N)
            elif LAYERS == 1:
                if concat == 0:
                    _merge_chunked(h_ptr + OUT_WIDTH, h_ptr, blk_scale_ptr, blk_shift_ptr,
                                   SW, w, False, True, BLOCK_P, BLOCK_N)
            blk_w_ptr += LAYERS * w * w
            blk_b_ptr += LAYERS * w
            blk_scale_ptr += w
            blk_shift_ptr += w
            if concat == 1:
                w = w * 2

        # Output layer -> colors[b, :, p].
        acc = tl.zeros((BLOCK_P, OUT_PAD), dtype=tl.float32)
        for k0 in range(0, OUT_WIDTH, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            k_mask = k < OUT_WIDTH
            hk = tl.load(h_ptr + r[:, None] * SW + k[None, :], mask=k_mask[None, :], other=0.0)
            w_out = tl.load(w_out_ptr + o[None, :] * stride_wout_n + k[:, None],
                            mask=k_mask[:, None] & (o < OUT)[None, :], other=0.0)   # (BLOCK_K, OUT_PAD)
            acc = tl.dot(hk.to(DOT_DTYPE), w_out.to(DOT_DTYPE), acc, input_precision=PRECISION)
        b_out = tl.load(b_out_ptr + o, mask=o < OUT, other=0.0)
        colors = activation(acc + b_out[None, :], ACT_OUT)
        # int64 throughout: OUT * pixels passes 2**31 for a 3-channel render of 2**30 pixels.
        out = out_ptr + (img[:, None] * OUT + o[None, :]) * pixels + pix[:, None]
        tl.store(out, colors, mask=row_mask[:, None] & (o < OUT)[None, :])
        tl.debug_barrier()  # the next tile overwrites h


def render_meta(spec, config: LaunchConfig) -> dict:
    """The constexpr meta-parameters (and warps) of _render_fwd_kernel for a DecoderSpec."""
    widths = spec.block_widths
    block = feature_block(max((spec.hidden, *widths)), 32)   # 64 spills on deep decoders
    return dict(
        HIDDEN=spec.hidden, E=spec.embedding_size, E_PAD=feature_block(spec.embedding_size, 1024),
        OUT=spec.out_channels, OUT_PAD=feature_block(spec.out_channels, 1024),
        OUT_WIDTH=spec.out_width, WMAX=max(widths) if widths else 0,
        NUM_BLOCKS=spec.num_blocks, LAYERS=spec.layers_per_block,
        CONCAT_MASK=sum(1 << i for i, c in enumerate(spec.concat) if c),
        HAS_BN=bool(spec.batch_norm), ACT=activation_code(spec.activation),
        ACT_OUT=activation_code(spec.activation_out),
        BLOCK_P=config.block_m or 64, BLOCK_N=block, BLOCK_K=block,
        DOT_DTYPE=DOT_DTYPES[config.dot_dtype], PRECISION=config.precision,
        # Exact fp32 dots on 8 warps spilled for wide or layer-less decoders under Triton 3.6.
        num_warps=8 if config.wide else 4, num_stages=1)


def render_forward(codes, params, spec, shape, running, config: LaunchConfig):
    """Colors (B, out, H, W) in one pass; BatchNorm (if any) uses `running` statistics. Runs as
    the custom op fastinr::triton_render (inference only: it has no backward)."""
    return call("triton_render", codes, params.flat(), [t for pair in running for t in pair],
                **spec.op_fields(), height=int(shape[0]), width=int(shape[1]), **config_args(config))


@define("triton_render", f"(Tensor codes, Tensor[] params, Tensor[] running, *, {DecoderSpec.OP_SCHEMA}, "
                         f"int height, int width, {CONFIG_SCHEMA}) -> Tensor")
def _render_op(codes, params, running, **call):
    config, call = split_config(call)
    spec = DecoderSpec.from_op_fields(call)
    return _render(codes, DecoderParams.from_flat(spec, params), spec, (call["height"], call["width"]),
                   list(zip(running[0::2], running[1::2])), config)


@_render_op.register_fake
def _(codes, params, running, **call):
    return codes.new_empty(codes.shape[0], call["out_channels"], call["height"], call["width"],
                           dtype=torch.float32)


def _render(codes, params, spec, shape, running, config: LaunchConfig):
    height, width = shape
    batch, device = codes.shape[0], codes.device
    f32 = dict(device=device, dtype=torch.float32)
    with torch.no_grad():
        w_code, w_pos = params.w_in[:, :spec.code_size], params.w_in[:, spec.code_size:]
        code_proj = torch.addmm(params.b_in, codes, w_code.t()).float().contiguous()
        w_pos = unit_stride(w_pos)
        flat_w = [w.reshape(-1) for ws in params.weights for w in ws]
        flat_b = [b.reshape(-1) for bs in params.biases for b in bs]
        packed_w = torch.cat(flat_w).contiguous() if flat_w else torch.zeros(1, **f32)
        packed_b = torch.cat(flat_b).contiguous() if flat_b else torch.zeros(1, **f32)
        if spec.batch_norm and spec.num_blocks:
            scales, shifts = [], []
            for gamma, beta, (mean, var) in zip(params.norm_weight, params.norm_bias, running):
                scale = gamma * torch.rsqrt(var.float() + spec.eps)
                scales.append(scale)
                shifts.append(beta - mean.float() * scale)
            scale, shift = torch.cat(scales).contiguous(), torch.cat(shifts).contiguous()
        else:
            scale = shift = torch.zeros(1, **f32)
        x_table, y_table = embedding_tables(tuple(float(f) for f in spec.freqs), tuple(shape), device)
        w_out, b_out = params.w_out.contiguous(), params.b_out.contiguous()

    meta = render_meta(spec, config)
    n_rows = batch * height * width
    n_tiles = triton.cdiv(n_rows, meta["BLOCK_P"])
    # One persistent program per SM keeps the scratch (sm_count * BLOCK_P * (out_width + 2 *
    # widest block) floats: 26 MiB for the seed decoder on an H100) within L2.
    programs = max(1, min(n_tiles, config.sm_count))
    scratch = config_module.kernel_output(programs, meta["BLOCK_P"],
                                          meta["OUT_WIDTH"] + 2 * meta["WMAX"], device=device)
    colors = config_module.kernel_output(batch, spec.out_channels, height, width, device=device)
    with config_module.device_guard(colors):
        _render_fwd_kernel[(programs,)](
            colors, code_proj, x_table, y_table, w_pos, packed_w, packed_b, scale, shift, w_out,
            b_out, scratch,
            code_proj.stride(0), w_pos.stride(0), w_out.stride(0),
            n_rows, height * width, width,
            **meta)
    return colors
