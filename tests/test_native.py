"""The native backend (csrc/, fastinr._C) against fastinr.reference.decode.

Outputs, the gradients of the codes and of every params tensor, and the BlockStats, in float64
(tight) and float32 (scaled to each tensor's magnitude), over blocks 0-3, layers 0-3, hidden 8..256,
concat on/off/mixed, BatchNorm off / per image / per batch / running, every activation, 0-4
frequencies, shapes 1x1 .. 32x32 (several tiles per image, ragged last tile), batch 1..5.
The extension must be built unless FASTINR_SKIP_EXT=1 says it was deliberately not.
"""
import dataclasses
import functools
import os

import pytest
import torch

import fastinr
from fastinr import backends as backend, reference
from fastinr.activations import ACTIVATION_NAMES
from fastinr.contract import DecoderParams, DecoderSpec, InputOffset
from tests.error_model import moved

if os.environ.get("FASTINR_SKIP_EXT", "0") == "1":
    pytest.skip("FASTINR_SKIP_EXT=1: the native extension was deliberately not built",
                allow_module_level=True)
from fastinr.backends import native_backend as native  # noqa: E402  (must import: a missing build fails here, loudly)

# (spec kwargs, shape, batch, norm_stats)
CONFIGS = [
    (dict(), (7, 13), 5, "image"),
    (dict(hidden=256), (32, 32), 5, "image"),
    (dict(hidden=256, code_size=3), (32, 32), 1, "batch"),
    (dict(hidden=24, concat=(True, False)), (31, 17), 3, "image"),
    (dict(hidden=24, concat=(True, False)), (31, 17), 3, "batch"),
    (dict(hidden=24, concat=(False, True)), (31, 17), 2, "running"),
    # a block wider than the BatchNorm backward's 256-column partial sums (136 -> 272), per batch
    (dict(hidden=136, concat=(True, False)), (9, 11), 2, "batch"),
    (dict(hidden=8, concat=(False,), layers_per_block=1, freqs=()), (7, 13), 1, "image"),
    (dict(hidden=16, concat=(False,) * 3, layers_per_block=3, activation="relu"), (7, 13), 5, "batch"),
    (dict(hidden=12, concat=(True, True), activation="silu"), (7, 13), 5, "image"),
    (dict(hidden=12, concat=(False, True, False), activation="tanh"), (7, 13), 3, "running"),
    (dict(hidden=20, concat=(True, False, True), batch_norm=False, activation="relu6",
          activation_out="none"), (7, 13), 5, "image"),
    (dict(hidden=24, batch_norm=False, activation="sigmoid", activation_out="tanh",
          freqs=(1, 2.5, 7, 17)), (32, 32), 5, "image"),
    (dict(hidden=32, batch_norm=False, freqs=(3,)), (1, 1), 5, "image"),
    (dict(hidden=32, concat=(False, True), freqs=(3,)), (1, 1), 5, "running"),
    (dict(hidden=16, concat=(), activation_out="relu"), (7, 13), 5, "image"),
    (dict(hidden=16, layers_per_block=0), (7, 13), 5, "image"),
    (dict(hidden=16, layers_per_block=0, concat=(True, False)), (7, 13), 2, "batch"),
    (dict(hidden=16, out_channels=1, activation_out="none", freqs=(2, 4, 8)), (32, 32), 1, "image"),
    (dict(hidden=9, out_channels=40, activation="silu", activation_out="gelu"), (5, 3), 2, "batch"),
    # LayerNorm over each pixel's features: plain, concat (widths double), without layers, 1 pixel
    (dict(hidden=24, batch_norm=False, layer_norm=True), (7, 13), 3, "image"),
    (dict(hidden=12, concat=(True, False), batch_norm=False, layer_norm=True, activation="tanh"), (31, 17), 2,
     "batch"),
    (dict(hidden=16, layers_per_block=0, batch_norm=False, layer_norm=True), (7, 13), 2, "running"),
    (dict(hidden=32, batch_norm=False, layer_norm=True, freqs=(3,)), (1, 1), 5, "image"),
]
DTYPES = [(torch.float64, 1e-10), (torch.float32, 2e-5)]


