"""The kernel variants the seed's workloads launch on a GPU, captured without running them.

Triton compiles one variant per specialisation of the launch arguments: an int equal to 1
becomes a constant, an int divisible by 16 (the seed's 256, 1024, ...) and a 16-byte aligned
pointer get a divisibility hint, and an int past 2^31 is i64. Those variants are different
programs (vectorised loads, other register allocation) from the plain-i32 ones. Here the real
launchers run on the CPU with the GPU's launch configuration, every Triton launch is recorded
instead of run, and each argument is specialised by Triton's own rule, so tests/test_triton_aot.py
compiles exactly what a GPU would.
"""
import contextlib

# label: (kind, batch, (H, W)); each runs with fp32, tf32 and bf16 dots.
WORKLOADS = {
    "seed train 64x32x32": ("train", 64, (32, 32)),
    "render 64x128x128": ("render", 64, (128, 128)),
    "render 1x2048x2048": ("render", 1, (2048, 2048)),
    "render 1x4096x4096": ("render", 1, (4096, 4096)),
}
SEED = dict(code=102, out=3, hidden=256, blocks=2, layers=2, freqs=(7.0, 17.0))
GPU_SM_COUNT = 132


def _specialise(kernel, args, kwargs):
    """(meta with the constexprs and options, {arg: Triton type}, [names with a divisibility
    hint]) for one launch, by Triton's own specialisation rule."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    meta = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    values = dict(zip(kernel.arg_names, args))
    values.update({k: v for k, v in kwargs.items() if k not in meta})
    signature, divisible = {}, []
    for param in kernel.params:
        value = values[param.name]
        if param.is_constexpr:
            meta[param.name] = value
            continue
        kind, hint = native_specialize_impl(BaseBackend, value, False, True, True)
        if kind == "constexpr":
            meta[param.name] = hint
        else:
            signature[param.name] = kind
            if hint and "D" in hint:
                divisible.append(param.name)
    return meta, signature, divisible


@contextlib.contextmanager
def _recording(launches):
    from fastinr.ops.launches import triton_kernels
    kernels = triton_kernels()
    try:
        for name, kernel in kernels.items():
            def record(*args, grid, warmup, _name=name, _kernel=kernel, **kwargs):
                launches.append((_name, _specialise(_kernel, args, kwargs)))
            kernel.run = record
        yield
    finally:
        for kernel in kernels.values():
            vars(kernel).pop("run", None)


def launched_variants():
    """[(label, kernel name, meta, signature, divisible)] of every distinct variant launched by
    WORKLOADS, for each dot precision."""
    import torch
    import triton.language as tl

    from fastinr import ImageManifoldDecoder
    from fastinr.backends import triton_backend as ops_decoder
    from fastinr.ops.launches import as_on_gpu

    dots = {"fp32": (tl.float32, "ieee"), "tf32": (tl.float32, "tf32"), "bf16": (tl.bfloat16, "ieee")}
    variants = {}
    for dot_name, (dot_dtype, precision) in dots.items():
        with as_on_gpu(dot_dtype, precision, GPU_SM_COUNT):
            for workload, (kind, batch, shape) in WORKLOADS.items():
                torch.manual_seed(0)
                model = ImageManifoldDecoder(SEED["code"], SEED["out"], SEED["hidden"],
                                             SEED["blocks"], SEED["layers"],
                                             pos_embedding_freqs=SEED["freqs"], backend="torch")
                codes = torch.randn(batch, SEED["code"], requires_grad=kind == "train")
                running = [(n.running_mean, n.running_var) for n in model._norms()]
                launches = []
                with _recording(launches), torch.set_grad_enabled(kind == "train"):
                    colors, _ = ops_decoder.decode(
                        codes, model.decoder_params(), model.spec, shape,
                        "image" if kind == "train" else "running", running)
                    if kind == "train":
                        colors.sum().backward()
                for name, (meta, signature, divisible) in launches:
                    key = (name, repr(sorted(meta.items())), repr(sorted(signature.items())),
                           tuple(divisible))
                    variants.setdefault(key, (f"{dot_name} {workload}", name, meta, signature,
                                              divisible))
    return list(variants.values())
