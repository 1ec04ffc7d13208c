"""The decode contract: one validation behind every entry point, and the one flat order.

Every bad argument is refused with an error that names it, the same from fastinr.backends.decode
with every backend that runs here (torch, native, triton under the interpreter) and from the
modules' forward; a backend registered from outside (the fake below) gets only validated calls.
"""
import pytest
import torch
from torch import nn

import fastinr
from fastinr import backends
from fastinr.contract import DecoderParams, DecoderSpec, InputOffset, validate
from fastinr.running_stats import decode_norm_stats

SPEC = DecoderSpec(code_size=5, out_channels=3, hidden=8, concat=(False, False), layers_per_block=1,
                   freqs=(7.0, 17.0), batch_norm=True, activation="gelu", activation_out="sigmoid")
FILM = DecoderSpec(code_size=5, out_channels=3, hidden=8, concat=(False, False), layers_per_block=1,
                   freqs=(7.0, 17.0), batch_norm=False, activation="silu", activation_out="none",
                   modulation="film")
BACKENDS = ["torch", "native", "triton"]


def make_params(spec, dtype=torch.float32):
    return DecoderParams.shapes(spec).map(lambda shape: torch.randn(shape, dtype=dtype) * 0.3)


def valid_call(spec=SPEC):
    """Keyword arguments of a decode call that passes validation (mods for a modulated spec)."""
    batch = 2
    return dict(codes=torch.randn(batch, spec.code_size), params=make_params(spec), spec=spec, shape=(3, 4),
                norm_stats="image", running=[(torch.randn(w), torch.rand(w) + 0.5) for w in spec.block_widths],
                mods=torch.randn(spec.mods_shape(batch)) * 0.1 if spec.modulation != "none" else None,
                input_offset=None)


def replaced(params, **fields):
    return params._replace(**fields)


def respec(spec, **fields):
    """A change of spec, with parameters of its layout."""
    spec = DecoderSpec(**{**vars(spec), **fields})
    return dict(spec=spec, params=make_params(spec))


def running_var(call, block, var):
    running = list(call["running"])
    running[block] = (running[block][0], var)
    return running


