"""Count what a piece of code launches on the device: Triton kernels (by name) and the torch ops
that run a kernel of their own (views, allocations and metadata ops do not).

    with LaunchCounter() as launches:
        step()
    launches.triton, launches.torch   # Counter({kernel or op name: calls})
    launches.bytes                    # Counter({kernel or op name: bytes of its tensors})

`bytes` is a traffic model, not a measurement: every distinct storage a launch touches, read or
written once (a Triton kernel's tensor arguments, a torch op's inputs and outputs). With
run_kernels=False the Triton kernels are recorded but not run, so a GPU configuration can be
analysed on any machine.

Used by the launch-budget test and by benchmarks/gpu_report.py's analysis. Works under
TRITON_INTERPRET=1 too: the torch ops the interpreter runs to move a kernel's arguments are not
counted, since they happen inside a Triton launch. In eager mode fastinr's launchers run their
bodies, not their custom ops (ops/library.py `call`), so what runs inside them is counted.
"""
import collections
import contextlib
import itertools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Allocation, metadata and profiler-marker ops: no kernel runs on the device.
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "detach",
              "alias", "lift_fresh", "_unsafe_view", "is_same_size", "set_", "resize_",
              "squeeze_", "unsqueeze_", "t_", "transpose_", "as_strided_",
              "_record_function_enter_new", "_record_function_exit"}


def triton_kernels():
    """{name: kernel} of every Triton kernel of fastinr.ops."""
    from fastinr.ops import embed, linear, modulate, norm, render
    kernels = {}
    for module in (embed, linear, modulate, norm, render):
        for name, value in vars(module).items():
            if name.endswith("_kernel") and hasattr(value, "run"):
                kernels[name] = value
    return kernels


def _storage_bytes(values) -> int:
    """Bytes of the distinct storages among `values` (tensors; anything else is ignored)."""
    storages = {}
    for value in values:
        if isinstance(value, torch.Tensor) and value.device.type != "meta":
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def _flatten(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from _flatten(value)
        else:
            yield value


class _TorchOps(TorchDispatchMode):
    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self.paused = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        out = func(*args, **(kwargs or {}))
        if not self.paused and not func.is_view and name not in _NO_KERNEL:
            self.counter.torch[name] += 1
            self.counter.bytes[name] += _storage_bytes(
                _flatten(itertools.chain(args, (kwargs or {}).values(), [out])))
        return out


class LaunchCounter(contextlib.AbstractContextManager):
    """Within the block, counts Triton launches in `triton` and kernel-running torch ops in
    `torch`; `on_launch(kernel name)`, if given, is called at every Triton launch."""

    def __init__(self, on_launch=None, run_kernels=True):
        self.triton = collections.Counter()
        self.torch = collections.Counter()
        self.bytes = collections.Counter()
        self.on_launch = on_launch
        self.run_kernels = run_kernels
        self._patched = []
        self._mode = _TorchOps(self)

    @property
    def total(self) -> int:
        return sum(self.triton.values()) + sum(self.torch.values())

    def _wrap(self, name, kernel):
        run = kernel.run

        def counted_run(*args, **kwargs):
            self.triton[name] += 1
            self.bytes[name] += _storage_bytes(itertools.chain(args, kwargs.values()))
            if self.on_launch is not None:
                self.on_launch(name)
            if not self.run_kernels:
                return None
            self._mode.paused += 1
            try:
                return run(*args, **kwargs)
            finally:
                self._mode.paused -= 1
        return counted_run

    def __enter__(self):
        for name, kernel in triton_kernels().items():
            self._patched.append((kernel, "run" in vars(kernel), vars(kernel).get("run")))
            kernel.run = self._wrap(name, kernel)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)
        for kernel, had_own, run in self._patched:
            if had_own:
                kernel.run = run
            else:
                del kernel.run
        self._patched.clear()
        return False


@contextlib.contextmanager
def as_on_gpu(dot_dtype, precision: str, sm_count: int = 132):
    """Within the block, fastinr.backends.triton_backend.decode accepts CPU tensors and launches with a GPU's
    configuration (its row tiles; reductions split for `sm_count` SMs; H200: 132). For recording
    launches without running them (LaunchCounter(run_kernels=False)), never for running them."""
    from fastinr.backends import triton_backend as ops_decoder
    from fastinr.ops.config import LaunchConfig
    saved = LaunchConfig.__dict__["for_call"], ops_decoder.interpreting
    LaunchConfig.for_call = staticmethod(
        lambda device, block_m=None: LaunchConfig(dot_dtype, precision, sm_count, None))
    ops_decoder.interpreting = lambda: True
    try:
        yield
    finally:
        LaunchConfig.for_call, ops_decoder.interpreting = saved