def make_spec(code_size=11, out_channels=3, hidden=16, concat=(False, False), layers_per_block=2,
              freqs=(7.0, 17.0), batch_norm=True, activation="gelu", activation_out="sigmoid", layer_norm=False):
    return DecoderSpec(code_size=code_size, out_channels=out_channels, hidden=hidden,
                       concat=tuple(concat), layers_per_block=layers_per_block,
                       freqs=tuple(float(f) for f in freqs), batch_norm=batch_norm,
                       activation=activation, activation_out=activation_out, layer_norm=layer_norm)


def make_params(spec, dtype, requires_grad=True):
    """Random parameters with nn.Linear's scale and non-trivial BatchNorm affine and statistics."""
    def linear(out, inp):
        bound = inp ** -0.5
        return (torch.empty(out, inp, dtype=dtype).uniform_(-bound, bound),
                torch.empty(out, dtype=dtype).uniform_(-bound, bound))
    widths = spec.block_widths
    w_in, b_in = linear(spec.hidden, spec.code_size + spec.embedding_size)
    n_norm = spec.num_blocks if spec.normalized else 0
    norm_weight = tuple(torch.empty(widths[i], dtype=dtype).uniform_(0.5, 1.5) for i in range(n_norm))
    norm_bias = tuple(torch.randn(widths[i], dtype=dtype) * 0.3 for i in range(n_norm))
    weights, biases = [], []
    for w in widths:
        layers = [linear(w, w) for _ in range(spec.layers_per_block)]
        weights.append(tuple(l[0] for l in layers))
        biases.append(tuple(l[1] for l in layers))
    w_out, b_out = linear(spec.out_channels, spec.out_width)
    params = DecoderParams(w_in, b_in, norm_weight, norm_bias, tuple(weights), tuple(biases), w_out, b_out)
    tensors = [t.requires_grad_(requires_grad) for t in params.flat()]
    running = [(torch.randn(w, dtype=dtype) * 0.3, torch.empty(w, dtype=dtype).uniform_(0.5, 1.5))
               for w in widths] if spec.batch_norm else []
    return DecoderParams.from_flat(spec, tensors), running


def assert_close_scaled(actual, expected, rel, what, torch_error=None):
    """max |actual - expected| <= rel * max|expected|; in float32 also allowed 8x the error torch's
    own float32 results (torch_error: one result or several) make against the float64 `expected`.
    Where a result is ill-conditioned (per-image BatchNorm over near-constant channels), one
    float32 result may round well by luck; torch's result on inputs perturbed by one float32 ulp
    (`moved`) measures the error float32 inputs carry anyway, whatever the summation order."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    if not expected.numel():
        return
    scale = max(expected.abs().max().item(), 1e-3)
    err = (actual.double() - expected.double()).abs().max().item()
    allowed = rel * scale
    for result in ([] if torch_error is None else
                   torch_error if isinstance(torch_error, (list, tuple)) else [torch_error]):
        allowed = max(allowed, 8 * (result.double() - expected.double()).abs().max().item())
    assert err <= allowed, f"{what}: max error {err:.3e} > allowed {allowed:.3e} (scale {scale:.3e})"


def moved_params(spec, params, running):
    """(params, running) with every element moved by one ulp (tests/error_model.moved): the inputs
    of torch's second float32 result in the error model."""
    return (DecoderParams.from_flat(spec, [moved(t.detach()).requires_grad_(True) for t in params.flat()]),
            [(moved(m), moved(v)) for m, v in running])


def run(module, codes, params, spec, shape, norm_stats, running, upstream):
    codes = codes.detach().clone().requires_grad_(True)
    colors, stats = module.decode(codes, params, spec, shape, norm_stats, running)
    grads = torch.autograd.grad(colors, [codes, *params.flat()], upstream)
    return colors.detach(), stats, grads