# (id, change to a valid call, error type, message)
CASES = [
    ("codes-type", lambda c: dict(codes=c["codes"].tolist()), TypeError, r"codes must be a torch\.Tensor, got list"),
    ("codes-1d", lambda c: dict(codes=c["codes"][0]), ValueError, r"codes must have shape \(B, 5\), got \(5,\)"),
    ("codes-channels", lambda c: dict(codes=c["codes"][:, :4]), ValueError,
     r"codes must have 5 channels \(spec\.code_size\), got \(2, 4\)"),
    ("codes-empty", lambda c: dict(codes=c["codes"][:0]), ValueError, r"codes must hold at least one code \(B >= 1\)"),
    ("codes-int", lambda c: dict(codes=c["codes"].long()), TypeError, r"codes must be a floating-point tensor"),
    ("codes-dtype", lambda c: dict(codes=c["codes"].double()), TypeError,
     r"codes have dtype torch\.float64 but the decoder's parameters have torch\.float32"),
    ("codes-device", lambda c: dict(codes=c["codes"].to("meta")), ValueError,
     r"codes are on meta but the decoder's parameters are on cpu"),
    ("spec-type", lambda c: dict(spec=dict(vars(SPEC))), TypeError, r"spec must be a DecoderSpec, got dict"),
    ("spec-activation", lambda c: respec(SPEC, activation="swish"), ValueError,
     r"spec\.activation must be one of gelu, relu.*got 'swish'"),
    ("spec-alias", lambda c: respec(SPEC, activation_out="identity"), ValueError,
     r"spec\.activation_out must be a canonical activation name \('none'\), got 'identity'"),
    ("spec-modulation", lambda c: respec(SPEC, modulation="scale"), ValueError,
     r"spec\.modulation must be one of \('none', 'shift', 'film'\), got 'scale'"),
    ("params-type", lambda c: dict(params=c["params"].flat()), TypeError, r"params must be a DecoderParams, got list"),
    ("params-blocks", lambda c: dict(params=replaced(c["params"], weights=c["params"].weights[:1])), ValueError,
     r"params must hold 2 norm_weight and norm_bias, and 2 blocks of 1 weights and biases .* weights \[1\]"),
    ("params-shape", lambda c: dict(params=replaced(c["params"], weights=(c["params"].weights[0],
                                                                          (torch.randn(8, 7),)))),
     ValueError, r"params\.weights\[1\]\[0\] must have shape \[8, 8\], got \[8, 7\]"),
    ("params-tensor", lambda c: dict(params=replaced(c["params"], b_in=0.0)), TypeError,
     r"params\.b_in must be a torch\.Tensor, got float"),
    ("params-dtype", lambda c: dict(params=replaced(c["params"], b_out=c["params"].b_out.double())), TypeError,
     r"params\.b_out has dtype torch\.float64 but params\.w_in has torch\.float32"),
    ("params-device", lambda c: dict(params=replaced(c["params"], b_out=c["params"].b_out.to("meta"))),
     ValueError, r"params\.b_out is on meta but params\.w_in is on cpu"),
    ("shape-zero", lambda c: dict(shape=(0, 4)), ValueError,
     r"shape must be \(H, W\) with two positive ints, got \(0, 4\)"),
    ("shape-text", lambda c: dict(shape="34"), ValueError, r"shape must be \(H, W\) with two positive ints, got '34'"),
    ("shape-float", lambda c: dict(shape=(2.5, 4)), ValueError, r"shape must be \(H, W\)"),
    ("norm-stats", lambda c: dict(norm_stats="pixel"), ValueError,
     r"norm_stats must be one of \('image', 'batch', 'running'\), got 'pixel'"),
    ("norm-pixels", lambda c: dict(shape=(1, 1)), ValueError,
     r"BatchNorm with image statistics needs more than one value per channel"),
    ("running-count", lambda c: dict(norm_stats="running", running=c["running"][:1]), ValueError,
     r"running must hold \(running_mean, running_var\) for each of the 2 blocks with norm_stats='running', got 1"),
    ("running-shape", lambda c: dict(norm_stats="running", running=running_var(c, 1, torch.rand(3))), ValueError,
     r"running\[1\]\.var must have shape \[8\], got \[3\]"),
    ("running-device", lambda c: dict(norm_stats="running", running=running_var(c, 0, torch.rand(8, device="meta"))),
     ValueError, r"running\[0\]\.var is on meta but codes are on cpu"),
    ("mods-unwanted", lambda c: dict(mods=torch.zeros(2, 3, 2, 8)), ValueError,
     r"mods were given but spec\.modulation is 'none'"),
    ("offset-type", lambda c: dict(input_offset=(torch.rand(3, 4, 2), torch.randn(2, 2, 8))), TypeError,
     r"input_offset must be an InputOffset\(basis, cells\), got tuple"),
    ("offset-basis", lambda c: dict(input_offset=InputOffset(torch.rand(4, 3, 2), torch.randn(2, 2, 8))), ValueError,
     r"input_offset\.basis must have shape \(3, 4, K\) \(H, W, K\) or \(2, 3, 4, K\) \(B, H, W, K\) with "
     r"K >= 1 \(shared by the batch or per image\), got \(4, 3, 2\)"),
    ("offset-basis-batch", lambda c: dict(input_offset=InputOffset(torch.rand(3, 3, 4, 2), torch.randn(2, 2, 8))),
     ValueError, r"input_offset\.basis must have shape \(3, 4, K\) \(H, W, K\) or \(2, 3, 4, K\) "
     r"\(B, H, W, K\) .*got \(3, 3, 4, 2\)"),
    ("offset-basis-5d", lambda c: dict(input_offset=InputOffset(torch.rand(1, 2, 3, 4, 2), torch.randn(2, 2, 8))),
     ValueError, r"input_offset\.basis must have shape .*got \(1, 2, 3, 4, 2\)"),
    ("offset-cells-per-image", lambda c: dict(input_offset=InputOffset(torch.rand(2, 3, 4, 2), torch.randn(2, 3, 8))),
     ValueError, r"input_offset\.cells must have shape \(2, 2, 8\) \(B, K, hidden\), got \(2, 3, 8\)"),
    ("offset-grad-per-image", lambda c: dict(input_offset=InputOffset(torch.rand(2, 3, 4, 2, requires_grad=True),
                                                                      torch.randn(2, 2, 8))),
     ValueError, r"input_offset\.basis is a constant of the pixel grid; detach it"),
    ("offset-cells", lambda c: dict(input_offset=InputOffset(torch.rand(3, 4, 2), torch.randn(2, 3, 8))), ValueError,
     r"input_offset\.cells must have shape \(2, 2, 8\) \(B, K, hidden\), got \(2, 3, 8\)"),
    ("offset-grad", lambda c: dict(input_offset=InputOffset(torch.rand(3, 4, 2, requires_grad=True),
                                                            torch.randn(2, 2, 8))),
     ValueError, r"input_offset\.basis is a constant of the pixel grid; detach it"),
    ("offset-dtype", lambda c: dict(input_offset=InputOffset(torch.rand(3, 4, 2), torch.randn(2, 2, 8).double())),
     TypeError, r"input_offset\.cells has dtype torch\.float64 but the parameters have torch\.float32"),
    ("offset-device", lambda c: dict(input_offset=InputOffset(torch.rand(3, 4, 2, device="meta"),
                                                              torch.randn(2, 2, 8))),
     ValueError, r"input_offset\.basis is on meta but codes are on cpu"),
]
FILM_CASES = [
    ("mods-missing", lambda c: dict(mods=None), ValueError,
     r"mods must be a tensor of shape \(2, 3, 2, 8\) \(B, layers, k, hidden\) for modulation='film', got None"),
    ("mods-shape", lambda c: dict(mods=c["mods"][:, :, :1]), ValueError,
     r"mods must be a tensor of shape \(2, 3, 2, 8\) .* got \(2, 3, 1, 8\)"),
    ("mods-dtype", lambda c: dict(mods=c["mods"].double()), TypeError,
     r"mods has dtype torch\.float64 but the parameters have torch\.float32"),
    ("mods-device", lambda c: dict(mods=c["mods"].to("meta")), ValueError, r"mods is on meta but codes are on cpu"),
    ("mods-concat", lambda c: respec(FILM, concat=(True, False)), ValueError,
     r"modulation='film' needs blocks of constant width \(no concat\)"),
]
ALL_CASES = [(SPEC, *case) for case in CASES] + [(FILM, *case) for case in FILM_CASES]


