"""The native backend's bfloat16 path against the float64 oracle (fastinr.reference.decode).

Under torch.autocast("cpu", dtype=torch.bfloat16), and for bfloat16 codes and parameters, the C++
core runs its hidden layers' GEMMs with bf16 operands and float32 accumulation where the CPU has
AVX512-BF16 (fastinr.backends.native_backend.bf16_matmul()). Error model (tests/error_model.py): torch's own result in the
same precision (the reference under the same autocast, or in bfloat16) against float64 sets the
scale, and ours may be at most K_TORCH times that, for the colors, every gradient and the
statistics. Forcing the float32 GEMMs
(set_bf16_matmul(False), what a CPU without the instructions runs) must give the float32 path's
accuracy with the same dtypes out.
"""
import dataclasses
import os

import pytest
import torch

import fastinr
from fastinr import reference
from fastinr.backends import native_ops
from fastinr.contract import DecoderParams, InputOffset
from tests.error_model import assert_within_torch_error, moved
from tests.test_native import make_params, make_spec, native

K_TORCH = 2.0   # ours against float64 <= K_TORCH x torch's own bf16 error against float64

# (spec kwargs, shape, batch, norm_stats, extras): awkward widths (odd, not a multiple of 32, concat
# doubling), several and ragged tiles per image, batch 1, every normalization, modulation, input offset
CONFIGS = [
    (dict(hidden=48), (7, 13), 3, "image", ()),
    (dict(hidden=256), (16, 16), 2, "image", ()),
    (dict(hidden=136, concat=(True, False)), (9, 11), 2, "batch", ()),   # a block of 272 columns
    (dict(hidden=9, concat=(True, False), activation="silu"), (31, 17), 1, "batch", ()),
    (dict(hidden=33, concat=(False, True), layers_per_block=3), (5, 3), 3, "running", ()),
    (dict(hidden=32, batch_norm=False, layer_norm=True, activation="tanh"), (7, 13), 2, "image", ()),
    (dict(hidden=20, batch_norm=False, layers_per_block=1, activation_out="none"), (1, 1), 3, "image", ()),
    (dict(hidden=16, layers_per_block=0), (7, 13), 2, "image", ()),
    (dict(hidden=40, activation_out="none"), (9, 11), 2, "image", ("film", "offset")),
    (dict(hidden=24, batch_norm=False), (9, 11), 3, "image", ("shift",)),
]


# The kernels that can multiply the bf16 operands (native.bf16_gemm_kernels()): every bf16 check runs in
# each one this machine has.
KERNELS = ["avx512", "onednn"]


def use_kernel(name):
    """Switch the bf16 GEMMs to kernel `name` (skip where this machine lacks it); returns the one before."""
    if name not in native.bf16_gemm_kernels():
        pytest.skip(f"no {name} bf16 GEMM kernel here (kernels: {native.bf16_gemm_kernels()})")
    before = native.bf16_gemm_kernel()
    native.set_bf16_gemm_kernel(name)
    return before


@pytest.fixture(params=KERNELS)
def bf16_gemms(request):
    """The bf16 GEMMs as the CPU allows them, in each kernel it has, restored after the test. A CPU without
    them runs the test once (its bf16 calls take the float32 GEMMs)."""
    before = None
    if native.bf16_matmul_supported():
        before = use_kernel(request.param)
    elif request.param != KERNELS[0]:
        pytest.skip("no bf16 GEMMs on this CPU: the test runs once, with the float32 GEMMs")
    yield native.bf16_matmul_supported()
    native.set_bf16_matmul(True)
    if before is not None:
        native.set_bf16_gemm_kernel(before)


def make_inputs(kwargs, shape, batch, extras):
    spec = make_spec(**kwargs)
    modulation = next((m for m in ("film", "shift") if m in extras), "none")
    spec = dataclasses.replace(spec, modulation=modulation)
    params, running = make_params(spec, torch.float32)
    inputs = dict(codes=torch.randn(batch, spec.code_size),
                  mods=torch.randn(*spec.mods_shape(batch)) * 0.5 if modulation != "none" else None,
                  basis=torch.rand(*shape, 5) if "offset" in extras else None,
                  cells=torch.randn(batch, 5, spec.hidden) if "offset" in extras else None)
    return spec, params, running, inputs


