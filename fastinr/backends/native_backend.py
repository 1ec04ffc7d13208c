"""The `native` backend: the csrc/ extension (fastinr._C), fused forward and backward on the CPU.

Same contract as `fastinr.reference.decode` (arguments checked by fastinr.contract.validate):

    decode(codes (B, C), params, spec, shape, norm_stats, running, mods=None, input_offset=None)
        -> (colors (B, out, H, W), [BlockStats])

The C++ core runs the whole MLP on row tiles of 128 pixels of one image with OpenMP; with batch
statistics BatchNorm it makes one pass over the tiles per block (statistics, then apply). Gradients
flow to codes and every tensor of params through one custom op's autograd. Eval renders (no
gradient needed) stream tiles and keep O(output) memory.

bfloat16 runs natively where torch's own ops would compute in it on the CPU: inside
torch.autocast("cpu", dtype=torch.bfloat16) (float32 tensors) and for bfloat16 codes and
parameters. The block layers' GEMMs then take bf16 operands with float32 accumulation, as torch's
autocast matmuls do, on CPUs with AVX512-BF16 (bf16_matmul_supported()); activations, epilogues,
normalization statistics and the narrow first and last layers stay float32. Colors and statistics
come back in the parameters' dtype, as the reference's do (under autocast its output bias promotes
the bf16 matmul to float32). Where the CPU lacks the instructions, or after set_bf16_matmul(False)
(or FASTINR_NATIVE_BF16=0 in the environment), the same call runs the float32 GEMMs instead.
float16 (tensors or autocast) is handed to the reference. The bf16 products run in one of two kernels
on the same packed operands (bf16_gemm_kernels()): the core's own AVX512-BF16 kernel, or oneDNN's
brgemm microkernel as torch bundles it, which uses the AMX tiles where the CPU has them; the default
is oneDNN on AMX CPUs, else ours (FASTINR_BF16_GEMM=avx512|onednn or set_bf16_gemm_kernel choose).

The extension runs as two torch.library custom ops (fastinr.backends.native_ops), so
torch.compile(model, fullgraph=True) traces a decoder through them as single nodes; the spec is
checked once per decoder (a cached C++ DecoderPlan), each call checks only its tensors.

The saved activations of a training step live in blocks the extension reuses from step to step
(a fresh mmap, its page faults and munmap cost 15-30% of a step otherwise); `cached_bytes()` says
how much freed memory it keeps for that, `empty_cache()` returns it to the system.

Importing this module imports the extension; fastinr.backends catches the failure when it is not built.
"""
import os
from typing import Optional, Sequence, Tuple

import torch

from fastinr import _C, reference
from fastinr.backends import native_ops  # noqa: F401  (registers the fastinr::native_* ops)
from fastinr.contract import BlockStats, DecoderParams, DecoderSpec, InputOffset, reduced_rows, reducer_handle

# Asked once: torch.compile cannot trace a call into the extension.
_BUILT_WITH_CUDA = bool(_C.built_with_cuda())
_BF16_GEMMS = bool(_C.bf16_gemm_supported())


def supports(device, spec: Optional[DecoderSpec] = None, needs_grad: bool = True) -> Optional[str]:
    """None where `decode` runs such a call: every call on the CPU; on CUDA (built with nvcc) a
    render without gradients, modulation or LayerNorm (decode also refuses an input offset there,
    and BatchNorm from batch statistics). Otherwise the reason."""
    device = torch.device(device)
    if device.type == "cpu":
        return None
    if device.type != "cuda" or not renders_on_cuda():
        return f"the extension was built without {device.type} support"
    if needs_grad or (spec is not None and (spec.modulation != "none" or spec.layer_norm)):
        return ("on cuda it only renders, without gradients, modulation or LayerNorm; use the triton "
                "or torch backend")
    return None


def renders_on_cuda() -> bool:
    """True when the extension was built with nvcc: `decode` then also renders CUDA tensors in eval
    mode (no gradients; BatchNorm from running statistics or none)."""
    return _BUILT_WITH_CUDA


def cached_bytes() -> int:
    """Bytes of freed saved-activation blocks the extension keeps for the next training step."""
    return _C.cached_block_bytes()


