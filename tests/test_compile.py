"""torch.compile(model, fullgraph=True) through the custom ops of the native and triton backends.

The example's autoencoder (rpgkit's conv encoder) with the seed decoder and with an INRDecoder
(grid, FiLM, per-image BatchNorm, Gaussian features: its whole lowering to the contract) compiles
without a graph break on the CPU, with one fastinr::native_forward node per decode (native) or the
fastinr::triton_* ops of its launches (triton, under the interpreter); it trains a few SGD steps
and matches eager: the reconstructions, every gradient, the parameters and the
BatchNorm running buffers after the steps, and (seed) the eval-mode render.

Error model: the compiled float32 run may differ from the eager native float32 run by at most
K = 8 times the larger distance of the eager float32 runs (native, and the torch backend) from the
float64 torch backend's run of the same model (the oracle), per tensor (max abs). SGD keeps a
gradient's rounding error proportional in the next step's parameters (Adam's first steps would
turn the sign of near-zero gradients into whole learning-rate steps).

opcheck tests the ops' registration: schema, fake kernels (static and dynamic batch), autograd.
"""
import copy
import dataclasses
import os

import pytest
import torch

import fastinr
from fastinr.backends import available_backends
from fastinr.inr_decoder import INRDecoder
from rpgkit.models import EncoderDecoder, build_encoder
from tests.test_native import make_params, make_spec

SKIP_EXT = os.environ.get("FASTINR_SKIP_EXT", "0") == "1"
needs_native = pytest.mark.skipif(SKIP_EXT, reason="FASTINR_SKIP_EXT=1: the native extension was "
                                                   "deliberately not built")
if not SKIP_EXT:
    from fastinr.backends import native_ops
# The backends whose launches are custom ops: native (the extension), triton (its kernels under
# TRITON_INTERPRET=1 on the CPU, conftest.py).
COMPILED_BACKENDS = ([] if SKIP_EXT else ["native"]) + [b for b in ("triton",) if b in available_backends("cpu")]

K = 8
STEPS = 3
# (batch, image shape) per backend: the interpreter's cost grows with the pixels.
SIZES = {"native": (4, (3, 12, 12)), "triton": (2, (3, 8, 8))}


def seed_autoencoder(shape):
    code = 10
    decoder = fastinr.ImageManifoldDecoder(code, 3, num_hidden=16, num_blocks=2, num_layers_per_block=2,
                                           default_shape=shape[1:], activation_out="none", backend="native")
    return EncoderDecoder(build_encoder("conv", shape, code), decoder)


def inr_autoencoder(shape):
    grid, channels = 2, 2
    code = 8 + grid * grid * channels
    decoder = INRDecoder(code, hidden=16, conditioning="film", norm="image-bn", embedding="gaussian",
                         num_freqs=3, grid_size=grid, grid_channels=channels, default_shape=shape[1:],
                         backend="native")
    return EncoderDecoder(build_encoder("conv", shape, code, grid_size=grid, grid_channels=channels), decoder)


def train(model, images, compiled=False, inductor=True):
    """Per step: the reconstruction and every gradient; then the state (parameters, buffers).
    Compiled: Dynamo's graph, lowered by inductor or (inductor=False) run by AOTAutograd as traced."""
    graphs = []

    def backend(gm, example_inputs):
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        from torch._inductor.compile_fx import compile_fx
        graphs.append(gm)
        if inductor:
            return compile_fx(gm, example_inputs)
        as_traced = lambda graph, _: make_boxed_func(graph)  # noqa: E731
        return aot_autograd(fw_compiler=as_traced, bw_compiler=as_traced)(gm, example_inputs)

    run = torch.compile(model, backend=backend, fullgraph=True) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    record = []
    model.train()
    for x in images:
        optimizer.zero_grad(set_to_none=True)
        y = run(x)
        torch.nn.functional.mse_loss(y, x).backward()
        record.append({"reconstruction": y.detach().clone(),
                       **{f"grad of {name}": p.grad.clone() for name, p in model.named_parameters()}})
        optimizer.step()
    record.append({name: t.detach().clone() for name, t in model.state_dict().items()})
    return record, run, graphs


def assert_matches_eager(compiled, eager, others, oracle, what):
    assert compiled.keys() == eager.keys()
    for name, c in compiled.items():
        e, o = eager[name], oracle[name]
        assert (c.shape, c.dtype) == (e.shape, e.dtype), f"{what}, {name}: {c.shape} {c.dtype} vs eager"
        if not e.is_floating_point():
            assert torch.equal(c, e), f"{what}, {name}: {c} != {e}"
            continue
        err = (c.double() - e.double()).abs().max().item()
        eager_err = max((r[name].double() - o).abs().max().item() for r in (eager, *others))
        assert err <= K * eager_err, (f"{what}, {name}: compiled differs from eager by {err:.3e} > {K} x "
                                      f"{eager_err:.3e} (eager float32's distance to float64)")


