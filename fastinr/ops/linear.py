"""One decoder Linear for training: BatchNorm-apply prologue, bias + activation epilogue, and the
block's residual add or concat fused in; forward and backward kernels, registered as the custom
ops fastinr::triton_linear and fastinr::triton_linear_backward (ops/library.py).

Rows are grouped (G groups of R rows: one group per image for per-image statistics, else one):

    xn  = (x - mean[g]) * scale[g] + beta            (only with a norm; scale = gamma * rstd)
    z   = xn @ W^T + b                               x (G*R, K), W (N, K)  -> z (G*R, N)
    y   = act(z)
    out = y  |  r + y  |  r ⊕ y                      RES_NONE | RES_ADD | RES_CONCAT (r: block input)

Backward, with dz = dy * act'(z) fused into every kernel that reads dy:
    dx = (dz @ W) * scale[g];  per group: d mean = -scale * Σ dz@W,  d scale = Σ (dz@W) (x - mean),
                               d beta = Σ dz@W over all groups (per-tile partials of all three
                               in one buffer, one torch sum)
    dW = Σ_rows dz^T xn,  db = Σ_rows dz                (split over rows; the partials of both
                                                         in one buffer, one torch sum, none for
                                                         one split)
"""
import torch
import triton
import triton.language as tl

from fastinr.ops.activation import activation, activation_grad
from fastinr.ops import config as config_module
from fastinr.ops.config import LaunchConfig, unit_stride
from fastinr.ops.library import CONFIG_SCHEMA, call, config_args, define, register_autograd, split_config
from fastinr.ops.tiling import tile_rows

# The residual of a block's last Linear: out = y | r + y | r ⊕ y (the `res_mode` argument), and
# the same codes as compile-time constants for the kernel.
RES_NONE, RES_ADD, RES_CONCAT = 0, 1, 2
_RES_ADD, _RES_CONCAT = tl.constexpr(RES_ADD), tl.constexpr(RES_CONCAT)