def check_against_reference(spec, shape, batch, norm_stats, dtype, rel):
    """Native vs the reference in the same dtype; float32 is judged against the float64 reference."""
    params, running = make_params(spec, dtype)
    codes = torch.randn(batch, spec.code_size, dtype=dtype)
    upstream = torch.randn(batch, spec.out_channels, *shape, dtype=dtype)
    out = run(native, codes, params, spec, shape, norm_stats, running, upstream)
    ref = run(reference, codes, params, spec, shape, norm_stats, running, upstream)
    same_dtype = []   # torch's own results in dtype: on the inputs, and on the inputs moved by one ulp
    if dtype != torch.float64:
        params64 = DecoderParams.from_flat(spec, [t.detach().double().requires_grad_(True) for t in params.flat()])
        running64 = [(m.double(), v.double()) for m, v in running]
        params_moved, running_moved = moved_params(spec, params, running)
        same_dtype = [ref, run(reference, moved(codes), params_moved, spec, shape, norm_stats, running_moved,
                               moved(upstream))]
        ref = run(reference, codes.double(), params64, spec, shape, norm_stats, running64, upstream.double())
    assert out[0].dtype == dtype and all(g.dtype == dtype for g in out[2]), "dtype of the results"

    def torch_error(get):
        return [get(r) for r in same_dtype] or None

    assert_close_scaled(out[0], ref[0], rel, "colors", torch_error(lambda r: r[0]))
    assert len(out[1]) == len(ref[1]), "number of BlockStats"
    for i, (a, b) in enumerate(zip(out[1], ref[1])):
        assert a.count == b.count, f"stats[{i}].count {a.count} != {b.count}"
        assert a.mean.dtype == a.var.dtype == dtype, f"stats[{i}] dtype"
        assert_close_scaled(a.mean, b.mean, rel, f"stats[{i}].mean", torch_error(lambda r: r[1][i].mean))
        assert_close_scaled(a.var, b.var, rel, f"stats[{i}].var", torch_error(lambda r: r[1][i].var))
        assert not a.mean.requires_grad and not a.var.requires_grad, "BlockStats must be detached"
    names = ["codes"] + [f"params[{k}]" for k in range(len(params.flat()))]
    for k, (name, a, b) in enumerate(zip(names, out[2], ref[2])):
        assert_close_scaled(a, b, rel, f"grad of {name}", torch_error(lambda r: r[2][k]))


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("kwargs,shape,batch,norm_stats", CONFIGS, ids=[f"cfg{k}" for k in range(len(CONFIGS))])
def test_matches_reference(kwargs, shape, batch, norm_stats, dtype, rel):
    check_against_reference(make_spec(**kwargs), shape, batch, norm_stats, dtype, rel)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["f64", "f32"])
def test_every_activation(activation, dtype, rel):
    spec = make_spec(hidden=10, activation=activation, activation_out=activation, freqs=(3.0,))
    check_against_reference(spec, (6, 5), 2, "image", dtype, rel)


@pytest.mark.parametrize("norm_stats,batch_norm,layer_norm", [("image", True, False), ("batch", True, False),
                                                              ("running", True, False), ("image", False, False),
                                                              ("image", False, True)])
def test_gradcheck(norm_stats, batch_norm, layer_norm):
    spec = make_spec(code_size=3, hidden=5, concat=(True, False), batch_norm=batch_norm, freqs=(2.0,),
                     activation="silu", layer_norm=layer_norm)
    params, running = make_params(spec, torch.float64)
    codes = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    tensors = params.flat()

    def fn(codes, *tensors):
        return native.decode(codes, DecoderParams.from_flat(spec, tensors), spec, (3, 4), norm_stats, running)[0]

    assert torch.autograd.gradcheck(fn, (codes, *tensors), eps=1e-6, atol=1e-7)


def test_thread_counts_agree():
    spec = make_spec(hidden=48, concat=(True, False))
    params, running = make_params(spec, torch.float32)
    codes = torch.randn(5, spec.code_size)
    upstream = torch.randn(5, 3, 31, 17)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(run(native, codes, params, spec, (31, 17), "image", running, upstream))
    finally:
        torch.set_num_threads(threads)
    (c1, s1, g1), (c2, s2, g2) = results
    assert_close_scaled(c2, c1, 1e-6, "colors")
    for a, b in zip(s2, s1):
        assert torch.equal(a.mean, b.mean) and torch.equal(a.var, b.var), "stats depend on the thread count"
    for k, (a, b) in enumerate(zip(g2, g1)):
        assert_close_scaled(a, b, 1e-5, f"grad {k}")


