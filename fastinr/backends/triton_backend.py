"""The `triton` backend: `decode` with exactly the contract of fastinr.reference.decode, for
arguments that passed fastinr.contract.validate (fastinr.backends.decode checks them).

Two paths:
  render  (no grad needed, BatchNorm folded from running statistics or absent, and at most
          MAX_OUT_CHANNELS colors): one kernel pass over pixel tiles that writes only the
          colors (render.py).
  train   the input layer with the embedding built in registers (embed.py), then per Linear
          one fused kernel: BatchNorm-apply prologue, bias + activation epilogue, residual add / concat
          (linear.py), each a torch.library custom op with fused backward kernels (so
          torch.compile traces a decoder without graph breaks: ops/library.py). BatchNorm
          statistics are a torch reduction of the block input, their gradient one kernel
          (norm.py).
          With shift / FiLM modulation, each Linear runs without activation and one elementwise
          kernel modulates per image, activates and adds the residual (modulate.py). LayerNorm
          is torch's fused kernel on the block input (per-row statistics, one extra pass).
"""
from typing import Optional, Sequence, Tuple

import torch

from fastinr.activations import activation_code
from fastinr.contract import BlockStats, DecoderParams, DecoderSpec, reduced_rows
from fastinr.ops.config import LaunchConfig, interpreting, unit_stride
from fastinr.ops.embed import embed_linear
from fastinr.ops.linear import RES_ADD, RES_CONCAT, RES_NONE, fused_linear
from fastinr.ops.modulate import modulate_act
from fastinr.ops.norm import norm_stats
from fastinr.ops.render import MAX_OUT_CHANNELS, render_forward


def supports(device, spec=None, needs_grad=True) -> Optional[str]:
    """None where the kernels run: CUDA tensors, or the CPU under TRITON_INTERPRET=1 (tests)."""
    device = torch.device(device)
    if device.type != "cuda" and not interpreting():
        return f"it needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU), got {device.type}"
    return None


def _check_memory_safety(codes, params: DecoderParams, spec: DecoderSpec):
    """What the kernels need beyond the contract: tensors they can address, float32 parameters."""
    reason = supports(codes.device)
    if reason:
        raise RuntimeError(f"the triton backend cannot run here: {reason}")
    for k, tensor in enumerate(params.flat()):
        if tensor.dtype != torch.float32:
            raise TypeError(f"the triton backend needs float32 parameters (use torch.autocast for "
                            f"bf16/fp16); params.{DecoderParams.names(spec).flat()[k]} has dtype "
                            f"{tensor.dtype}")


def _needs_grad(codes, params: DecoderParams) -> bool:
    return torch.is_grad_enabled() and (
        codes.requires_grad or any(t.requires_grad for t in params.flat()))


def decode(codes: torch.Tensor, params: DecoderParams, spec: DecoderSpec, shape: Tuple[int, int],
           norm_stats: str = "image",
           running: Sequence[Tuple[torch.Tensor, torch.Tensor]] = (), mods=None, input_offset=None,
           reducer=None):
    """Colors (B, out, H, W) for codes (B, C), and the BlockStats of each normalized block; shape
    is (H, W) as validate returns it. With a reducer the statistics' sums are reduced across
    processes where the statistics are computed (fastinr.ops.norm)."""
    _check_memory_safety(codes, params, spec)
    normalized = spec.batch_norm and spec.num_blocks > 0
    config = LaunchConfig.for_call(codes.device)
    # The one-pass render has no input offset or modulation (yet): such decoders render with the
    # train kernels.
    renderable = (spec.out_channels <= MAX_OUT_CHANNELS and input_offset is None and mods is None
                  and not spec.layer_norm)
    if renderable and (not normalized or norm_stats == "running") and not _needs_grad(codes, params):
        return render_forward(codes, params, spec, shape, running, config), []
    return _train_forward(codes, params, spec, shape, norm_stats, running, config, mods, input_offset, reducer)