def empty_cache() -> None:
    """Return the cached saved-activation blocks to the system (like torch.cuda.empty_cache)."""
    _C.empty_block_cache()


_bf16_matmul_enabled = os.environ.get("FASTINR_NATIVE_BF16", "1") != "0"
_C.bf16_gemm_kernel()   # resolved (and oneDNN probed) here, not first inside the core's threads


def bf16_matmul_supported() -> bool:
    """True where the CPU runs the core's bf16 GEMM kernel (AVX512-BF16), checked at run time."""
    return _BF16_GEMMS


def set_bf16_matmul(enabled: bool) -> None:
    """Allow (the default) or forbid the bf16 GEMMs; forbidden, bfloat16 calls run float32 GEMMs."""
    global _bf16_matmul_enabled
    _bf16_matmul_enabled = bool(enabled)


def bf16_gemm_kernels() -> Sequence[str]:
    """The kernels that can run the bf16 GEMMs here: "avx512" (the core's own, on AVX512-BF16) and
    "onednn" (torch's bundled oneDNN brgemm: AMX tiles where the CPU has them), each checked here."""
    return list(_C.bf16_gemm_kernels())


def bf16_gemm_kernel() -> str:
    """The kernel the bf16 GEMMs run in now (the default: onednn on AMX CPUs, else avx512)."""
    return _C.bf16_gemm_kernel()


def set_bf16_gemm_kernel(name: str) -> None:
    """Run the bf16 GEMMs in `name`, one of bf16_gemm_kernels(); between calls, not during one."""
    _C.set_bf16_gemm_kernel(name)


def bf16_matmul() -> bool:
    """Whether bfloat16 calls (autocast or bf16 tensors) run their GEMMs in bf16 right now."""
    return _bf16_matmul_enabled and bf16_matmul_supported()


def reduced_precision(codes: torch.Tensor) -> Optional[torch.dtype]:
    """The 16-bit dtype torch's own matmuls would take for this call (the autocast dtype for
    float32 / 16-bit codes inside torch.autocast, else the codes' dtype), None for full precision."""
    if torch.is_autocast_enabled(codes.device.type) and codes.dtype != torch.float64:
        dtype = torch.get_autocast_dtype(codes.device.type)
        return dtype if dtype in (torch.bfloat16, torch.float16) else None
    return codes.dtype if codes.dtype in (torch.bfloat16, torch.float16) else None


def decode(codes: torch.Tensor, params: DecoderParams, spec: DecoderSpec, shape: Tuple[int, int],
           norm_stats: str = "image", running: Sequence[Tuple[torch.Tensor, torch.Tensor]] = (),
           mods: Optional[torch.Tensor] = None, input_offset: Optional[InputOffset] = None, reducer=None):
    """Colors (B, out, H, W) and the BlockStats of each normalized block (see fastinr.reference),
    for arguments that passed fastinr.contract.validate; the extension checks what it reads. With
    a reducer the core calls it at each BatchNorm (statistics over a batch split across processes)."""
    reduced = reduced_precision(codes)
    if reduced == torch.float16 or (reduced is not None and codes.device.type != "cpu"):
        # no float16 GEMMs in the core, and the CUDA render is float32 / float64
        return reference.decode(codes, params, spec, shape, norm_stats, running, mods, input_offset,
                                reducer=reducer)
    tensors = params.flat()
    if reduced == torch.bfloat16:
        return _decode_bf16(codes, tensors, spec, shape, norm_stats, running, mods, input_offset, reducer)
    if codes.device.type != "cpu":
        if mods is not None or input_offset is not None or spec.layer_norm:
            raise ValueError("the native backend renders on CUDA without modulation, input_offset or "
                             "LayerNorm only; use the triton or torch backend for these decoders on the GPU")
        return _render(codes, tensors, spec, shape, norm_stats, running), []
    return _decode_cpu(codes, tensors, spec, shape, norm_stats, running, mods, input_offset, reducer=reducer)


