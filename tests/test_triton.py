"""The triton backend against fastinr.reference: colors, every gradient and the BlockStats.

Without a GPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py), so the shapes are
small; the row tile is shrunk to 16 there so that small images still span several tiles. The
reference runs in float64 on the same parameters; the triton backend computes in float32.
"""
import functools
import math

import pytest
import torch

from fastinr import ImageManifoldDecoder, backends
from fastinr.activations import ACTIVATION_NAMES
from fastinr.contract import DecoderParams, DecoderSpec
from fastinr.reference import decode as reference_decode

from .conftest import DEVICE
from .error_model import assert_within_torch_error, moved

triton = pytest.importorskip("triton")
from fastinr.ops import config as ops_config  # noqa: E402
from fastinr.backends import triton_backend as ops_decoder  # noqa: E402

K_TORCH = 2.0  # half-precision autocast: within 2x torch's own error (tests/error_model.py)
RTOL = 1e-5   # max |triton - float64 reference| relative to the reference tensor's max |value|


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    monkeypatch.setattr(ops_config, "POISON_OUTPUTS", True)


def make_spec(hidden=16, blocks=2, layers=2, concat=False, freqs=2, batch_norm=True,
              activation="gelu", activation_out="sigmoid", code=5, out=3, modulation="none",
              layer_norm=False):
    if isinstance(concat, bool):
        concat = (concat,) * blocks
    return DecoderSpec(code_size=code, out_channels=out, hidden=hidden, concat=tuple(concat),
                       layers_per_block=layers, freqs=(7.0, 17.0, 3.0, 11.0)[:freqs],
                       batch_norm=batch_norm, activation=activation,
                       activation_out=activation_out, modulation=modulation, layer_norm=layer_norm)


def make_params(spec, device=DEVICE):
    """Random parameters with the seed's init scale (fresh every call); BN affine away from 1/0."""
    def linear(n_out, n_in):
        bound = 1 / math.sqrt(n_in)
        return ((torch.rand(n_out, n_in, device=device) * 2 - 1) * bound,
                (torch.rand(n_out, device=device) * 2 - 1) * bound)
    w_in, b_in = linear(spec.hidden, spec.code_size + spec.embedding_size)
    widths = spec.block_widths if spec.normalized else ()
    norm_weight = tuple(1 + 0.3 * torch.randn(w, device=device) for w in widths)
    norm_bias = tuple(0.3 * torch.randn(w, device=device) for w in widths)
    weights, biases = [], []
    for w in spec.block_widths:
        pairs = [linear(w, w) for _ in range(spec.layers_per_block)]
        weights.append(tuple(p[0] for p in pairs))
        biases.append(tuple(p[1] for p in pairs))
    w_out, b_out = linear(spec.out_channels, spec.out_width)
    return DecoderParams(w_in, b_in, norm_weight, norm_bias, tuple(weights), tuple(biases),
                         w_out, b_out)


def make_running(spec, device=DEVICE):
    if not spec.batch_norm:
        return []
    return [(0.3 * torch.randn(w, device=device), 0.5 + torch.rand(w, device=device))
            for w in spec.block_widths]


