"""BatchNorm statistics of a block input for training, with their gradient in one kernel.

For h (G*R, K) in G groups of R rows (one group per image, or the whole batch):

    mean[g] = Σ_r h[g, r] / R,   var[g] = Σ_r (h[g, r] - mean[g])^2 / R      (biased)
    rstd[g] = 1 / sqrt(var[g] + eps),   scale[g] = gamma * rstd[g]

The Linear kernel after it applies (h - mean) * scale + beta (linear.py) and returns the gradients
of mean and scale. Backward (d var / d mean sums to zero over a group):

    dh[g, r] = dmean[g] / R - dscale[g] * gamma * rstd[g]^3 * (h[g, r] - mean[g]) / R
    dgamma   = Σ_g dscale[g] * rstd[g]

dh is one elementwise pass (read h, write dh) instead of torch's ~13 ops for the gradients of
var_mean, rsqrt and the product.

With a reducer (one group, this process's R rows of a batch of N rows split across processes;
fastinr.contract, carried by the ops as its int handle): mean and var are the global batch's
(fastinr.reference.global_moments), and the backward first sums dmean and dscale over the
processes (every process normalizes with the same mean and scale), then divides by N instead of
R; dgamma stays this process's share.
"""
import torch
import triton
import triton.language as tl

from fastinr.contract import reducer_handle, reducer_of
from fastinr.ops import config as config_module
from fastinr.ops.library import CONFIG_SCHEMA, call, config_args, define, register_autograd, split_config
from fastinr.ops.tiling import tile_rows
from fastinr.reference import global_moments


@triton.jit
def _norm_stats_bwd_kernel(
    h_ptr,        # (G*R, K) float32 block input
    mean_ptr,     # (G, K) float32
    rstd_ptr,     # (G, K) float32
    gamma_ptr,    # (K,) float32
    dmean_ptr,    # (G, K) float32 gradient of mean
    dscale_ptr,   # (G, K) float32 gradient of scale
    dh_ptr,       # (G*R, K) float32, written
    stride_h,
    R, K, tiles_per_group,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    g, local, row_mask, rows = tile_rows(tl.program_id(0), tiles_per_group, R, BLOCK_M)
    k = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = k < K
    mask = row_mask[:, None] & k_mask[None, :]
    mean = tl.load(mean_ptr + g * K + k, mask=k_mask, other=0.0)
    rstd = tl.load(rstd_ptr + g * K + k, mask=k_mask, other=0.0)
    gamma = tl.load(gamma_ptr + k, mask=k_mask, other=0.0)
    dmean = tl.load(dmean_ptr + g * K + k, mask=k_mask, other=0.0)
    dscale = tl.load(dscale_ptr + g * K + k, mask=k_mask, other=0.0)
    a = dmean / R
    b = -dscale * gamma * rstd * rstd * rstd / R
    h = tl.load(h_ptr + rows[:, None] * stride_h + k[None, :], mask=mask, other=0.0)
    dh = a[None, :] + b[None, :] * (h - mean[None, :])
    tl.store(dh_ptr + rows[:, None] * K + k[None, :], dh, mask=mask)


_SYNC_SCHEMA = "int reducer=0, int total=0"   # the reducer's handle, rows of the global batch


@define("triton_norm_stats",
        f"(Tensor h, Tensor gamma, *, int groups, float eps, {_SYNC_SCHEMA}, {CONFIG_SCHEMA}) "
        "-> (Tensor, Tensor, Tensor, Tensor)")
def _norm_stats_op(h, gamma, **call):
    """(mean, scale, var, rstd), each (G, K), of h's groups; see the module docstring."""
    var, mean = torch.var_mean(h.view(call["groups"], -1, h.shape[1]), dim=1, correction=0)
    reducer = reducer_of(call.get("reducer", 0))
    if reducer is not None:   # one group: the global batch's moments
        mean, var = global_moments(mean, var, h.shape[0], call.get("total", 0), reducer)
        mean, var = mean.to(h.dtype), var.to(h.dtype)
    rstd = torch.rsqrt(var + call["eps"])
    return mean, gamma * rstd, var, rstd


@_norm_stats_op.register_fake
def _(h, gamma, **call):
    return tuple(h.new_empty(call["groups"], h.shape[1]) for _ in range(4))


@define("triton_norm_stats_backward",
        f"(Tensor h, Tensor mean, Tensor rstd, Tensor gamma, Tensor dmean, Tensor dscale, *, "
        f"int groups, {_SYNC_SCHEMA}, {CONFIG_SCHEMA}) -> (Tensor, Tensor)")
def _norm_stats_backward_op(h, mean, rstd, gamma, dmean, dscale, **call):
    """(dh (G*R, K), dgamma (K,))."""
    config, call = split_config(call)
    groups = call["groups"]
    rows, width = h.shape
    r_size = rows // groups
    dgamma = (dscale * rstd).sum(0)    # this process's share
    reducer = reducer_of(call.get("reducer", 0))
    if reducer is not None:
        # summed over the processes, and scaled by R / N: the kernel divides by its R rows
        sums = torch.cat([dmean, dscale], dim=1).double()
        reducer(sums)
        dmean, dscale = (sums * (r_size / call.get("total", 0))).to(h.dtype).split(width, dim=1)
        dmean, dscale = dmean.contiguous(), dscale.contiguous()
    meta = config.modulate(width)      # the same elementwise tiles
    tiles = triton.cdiv(r_size, meta["BLOCK_M"])
    dh = config_module.kernel_output(rows, width, device=h.device)
    with config_module.device_guard(h):
        _norm_stats_bwd_kernel[(groups * tiles, triton.cdiv(width, meta["BLOCK_N"]))](
            h, mean, rstd, gamma, dmean, dscale, dh, h.stride(0), r_size, width, tiles, **meta)
    return dh, dgamma


@_norm_stats_backward_op.register_fake
def _(h, mean, rstd, gamma, dmean, dscale, **call):
    return h.new_empty(h.shape), gamma.new_empty(gamma.shape)


def _setup_norm_stats(ctx, inputs, keyword_only_inputs, output):
    h, gamma = inputs
    mean, _, var, rstd = output
    ctx.mark_non_differentiable(var, rstd)
    ctx.set_materialize_grads(False)    # no zero-filled gradient for var (nothing uses it)
    ctx.save_for_backward(h, mean, rstd, gamma)
    ctx.keywords = {k: v for k, v in keyword_only_inputs.items() if k != "eps"}


def _norm_stats_grad(ctx, dmean, dscale, _var, _rstd):
    h, mean, rstd, gamma = ctx.saved_tensors
    if dmean is None and dscale is None:
        return None, None
    dmean = torch.zeros_like(mean) if dmean is None else dmean.contiguous()
    dscale = torch.zeros_like(mean) if dscale is None else dscale.contiguous()
    return call("triton_norm_stats_backward", h, mean, rstd, gamma, dmean, dscale, **ctx.keywords)


register_autograd(_norm_stats_op, _norm_stats_grad, _setup_norm_stats)


def norm_stats(h, gamma, groups: int, eps: float, config, reducer=None, total=None):
    """(mean, scale, var), each (G, K), var not differentiable, for h (G*R, K) float32 with unit
    column stride; gamma (K,) float32. With `reducer` (groups 1), h holds this process's rows of a
    batch of `total` rows split across processes."""
    mean, scale, var, _ = call("triton_norm_stats", h, gamma.float().contiguous(), groups=groups,
                               eps=float(eps), reducer=reducer_handle(reducer), total=int(total or 0),
                               **config_args(config))
    return mean, scale, var