@pytest.mark.parametrize("batch", [1, 5])
def test_both_schedules_of_per_image_statistics(batch):
    """With per-image statistics the core takes each image through all its passes on one thread
    when there are at least as many images as threads (batch 5 on 2 threads), else one pass over
    all tiles per block (batch 1): both against the reference, forward and backward. A concat block
    widens the later blocks, so threads whose images are at different blocks at the same moment
    would collide in any buffer laid out by block width (repeated: such a race shows by chance)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for _ in range(4):
            for dtype, rel in DTYPES:
                check_against_reference(make_spec(hidden=24, concat=(False, True, False)), (31, 17), batch,
                                        "image", dtype, rel)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("layers_per_block", [0, 1, 2])
@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["f64", "f32"])
def test_streaming_render_matches_reference(layers_per_block, dtype, rel):
    """Eval mode without gradients: one streaming pass over many tiles per image (the last one
    partial), the positional projection split into a column and a row part, and the running
    BatchNorm folded into each block's first Linear (kept apart when a block has no Linear)."""
    spec = make_spec(hidden=32, concat=(False, True), layers_per_block=layers_per_block)
    params, running = make_params(spec, dtype, requires_grad=False)
    codes = torch.randn(2, spec.code_size, dtype=dtype)
    with torch.no_grad():
        ours, stats = native.decode(codes, params, spec, (45, 61), "running", running)
        ref, _ = reference.decode(codes, params, spec, (45, 61), "running", running)
    assert stats == []
    assert_close_scaled(ours, ref, rel, "colors")


@pytest.fixture
def restore_isa():
    from fastinr import _C
    before = _C.elementwise_isa()
    yield _C
    _C.set_elementwise_isa(before)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "generic"])
def test_every_cpu_kernel_set_matches_reference(isa, restore_isa):
    """The float activation kernels and the float and double normalisation row kernels are built
    per instruction set and picked at run time: check each set this CPU can run, in training
    (forward + backward, per-image and per-batch statistics) and in the streaming render."""
    if isa not in restore_isa.elementwise_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernels")
    restore_isa.set_elementwise_isa(isa)
    assert restore_isa.elementwise_isa() == isa
    check_against_reference(make_spec(hidden=40, concat=(True, False), activation="gelu"), (9, 14), 3,
                            "image", torch.float32, 2e-5)
    check_against_reference(make_spec(hidden=20, activation="silu"), (9, 14), 3, "batch", *DTYPES[0])
    spec = make_spec(hidden=24, activation="silu", activation_out="tanh")
    params, running = make_params(spec, torch.float32, requires_grad=False)
    codes = torch.randn(3, spec.code_size)
    with torch.no_grad():
        ours, _ = native.decode(codes, params, spec, (40, 37), "running", running)
        ref, _ = reference.decode(codes, params, spec, (40, 37), "running", running)
    assert_close_scaled(ours, ref, 2e-5, "colors")


def test_unknown_cpu_kernel_set_is_refused(restore_isa):
    with pytest.raises(ValueError, match=r"isa: expected one this CPU supports \(.*generic\), got 'sse9'"):
        restore_isa.set_elementwise_isa("sse9")


def test_saved_blocks_are_reused_only_once_released():
    """Saved activations come from a cache of freed blocks: graphs alive at the same time never share
    one, a released graph's blocks serve the next forward, and empty_cache() frees them. Running
    statistics, so that no backward carry buffer (also cached) is counted with the saved blocks."""
    spec = make_spec(hidden=16)
    params, running = make_params(spec, torch.float64)
    upstream = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    native.empty_cache()
    assert native.cached_bytes() == 0

    def forward(codes):
        return native.decode(codes.detach().requires_grad_(True), params, spec, (9, 7), "running", running)[0]

    codes = [torch.randn(2, spec.code_size, dtype=torch.float64) for _ in range(3)]
    first, second = forward(codes[0]), forward(codes[1])   # two graphs alive together
    torch.autograd.grad(second, params.flat(), upstream)   # releases the second graph's blocks
    released = native.cached_bytes()
    assert released > 0
    third = forward(codes[2])                               # takes them back
    assert native.cached_bytes() == 0
    for colors, c in ((first, codes[0]), (third, codes[2])):
        c = c.detach().requires_grad_(True)
        ours = torch.autograd.grad(colors, params.flat(), upstream)
        ref_colors, _ = reference.decode(c, params, spec, (9, 7), "running", running)
        ref = torch.autograd.grad(ref_colors, params.flat(), upstream)
        for k, (a, b) in enumerate(zip(ours, ref)):
            assert_close_scaled(a, b, 1e-10, f"grad of params[{k}]")
    assert native.cached_bytes() == 2 * released
    native.empty_cache()
    assert native.cached_bytes() == 0