def assert_close(actual, expected, name, baselines=()):
    """max |actual - expected| <= RTOL * max |expected|, or <= 4x the worst error of `baselines`
    (the float32 torch reference on the inputs and on the inputs moved by one ulp) where the
    problem itself is ill-conditioned in float32 (e.g. BatchNorm over two pixels, whose input
    gradient is pure cancellation): the moved inputs measure what float32 inputs carry anyway,
    so a result torch rounds well by luck sets no bar (tests/error_model.py)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values (an unwritten element?)"
    expected = expected.double()
    scale = expected.abs().max().clamp_min(1e-6)
    allowed = RTOL * scale
    for baseline in baselines:
        allowed = max(allowed, 4 * (baseline.double() - expected).abs().max())
    error = (actual.double() - expected).abs().max()
    assert error <= allowed, f"{name}: max error {error:.3e}, allowed {allowed:.3e} (scale {scale:.3e})"


def check_decode(spec, batch, shape, norm_stats, grad=True, running=None):
    """Run the triton backend in float32 and the reference in float64 and float32 on the same
    inputs; compare colors, every gradient and the BlockStats."""
    params = make_params(spec)
    running = make_running(spec) if running is None else running
    codes = torch.randn(batch, spec.code_size, device=DEVICE)
    # Per-image modulation away from the identity, a differentiable input like the parameters.
    mods = 0.5 * torch.randn(spec.mods_shape(batch), device=DEVICE) if spec.modulation != "none" else None
    results = {}
    for name, dtype, decode, move in (("triton", torch.float32, ops_decoder.decode, False),
                                      ("float64", torch.float64, reference_decode, False),
                                      ("float32", torch.float32, reference_decode, False),
                                      ("float32 moved", torch.float32, reference_decode, True)):
        shift = moved if move else (lambda t: t)
        flat = [shift(t.clone().to(dtype)).requires_grad_(grad) for t in params.flat()]
        if mods is not None:
            flat.append(shift(mods.clone().to(dtype)).requires_grad_(grad))
        codes_d = shift(codes.clone().to(dtype)).requires_grad_(grad)
        colors, stats = decode(codes_d, DecoderParams.from_flat(spec, flat[:len(params.flat())]), spec,
                               shape, norm_stats, [(shift(m.to(dtype)), shift(v.to(dtype))) for m, v in running],
                               mods=flat[-1] if mods is not None else None)
        results[name] = (colors, stats, codes_d, flat)
    colors, stats = results["triton"][:2]
    expected, expected_stats = results["float64"][:2]
    assert colors.dtype == torch.float32
    torch32 = ("float32", "float32 moved")
    assert_close(colors, expected, "colors", [results[k][0] for k in torch32])
    assert len(stats) == len(expected_stats)
    for i, (got, want) in enumerate(zip(stats, expected_stats)):
        assert got.count == want.count, f"block {i}: count"
        assert not got.mean.requires_grad and not got.var.requires_grad
        assert_close(got.mean, want.mean, f"block {i} mean", [results[k][1][i].mean for k in torch32])
        assert_close(got.var, want.var, f"block {i} var", [results[k][1][i].var for k in torch32])
    if not grad:
        return
    upstream = torch.randn_like(expected)
    grads = {}
    for name, (out, _, codes_d, flat) in results.items():
        grads[name] = torch.autograd.grad(out, [codes_d] + flat, upstream.to(out.dtype))
    names = ["codes"] + [f"params[{i}]" for i in range(len(params.flat()))] + ["mods"] * (mods is not None)
    for name, got, want, base, base_moved in zip(names, grads["triton"], grads["float64"], grads["float32"],
                                                 grads["float32 moved"]):
        assert_close(got, want, f"grad of {name}", [base, base_moved])


# (spec kwargs, batch, shape, norm_stats)
TRAIN_CASES = [
    (dict(hidden=24, blocks=2, layers=2, concat=(False, True), freqs=2), 3, (7, 13), "image"),
    (dict(hidden=24, blocks=2, layers=2, concat=(False, True), freqs=2), 3, (7, 13), "batch"),
    (dict(hidden=8, blocks=1, layers=1, concat=True, freqs=0, activation="relu",
          activation_out="none"), 2, (5, 3), "batch"),
    (dict(hidden=16, blocks=3, layers=3, concat=(True, False, True), freqs=4, activation="silu",
          activation_out="tanh"), 2, (5, 3), "image"),
    (dict(hidden=40, blocks=1, layers=2, freqs=1, activation="tanh"), 1, (7, 13), "image"),
    (dict(hidden=64, blocks=2, layers=1, freqs=1, batch_norm=False, activation="tanh",
          activation_out="sigmoid"), 2, (5, 3), "image"),
    (dict(hidden=32, blocks=2, layers=1, concat=(True, False), freqs=3, activation="relu6"), 3,
     (5, 3), "running"),
    (dict(hidden=16, blocks=2, layers=0, concat=(True, False), freqs=2), 2, (5, 3), "image"),
    (dict(hidden=16, blocks=2, layers=0, concat=(False, True), freqs=2, batch_norm=False), 2,
     (3, 4), "batch"),
    (dict(hidden=8, blocks=1, layers=1, freqs=1), 65, (1, 2), "image"),
    (dict(hidden=8, blocks=1, layers=1, freqs=1), 65, (1, 1), "batch"),
    (dict(hidden=16, blocks=1, layers=1, freqs=2), 2, (1, 1), "running"),
    (dict(hidden=24, blocks=0, layers=2, freqs=2, out=5), 2, (3, 5), "image"),
    (dict(hidden=256, blocks=1, layers=1, concat=True, freqs=2), 2, (3, 3), "image"),  # 512 out
]


@pytest.mark.parametrize("kwargs,batch,shape,norm_stats", TRAIN_CASES)
def test_training_path_matches_reference(kwargs, batch, shape, norm_stats):
    check_decode(make_spec(**kwargs), batch, shape, norm_stats)


@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_every_activation_forward_and_backward(activation):
    out_activation = ACTIVATION_NAMES[(ACTIVATION_NAMES.index(activation) + 3) % len(ACTIVATION_NAMES)]
    spec = make_spec(hidden=16, blocks=1, layers=2, freqs=1, activation=activation,
                     activation_out=out_activation)
    check_decode(spec, 2, (3, 5), "image")


# (spec kwargs, batch, shape, norm_stats): shift and FiLM with and without BatchNorm, odd widths.
MODULATION_CASES = [
    (dict(hidden=24, blocks=2, layers=2, freqs=2, modulation="film"), 3, (7, 5), "image"),
    (dict(hidden=16, blocks=1, layers=1, freqs=1, batch_norm=False, activation="silu",
          activation_out="none", modulation="shift"), 2, (5, 3), "image"),
    (dict(hidden=40, blocks=2, layers=1, freqs=3, activation="tanh", modulation="film"), 2, (3, 5),
     "batch"),
    (dict(hidden=8, blocks=2, layers=0, freqs=2, modulation="film"), 2, (3, 4), "running"),
    (dict(hidden=16, blocks=1, layers=2, freqs=2, modulation="shift"), 2, (1, 1), "running"),
]


@pytest.mark.parametrize("kwargs,batch,shape,norm_stats", MODULATION_CASES)
def test_modulation_matches_reference(kwargs, batch, shape, norm_stats):
    """Shift / FiLM per image on every layer: colors, every gradient, and the mods' gradient."""
    check_decode(make_spec(**kwargs), batch, shape, norm_stats)