@pytest.fixture(autouse=True)
def _no_forced_backend(monkeypatch):
    monkeypatch.delenv("FASTINR_BACKEND", raising=False)


def runs_here(backend):
    if backend not in fastinr.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run here")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec", [SPEC, FILM], ids=["batch-norm", "film"])
def test_the_valid_call_runs(backend, spec):
    """The calls that the cases below break are valid ones."""
    runs_here(backend)
    colors, stats = backends.decode(**valid_call(spec), backend=backend)
    assert colors.shape == (2, 3, 3, 4) and bool(colors.isfinite().all())
    assert len(stats) == (2 if spec.batch_norm else 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("spec, change, error, match", [case[:1] + case[2:] for case in ALL_CASES],
                         ids=[case[1] for case in ALL_CASES])
def test_bad_argument_is_named_by_every_backend(backend, spec, change, error, match):
    runs_here(backend)
    call = valid_call(spec)
    call.update(change(call))
    with pytest.raises(error, match=match):
        backends.decode(**call, backend=backend)


class RecordingBackend:
    """A backend from outside the package: the protocol's two functions, recording each call."""

    def __init__(self):
        self.calls = []
        self.refusal = None

    def supports(self, device, spec, needs_grad):
        return self.refusal

    def decode(self, codes, params, spec, shape, norm_stats, running, mods, input_offset):
        self.calls.append(dict(codes=codes, params=params, spec=spec, shape=shape, norm_stats=norm_stats))
        return torch.full((codes.shape[0], spec.out_channels, *shape), 0.5), []


FAKE = RecordingBackend()


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    monkeypatch.setattr(backends, "_LOADED", dict(backends._LOADED))
    monkeypatch.setattr(FAKE, "calls", [])
    monkeypatch.setattr(FAKE, "refusal", None)
    backends.register_backend("fake", FAKE)
    return FAKE


@pytest.mark.parametrize("spec, change, error, match", [case[:1] + case[2:] for case in ALL_CASES],
                         ids=[case[1] for case in ALL_CASES])
def test_a_registered_backend_inherits_the_validation(fake, spec, change, error, match):
    call = valid_call(spec)
    call.update(change(call))
    with pytest.raises(error, match=match):
        backends.decode(**call, backend="fake")
    assert fake.calls == []


def test_a_registered_backend_gets_the_validated_call(fake):
    call = valid_call()
    colors, _ = backends.decode(**dict(call, shape=torch.Size([3, 4])), backend="fake")
    assert colors.shape == (2, 3, 3, 4) and len(fake.calls) == 1
    assert type(fake.calls[0]["shape"]) is tuple and fake.calls[0]["shape"] == (3, 4)
    decoder = fastinr.ImageManifoldDecoder(5, num_hidden=8, default_shape=(3, 4), backend="fake")
    assert decoder(torch.randn(5)).shape == (3, 3, 4) and len(fake.calls) == 2
    assert fake.calls[1]["codes"].shape == (1, 5) and fake.calls[1]["norm_stats"] == "image"
    with pytest.raises(ValueError, match=r"codes must have 5 channels \(num_input_channels\)"):
        decoder(torch.randn(2, 6))
    assert len(fake.calls) == 2
    assert "fake" in fastinr.available_backends("cpu")
    fake.refusal = "it needs a fake device"
    with pytest.raises(backends.BackendUnavailable, match=r"'fake' was requested but cannot run: it needs a fake"):
        decoder(torch.randn(2, 5))
    assert "fake" not in fastinr.available_backends("cpu") and len(fake.calls) == 2


MODULE_CASES = [
    ("codes-type", [0.0] * 5, None, TypeError, r"codes must be a torch\.Tensor"),
    ("codes-3d", torch.randn(2, 1, 5), None, ValueError, r"codes must have shape \(B, 5\) or \(5,\), got \(2, 1, 5\)"),
    ("codes-channels", torch.randn(2, 6), None, ValueError,
     r"codes must have 5 channels \((num_input_channels|code_size)\)"),
    ("codes-empty", torch.randn(0, 5), None, ValueError, r"codes must hold at least one code \(B >= 1\)"),
    ("codes-int", torch.ones(2, 5, dtype=torch.long), None, TypeError, r"codes must be a floating-point tensor"),
    ("codes-dtype", torch.randn(2, 5, dtype=torch.float64), None, TypeError,
     r"codes have dtype torch\.float64 but the decoder's parameters have torch\.float32"),
    ("codes-device", torch.randn(2, 5, device="meta"), None, ValueError,
     r"codes are on meta but the decoder's parameters are on cpu"),
    ("shape", torch.randn(2, 5), (4, 0), ValueError, r"shape must be \(H, W\) with two positive ints, got \(4, 0\)"),
    ("shape-length", torch.randn(2, 5), (4, 4, 1), ValueError, r"shape must be \(H, W\)"),
    ("norm-pixels", torch.randn(2, 5), (1, 1), ValueError, r"needs more than one value per channel"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("module", ["ImageManifoldDecoder", "INRDecoder"])
@pytest.mark.parametrize("codes, shape, error, match", [case[1:] for case in MODULE_CASES],
                         ids=[case[0] for case in MODULE_CASES])
def test_bad_argument_is_named_by_every_module(backend, module, codes, shape, error, match):
    runs_here(backend)
    if module == "ImageManifoldDecoder":
        decoder = fastinr.ImageManifoldDecoder(5, num_hidden=8, num_layers_per_block=1, backend=backend)
    else:
        decoder = fastinr.INRDecoder(5, hidden=8, layers_per_block=1, norm="image-bn", backend=backend)
    with pytest.raises(error, match=match):
        decoder(codes, shape or (3, 4))


def test_validate_returns_the_shape_as_ints():
    call = valid_call()
    assert validate(**dict(call, shape=[torch.tensor(3), 4.0])) == (3, 4)


@pytest.mark.parametrize("kwargs", [dict(), dict(concat_residual=(True, False)), dict(batch_norm=False),
                                    dict(num_blocks=0), dict(num_layers_per_block=0, num_blocks=3)])
def test_one_flat_order(kwargs):
    """flat, from_flat, names and shapes agree for every layout a spec can have."""
    decoder = fastinr.ImageManifoldDecoder(5, num_hidden=8, **kwargs)
    params, spec = decoder.decoder_params(), decoder.spec
    flat = params.flat()
    assert [tuple(t.shape) for t in flat] == DecoderParams.shapes(spec).flat()
    assert all(a is b for a, b in zip(DecoderParams.from_flat(spec, flat).flat(), flat))
    names = DecoderParams.names(spec).flat()
    assert len(set(names)) == len(names) == len(flat)
    by_name = dict(decoder.named_parameters())
    assert flat[names.index("w_out")] is by_name["pos_to_color.linear_out.weight"]
    if spec.num_blocks and spec.layers_per_block:
        last = f"weights[{spec.num_blocks - 1}][{spec.layers_per_block - 1}]"
        key = f"pos_to_color.resblocks.resblock_{spec.num_blocks}.layers.layer_{spec.layers_per_block}.linear.weight"
        assert flat[names.index(last)] is by_name[key]
    with pytest.raises(ValueError, match=rf"this spec's DecoderParams hold {len(flat)} tensors, got {len(flat) - 1}"):
        DecoderParams.from_flat(spec, flat[:-1])


class _Decoder(nn.Module):
    running_stats_group = None


@pytest.mark.parametrize("training, track, expected", [(True, True, "batch"), (False, True, "running"),
                                                       (False, False, "batch"), (True, False, "batch")])
def test_norm_stats_follow_the_module_state(training, track, expected):
    """One choice for both modules: the mode in training or without running statistics."""
    norms = [nn.BatchNorm1d(4, track_running_stats=track) for _ in range(2)]
    decoder = _Decoder().train(training)
    norm_stats, running = decode_norm_stats(decoder, norms, "batch")
    assert norm_stats == expected
    assert [tuple(r) for r in running] == ([(n.running_mean, n.running_var) for n in norms]
                                           if expected == "running" else [])
    assert decode_norm_stats(decoder, [], "image") == ("running", [])


def test_auto_resolution_respects_what_the_backend_supports(monkeypatch):
    """A preferred backend that cannot run the call falls back to torch with one warning."""
    refusing = RecordingBackend()
    refusing.refusal = "not this call"
    load = backends._load
    monkeypatch.setattr(backends, "_load", lambda name: (refusing, None) if name == "native" else load(name))
    monkeypatch.setattr(backends, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"backend 'native' is unavailable on cpu \(not this call\)"):
        assert backends.resolve_backend("auto", "cpu", SPEC, False)[0] == "torch"
    colors, _ = backends.decode(**valid_call())
    assert refusing.calls == [] and colors.shape == (2, 3, 3, 4)