@pytest.mark.parametrize("norm_stats", ["image", "batch"])
def test_no_grad_with_batch_statistics(norm_stats):
    """Without autograd the multi-pass forward keeps only the block inputs it reads back."""
    spec = make_spec(hidden=24, concat=(True, False, False), layers_per_block=1)
    params, running = make_params(spec, torch.float64)
    codes = torch.randn(3, spec.code_size, dtype=torch.float64)
    with torch.no_grad():
        ours, ours_stats = native.decode(codes, params, spec, (19, 11), norm_stats)
        ref, ref_stats = reference.decode(codes, params, spec, (19, 11), norm_stats)
    assert not ours.requires_grad
    assert_close_scaled(ours, ref, 1e-10, "colors")
    for i, (a, b) in enumerate(zip(ours_stats, ref_stats)):
        assert_close_scaled(a.mean, b.mean, 1e-10, f"stats[{i}].mean")
        assert_close_scaled(a.var, b.var, 1e-10, f"stats[{i}].var")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["f64", "f32"])
def test_cuda_render_matches_reference(dtype, rel):
    if not native.renders_on_cuda():
        pytest.fail("a GPU is present but fastinr._C was built without CUDA (nvcc missing at build time?)")
    spec = make_spec(hidden=48, concat=(True, False), activation="silu")
    params, running = make_params(spec, dtype, requires_grad=False)
    params = DecoderParams.from_flat(spec, [t.cuda() for t in params.flat()])
    running = [(m.cuda(), v.cuda()) for m, v in running]
    codes = torch.randn(3, spec.code_size, dtype=dtype, device="cuda")
    with torch.no_grad():
        ours, stats = native.decode(codes, params, spec, (37, 29), "running", running)
        ref, _ = reference.decode(codes, params, spec, (37, 29), "running", running)
    assert stats == [] and ours.device == codes.device
    assert_close_scaled(ours.cpu(), ref.cpu(), rel, "colors")
    with pytest.raises(ValueError, match="only renders in eval mode"):
        native.decode(codes, params, spec, (37, 29), "image")


@pytest.mark.parametrize("batch_norm_stats", ["image", "batch"])
def test_module_running_stats_match_torch_backend(batch_norm_stats):
    kwargs = dict(num_hidden=16, num_blocks=2, concat_residual=(True, False), batch_norm_stats=batch_norm_stats)
    torch_model = fastinr.ImageManifoldDecoder(7, backend="torch", **kwargs).double()
    native_model = fastinr.ImageManifoldDecoder(7, backend="native", **kwargs).double()
    native_model.load_state_dict(torch_model.state_dict())
    for _ in range(3):
        codes = torch.randn(4, 7, dtype=torch.float64)
        upstream = torch.randn(4, 3, 6, 9, dtype=torch.float64)
        for model in (torch_model, native_model):
            model.train()
            model.zero_grad()
            (model(codes, (6, 9)) * upstream).sum().backward()
        for (name, a), b in zip(torch_model.named_parameters(), native_model.parameters()):
            assert_close_scaled(b.grad, a.grad, 1e-10, f"grad of {name}")
    for (name, a), b in zip(torch_model.state_dict().items(), native_model.state_dict().values()):
        if a.is_floating_point():
            assert_close_scaled(b, a, 1e-10, name)
        else:
            assert torch.equal(a, b), name
    codes = torch.randn(3, 7, dtype=torch.float64)
    torch_model.eval(), native_model.eval()
    assert_close_scaled(native_model(codes, (5, 4)), torch_model(codes, (5, 4)), 1e-10, "eval colors")


def test_backend_selection(monkeypatch):
    assert "native" in fastinr.available_backends("cpu")
    monkeypatch.delenv("FASTINR_BACKEND", raising=False)
    assert fastinr.resolve_backend("auto", "cpu") == ("native", native.decode)
    monkeypatch.setenv("FASTINR_BACKEND", "native")
    assert backend.resolve_backend("auto", "cpu")[0] == "native"
    assert native.supports("cpu") is None and "built without meta support" in native.supports("meta")