def _decode_bf16(codes, tensors, spec, shape, norm_stats, running, mods, input_offset, reducer=None):
    """A bfloat16 call (autocast or bf16 tensors): float32 tensors into the core with bf16 GEMMs
    (where the CPU has them), colors back in the parameters' dtype."""
    if not torch.is_autocast_enabled(codes.device.type):
        for name, t in (("mods", mods), *((f"params[{k}]", t) for k, t in enumerate(tensors))):
            if t is not None and t.dtype != codes.dtype:
                raise TypeError(f"{name} has dtype {t.dtype} but codes have {codes.dtype}; outside "
                                f"torch.autocast every tensor must share the codes' dtype")
    as_float = lambda t: None if t is None else t.float()   # differentiable; no copy for float32
    if input_offset is not None:
        input_offset = InputOffset(as_float(input_offset.basis), as_float(input_offset.cells))
    running = [(as_float(mean), as_float(var)) for mean, var in running]
    colors, stats = _decode_cpu(codes.float(), [t.float() for t in tensors], spec, shape, norm_stats, running,
                                as_float(mods), input_offset, bf16_matmul(), reducer)
    dtype = tensors[-1].dtype
    return colors.to(dtype), [BlockStats(s.mean.to(dtype), s.var.to(dtype), s.count) for s in stats]


def _decode_cpu(codes, tensors, spec, shape, norm_stats, running, mods, input_offset, bf16=False,
                reducer=None):
    """The fused CPU forward (and backward through the ops' autograd) for checked arguments."""
    flat_running = []
    if spec.batch_norm and norm_stats == "running":
        if len(running) != spec.num_blocks:
            raise ValueError(f"running must hold (mean, var) for each of the {spec.num_blocks} "
                             f"blocks with norm_stats='running', got {len(running)}")
        flat_running = [t.detach() for pair in running for t in pair]
    basis, cells = input_offset if input_offset is not None else (None, None)
    # Only keep activations for a backward that can happen (needs_input_grad ignores no_grad).
    inputs = [t for t in (codes, mods, cells, *tensors) if t is not None]
    save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    pixels = int(shape[0]) * int(shape[1])
    count = pixels if norm_stats == "image" else codes.shape[0] * pixels
    synced = reducer is not None and spec.batch_norm and spec.num_blocks > 0
    if synced:
        count = reduced_rows(reducer, count, codes.device)
    colors, means, variances, _ = _native_forward(codes, tensors, flat_running, mods, basis, cells, spec,
                                                  shape, norm_stats, save, bf16,
                                                  reducer if synced else None, count if synced else 0)
    # per image (B, w), per batch (w,)
    stats = [BlockStats(mean, var, count) if norm_stats == "image" else BlockStats(mean[0], var[0], count)
             for mean, var in zip(means, variances)]
    return colors, stats


def _render(codes, tensors, spec, shape, norm_stats, running):
    """The one-pass CUDA eval render, for the cases it covers; a clear error otherwise."""
    eval_mode = not spec.batch_norm or norm_stats == "running"
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (codes, *tensors))
    if codes.device.type != "cuda" or not renders_on_cuda() or not eval_mode or needs_grad:
        raise ValueError(
            f"the native backend runs on the CPU; on {codes.device} it only renders in eval mode "
            f"without gradients when built with nvcc (built with CUDA: {renders_on_cuda()}, "
            f"norm_stats={norm_stats!r}, gradients needed: {needs_grad})")
    flat_running = [t for pair in running for t in pair] if spec.batch_norm else []
    with torch.no_grad():
        return _native_forward(codes, tensors, flat_running, None, None, None, spec, shape, norm_stats, False,
                               False)[0]


def _native_forward(codes, tensors, running, mods, basis, cells, spec, shape, norm_stats, save, bf16,
                    reducer=None, global_rows=0):
    """colors, means, vars, saved of fastinr::native_forward (native_ops)."""
    sync = dict(reducer=reducer_handle(reducer), global_rows=global_rows) if reducer else {}
    return torch.ops.fastinr.native_forward(codes, tensors, running, mods, basis, cells,
                                            **spec.op_fields(), height=int(shape[0]),
                                            width=int(shape[1]), norm_stats=norm_stats, save=save,
                                            bf16_matmul=bf16, **sync)