def decode_with_grads(module, spec, params, running, inputs, shape, norm_stats, upstream, cast, autocast):
    """Colors and the gradients of codes, mods, cells and every parameter, tensors cast by `cast`."""
    leaf = lambda t: None if t is None else cast(t).detach().requires_grad_(True)
    codes, mods, cells = leaf(inputs["codes"]), leaf(inputs["mods"]), leaf(inputs["cells"])
    p = DecoderParams.from_flat(spec, [leaf(t) for t in params.flat()])
    offset = InputOffset(cast(inputs["basis"]), cells) if cells is not None else None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        colors, stats = module.decode(codes, p, spec, shape, norm_stats, [(cast(m), cast(v)) for m, v in running],
                                      mods=mods, input_offset=offset)
    wrt = [t for t in (codes, mods, cells) if t is not None] + p.flat()
    grads = torch.autograd.grad(colors, wrt, upstream.to(colors.dtype))
    return colors.detach(), grads, stats


def check_bf16(spec, params, running, inputs, shape, norm_stats, low_precision_params):
    """Ours (native) and torch's own (reference) in bf16 against the float64 reference."""
    upstream = torch.randn(inputs["codes"].shape[0], spec.out_channels, *shape)
    if low_precision_params:   # bf16 tensors, no autocast
        cast, autocast = (lambda t: None if t is None else t.bfloat16()), False
        upstream = upstream.bfloat16().float()
    else:                      # float32 tensors under autocast
        cast, autocast = (lambda t: t), True
    ours = decode_with_grads(native, spec, params, running, inputs, shape, norm_stats, upstream, cast, autocast)
    torch_own = decode_with_grads(reference, spec, params, running, inputs, shape, norm_stats, upstream, cast,
                                  autocast)
    torch_moved = decode_with_grads(reference, spec, params, running, inputs, shape, norm_stats, upstream,
                                    lambda t: moved(cast(t), torch.bfloat16), autocast)
    to64 = lambda t: None if t is None else cast(t).double()   # the same rounded inputs, exactly
    truth = decode_with_grads(reference, spec, params, running, inputs, shape, norm_stats, upstream, to64, False)
    assert ours[0].dtype == torch_own[0].dtype, "colors in torch's own dtype"
    assert [g.dtype for g in ours[1]] == [g.dtype for g in torch_own[1]], "gradient dtypes as torch's own"
    results = [("colors", ours[0], [torch_own[0], torch_moved[0]], truth[0])]
    results += [(f"gradient {k}", a, [t, m], b)
                for k, (a, t, m, b) in enumerate(zip(ours[1], torch_own[1], torch_moved[1], truth[1]))]
    assert len(ours[2]) == len(truth[2]), "number of BlockStats"
    for i, (a, t, m, b) in enumerate(zip(ours[2], torch_own[2], torch_moved[2], truth[2])):
        results += [(f"stats[{i}].mean", a.mean, [t.mean, m.mean], b.mean),
                    (f"stats[{i}].var", a.var, [t.var, m.var], b.var)]
    assert_within_torch_error(K_TORCH, results)
    return ours


def assert_float32_sum_of_rounded(result, a, b):
    """result (float32) is bf16(a) bf16(b) summed in float32: within float32 summation's bound
    k 2^-24 sum |a_i b_i| of the exact product of the rounded operands (k = a's columns)."""
    ar, br = a.bfloat16().double(), b.bfloat16().double()
    assert result.dtype == torch.float32 and result.shape == (a.shape[0], b.shape[1])
    assert ((result.double() - ar @ br).abs() <= a.shape[1] * 2.0 ** -24 * (ar.abs() @ br.abs())).all()