def test_bad_inputs_raise_clear_errors():
    """The contract's checks (through fastinr.backends.decode) and the extension's own."""
    spec = make_spec(hidden=8)
    params, running = make_params(spec, torch.float32)
    codes = torch.randn(2, spec.code_size)
    with pytest.raises(ValueError, match="norm_stats must be one of"):
        backend.decode(codes, params, spec, (4, 4), "nonsense", backend="native")
    with pytest.raises(ValueError, match=r"codes must have shape \(B, 11\)"):
        backend.decode(codes[0], params, spec, (4, 4), backend="native")
    with pytest.raises(TypeError, match="params.w_in has dtype Double but codes have Float"):
        native.decode(codes, params._replace(w_in=params.w_in.double()), spec, (4, 4))
    with pytest.raises(ValueError, match=r"params.w_out must have shape \[3, 8\], got \[3, 7\]"):
        native.decode(codes, params._replace(w_out=params.w_out[:, 1:]), spec, (4, 4))
    with pytest.raises(ValueError, match=r"codes must have 11 channels \(spec.code_size\), got \(2, 10\)"):
        backend.decode(codes[:, 1:], params, spec, (4, 4), backend="native")
    with pytest.raises(ValueError, match=r"params.w_in must have shape \[8, 21\], got \[8, 20\]"):
        native.decode(codes, params._replace(w_in=params.w_in[:, 1:]), spec, (4, 4))
    with pytest.raises(ValueError, match="running must hold"):
        backend.decode(codes, params, spec, (4, 4), "running", running[:1], backend="native")
    with pytest.raises(ValueError, match=r"running\[1\].var must have shape \[8\]"):
        native.decode(codes, params, spec, (4, 4), "running", [running[0], (running[1][0], running[1][1][:3])])
    with pytest.raises(ValueError, match="needs more than one value per channel"):
        native.decode(codes, params, spec, (1, 1), "image")
    with pytest.raises(ValueError, match=r"shape must be \(H, W\)"):
        native.decode(codes, params, spec, (0, 4))
    with pytest.raises(TypeError, match="codes must be float32 or float64, got Long"):
        native.decode(codes.long(), params, spec, (4, 4))


MODULATED = [("film", True, "image"), ("film", False, "image"), ("shift", True, "batch"), ("film", True, "running"),
             ("shift", False, "image")]


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("modulation,batch_norm,norm_stats", MODULATED)
def test_modulated_decoder_matches_reference(modulation, batch_norm, norm_stats, dtype, rel):
    """Per-image shift / FiLM of every pre-activation: colors and the gradients of codes, mods
    (both halves for FiLM) and every parameter; codes may be empty (FiLM-only conditioning)."""
    spec = dataclasses.replace(make_spec(hidden=12, batch_norm=batch_norm, layers_per_block=2),
                               modulation=modulation)
    for code_size in (spec.code_size, 0):
        spec = dataclasses.replace(spec, code_size=code_size)
        params, running = make_params(spec, dtype)
        codes = torch.randn(3, code_size, dtype=dtype)
        mods = (torch.randn(*spec.mods_shape(3), dtype=dtype) * 0.5).requires_grad_(True)
        upstream = torch.randn(3, 3, 19, 11, dtype=dtype)
        results = []
        # native; torch in the same dtype, on the inputs and one ulp off them (its own rounding
        # error bounds ours); float64
        for module, cast in ((native, lambda t: t), (reference, lambda t: t), (reference, moved),
                             (reference, lambda t: t.double())):
            c = cast(codes).detach().requires_grad_(True)
            m = cast(mods).detach().requires_grad_(True)
            p = DecoderParams.from_flat(spec, [cast(t).detach().requires_grad_(True) for t in params.flat()])
            r = [(cast(a), cast(b)) for a, b in running]
            colors, _ = module.decode(c, p, spec, (19, 11), norm_stats, r, mods=m)
            grads = torch.autograd.grad(colors, [c, m, *p.flat()], cast(upstream))
            results.append((colors.detach(), grads))
        (colors, grads), (torch_colors, torch_grads), (off_colors, off_grads), (ref_colors, ref_grads) = results
        assert_close_scaled(colors, ref_colors, rel, "colors", [torch_colors, off_colors])
        names = ["codes", "mods"] + [f"params[{k}]" for k in range(len(params.flat()))]
        for name, a, t, o, b in zip(names, grads, torch_grads, off_grads, ref_grads):
            assert_close_scaled(a, b, rel, f"grad of {name}", [t, o])


