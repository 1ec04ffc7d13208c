"""The one place that imports optional pieces (Triton, the compiled extension) and picks a backend.

Every backend is a module with the same function as `fastinr.reference.decode`:

    decode(codes, params, spec, shape, norm_stats, running) -> (colors, [BlockStats])

    torch   fastinr.backends.torch_backend    anywhere (the reference math, chunked on the CPU)
    triton  fastinr.backends.triton_backend   CUDA tensors (CPU only under TRITON_INTERPRET=1)
    native  fastinr.backends.native_backend   the csrc/ extension (CPU; CUDA when built with nvcc)

"auto" picks triton for CUDA tensors and native for CPU tensors, and falls back to torch with
one warning when that backend cannot load. FASTINR_BACKEND=torch|triton|native forces a backend
for every module left at "auto"; a forced backend that cannot load raises.
"""
import importlib
import os
import warnings

import torch

BACKENDS = ("torch", "triton", "native")
_MODULES = {name: f"fastinr.backends.{name}_backend" for name in BACKENDS}


class BackendUnavailable(RuntimeError):
    pass


_LOADED = {}  # name -> (module or None, reason); a plain dict, which torch.compile traces


def _load(name: str):
    """The backend's module, or the reason it cannot load (never raises)."""
    if name not in _LOADED:
        try:
            if name == "triton":
                import triton  # noqa: F401
            _LOADED[name] = importlib.import_module(_MODULES[name]), None
        except Exception as err:  # an ImportError, or an extension built against another torch
            _LOADED[name] = None, f"{type(err).__name__}: {err}"
    return _LOADED[name]


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device_problem(name: str, device: torch.device):
    """Why backend `name` cannot run on `device`, or None."""
    if name == "triton" and device.type != "cuda" and not _interpreting():
        return f"it needs CUDA tensors (or TRITON_INTERPRET=1 on the CPU), got {device.type}"
    if name == "native":
        module, _ = _load(name)
        if module is not None and not module.supports(device):
            return f"the extension was built without {device.type} support"
    return None


def available_backends(device="cpu"):
    """Names of the backends that load and run on `device`."""
    device = torch.device(device)
    return [name for name in BACKENDS
            if _load(name)[0] is not None and _device_problem(name, device) is None]


_warned = set()


def resolve_backend(requested: str = "auto", device="cpu"):
    """(name, decode function) of the backend to use for tensors on `device`."""
    device = torch.device(device)
    forced = requested != "auto"
    if not forced:
        env = os.environ.get("FASTINR_BACKEND", "").strip().lower()
        if env and env != "auto":
            requested, forced = env, True
    if forced:
        if requested not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {', '.join(BACKENDS)}; "
                             f"got {requested!r} (argument or FASTINR_BACKEND)")
        module, reason = _load(requested)
        reason = _device_problem(requested, device) or reason  # the device is the likelier fix
        if reason:
            raise BackendUnavailable(f"backend {requested!r} was requested but cannot run: {reason}")
        return requested, module.decode

    preferred = "triton" if device.type == "cuda" else "native"
    module, reason = _load(preferred)
    reason = reason or _device_problem(preferred, device)
    if reason is None:
        return preferred, module.decode
    if (preferred, device.type) not in _warned:
        _warned.add((preferred, device.type))
        warnings.warn(f"fastinr: backend {preferred!r} is unavailable on {device.type} ({reason}); "
                      f"using the 'torch' reference backend", RuntimeWarning, stacklevel=3)
    return "torch", _load("torch")[0].decode


def native_bf16_matmul(device="cpu") -> bool:
    """Whether bfloat16 autocast on `device` runs the native backend's bf16 GEMMs: a CPU with
    AVX512-BF16 and the extension loaded (never raises)."""
    if torch.device(device).type != "cpu":
        return False
    module, _ = _load("native")
    return module is not None and module.bf16_matmul()