def _train_forward(codes, params, spec, shape, norm_stats, running, config, mods=None, input_offset=None,
                   reducer=None):
    batch, (height, width) = codes.shape[0], shape
    pixels = height * width
    act = activation_code(spec.activation)
    # Modulated layers run their Linear without activation; modulate_act adds it (and the residual).
    film = spec.modulation == "film"
    linear_act = activation_code("none") if mods is not None else act
    w_code, w_pos = params.w_in[:, :spec.code_size], params.w_in[:, spec.code_size:]
    code_proj = torch.addmm(params.b_in, codes, w_code.t()).float()         # (B, hidden)
    w_pos = unit_stride(w_pos)
    # On a GPU the dense offset (B*P, hidden) is one batched matmul; the kernel adds it to z.
    offset = input_offset.dense().float().reshape(-1, spec.hidden).contiguous() if input_offset is not None else None
    h = embed_linear(code_proj.contiguous(), w_pos, spec.freqs, shape, linear_act, config, offset)
    if mods is not None:
        h = modulate_act(h, mods[:, 0], film, act, pixels, config)
    layer = 1

    groups = batch if norm_stats == "image" else 1
    sync = None
    if reducer is not None and spec.batch_norm and spec.num_blocks:   # (reducer, rows of the global batch)
        sync = reducer, reduced_rows(reducer, batch * pixels, codes.device)
    stats = []
    for i in range(spec.num_blocks):
        norm = None
        if spec.batch_norm:
            norm, block_stats = _norm_params(h, params.norm_weight[i], params.norm_bias[i],
                                             spec.eps, norm_stats, groups,
                                             running[i] if norm_stats == "running" else None,
                                             config, sync)
            if block_stats is not None:
                stats.append(block_stats)
        mode = RES_CONCAT if spec.concat[i] else RES_ADD
        layers = list(zip(params.weights[i], params.biases[i]))
        x = h
        if spec.layer_norm:   # torch's fused kernel: per-row statistics do not fit a column prologue
            x = torch.nn.functional.layer_norm(h, (h.shape[1],), params.norm_weight[i].float(),
                                               params.norm_bias[i].float(), spec.eps)
        if not layers:
            h = _merge_without_layers(h, x, norm, groups, mode)
            continue
        for j, (weight, bias) in enumerate(layers):
            last = j == len(layers) - 1
            first = dict(norm=norm if j == 0 else None, groups=groups if j == 0 else 1)
            if mods is None:
                x = fused_linear(x, weight.contiguous(), bias.contiguous(), act, config, **first,
                                 res_mode=mode if last else RES_NONE, residual=h if last else None)
            else:   # no concat with modulation (check_mods): the residual is an add
                z = fused_linear(x, weight.contiguous(), bias.contiguous(), linear_act, config, **first)
                x = modulate_act(z, mods[:, layer], film, act, pixels, config, residual=h if last else None)
            layer += 1
        h = x

    colors = fused_linear(h, params.w_out.contiguous(), params.b_out.contiguous(),
                          activation_code(spec.activation_out), config)          # (B*P, out)
    colors = colors.view(batch, pixels, spec.out_channels).permute(0, 2, 1)
    return colors.reshape(batch, spec.out_channels, height, width), stats


def _norm_params(h, gamma, beta, eps, norm_stats_mode, groups, running, config, sync=None):
    """((mean (G, w), scale (G, w), beta), BlockStats or None) for the block input h (B*P, w);
    `sync`: (reducer, rows of the global batch) for statistics over a batch split across processes."""
    width = h.shape[1]
    if norm_stats_mode == "running":
        mean, var = running
        scale = gamma * torch.rsqrt(var.float() + eps)
        return (mean.float().view(1, width).contiguous(), scale.view(1, width),
                beta.contiguous()), None
    mean, scale, var = norm_stats(h, gamma, groups, eps, config, *(sync or ()))   # (G, w)
    count = h.shape[0] // groups if sync is None else sync[1]
    unbiased = var.detach() * (count / max(count - 1, 1))
    # The reference's layout: (B, w) per image, (w,) per batch.
    stat_shape = (-1, width) if norm_stats_mode == "image" else (width,)
    stats = BlockStats(mean.detach().reshape(stat_shape), unbiased.reshape(stat_shape), count)
    return (mean.contiguous(), scale.contiguous(), beta.contiguous()), stats


def _merge_without_layers(h, x, norm, groups, mode):
    """A block with no Linear: h + norm(h) or h ⊕ norm(h), in torch (nothing to fuse it into);
    x is h, or h already layer-normalized."""
    if norm is not None:
        mean, scale, beta = norm
        width = h.shape[1]
        x = ((h.view(groups, -1, width) - mean[:, None]) * scale[:, None] + beta).view_as(h)
    return torch.cat([h, x], dim=1) if mode == RES_CONCAT else h + x