LAYER_NORM_CASES = [
    (dict(hidden=24, blocks=2, layers=2, concat=(False, True), batch_norm=False, layer_norm=True), 2, (7, 5)),
    (dict(hidden=16, blocks=2, layers=0, batch_norm=False, layer_norm=True, modulation="film"), 2, (3, 4)),
    (dict(hidden=8, blocks=1, layers=1, batch_norm=False, layer_norm=True, modulation="shift"), 3, (1, 1)),
]


@pytest.mark.parametrize("kwargs,batch,shape", LAYER_NORM_CASES)
@pytest.mark.parametrize("grad", [True, False])
def test_layer_norm_matches_reference(kwargs, batch, shape, grad):
    """LayerNorm per pixel: training (every gradient) and a render without gradients."""
    check_decode(make_spec(**kwargs), batch, shape, "image", grad=grad)


def test_modulation_with_gpu_tiles_on_ragged_images(monkeypatch):
    monkeypatch.setattr(ops_config, "interpreting", lambda: False)
    check_decode(make_spec(hidden=24, blocks=1, layers=2, modulation="film"), 2, (9, 11), "image")


def test_modulation_needs_mods_of_the_right_shape():
    spec = make_spec(hidden=8, blocks=1, layers=1, modulation="film")
    params = make_params(spec)
    codes = torch.randn(2, spec.code_size, device=DEVICE)
    with pytest.raises(ValueError, match=r"mods must be a tensor of shape \(2, 2, 2, 8\)"):
        backends.decode(codes, params, spec, (3, 3), mods=torch.zeros(2, 1, 2, 8, device=DEVICE), backend="triton")


def test_gpu_row_tiles_on_ragged_images(monkeypatch):
    """The GPU's row tiles (not the interpreter's 16) with H*W not a multiple of them."""
    monkeypatch.setattr(ops_config, "interpreting", lambda: False)
    check_decode(make_spec(hidden=24, blocks=1, layers=2, concat=True), 2, (9, 11), "image")