GEMM_SHAPES = [(1, 1, 1), (13, 9, 33), (128, 256, 256), (300, 48, 17), (40, 31, 64), (5, 272, 272), (257, 17, 100)]


@pytest.mark.skipif(not native.bf16_matmul_supported(), reason="this CPU has no AVX512-BF16")
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_bf16_gemm_sums_the_rounded_operands_in_float32(m, k, n, bf16_gemms):
    """The kernel alone (ragged row tiles, odd k, columns past a block of 32): bf16(x) bf16(w)^T within
    float32 summation's bound k 2^-24 sum |x_i w_i| of the exact product of the rounded operands."""
    x, w = torch.randn(m, k), torch.randn(n, k)
    assert_float32_sum_of_rounded(native._C.bf16_linear(x, w), x, w.t())


@pytest.mark.skipif(not native.bf16_matmul_supported(), reason="this CPU has no AVX512-BF16")
@pytest.mark.parametrize("k,m,n", GEMM_SHAPES)
def test_bf16_weight_gradient_sums_the_rounded_operands_in_float32(k, m, n, bf16_gemms):
    """The weight-gradient GEMM alone, a^T b summed over row tiles of a and b (several tiles, a ragged one,
    an odd count, m and n off every block size; the oneDNN kernel reads a transposed): within float32
    summation's bound of the exact product of the rounded operands."""
    a, b = torch.randn(k, m), torch.randn(k, n)
    assert_float32_sum_of_rounded(native._C.bf16_weight_grad(a, b), a.t(), b)


