"""Per-image modulation of a layer's pre-activation, with the activation and the block's residual.

For B images of P pixels (row r = b * P + p), z (B*P, N) the output of a Linear kernel run without
activation, and the layer's mods (B, k, N) (fastinr.reference: "shift" k = 1, "film" k = 2):

    zm  = z + s[b]                (shift: s = mods[:, 0])
          z * (1 + g[b]) + s[b]   (film:  g = mods[:, 0], s = mods[:, 1])
    out = act(zm)  (+ r, the block input, on a block's last layer)

Backward, dzm = dout * act'(zm) recomputed from z: dz = dzm (* (1 + g[b])); per image
d s[b] = Σ_p dzm, d g[b] = Σ_p dzm * z (per-tile partials, one torch sum); d r = dout.
One elementwise pass each way on top of the Linear kernels; the pre-activation z is the Linear's
output, so nothing more is stored.
"""
import torch
import triton
import triton.language as tl

from fastinr.ops.activation import activation, activation_grad
from fastinr.ops import config as config_module
from fastinr.ops.config import LaunchConfig, unit_stride
from fastinr.ops.library import CONFIG_SCHEMA, call, config_args, define, register_autograd, split_config
from fastinr.ops.tiling import tile_rows


@triton.jit
def _load_mods(mods_ptr, b, n, n_mask, stride_mb, stride_mk, FILM: tl.constexpr):
    """(scale g, shift s) of image b at columns n (g is 0 for shift)."""
    base = mods_ptr + b * stride_mb + n
    if FILM:
        g = tl.load(base, mask=n_mask, other=0.0)
        s = tl.load(base + stride_mk, mask=n_mask, other=0.0)
    else:
        g = tl.zeros(n.shape, tl.float32)
        s = tl.load(base, mask=n_mask, other=0.0)
    return g, s