RENDER_CASES = [
    (dict(hidden=24, blocks=2, layers=2, concat=(False, True), freqs=2), 3, (7, 13)),
    (dict(hidden=40, blocks=3, layers=1, concat=(True, True, False), freqs=4,
          activation="silu", activation_out="none"), 2, (5, 3)),
    (dict(hidden=16, blocks=2, layers=3, freqs=0, activation="tanh", out=1), 65, (1, 1)),
    (dict(hidden=16, blocks=2, layers=0, concat=(True, False), freqs=1), 2, (5, 3)),
    (dict(hidden=32, blocks=1, layers=2, batch_norm=False, activation="relu6", out=5), 1, (31, 17)),
    (dict(hidden=8, blocks=0, layers=1, freqs=3, activation="sigmoid"), 3, (2, 3)),
]


@pytest.mark.parametrize("kwargs,batch,shape", RENDER_CASES)
def test_render_matches_reference(kwargs, batch, shape, monkeypatch):
    calls = []
    render = ops_decoder.render_forward
    monkeypatch.setattr(ops_decoder, "render_forward",
                        lambda *args: calls.append(1) or render(*args))
    with torch.no_grad():
        check_decode(make_spec(**kwargs), batch, shape, "running", grad=False)
    assert calls, "no-grad running-statistics decode must take the one-pass render path"


def test_render_with_gpu_tiles_spanning_images(monkeypatch):
    monkeypatch.setattr(ops_config, "interpreting", lambda: False)
    with torch.no_grad():
        check_decode(make_spec(hidden=24, blocks=2, layers=2, concat=(True, False)), 3, (5, 9),
                     "running", grad=False)


@pytest.mark.parametrize("batch_norm_stats", ["image", "batch"])
def test_module_train_steps_match_torch_backend(batch_norm_stats):
    """ImageManifoldDecoder(backend="triton") in train mode: outputs, grads, running stats."""
    kwargs = dict(num_input_channels=6, num_output_channels=3, num_hidden=24, num_blocks=2,
                  num_layers_per_block=2, concat_residual=(False, True),
                  pos_embedding_freqs=(7, 17), batch_norm_stats=batch_norm_stats)
    torch_model = ImageManifoldDecoder(**kwargs, backend="torch").to(DEVICE).double()
    triton_model = ImageManifoldDecoder(**kwargs, backend="triton").to(DEVICE)
    triton_model.load_state_dict({k: v.float() for k, v in torch_model.state_dict().items()})
    for step in range(2):
        codes = torch.randn(3, 6, device=DEVICE)
        expected = torch_model(codes.double(), (5, 7))
        colors = triton_model(codes, (5, 7))
        assert_close(colors, expected, f"step {step} colors")
        upstream = torch.randn_like(colors)
        expected.backward(upstream.double())
        colors.backward(upstream)
    for (name, want), got in zip(torch_model.named_parameters(), triton_model.parameters()):
        assert_close(got.grad, want.grad, f"grad of {name}")
    for (name, want), got in zip(torch_model.named_buffers(), triton_model.buffers()):
        if name.endswith("num_batches_tracked"):
            assert got.item() == want.item() == (6 if batch_norm_stats == "image" else 2), name
        else:
            assert_close(got, want, name)
    torch_model.eval()
    triton_model.eval()
    with torch.no_grad():
        codes = torch.randn(2, 6, device=DEVICE)
        assert_close(triton_model(codes, (3, 4)), torch_model(codes.double(), (3, 4)), "eval colors")


def test_non_cuda_tensors_without_interpreter_raise(monkeypatch):
    spec = make_spec(hidden=8, blocks=1, layers=1)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        ops_decoder.decode(torch.randn(2, 5), make_params(spec, "cpu"), spec, (2, 2), "image")


