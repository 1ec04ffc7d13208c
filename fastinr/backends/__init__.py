"""The backends of the decode contract, and the one place that imports optional pieces (Triton,
the compiled extension) and picks a backend.

    decode(codes, params, spec, shape, norm_stats="image", running=(), mods=None,
           input_offset=None, backend="auto", reducer=None) -> (colors (B, out, H, W), [BlockStats])

checks its arguments once (fastinr.contract.validate), picks a backend (`resolve_backend`) and
runs it. Every backend is a module with two functions:

    decode(codes, params, spec, (H, W), norm_stats, running, mods, input_offset[, reducer=])
        the contract's computation, for arguments that passed validate (reducer, statistics
        over a batch split across processes, is passed only when given)
    supports(device, spec, needs_grad) -> None, or the reason it cannot run such a call

    torch   fastinr.backends.torch_backend    anywhere (the reference math, chunked on the CPU)
    triton  fastinr.backends.triton_backend   CUDA tensors (CPU only under TRITON_INTERPRET=1)
    native  fastinr.backends.native_backend   the csrc/ extension (CPU; CUDA renders when built with nvcc)

A new backend is one file here and one line in _REGISTRY (or `register_backend` from outside the
package); it inherits the validation and checks only what its own memory safety needs (e.g. the
dtypes its kernels read).

"auto" picks triton for CUDA tensors and native for CPU tensors, and falls back to torch with
one warning when that backend cannot load or run the call. FASTINR_BACKEND=torch|triton|native
forces a backend for every call left at "auto"; a forced backend that cannot run raises.
"""
import importlib
import os
import warnings
from typing import Optional

import torch

from fastinr.contract import needs_grad as _needs_grad
from fastinr.contract import validate

# name -> the backend's module (imported on first use) or an object with decode and supports.
_REGISTRY = {
    "torch": "fastinr.backends.torch_backend",
    "triton": "fastinr.backends.triton_backend",
    "native": "fastinr.backends.native_backend",
}
BACKENDS = tuple(_REGISTRY)


class BackendUnavailable(RuntimeError):
    pass


_LOADED = {}  # name -> (module or None, reason)


def register_backend(name: str, backend) -> None:
    """Make `backend` (a module name, or an object with `decode` and `supports`) selectable as
    `name`; calls through `decode` validate its arguments before it sees them."""
    _REGISTRY[name] = backend
    _LOADED.pop(name, None)


def _load(name: str):
    """The backend's module, or the reason it cannot load (never raises)."""
    if name not in _LOADED:
        backend = _REGISTRY[name]
        try:
            _LOADED[name] = (importlib.import_module(backend) if isinstance(backend, str) else backend), None
        except Exception as err:  # an ImportError, or an extension built against another torch
            _LOADED[name] = None, f"{type(err).__name__}: {err}"
    return _LOADED[name]


def available_backends(device="cpu"):
    """Names of the backends that load and run the whole contract (forward and backward) on
    `device`."""
    device = torch.device(device)
    return [name for name in _REGISTRY
            if _load(name)[0] is not None and _load(name)[0].supports(device, None, True) is None]


_warned = set()


def resolve_backend(requested: str = "auto", device="cpu", spec=None, needs_grad: bool = True):
    """(name, decode function) of the backend to use for tensors on `device`: one that loads and
    supports `spec` (None: any spec) and a backward when `needs_grad`. The function expects
    validated arguments; `decode` below validates and resolves in one call."""
    name = _resolve(requested, torch.device(device), spec, bool(needs_grad))
    return name, _load(name)[0].decode


# torch.compile calls this as it traces and keeps the answer (which also loads the backend before
# the trace reads _LOADED): it cannot trace importlib.
@torch.compiler.assume_constant_result
def _resolve(requested: str, device: torch.device, spec, needs_grad: bool) -> str:
    forced = requested != "auto"
    if not forced:
        env = os.environ.get("FASTINR_BACKEND", "").strip().lower()
        if env and env != "auto":
            requested, forced = env, True
    if forced:
        if requested not in _REGISTRY:
            raise ValueError(f"backend must be 'auto' or one of {', '.join(_REGISTRY)}; "
                             f"got {requested!r} (argument or FASTINR_BACKEND)")
        module, reason = _load(requested)
        reason = reason or module.supports(device, spec, needs_grad)
        if reason:
            raise BackendUnavailable(f"backend {requested!r} was requested but cannot run: {reason}")
        return requested

    preferred = "triton" if device.type == "cuda" else "native"
    module, reason = _load(preferred)
    reason = reason or module.supports(device, spec, needs_grad)
    if reason is None:
        return preferred
    if (preferred, device.type, reason) not in _warned:
        _warned.add((preferred, device.type, reason))
        warnings.warn(f"fastinr: backend {preferred!r} is unavailable on {device.type} ({reason}); "
                      f"using the 'torch' reference backend", RuntimeWarning, stacklevel=4)
    return "torch"


def decode(codes, params, spec, shape, norm_stats: str = "image", running=(), mods=None,
           input_offset=None, backend: Optional[str] = "auto", reducer=None):
    """Colors (B, out, H, W) for codes (B, C) and the BlockStats of each BatchNorm block (in
    training), by the backend `backend` ("auto", or a name in BACKENDS): the arguments are
    validated once (fastinr.contract.validate), then handed to the backend. `reducer`: statistics
    over a batch split across processes (see fastinr.contract)."""
    shape = validate(codes, params, spec, shape, norm_stats, running, mods, input_offset, reducer)
    grad = _needs_grad(codes, params, mods, input_offset)
    _, run = resolve_backend(backend, codes.device, spec, grad)
    if reducer is not None:
        return run(codes, params, spec, shape, norm_stats, running, mods, input_offset, reducer=reducer)
    return run(codes, params, spec, shape, norm_stats, running, mods, input_offset)


def native_bf16_matmul(device="cpu") -> bool:
    """Whether bfloat16 autocast on `device` runs the native backend's bf16 GEMMs: a CPU with
    AVX512-BF16 and the extension loaded (never raises)."""
    if torch.device(device).type != "cpu":
        return False
    module, _ = _load("native")
    return module is not None and module.bf16_matmul()


def native_bf16_gemm_kernel(device="cpu") -> Optional[str]:
    """The kernel running those bf16 GEMMs ("avx512", the core's own, or "onednn", torch's brgemm with
    AMX where the CPU has it); None where native_bf16_matmul(device) is False."""
    return _load("native")[0].bf16_gemm_kernel() if native_bf16_matmul(device) else None