@triton.jit
def _modulate_fwd_kernel(
    z_ptr,        # (B*P, N) float32 pre-activation
    mods_ptr,     # (B, k, N) float32 this layer's mods, unit column stride
    res_ptr,      # (B*P, N) float32 residual (HAS_RES)
    out_ptr,      # (B*P, N) float32, written
    stride_z, stride_mb, stride_mk, stride_r,
    P, N, tiles_per_image,
    FILM: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    b, local, row_mask, rows = tile_rows(tl.program_id(0), tiles_per_image, P, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    mask = row_mask[:, None] & n_mask[None, :]
    z = tl.load(z_ptr + rows[:, None] * stride_z + n[None, :], mask=mask, other=0.0)
    g, s = _load_mods(mods_ptr, b, n, n_mask, stride_mb, stride_mk, FILM)
    y = activation(z * (1.0 + g[None, :]) + s[None, :], ACT)
    if HAS_RES:
        y += tl.load(res_ptr + rows[:, None] * stride_r + n[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + rows[:, None] * N + n[None, :], y, mask=mask)


@triton.jit
def _modulate_bwd_kernel(
    dout_ptr,     # (B*P, N) float32 gradient of out
    z_ptr,        # (B*P, N) float32 pre-activation
    mods_ptr,     # (B, k, N) float32
    dz_ptr,       # (B*P, N) float32, written
    dmods_ptr,    # (B*T, k, N) float32 per-tile partial d mods, written
    stride_do, stride_z, stride_mb, stride_mk, stride_p,
    P, N, tiles_per_image,
    FILM: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    tile = tl.program_id(0)
    b, local, row_mask, rows = tile_rows(tile, tiles_per_image, P, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    mask = row_mask[:, None] & n_mask[None, :]
    dout = tl.load(dout_ptr + rows[:, None] * stride_do + n[None, :], mask=mask, other=0.0)
    z = tl.load(z_ptr + rows[:, None] * stride_z + n[None, :], mask=mask, other=0.0)
    g, s = _load_mods(mods_ptr, b, n, n_mask, stride_mb, stride_mk, FILM)
    dzm = dout * activation_grad(z * (1.0 + g[None, :]) + s[None, :], ACT)     # 0 on masked rows
    tl.store(dz_ptr + rows[:, None] * N + n[None, :], dzm * (1.0 + g[None, :]), mask=mask)
    partial = dmods_ptr + tile.to(tl.int64) * stride_p + n
    if FILM:
        tl.store(partial, tl.sum(dzm * z, axis=0), mask=n_mask)
        tl.store(partial + N, tl.sum(dzm, axis=0), mask=n_mask)
    else:
        tl.store(partial, tl.sum(dzm, axis=0), mask=n_mask)


@define("triton_modulate",
        f"(Tensor z, Tensor mods, Tensor? residual, *, bool film, int act, int pixels, {CONFIG_SCHEMA}) "
        "-> Tensor")
def _modulate_op(z, mods, residual, **call):
    """out = act(z (* (1 + g[b])) + s[b]) (+ residual); see the module docstring."""
    config, call = split_config(call)
    rows, width = z.shape
    pixels = call["pixels"]
    meta = config.modulate(width)
    tiles = triton.cdiv(pixels, meta["BLOCK_M"])
    out = config_module.kernel_output(rows, width, device=z.device)
    res = unit_stride(residual.float()) if residual is not None else z
    with config_module.device_guard(z):
        _modulate_fwd_kernel[(rows // pixels * tiles, triton.cdiv(width, meta["BLOCK_N"]))](
            z, mods, res, out, z.stride(0), mods.stride(0), mods.stride(1), res.stride(0),
            pixels, width, tiles, FILM=call["film"], HAS_RES=residual is not None, ACT=call["act"],
            **meta)
    return out


@_modulate_op.register_fake
def _(z, mods, residual, **call):
    return z.new_empty(z.shape, dtype=torch.float32)


@define("triton_modulate_backward",
        f"(Tensor dout, Tensor z, Tensor mods, *, bool film, int act, int pixels, {CONFIG_SCHEMA}) "
        "-> (Tensor, Tensor)")
def _modulate_backward_op(dout, z, mods, **call):
    """(dz (B*P, N), dmods (B, k, N))."""
    config, call = split_config(call)
    rows, width = z.shape
    pixels = call["pixels"]
    batch = rows // pixels
    meta = config.modulate(width)
    tiles = triton.cdiv(pixels, meta["BLOCK_M"])
    dz = config_module.kernel_output(rows, width, device=z.device)
    partial = config_module.kernel_output(batch * tiles, mods.shape[1], width, device=z.device)
    with config_module.device_guard(z):
        _modulate_bwd_kernel[(batch * tiles, triton.cdiv(width, meta["BLOCK_N"]))](
            dout, z, mods, dz, partial, dout.stride(0), z.stride(0), mods.stride(0),
            mods.stride(1), partial.stride(0), pixels, width, tiles, FILM=call["film"],
            ACT=call["act"], **meta)
    return dz, partial.view(batch, tiles, mods.shape[1], width).sum(1)


@_modulate_backward_op.register_fake
def _(dout, z, mods, **call):
    return z.new_empty(z.shape, dtype=torch.float32), mods.new_empty(mods.shape, dtype=torch.float32)


def _setup_modulate(ctx, inputs, keyword_only_inputs, output):
    z, mods, residual = inputs
    ctx.save_for_backward(z, mods)
    ctx.keywords = keyword_only_inputs
    ctx.has_res = residual is not None


def _modulate_grad(ctx, dout):
    z, mods = ctx.saved_tensors
    dout = unit_stride(dout.float())
    dz, dmods = call("triton_modulate_backward", dout, z, mods, **ctx.keywords)
    return dz, dmods, dout if ctx.has_res else None


register_autograd(_modulate_op, _modulate_grad, _setup_modulate)


def modulate_act(z, mods, film: bool, act: int, pixels: int, config: LaunchConfig, residual=None):
    """z (B*P, N) float32 with unit column stride; mods (B, k, N) this layer's (k = 2 for FiLM)."""
    return call("triton_modulate", z, unit_stride(mods.float()), residual, film=film, act=act,
                pixels=pixels, **config_args(config))