def test_bad_inputs_raise_clear_errors():
    """The contract's checks (through fastinr.backends.decode) and the backend's own."""
    spec = make_spec(hidden=8, blocks=1, layers=1)
    params = make_params(spec)
    codes = torch.randn(2, 5, device=DEVICE)
    decode = functools.partial(backends.decode, backend="triton")
    with pytest.raises(ValueError, match=r"codes must have 5 channels \(spec.code_size\), got \(2, 4\)"):
        decode(codes[:, :4], params, spec, (2, 2))
    with pytest.raises(TypeError, match="float32 parameters.*w_in"):
        ops_decoder.decode(codes, params._replace(w_in=params.w_in.double()), spec, (2, 2))
    with pytest.raises(TypeError, match="float32 parameters.*w_in"):
        decode(codes.double(), params.map(torch.Tensor.double), spec, (2, 2))
    with pytest.raises(TypeError, match="codes have dtype torch.float64"):
        decode(codes.double(), params, spec, (2, 2))
    with pytest.raises(ValueError, match="shape must be"):
        decode(codes, params, spec, (0, 2))
    with pytest.raises(ValueError, match="norm_stats must be one of"):
        decode(codes, params, spec, (2, 2), "images")
    with pytest.raises(ValueError, match="running_mean, running_var"):
        decode(codes, params, spec, (2, 2), "running", [])
    with pytest.raises(ValueError, match="more than one value per channel"):
        decode(codes, params, spec, (1, 1), "image")


@pytest.mark.parametrize("dtype", [
    torch.float16,
    pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
        DEVICE == "cpu", reason="the Triton 3.8 interpreter computes bf16 tl.dot wrongly; "
                                "bf16 is checked on a GPU (benchmarks/gpu_report.py)")),
])
def test_autocast_half_precision_dots(dtype):
    """Under torch.autocast the dots take `dtype` operands with float32 accumulation: colors and
    every gradient against float64 within K_TORCH times torch's own autocast error on the same call
    (tests/error_model.py: the worse of torch's results on the inputs and on the inputs moved by one
    `dtype` unit roundoff, never below the call's typical error; where torch's float16 autocast
    overflows on the CPU, the call's worst)."""
    spec = make_spec(hidden=24, blocks=2, layers=2, concat=(False, True), freqs=2)
    params = make_params(spec)
    codes = torch.randn(3, spec.code_size, device=DEVICE)
    upstream = torch.randn(3, spec.out_channels, 5, 7, device=DEVICE, dtype=torch.float64)
    results = {}
    for name, decode, autocast, inputs in (("float64", reference_decode, False, lambda t: t),
                                           ("torch", reference_decode, True, lambda t: t),
                                           ("torch moved", reference_decode, True, lambda t: moved(t, dtype)),
                                           ("triton", ops_decoder.decode, True, lambda t: t)):
        real = torch.float64 if name == "float64" else torch.float32
        flat = [inputs(t).clone().to(real).requires_grad_() for t in params.flat()]
        codes_d = inputs(codes).clone().to(real).requires_grad_()
        with torch.autocast(torch.device(DEVICE).type, dtype=dtype, enabled=autocast):
            colors, _ = decode(codes_d, DecoderParams.from_flat(spec, flat), spec, (5, 7), "image")
        grads = torch.autograd.grad(colors, [codes_d] + flat, upstream.to(colors.dtype))
        results[name] = [colors] + list(grads)
    names = ["colors", "grad of codes"] + [f"grad of params[{i}]" for i in range(len(flat))]
    assert_within_torch_error(K_TORCH, [
        (name, ours, [own, own_moved], truth) for name, ours, own, own_moved, truth in
        zip(names, results["triton"], results["torch"], results["torch moved"], results["float64"])],
        precision=str(dtype).replace("torch.", ""))


def test_render_memory_does_not_grow_with_pixels_times_width(monkeypatch):
    """The one-pass render allocates the colors and a scratch whose size depends on the number of
    programs and the widths, never on the pixel count: no (B*H*W, hidden) tensor."""
    spec = make_spec(hidden=48, blocks=2, layers=2, concat=(False, True))
    allocate = ops_config.kernel_output
    allocations = {}
    for shape in ((12, 24), (24, 24)):
        sizes = allocations[shape] = []
        monkeypatch.setattr(ops_config, "kernel_output",
                            lambda *dims, device: sizes.append(math.prod(dims)) or
                            allocate(*dims, device=device))
        with torch.no_grad():
            check_decode(spec, 2, shape, "running", grad=False)
    colors = {shape: 2 * shape[0] * shape[1] * spec.out_channels for shape in allocations}
    assert all(colors[shape] in sizes for shape, sizes in allocations.items())
    small, large = ([n for n in allocations[shape] if n != colors[shape]]
                    for shape in ((12, 24), (24, 24)))
    assert small == large, "render scratch grew with the image"
    assert max(large) < 2 * 24 * 24 * spec.hidden