@pytest.mark.skipif(not native.bf16_matmul_supported(), reason="this CPU has no AVX512-BF16")
def test_bf16_gemm_entry_points_name_bad_operands():
    with pytest.raises(ValueError, match=r"bf16_weight_grad takes a \(k, m\) and b \(k, n\), got \[5, 3\] and \[4, 2\]"):
        native._C.bf16_weight_grad(torch.randn(5, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"bf16_linear takes x \(m, k\) and w \(n, k\)"):
        native._C.bf16_linear(torch.randn(5, 3), torch.randn(4, 2))
    with pytest.raises(TypeError, match="bf16_weight_grad takes float32 CPU tensors"):
        native._C.bf16_weight_grad(torch.randn(5, 3).double(), torch.randn(5, 2))


def test_onednn_kernel_with_mkldnn_disabled_falls_back():
    """torch.backends.mkldnn disabled makes oneDNN's brgemm refuse: the products then run in our kernel,
    right, instead of failing inside the core's threads."""
    before, mkldnn = use_kernel("onednn"), torch.backends.mkldnn.enabled
    try:
        x, w = torch.randn(130, 40), torch.randn(70, 40)
        torch.backends.mkldnn.enabled = False
        y = native._C.bf16_linear(x, w)
        c = native._C.bf16_weight_grad(x, x[:, :33])
        assert_float32_sum_of_rounded(y, x, w.t())
        assert_float32_sum_of_rounded(c, x.t(), x[:, :33])
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        native.set_bf16_gemm_kernel(before)


def test_bf16_gemm_kernel_choice():
    """The kernels on offer each pass a check here, the default is oneDNN exactly on AMX CPUs that have it,
    and an unknown name is refused with the list."""
    kernels = native.bf16_gemm_kernels()
    assert kernels == [k for k in KERNELS if k in kernels]
    assert ("avx512" in kernels) == native.bf16_matmul_supported()
    if not kernels:
        return
    with open("/proc/cpuinfo") as f:
        amx = " amx_bf16 " in f.read().replace("\n", " ")
    asked = os.environ.get("FASTINR_BF16_GEMM")
    default = asked if asked in kernels else "onednn" if amx and "onednn" in kernels else "avx512"
    assert native.bf16_gemm_kernel() == default
    with pytest.raises(ValueError, match=r"'tiles' is not one of this machine's bf16 GEMM kernels \['avx512'"):
        native.set_bf16_gemm_kernel("tiles")


@pytest.mark.parametrize("kwargs,shape,batch,norm_stats,extras", CONFIGS, ids=[f"cfg{k}" for k in range(len(CONFIGS))])
def test_autocast_within_torch_bf16_error(kwargs, shape, batch, norm_stats, extras, bf16_gemms):
    spec, params, running, inputs = make_inputs(kwargs, shape, batch, extras)
    check_bf16(spec, params, running, inputs, shape, norm_stats, low_precision_params=False)


@pytest.mark.parametrize("kwargs,shape,batch,norm_stats,extras", [CONFIGS[0], CONFIGS[3], CONFIGS[7]],
                         ids=["cfg0", "cfg3", "cfg7"])
def test_bf16_parameters_within_torch_bf16_error(kwargs, shape, batch, norm_stats, extras, bf16_gemms):
    spec, params, running, inputs = make_inputs(kwargs, shape, batch, extras)
    check_bf16(spec, params, running, inputs, shape, norm_stats, low_precision_params=True)


def test_render_under_autocast(bf16_gemms):
    """Eval render without gradients (running statistics folded into the weights)."""
    spec, params, running, inputs = make_inputs(dict(hidden=64, concat=(False, True)), (33, 21), 2, ())
    codes = inputs["codes"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = native.decode(codes, params, spec, (33, 21), "running", running)
        torch_own, _ = reference.decode(codes, params, spec, (33, 21), "running", running)
    params64 = DecoderParams.from_flat(spec, [t.detach().double() for t in params.flat()])
    truth, _ = reference.decode(codes.double(), params64, spec, (33, 21), "running",
                                [(m.double(), v.double()) for m, v in running])
    assert ours.dtype == torch_own.dtype
    assert_within_torch_error(K_TORCH, [("rendered colors", ours, [torch_own], truth)])


def test_bf16_gemms_run_where_supported(bf16_gemms):
    """On a CPU with AVX512-BF16 the autocast call takes the bf16 GEMMs (its gradients differ from the
    forced float32 GEMMs' by bf16 rounding); forced off, the float32 GEMMs give float32 accuracy."""
    spec, params, running, inputs = make_inputs(dict(hidden=64), (9, 7), 2, ())
    upstream = torch.randn(2, 3, 9, 7).bfloat16().float()
    ident = lambda t: t
    assert native.bf16_matmul() == bf16_gemms
    with_bf16 = decode_with_grads(native, spec, params, running, inputs, (9, 7), "image", upstream, ident, True)
    native.set_bf16_matmul(False)
    assert not native.bf16_matmul()
    forced = decode_with_grads(native, spec, params, running, inputs, (9, 7), "image", upstream, ident, True)
    assert forced[0].dtype == torch.float32 and all(g.dtype == torch.float32 for g in forced[1])
    if bf16_gemms:
        assert not torch.equal(with_bf16[1][0], forced[1][0]), "the bf16 GEMMs did not run"
    truth = decode_with_grads(reference, spec, params, running, inputs, (9, 7), "image", upstream,
                              lambda t: t.double(), False)
    for k, (a, b) in enumerate(zip([forced[0], *forced[1]], [truth[0], *truth[1]])):
        err = (a.double() - b).abs().max().item()
        assert err <= 2e-5 * max(b.abs().max().item(), 1e-3), f"result {k}: {err:.3e} with float32 GEMMs"


def test_modules_under_autocast_run_natively(bf16_gemms):
    """The drop-in decoder and INRDecoder under autocast: the native backend's colors and code
    gradients within torch's own autocast error (the torch backend) of float64."""
    torch.manual_seed(0)
    for make in (lambda backend: fastinr.ImageManifoldDecoder(num_input_channels=10, default_shape=(8, 8),
                                                               backend=backend),
                 lambda backend: fastinr.INRDecoder(code_size=10, hidden=32, norm="layer", conditioning="film",
                                                    default_shape=(8, 8), backend=backend)):
        decoders = [make(b) for b in ("native", "torch")]
        for d in decoders[1:]:
            d.load_state_dict(decoders[0].state_dict())
        truth_decoder = make("torch").double()
        truth_decoder.load_state_dict(decoders[0].state_dict())
        codes = torch.randn(3, 10)
        results = []
        for decoder, dtype, autocast in ((decoders[0], torch.float32, True), (decoders[1], torch.float32, True),
                                         (truth_decoder, torch.float64, False)):
            c = codes.to(dtype).clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                colors = decoder(c)
            colors.float().sum().backward()
            results.append((colors.detach(), c.grad))
        (ours, ours_grad), (torch_own, torch_grad), (truth, truth_grad) = results
        assert ours.dtype == torch_own.dtype, type(decoders[0]).__name__
        name = type(decoders[0]).__name__
        assert_within_torch_error(K_TORCH, [(f"{name} colors", ours, [torch_own], truth),
                                   (f"{name} code gradient", ours_grad, [torch_grad], truth_grad)])


def test_float16_and_mixed_dtypes(bf16_gemms):
    """float16 is handed to the reference; bf16 codes with float32 parameters outside autocast are
    refused naming the tensor; the core refuses bf16 GEMMs on float64."""
    spec = make_spec(hidden=8)
    params, _ = make_params(spec, torch.float16, requires_grad=False)
    codes = torch.randn(2, spec.code_size, dtype=torch.float16)
    ours, _ = native.decode(codes, params, spec, (4, 5))
    ref, _ = reference.decode(codes, params, spec, (4, 5))
    assert ours.dtype == torch.float16 and torch.equal(ours, ref)
    params32, _ = make_params(spec, torch.float32, requires_grad=False)
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.float32 but codes have torch.bfloat16"):
        native.decode(codes.bfloat16(), params32, spec, (4, 5))
    if bf16_gemms:
        params64, _ = make_params(spec, torch.float64, requires_grad=False)
        with pytest.raises(TypeError, match="bf16_matmul=True takes float32 tensors"):
            native._C.forward(native_ops.plan(spec), codes.double(), params64.flat(), [], None, None, None,
                              height=4, width=5, norm_stats="image", save=False, bf16_matmul=True)


def test_example_precision_flag():
    """--precision: auto resolves to bf16 exactly where the native bf16 GEMMs run; bf16 runs the
    training step's forward (not the loss) and evaluation under bf16 autocast."""
    import rpg_autoencoder   # examples/ is on sys.path (tests/conftest.py)
    from rpgkit.config import describe_precision, precision_of
    from rpgkit.training import evaluate, train_step
    cpu = torch.device("cpu")
    cfg = dict(decoder="seed", backend="native", precision="auto")
    assert precision_of(cfg, cpu) == ("bf16" if native.bf16_matmul() else "fp32")
    assert precision_of(dict(cfg, backend="torch"), cpu) == "fp32"
    assert precision_of(dict(cfg, precision="bf16"), cpu) == "bf16"
    assert precision_of({"decoder": "seed", "backend": "native"}, cpu) == "fp32"   # older runs
    # the run's header names the kernel of native bf16's GEMMs
    assert describe_precision(cfg, cpu, "native") == (f"bf16 ({native.bf16_gemm_kernel()} GEMMs)"
                                                      if native.bf16_matmul() else "fp32")
    assert describe_precision(dict(cfg, precision="bf16"), cpu, "torch") == "bf16"
    with pytest.raises(SystemExit):
        rpg_autoencoder.build_parser().parse_args(["--precision", "fp16"])

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.seen = []

        def forward(self, images):
            self.seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
            return (images * self.scale).bfloat16() if self.seen[-1] else images * self.scale

    model = Recorder()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images = torch.rand(2, 3, 4, 4)
    loss = train_step(model, optimizer, scheduler, images, precision="bf16")
    train_step(model, optimizer, scheduler, images, precision="fp32")
    assert model.seen == [torch.bfloat16, False] and loss.dtype == torch.float32
    evaluate(model, (images * 255).to(torch.uint8), precision="bf16")
    assert model.seen[-1] == torch.bfloat16