def test_modulated_gradcheck_and_render():
    spec = dataclasses.replace(make_spec(code_size=2, hidden=4, freqs=(2.0,), activation="silu"), modulation="film")
    params, running = make_params(spec, torch.float64)
    codes = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    mods = torch.randn(*spec.mods_shape(2), dtype=torch.float64, requires_grad=True)

    def fn(codes, mods, *tensors):
        return native.decode(codes, DecoderParams.from_flat(spec, tensors), spec, (3, 4), "image", mods=mods)[0]

    assert torch.autograd.gradcheck(fn, (codes, mods, *params.flat()), eps=1e-6, atol=1e-7)
    with torch.no_grad():  # the streaming render (BatchNorm folded) with modulation
        ours, _ = native.decode(codes, params, spec, (40, 37), "running", running, mods=mods)
        ref, _ = reference.decode(codes, params, spec, (40, 37), "running", running, mods=mods)
    assert_close_scaled(ours, ref, 1e-10, "colors")


def test_bad_mods_raise_clear_errors():
    spec = dataclasses.replace(make_spec(hidden=8), modulation="film")
    params, _ = make_params(spec, torch.float32)
    codes = torch.randn(2, spec.code_size)
    with pytest.raises(ValueError, match=r"mods must be a tensor of shape \(2, 5, 2, 8\)"):
        backend.decode(codes, params, spec, (4, 4), "image", mods=torch.zeros(2, 5, 1, 8), backend="native")
    with pytest.raises(ValueError, match="mods must be a tensor"):
        backend.decode(codes, params, spec, (4, 4), "image", backend="native")
    plain = make_spec(hidden=8)
    with pytest.raises(ValueError, match="spec.modulation is 'none'"):
        backend.decode(codes, params, plain, (4, 4), "image", mods=torch.zeros(2, 5, 2, 8), backend="native")
    concat = dataclasses.replace(make_spec(hidden=8, concat=(True, False)), modulation="shift")
    with pytest.raises(ValueError, match="no concat"):
        backend.decode(codes, make_params(concat, torch.float32)[0], concat, (4, 4), "image",
                       mods=torch.zeros(2, 5, 1, 8), backend="native")


OFFSET_CASES = [(True, "image", "none"), (False, "image", "film"), (True, "batch", "shift"), (True, "running", "none"),
                (False, "running", "none")]


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["f64", "f32"])
@pytest.mark.parametrize("batch_norm,norm_stats,modulation", OFFSET_CASES)
@pytest.mark.parametrize("per_image", [False, True], ids=["shared", "per_image"])
def test_input_offset_matches_reference(batch_norm, norm_stats, modulation, dtype, rel, per_image):
    """basis[p] @ cells[b] (basis[b, p] @ cells[b] with a per-image basis) added to the input
    layer's pre-activation (how a local latent grid or per-image query points enter): colors and
    the gradients of codes, cells, mods and every parameter, in training; the streaming render
    without gradients."""
    spec = dataclasses.replace(make_spec(hidden=12, batch_norm=batch_norm, activation_out="none"),
                               modulation=modulation)
    shape, rank = (19, 11), 7
    params, running = make_params(spec, dtype)
    codes = torch.randn(3, spec.code_size, dtype=dtype)
    basis = torch.rand(*((3,) if per_image else ()), *shape, rank, dtype=dtype)
    cells = torch.randn(3, rank, spec.hidden, dtype=dtype)
    mods = torch.randn(*spec.mods_shape(3), dtype=dtype) * 0.5 if modulation != "none" else None
    upstream = torch.randn(3, 3, *shape, dtype=dtype)
    results = []
    for module, cast in ((native, lambda t: t), (reference, lambda t: t), (reference, moved),
                         (reference, lambda t: t.double())):
        c, k = (cast(t).detach().requires_grad_(True) for t in (codes, cells))
        m = cast(mods).detach().requires_grad_(True) if mods is not None else None
        p = DecoderParams.from_flat(spec, [cast(t).detach().requires_grad_(True) for t in params.flat()])
        r = [(cast(a), cast(b)) for a, b in running]
        colors, _ = module.decode(c, p, spec, shape, norm_stats, r, mods=m, input_offset=InputOffset(cast(basis), k))
        inputs = [c, k, *([m] if m is not None else []), *p.flat()]
        results.append((colors.detach(), torch.autograd.grad(colors, inputs, cast(upstream))))
    (colors, grads), (torch_colors, torch_grads), (off_colors, off_grads), (ref_colors, ref_grads) = results
    assert_close_scaled(colors, ref_colors, rel, "colors", [torch_colors, off_colors])
    names = ["codes", "cells"] + (["mods"] if mods is not None else []) + \
        [f"params[{k}]" for k in range(len(params.flat()))]
    for name, a, t, o, b in zip(names, grads, torch_grads, off_grads, ref_grads):
        assert_close_scaled(a, b, rel, f"grad of {name}", [t, o])
    if norm_stats == "running" or not batch_norm:
        with torch.no_grad():
            ours, _ = native.decode(codes, params, spec, shape, norm_stats, running, mods=mods,
                                    input_offset=InputOffset(basis, cells))
        assert_close_scaled(ours, ref_colors.to(dtype), rel, "colors of the render",
                            [torch_colors, off_colors])


