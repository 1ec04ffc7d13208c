"""The `native` backend: the csrc/ extension (fastinr._C), fused forward and backward on the CPU.

Same contract as `fastinr.reference.decode`:

    decode(codes (B, C), params, spec, shape, norm_stats, running, mods=None, input_offset=None)
        -> (colors (B, out, H, W), [BlockStats])

The C++ core runs the whole MLP on row tiles of 128 pixels of one image with OpenMP; with batch
statistics BatchNorm it makes one pass over the tiles per block (statistics, then apply). Gradients
flow to codes and every tensor of params through one torch.autograd.Function. Eval renders (no
gradient needed) stream tiles and keep O(output) memory. float16 / bfloat16 inputs and autocast
regions are handed to the reference (the core computes in float32 and float64).

The saved activations of a training step live in blocks the extension reuses from step to step
(a fresh mmap, its page faults and munmap cost 15-30% of a step otherwise); `cached_bytes()` says
how much freed memory it keeps for that, `empty_cache()` returns it to the system.

Importing this module imports the extension; fastinr.backend catches the failure when it is not built.
"""
from typing import Optional, Sequence, Tuple

import torch

from fastinr import _C, reference
from fastinr.reference import BlockStats, DecoderParams, DecoderSpec, NORM_STATS


def supports(device) -> bool:
    """True where `decode` runs with its full contract (forward and backward): the CPU."""
    return torch.device(device).type == "cpu"


def renders_on_cuda() -> bool:
    """True when the extension was built with nvcc: `decode` then also renders CUDA tensors in eval
    mode (no gradients; BatchNorm from running statistics or none)."""
    return _C.built_with_cuda()


def cached_bytes() -> int:
    """Bytes of freed saved-activation blocks the extension keeps for the next training step."""
    return _C.cached_block_bytes()


def empty_cache() -> None:
    """Return the cached saved-activation blocks to the system (like torch.cuda.empty_cache)."""
    _C.empty_block_cache()


def _config(spec: DecoderSpec, shape: Tuple[int, int], norm_stats: str) -> dict:
    return dict(height=int(shape[0]), width=int(shape[1]), freqs=[float(f) for f in spec.freqs],
                concat=[bool(c) for c in spec.concat], layers=int(spec.layers_per_block),
                batch_norm=bool(spec.batch_norm), layer_norm=bool(spec.layer_norm), activation=spec.activation,
                activation_out=spec.activation_out, eps=float(spec.eps), norm_stats=norm_stats,
                modulation=spec.modulation)


class _NativeDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, running, stats_out, save, codes, mods, basis, cells, *params):
        colors, means, variances, saved = _C.forward(codes, list(params), running, save=save, mods=mods,
                                                     offset_basis=basis, offset_cells=cells, **config)
        stats_out.extend(zip(means, variances))
        if save:
            ctx.config, ctx.running = config, running
            ctx.modulated, ctx.offset = mods is not None, cells is not None
            extra = [t for t in (mods, basis, cells) if t is not None]
            ctx.save_for_backward(codes, *extra, *params, *saved)
            ctx.num_params = len(params)
        return colors

    @staticmethod
    def backward(ctx, grad_colors):
        tensors = list(ctx.saved_tensors)
        codes = tensors.pop(0)
        mods = tensors.pop(0) if ctx.modulated else None
        basis, cells = (tensors.pop(0), tensors.pop(0)) if ctx.offset else (None, None)
        params, saved = tensors[:ctx.num_params], tensors[ctx.num_params:]
        grads = _C.backward(grad_colors, codes, params, ctx.running, saved, mods=mods, offset_basis=basis,
                            offset_cells=cells, **ctx.config)
        grad_cells = grads.pop() if ctx.offset else None
        grad_mods = grads.pop() if ctx.modulated else None
        grads = [grads[0], grad_mods, None, grad_cells, *grads[1:]]
        return (None, None, None, None, *(g if need else None
                                          for g, need in zip(grads, ctx.needs_input_grad[4:])))


def decode(codes: torch.Tensor, params: DecoderParams, spec: DecoderSpec, shape: Tuple[int, int],
           norm_stats: str = "image", running: Sequence[Tuple[torch.Tensor, torch.Tensor]] = (),
           mods: Optional[torch.Tensor] = None, input_offset: Optional[reference.InputOffset] = None):
    """Colors (B, out, H, W) and the BlockStats of each normalized block (see fastinr.reference)."""
    if norm_stats not in NORM_STATS:
        raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
        raise ValueError(f"codes must be a tensor of shape (B, {spec.code_size}), got "
                         f"{getattr(codes, 'shape', type(codes).__name__)}")
    if codes.shape[1] != spec.code_size:
        raise ValueError(f"codes must have {spec.code_size} channels (spec.code_size), got "
                         f"{tuple(codes.shape)}")
    if codes.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(codes.device.type):
        # the C++ core computes in float32 / float64; reduced precision follows the reference's rules
        return reference.decode(codes, params, spec, shape, norm_stats, running, mods, input_offset)
    reference.check_mods(spec, codes.shape[0], mods)
    reference.check_input_offset(spec, codes.shape[0], shape, input_offset)
    config = _config(spec, shape, norm_stats)
    if not supports(codes.device):
        if mods is not None or input_offset is not None or spec.layer_norm:
            raise ValueError("the native backend renders on CUDA without modulation, input_offset or "
                             "LayerNorm only; use the triton or torch backend for these decoders on the GPU")
        return _render(codes, params, spec, config, running), []
    flat_running = []
    if spec.batch_norm and norm_stats == "running":
        if len(running) != spec.num_blocks:
            raise ValueError(f"running must hold (mean, var) for each of the {spec.num_blocks} "
                             f"blocks with norm_stats='running', got {len(running)}")
        flat_running = [t.detach() for pair in running for t in pair]
    stats_out = []
    tensors = params.flat()
    # Only keep activations for a backward that can happen (needs_input_grad ignores no_grad).
    basis, cells = input_offset if input_offset is not None else (None, None)
    inputs = [t for t in (codes, mods, cells, *tensors) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    colors = _NativeDecode.apply(config, flat_running, stats_out, save, codes, mods, basis, cells, *tensors)
    pixels = config["height"] * config["width"]
    count = pixels if norm_stats == "image" else codes.shape[0] * pixels
    # per image (B, w), per batch (w,)
    stats = [BlockStats(mean, var, count) if norm_stats == "image" else BlockStats(mean[0], var[0], count)
             for mean, var in stats_out]
    return colors, stats


def _render(codes, params, spec, config, running):
    """The one-pass CUDA eval render, for the cases it covers; a clear error otherwise."""
    eval_mode = not spec.batch_norm or config["norm_stats"] == "running"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (codes, *params.flat()))
    if codes.device.type != "cuda" or not renders_on_cuda() or not eval_mode or needs_grad:
        raise ValueError(
            f"the native backend runs on the CPU; on {codes.device} it only renders in eval mode "
            f"without gradients when built with nvcc (built with CUDA: {renders_on_cuda()}, "
            f"norm_stats={config['norm_stats']!r}, gradients needed: {needs_grad})")
    flat_running = [t for pair in running for t in pair] if spec.batch_norm else []
    with torch.no_grad():
        return _C.forward(codes, params.flat(), flat_running, save=False, mods=None, **config)[0]