def fastinr_ops_in(graph) -> list:
    """Names of the fastinr custom ops the graph calls, in order."""
    return [str(n.target).split(".")[1] for n in graph.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("fastinr.")]


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@pytest.mark.parametrize("build", [seed_autoencoder, inr_autoencoder], ids=["seed", "inr"])
def test_compiled_autoencoder_trains_like_eager(build, backend):
    batch, shape = SIZES[backend]
    model = build(shape)
    images = [torch.rand(batch, *shape) for _ in range(STEPS)]
    runs = {}
    for name, dtype, decoder_backend, compiled in (("compiled", torch.float32, backend, True),
                                                   ("eager", torch.float32, backend, False),
                                                   ("torch", torch.float32, "torch", False),
                                                   ("oracle", torch.float64, "torch", False)):
        copied = copy.deepcopy(model).to(dtype)
        copied.decoder.backend = decoder_backend
        # The Triton kernels run under the interpreter here: AOTAutograd's forward and backward
        # graphs (what inductor would lower around the ops on a GPU) without inductor's CPU code.
        runs[name] = train(copied, [x.to(dtype) for x in images], compiled, inductor=backend == "native")
    (compiled, run, graphs), (eager, eager_model, _) = runs["compiled"], runs["eager"]
    assert len(graphs) == 1, f"one graph expected, got {len(graphs)}"
    ops = fastinr_ops_in(graphs[0])
    if backend == "native":
        assert ops == ["native_forward"], f"one fastinr::native_forward node expected, got {ops}"
    else:   # the input layer, one Linear per layer and the output layer, a statistics op per block
        assert ops.count("triton_embed_linear") == 1 and "triton_linear" in ops, ops
        assert all(op.startswith("triton_") for op in ops), ops
    others, oracle = [runs["torch"][0]], runs["oracle"][0]
    for step in range(STEPS + 1):
        what = f"step {step}" if step < STEPS else "state after training"
        assert_matches_eager(compiled[step], eager[step], [o[step] for o in others], oracle[step], what)
    if build is seed_autoencoder:   # eval mode: BatchNorm from the running statistics, no saved tensors
        x = torch.rand(batch, *shape)
        rendered = {}
        for name, model_run in (("compiled", run), ("eager", eager_model), ("torch", runs["torch"][1]),
                                ("oracle", runs["oracle"][1])):
            model_run.eval()
            with torch.no_grad():
                rendered[name] = {"render": model_run(x.to(next(model_run.parameters()).dtype))}
        assert_matches_eager(rendered["compiled"], rendered["eager"], [rendered["torch"]], rendered["oracle"],
                             "eval render")


def op_inputs(norm_stats, modulation="none", offset=False, batch=3, shape=(5, 4)):
    spec = make_spec(code_size=3, hidden=6, concat=(False, False), freqs=(2.0,))
    spec = dataclasses.replace(spec, modulation=modulation)
    params, running = make_params(spec, torch.float64)
    codes = torch.randn(batch, spec.code_size, dtype=torch.float64, requires_grad=True)
    mods = torch.randn(*spec.mods_shape(batch), dtype=torch.float64, requires_grad=True) \
        if modulation != "none" else None
    # offset: False, True (a basis shared by the batch) or "per_image" (a basis (B, H, W, K))
    basis, cells = (torch.rand(*((batch,) if offset == "per_image" else ()), *shape, 2, dtype=torch.float64),
                    torch.randn(batch, 2, spec.hidden, dtype=torch.float64, requires_grad=True)) \
        if offset else (None, None)
    flat_running = [t for pair in running for t in pair] if norm_stats == "running" else []
    kwargs = dict(spec.op_fields(), height=shape[0], width=shape[1], norm_stats=norm_stats,
                  bf16_matmul=False, save=True)
    return (codes, params.flat(), flat_running, mods, basis, cells), kwargs, spec


@needs_native
@pytest.mark.parametrize("norm_stats,modulation,offset", [("image", "film", True), ("batch", "none", False),
                                                          ("running", "shift", True), ("batch", "none", "per_image")])
def test_opcheck(norm_stats, modulation, offset):
    args, kwargs, _ = op_inputs(norm_stats, modulation, offset)
    torch.library.opcheck(torch.ops.fastinr.native_forward, args, kwargs)


@needs_native
def test_fake_kernel_gives_every_output_shape():
    """The fake kernel's outputs (saved activations included) have the real ones' shapes, dtypes
    and strides, for per-image and per-batch statistics."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    for norm_stats, offset in (("image", True), ("batch", True), ("running", True), ("image", "per_image")):
        args, kwargs, _ = op_inputs(norm_stats, offset=offset)
        real = torch.ops.fastinr.native_forward(*args, **kwargs)
        with FakeTensorMode() as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else
                         [mode.from_tensor(t) for t in a] if isinstance(a, list) else a for a in args]
            fake = torch.ops.fastinr.native_forward(*fake_args, **kwargs)
        flat_real = [real[0], *real[1], *real[2], *real[3]]
        flat_fake = [fake[0], *fake[1], *fake[2], *fake[3]]
        assert len(flat_real) == len(flat_fake) and len(real[3]) > 0
        for k, (r, f) in enumerate(zip(flat_real, flat_fake)):
            assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride()), (norm_stats, k)


@needs_native
def test_plan_is_built_once_per_spec():
    spec = make_spec()
    assert native_ops.plan(spec) is native_ops.plan(make_spec())
    assert native_ops.plan(spec).num_params == len(make_params(spec, torch.float32)[0].flat())
    with pytest.raises(ValueError, match="activation must be one of"):
        native_ops.plan(make_spec(activation="swish"))
    with pytest.raises(ValueError, match="needs blocks of constant width"):
        native_ops.plan(dataclasses.replace(make_spec(concat=(True,)), modulation="film"))