@triton.jit
def _linear_fwd_kernel(
    x_ptr,        # (G*R, K) float32 input
    w_ptr,        # (N, K) float32 weight
    b_ptr,        # (N,) float32 bias
    mean_ptr,     # (G, K) float32 norm mean (HAS_NORM)
    scale_ptr,    # (G, K) float32 gamma * rstd (HAS_NORM)
    beta_ptr,     # (K,) float32 norm bias (HAS_NORM)
    res_ptr,      # (G*R, N) float32 residual (RES_MODE != RES_NONE)
    z_ptr,        # (G*R, N) float32 pre-activation, written (STORE_Z)
    out_ptr,      # (G*R, N) or (G*R, 2N) output, written
    stride_x, stride_r, stride_z, stride_o,
    R, K, N, tiles_per_group,
    HAS_NORM: tl.constexpr, RES_MODE: tl.constexpr, STORE_Z: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g, local, row_mask, rows = tile_rows(pid_m, tiles_per_group, R, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_mask = k < K
        x = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        if HAS_NORM:
            mean = tl.load(mean_ptr + g * K + k, mask=k_mask, other=0.0)
            scale = tl.load(scale_ptr + g * K + k, mask=k_mask, other=0.0)
            beta = tl.load(beta_ptr + k, mask=k_mask, other=0.0)
            x = (x - mean[None, :]) * scale[None, :] + beta[None, :]
        w = tl.load(w_ptr + n[None, :] * K + k[:, None],
                    mask=k_mask[:, None] & n_mask[None, :], other=0.0)         # (BLOCK_K, BLOCK_N)
        acc = tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION)
    z = acc + tl.load(b_ptr + n, mask=n_mask, other=0.0)[None, :]
    mask = row_mask[:, None] & n_mask[None, :]
    if STORE_Z:
        tl.store(z_ptr + rows[:, None] * stride_z + n[None, :], z, mask=mask)
    y = activation(z, ACT)
    out = out_ptr + rows[:, None] * stride_o + n[None, :]
    if RES_MODE == _RES_ADD:
        y += tl.load(res_ptr + rows[:, None] * stride_r + n[None, :], mask=mask, other=0.0)
    if RES_MODE == _RES_CONCAT:
        r = tl.load(res_ptr + rows[:, None] * stride_r + n[None, :], mask=mask, other=0.0)
        tl.store(out, r, mask=mask)
        out += N
    tl.store(out, y, mask=mask)


@triton.jit
def _linear_bwd_dx_kernel(
    dy_ptr,       # (G*R, N) float32 gradient of y = act(z)
    z_ptr,        # (G*R, N) float32 pre-activation
    w_ptr,        # (N, K) float32 weight
    x_ptr,        # (G*R, K) float32 input (HAS_NORM)
    mean_ptr,     # (G, K) (HAS_NORM)
    scale_ptr,    # (G, K) (HAS_NORM)
    dx_ptr,       # (G*R, K) float32, written
    stats_ptr,    # (3, G*T, K) float32 per-tile -scale Σ dz@W, Σ (dz@W)(x - mean), Σ dz@W,
                  # written (HAS_NORM)
    stride_dy, stride_z, stride_x, stride_dx, stride_stats,
    R, K, N, tiles_per_group,
    HAS_NORM: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    g, local, row_mask, rows = tile_rows(pid_m, tiles_per_group, R, BLOCK_M)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k < K
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        mask = row_mask[:, None] & n_mask[None, :]
        dy = tl.load(dy_ptr + rows[:, None] * stride_dy + n[None, :], mask=mask, other=0.0)
        z = tl.load(z_ptr + rows[:, None] * stride_z + n[None, :], mask=mask, other=0.0)
        dz = dy * activation_grad(z, ACT)
        w = tl.load(w_ptr + n[:, None] * K + k[None, :],
                    mask=n_mask[:, None] & k_mask[None, :], other=0.0)         # (BLOCK_N, BLOCK_K)
        acc = tl.dot(dz.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION)
    mask = row_mask[:, None] & k_mask[None, :]
    if HAS_NORM:
        mean = tl.load(mean_ptr + g * K + k, mask=k_mask, other=0.0)
        scale = tl.load(scale_ptr + g * K + k, mask=k_mask, other=0.0)
        x = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=mask, other=0.0)
        centered = tl.where(mask, x - mean[None, :], 0.0)
        # Rows past the group are zero in acc (their dy was masked), so the sums are exact.
        s1 = tl.sum(acc, axis=0)
        # int32 is enough: the partials are (rows / BLOCK_M) x K, under 2**31 until the (rows, K)
        # activations pass 2**31 * BLOCK_M floats (int64 here cost 12 registers).
        stats = stats_ptr + pid_m * K + k
        tl.store(stats, -scale * s1, mask=k_mask)
        tl.store(stats + stride_stats, tl.sum(acc * centered, axis=0), mask=k_mask)
        tl.store(stats + 2 * stride_stats, s1, mask=k_mask)
        acc = acc * scale[None, :]
    tl.store(dx_ptr + rows[:, None] * stride_dx + k[None, :], acc, mask=mask)


@triton.jit
def _linear_bwd_dw_kernel(
    dy_ptr,       # (M, N) float32 gradient of y
    z_ptr,        # (M, N) float32 pre-activation
    x_ptr,        # (M, K) float32 input
    mean_ptr,     # (G, K) (HAS_NORM)
    scale_ptr,    # (G, K) (HAS_NORM)
    beta_ptr,     # (K,) (HAS_NORM)
    dw_ptr,       # (S, N*K) float32 partial weight gradients, row stride stride_split, written
    db_ptr,       # (S, N) float32 partial bias gradients, row stride stride_split, written
    stride_dy, stride_z, stride_x, stride_split,
    M, R, K, N, rows_per_split,
    HAS_NORM: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    split = tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k < K
    if HAS_NORM:
        beta = tl.load(beta_ptr + k, mask=k_mask, other=0.0)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    start = split.to(tl.int64) * rows_per_split
    for m0 in range(0, rows_per_split, BLOCK_M):
        rows = start + m0 + tl.arange(0, BLOCK_M)
        row_mask = rows < M
        nm = n_mask[:, None] & row_mask[None, :]
        dy = tl.load(dy_ptr + rows[None, :] * stride_dy + n[:, None], mask=nm, other=0.0)
        z = tl.load(z_ptr + rows[None, :] * stride_z + n[:, None], mask=nm, other=0.0)
        dz_t = dy * activation_grad(z, ACT)                                           # (BLOCK_N, BLOCK_M)
        mk = row_mask[:, None] & k_mask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_x + k[None, :], mask=mk, other=0.0)
        if HAS_NORM:
            g = rows // R
            mean = tl.load(mean_ptr + g[:, None] * K + k[None, :], mask=mk, other=0.0)
            scale = tl.load(scale_ptr + g[:, None] * K + k[None, :], mask=mk, other=0.0)
            x = tl.where(mk, (x - mean) * scale + beta[None, :], 0.0)
        acc = tl.dot(dz_t.to(DOT_DTYPE), x.to(DOT_DTYPE), acc, input_precision=PRECISION)
        db += tl.sum(dz_t, axis=1)
    partial = split.to(tl.int64) * stride_split          # this split's row of partials
    tl.store(dw_ptr + partial + n[:, None] * K + k[None, :], acc,
             mask=n_mask[:, None] & k_mask[None, :])
    if pid_k == 0:
        tl.store(db_ptr + partial + n, db, mask=n_mask)


def linear_forward(x, weight, bias, act, norm, groups, res_mode, residual, config: LaunchConfig,
                   store_z=True):
    """(z or None, out) for x (G*R, K); norm is (mean (G,K), scale (G,K), beta (K,)) or None."""
    rows, k_size = x.shape
    n_size = weight.shape[0]
    r_size = rows // groups
    if res_mode == RES_CONCAT and n_size != k_size:
        raise ValueError(f"a concat block needs square weights, got {tuple(weight.shape)}")
    out = config_module.kernel_output(rows, n_size * (2 if res_mode == RES_CONCAT else 1),
                                      device=x.device)
    z = config_module.kernel_output(rows, n_size, device=x.device) if store_z else out
    meta = config.linear(k_size, n_size)
    tiles = triton.cdiv(r_size, meta["BLOCK_M"])
    mean, scale, beta = norm if norm is not None else (x, x, x)
    res = residual if residual is not None else x
    grid = (groups * tiles, triton.cdiv(n_size, meta["BLOCK_N"]))
    with config_module.device_guard(x):
        _linear_fwd_kernel[grid](
            x, weight, bias, mean, scale, beta, res, z, out,
            x.stride(0), res.stride(0), z.stride(0), out.stride(0),
            r_size, k_size, n_size, tiles,
            HAS_NORM=norm is not None, RES_MODE=res_mode, STORE_Z=store_z, ACT=act, **meta)
    return (z if store_z else None), out


def linear_backward(dy, z, x, weight, act, norm, groups, config: LaunchConfig, need_dx=True):
    """(dx, [dweight (N*K, row-major) | dbias (N)], [dmean; dscale; dbeta per group] (3, G, K)), in
    as few buffers as the kernels write; dnorm is None without a norm, dx None when neither
    need_dx nor a norm asks for it."""
    rows, k_size = x.shape
    n_size = weight.shape[0]
    r_size = rows // groups
    device = x.device
    mean, scale, beta = norm if norm is not None else (x, x, x)
    dx = dnorm = None
    if need_dx or norm is not None:
        meta = config.linear_dx(k_size, n_size)
        tiles = triton.cdiv(r_size, meta["BLOCK_M"])
        dx = config_module.kernel_output(rows, k_size, device=device)
        stats = dx  # unused without a norm
        if norm is not None:
            stats = config_module.kernel_output(3, groups * tiles, k_size, device=device)
        grid = (groups * tiles, triton.cdiv(k_size, meta["BLOCK_K"]))
        with config_module.device_guard(x):
            _linear_bwd_dx_kernel[grid](
                dy, z, weight, x, mean, scale, dx, stats,
                dy.stride(0), z.stride(0), x.stride(0), dx.stride(0), stats.stride(0),
                r_size, k_size, n_size, tiles,
                HAS_NORM=norm is not None, ACT=act, **meta)
        if norm is not None:
            dnorm = stats.view(3, groups, tiles, k_size).sum(2)    # (3, G, K)
    meta = config.linear_dw(k_size, n_size)
    splits, rows_per_split = config.row_splits(rows, meta,
                                               triton.cdiv(n_size, meta["BLOCK_N"])
                                               * triton.cdiv(k_size, meta["BLOCK_K"]))
    weights = n_size * k_size
    partials = config_module.kernel_output(splits, weights + n_size, device=device)
    grid = (triton.cdiv(n_size, meta["BLOCK_N"]), triton.cdiv(k_size, meta["BLOCK_K"]), splits)
    with config_module.device_guard(x):
        _linear_bwd_dw_kernel[grid](
            dy, z, x, mean, scale, beta, partials, partials[:, weights:],
            dy.stride(0), z.stride(0), x.stride(0), partials.stride(0),
            rows, r_size, k_size, n_size, rows_per_split,
            HAS_NORM=norm is not None, ACT=act, **meta)
    total = partials[0] if splits == 1 else partials.sum(0)
    return dx, total, dnorm


@define("triton_linear",
        "(Tensor x, Tensor weight, Tensor bias, Tensor? mean, Tensor? scale, Tensor? beta, "
        f"Tensor? residual, *, int act, int groups, int res_mode, bool store_z, {CONFIG_SCHEMA}) "
        "-> (Tensor, Tensor)")
def _linear_op(x, weight, bias, mean, scale, beta, residual, **call):
    """(z, or an empty tensor without store_z; out): out = [r +|⊕] act(norm(x) @ W^T + b)."""
    config, call = split_config(call)
    norm = (mean, scale, beta) if mean is not None else None
    z, out = linear_forward(x, weight, bias, call["act"], norm, call["groups"], call["res_mode"],
                            residual, config, store_z=call["store_z"])
    return (z if z is not None else x.new_empty(0)), out


@_linear_op.register_fake
def _(x, weight, bias, mean, scale, beta, residual, **call):
    rows, n_size = x.shape[0], weight.shape[0]
    out = x.new_empty(rows, n_size * (2 if call["res_mode"] == RES_CONCAT else 1), dtype=torch.float32)
    return (x.new_empty(rows, n_size, dtype=torch.float32) if call["store_z"] else x.new_empty(0)), out


@define("triton_linear_backward",
        "(Tensor dy, Tensor z, Tensor x, Tensor weight, Tensor? mean, Tensor? scale, Tensor? beta, "
        f"*, int act, int groups, bool need_dx, {CONFIG_SCHEMA}) -> (Tensor, Tensor, Tensor)")
def _linear_backward_op(dy, z, x, weight, mean, scale, beta, **call):
    """(dx, [dweight | dbias] (N*K + N,), dnorm (3, G, K)) as linear_backward gives them (empty
    tensors for the ones not computed): one buffer each, so no output aliases another."""
    config, call = split_config(call)
    norm = (mean, scale, beta) if mean is not None else None
    dx, dweight_bias, dnorm = linear_backward(dy, z, x, weight, call["act"], norm, call["groups"],
                                              config, need_dx=call["need_dx"])
    return (dx if dx is not None else x.new_empty(0), dweight_bias,
            dnorm if dnorm is not None else x.new_empty(0))


@_linear_backward_op.register_fake
def _(dy, z, x, weight, mean, scale, beta, **call):
    k_size, n_size = x.shape[1], weight.shape[0]
    f32 = dict(dtype=torch.float32)
    dx = x.new_empty(x.shape, **f32) if call["need_dx"] or mean is not None else x.new_empty(0)
    dnorm = x.new_empty(3, mean.shape[0], k_size, **f32) if mean is not None else x.new_empty(0)
    return dx, x.new_empty(n_size * k_size + n_size, **f32), dnorm


def _setup_linear(ctx, inputs, keyword_only_inputs, output):
    x, weight, bias, mean, scale, beta, residual = inputs
    z, _ = output
    ctx.mark_non_differentiable(z)    # saved for the backward, not a result
    ctx.set_materialize_grads(False)  # so no zero gradient is made up for it
    ctx.save_for_backward(x, weight, z, mean, scale, beta)
    ctx.keywords = {k: v for k, v in keyword_only_inputs.items() if k not in ("res_mode", "store_z")}
    ctx.res_mode = keyword_only_inputs["res_mode"]


def _linear_grad(ctx, _, dout):
    x, weight, z, mean, scale, beta = ctx.saved_tensors
    if dout is None:
        return (None,) * 7
    n_size = weight.shape[0]
    dout = unit_stride(dout.float())
    dy = dout[:, n_size:] if ctx.res_mode == RES_CONCAT else dout
    dres = {RES_NONE: None, RES_ADD: dout, RES_CONCAT: dout[:, :n_size]}[ctx.res_mode]
    dx, dweight_bias, dnorm = call("triton_linear_backward", dy, z, x, weight, mean, scale, beta,
                                   need_dx=ctx.needs_input_grad[0], **ctx.keywords)
    weights = n_size * x.shape[1]
    dw, db = dweight_bias[:weights].view(n_size, x.shape[1]), dweight_bias[weights:]
    dmean = dscale = dbeta = None
    if mean is not None:
        dmean, dscale, dbeta = dnorm
        dbeta = dbeta[0] if ctx.keywords["groups"] == 1 else dbeta.sum(0)
    computed_dx = ctx.needs_input_grad[0] or mean is not None
    return dx if computed_dx else None, dw, db, dmean, dscale, dbeta, dres


register_autograd(_linear_op, _linear_grad, _setup_linear)


def fused_linear(x, weight, bias, act, config, norm=None, groups=1, res_mode=RES_NONE,
                 residual=None):
    """out (G*R, N or 2N) for x (G*R, K); see the module docstring."""
    mean, scale, beta = norm if norm is not None else (None, None, None)
    # Without any gradient to compute, the pre-activation need not be stored.
    store_z = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, mean, scale, beta, residual))
    _, out = call("triton_linear", x, weight, bias, mean, scale, beta, residual, act=act, groups=groups,
                  res_mode=res_mode, store_z=store_z, **config_args(config))
    return out
