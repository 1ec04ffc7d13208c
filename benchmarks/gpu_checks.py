"""Correctness of exactly the binaries benchmarks/gpu_report.py times, before it times them.

At the timed configuration (the seed decoder; a training step at batch 64, 32x32 with per-image
BatchNorm; an eval render with running statistics) and in the timed precisions (float32 with TF32
dots, bf16 autocast), the triton backend's colors and every gradient (codes, every weight and
bias, BatchNorm affine) are compared with the float64 reference on the same fresh inputs.

Error model: torch's own batched reference, run in the same precision (TF32 matmuls / bf16
autocast), makes an error e_torch against float64; the triton result may make at most
FACTOR * e_torch, with a floor of FLOOR_EPS * eps(dtype) * max|value| for quantities torch
happens to get (nearly) exact, and FACTOR * eps * max|value| where torch's own result overflows
(CPU fp16 autocast, in the dry run). Both sum the same rounded products in different orders, so
their errors are of the same size; 4x is the bound tests/test_triton.py holds for autocast.

The renders of every timed size run the same compiled variant (tests/aot_launches.py: all sizes
divisible by 16 specialise alike), so the render is checked at the smallest timed size.
"""
import math

import torch

FACTOR = 4.0
FLOOR_EPS = 0.5
EPS = {"tf32": 2.0 ** -10, "bf16": 2.0 ** -7, "fp16": 2.0 ** -10, "fp32": 2.0 ** -23}


def precision_context(precision: str, device: torch.device, cache_casts: bool = True):
    """(autocast context, allow_tf32) for a timed precision: "tf32" (float32 with TF32 dots),
    "bf16" or "fp16" (autocast). A CUDA graph capture needs cache_casts=False (torch.cuda.graphs)."""
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return (torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                           enabled=autocast_dtype is not None, cache_enabled=cache_casts),
            precision == "tf32")


def _models(spec_kwargs, device):
    from fastinr import ImageManifoldDecoder
    reference = ImageManifoldDecoder(**spec_kwargs, backend="torch").to(device)
    with torch.no_grad():   # BatchNorm affine and running statistics away from 1 / 0
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.weight.mul_(1 + 0.3 * torch.randn_like(module.weight))
                module.bias.copy_(0.3 * torch.randn_like(module.bias))
                module.running_mean.copy_(0.3 * torch.randn_like(module.running_mean))
                module.running_var.copy_(0.5 + torch.rand_like(module.running_var))
    state = reference.state_dict()
    models = {"float64": reference.double(),
              "torch": ImageManifoldDecoder(**spec_kwargs, backend="torch"),
              "triton": ImageManifoldDecoder(**spec_kwargs, backend="triton")}
    for name in ("torch", "triton"):
        models[name].to(device).load_state_dict({k: v.float() if v.is_floating_point() else v
                                                 for k, v in state.items()})
    return models


def _compare(name, got, want, base, precision):
    """One row: the triton error, torch's own error and the bound."""
    want = want.double()
    scale = want.abs().max().item()
    torch_error = (base.double() - want).abs().max().item()
    if math.isfinite(torch_error):
        allowed = max(FACTOR * torch_error, FLOOR_EPS * EPS[precision] * scale)
    else:   # torch's CPU fp16 autocast overflows in some gradients: bound by eps instead
        allowed = FACTOR * EPS[precision] * scale
    error = (got.double() - want).abs().max().item() if torch.isfinite(got).all() else math.inf
    return dict(what=name, max_error=error, torch_error=torch_error, allowed=allowed,
                ok=error <= allowed)


def check_training(spec_kwargs, batch, shape, precision, device):
    """Rows for a training step's colors and every gradient."""
    models = _models(spec_kwargs, device)
    codes = torch.randn(batch, spec_kwargs["num_input_channels"], device=device)
    upstream = torch.randn(batch, spec_kwargs["num_output_channels"], *shape, device=device,
                           dtype=torch.float64)
    autocast, tf32 = precision_context(precision, device)
    results = {}
    for name, model in models.items():
        model.train()
        real = torch.float64 if name == "float64" else torch.float32
        inputs = codes.to(real).requires_grad_()
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32 and name != "float64"
        try:
            with autocast if name != "float64" else torch.autocast(device.type, enabled=False):
                colors = model(inputs, shape)
            grads = torch.autograd.grad(colors, [inputs] + list(model.parameters()),
                                        upstream.to(colors.dtype))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
        results[name] = [colors] + list(grads)
    names = ["colors", "grad codes"] + [f"grad {n}" for n, _ in models["float64"].named_parameters()]
    return [_compare(f"train {precision} {n}", got, want, base, precision)
            for n, got, want, base in zip(names, results["triton"], results["float64"],
                                          results["torch"])]


def check_render(spec_kwargs, batch, shape, precision, device):
    """One row: eval-mode colors (the one-pass render kernel)."""
    models = _models(spec_kwargs, device)
    codes = torch.randn(batch, spec_kwargs["num_input_channels"], device=device)
    autocast, tf32 = precision_context(precision, device)
    colors = {}
    for name, model in models.items():
        model.eval()
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32 and name != "float64"
        try:
            with torch.no_grad(), (autocast if name != "float64"
                                   else torch.autocast(device.type, enabled=False)):
                real = torch.float64 if name == "float64" else torch.float32
                colors[name] = model(codes.to(real), shape)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    return [_compare(f"render {precision} colors", colors["triton"], colors["float64"],
                     colors["torch"], precision)]


def check_compiled(spec_kwargs, batch, shape, device):
    """torch.compile(model, fullgraph=True) of the decoder on the triton backend (issue 15): one
    training step, compiled vs the float64 reference, within FACTOR x the eager triton step's own
    error (float32, no TF32). A graph break raises under fullgraph: the caller reports it."""
    import copy
    models = _models(spec_kwargs, device)
    compiled = torch.compile(copy.deepcopy(models["triton"]), fullgraph=True)
    codes = torch.randn(batch, spec_kwargs["num_input_channels"], device=device)
    upstream = torch.randn(batch, spec_kwargs["num_output_channels"], *shape, device=device,
                           dtype=torch.float64)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {}
    try:
        for name, model in (("float64", models["float64"]), ("triton", models["triton"]),
                            ("compiled", compiled)):
            model.train()
            inputs = codes.to(torch.float64 if name == "float64" else torch.float32).requires_grad_()
            colors = model(inputs, shape)
            params = list(models[name].parameters()) if name != "compiled" else list(compiled.parameters())
            grads = torch.autograd.grad(colors, [inputs] + params, upstream.to(colors.dtype))
            results[name] = [colors] + list(grads)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    names = ["colors", "grad codes"] + [f"grad {n}" for n, _ in models["float64"].named_parameters()]
    return [_compare(f"compiled train fp32 {n}", got, want, base, "fp32")
            for n, got, want, base in zip(names, results["compiled"], results["float64"],
                                          results["triton"])]