def offset_gradcheck(spec, params, codes, basis):
    """gradcheck of a (3, 4) decode through the extension with an input offset of `basis` and fresh
    cells (B=2, K=5, hidden 4); returns the cells."""
    cells = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)

    def fn(codes, cells, *tensors):
        return native.decode(codes, DecoderParams.from_flat(spec, tensors), spec, (3, 4), "image",
                             input_offset=InputOffset(basis, cells))[0]

    assert torch.autograd.gradcheck(fn, (codes, cells, *params.flat()), eps=1e-6, atol=1e-7)
    return cells


def test_input_offset_gradcheck_and_bad_inputs():
    spec = make_spec(code_size=2, hidden=4, freqs=(2.0,), activation="silu")
    params, _ = make_params(spec, torch.float64)
    codes = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    basis = torch.rand(3, 4, 5, dtype=torch.float64)
    cells = offset_gradcheck(spec, params, codes, basis)
    for name in ("native", "torch"):
        decode = functools.partial(backend.decode, backend=name)
        with pytest.raises(ValueError, match=r"input_offset.basis must have shape \(3, 4, K\)"):
            decode(codes, params, spec, (3, 4), input_offset=InputOffset(basis[:, :3], cells))
        with pytest.raises(ValueError, match=r"input_offset.cells must have shape \(2, 5, 4\)"):
            decode(codes, params, spec, (3, 4), input_offset=InputOffset(basis, cells[:, :4]))
        with pytest.raises(ValueError, match="basis is a constant"):
            decode(codes, params, spec, (3, 4), input_offset=InputOffset(basis.requires_grad_(True), cells))
        basis.requires_grad_(False)
        with pytest.raises(TypeError, match="must be an InputOffset"):
            decode(codes, params, spec, (3, 4), input_offset=(basis, cells))
    with pytest.raises(TypeError, match="offset_cells has dtype Float but codes have Double"):
        native.decode(codes, params, spec, (3, 4), input_offset=InputOffset(basis, cells.float()))


def test_per_image_basis_gradcheck_and_bad_inputs():
    """A per-image basis (B, H, W, K): gradcheck through the extension, and the extension's own
    checks of its shape (beneath the contract's validation, which names both accepted shapes)."""
    spec = make_spec(code_size=2, hidden=4, freqs=(2.0,), activation="silu")
    params, _ = make_params(spec, torch.float64)
    codes = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    basis = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    cells = offset_gradcheck(spec, params, codes, basis)
    for name in ("native", "torch"):
        with pytest.raises(ValueError, match=r"input_offset.basis must have shape \(3, 4, K\) \(H, W, K\) or "
                                             r"\(2, 3, 4, K\) \(B, H, W, K\)"):
            backend.decode(codes, params, spec, (3, 4), input_offset=InputOffset(basis[:1], cells), backend=name)
    call = dict(spec.op_fields(), height=3, width=4, norm_stats="image", save=False, bf16_matmul=False)
    flat = [t.detach() for t in params.flat()]
    with pytest.raises(ValueError, match=r"offset_basis must have shape \[2, 3, 4, 5\], got \[3, 3, 4, 5\]"):
        torch.ops.fastinr.native_forward(codes.detach(), flat, [], None, torch.rand(3, 3, 4, 5, dtype=torch.float64),
                                         cells.detach(), **call)
    with pytest.raises(ValueError, match=r"offset_basis must have shape \(H, W, K\) \(shared\) or "
                                         r"\(B, H, W, K\) \(per image\)"):
        torch.ops.fastinr.native_forward(codes.detach(), flat, [], None, torch.rand(1, 2, 3, 4, 5, dtype=torch.float64),
                                         cells.detach(), **call)
