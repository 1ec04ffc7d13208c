"""Decoding at arbitrary query points (fastinr.points), on every backend that runs here.

The oracle is fastinr.reference.decode with `points` (the embedding of the points themselves, no
lowering), shared by the batch (P, 2) or per image (B, P, 2): outputs and every gradient, in float64 to 1e-9 of scale, and in float32 within 8x the
error torch's own float32 reference makes against the float64 one (tests/test_native's model).
"""
import pytest
import torch

import fastinr
from fastinr import backends, reference
from fastinr.contract import DecoderParams
from fastinr.inr_decoder import INRDecoder
from fastinr.inr_points import evaluate_at_points
from fastinr.points import decode_points
from tests.error_model import moved
from tests.test_native import assert_close_scaled, make_params, make_spec, moved_params

BACKENDS = fastinr.available_backends("cpu")
CASES = [  # spec kwargs, batch, norm_stats
    (dict(), 3, "image"),
    (dict(concat=(True, False), layers_per_block=1), 2, "batch"),
    (dict(batch_norm=False, layer_norm=True, activation="silu"), 2, "image"),
    (dict(), 2, "running"),
]


def run(decode, codes, params, spec, norm_stats, running, upstream):
    codes = codes.detach().clone().requires_grad_(True)
    colors, stats = decode(codes, params, spec, norm_stats, running)
    grads = torch.autograd.grad(colors, [codes, *params.flat()], upstream)
    return colors.detach(), stats, grads


def as_dtype(params, running, spec, dtype):
    params = DecoderParams.from_flat(spec, [t.detach().to(dtype).requires_grad_(True) for t in params.flat()])
    return params, [(m.to(dtype), v.to(dtype)) for m, v in running]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kwargs,batch,norm_stats", CASES, ids=[f"case{k}" for k in range(len(CASES))])
@pytest.mark.parametrize("per_image", [False, True], ids=["shared", "per_image"])
def test_points_match_the_reference(backend, dtype, kwargs, batch, norm_stats, per_image):
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the triton backend computes in float32")
    spec = make_spec(hidden=16, **kwargs)
    params, running = make_params(spec, torch.float64)
    count = 23
    # a few beyond [-1, 1] too; per image: B sets of points
    points = torch.rand(*((batch,) if per_image else ()), count, 2, dtype=torch.float64) * 2.2 - 1.1
    codes = torch.randn(batch, spec.code_size, dtype=torch.float64)
    upstream = torch.randn(batch, spec.out_channels, count, dtype=torch.float64)

    def oracle(codes, params, spec, norm_stats, running):
        colors, stats = reference.decode(codes, params, spec, (1, count), norm_stats, running,
                                         points=points)
        return colors.reshape(codes.shape[0], spec.out_channels, -1), stats

    def fused(codes, params, spec, norm_stats, running):
        return decode_points(codes, params, spec, points.to(codes.dtype), norm_stats, running,
                             backend=backend)

    exact = run(oracle, codes, params, spec, norm_stats, running, upstream)
    own = []   # torch's own results in dtype: on the inputs, and on the inputs moved by one ulp
    if dtype != torch.float64:
        params, running = as_dtype(params, running, spec, dtype)
        codes, upstream = codes.to(dtype), upstream.to(dtype)
        params_moved, running_moved = moved_params(spec, params, running)
        own = [run(oracle, codes, params, spec, norm_stats, running, upstream),
               run(oracle, moved(codes), params_moved, spec, norm_stats, running_moved, moved(upstream))]
    out = run(fused, codes, params, spec, norm_stats, running, upstream)
    rel = 1e-9 if dtype == torch.float64 else 2e-5

    def pick(get):
        return [get(r) for r in own] or None

    assert_close_scaled(out[0], exact[0], rel, "colors", pick(lambda r: r[0]))
    assert len(out[1]) == len(exact[1])
    for i, (a, b) in enumerate(zip(out[1], exact[1])):
        assert_close_scaled(a.mean, b.mean, rel, f"stats[{i}].mean", pick(lambda r: r[1][i].mean))
    names = ["codes"] + DecoderParams.names(spec).flat()
    for k, name in enumerate(names):
        assert_close_scaled(out[2][k], exact[2][k], rel, f"grad of {name}", pick(lambda r: r[2][k]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pixel_centres_as_points_equal_the_grid(backend):
    spec = make_spec(hidden=16)
    dtype = torch.float32 if backend == "triton" else torch.float64
    params, _ = make_params(spec, dtype)
    codes = torch.randn(2, spec.code_size, dtype=dtype)
    grid, _ = backends.decode(codes, params, spec, (3, 5), "image", backend=backend)
    at_points, _ = decode_points(codes, params, spec, fastinr.pixel_coordinates(3, 5, dtype=dtype),
                                 "image", backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(at_points, grid.flatten(2), rtol=tol, atol=tol)


def test_modules_decode_points_fused():
    torch.manual_seed(0)
    seed = fastinr.ImageManifoldDecoder(6, num_hidden=16, num_blocks=1).double()
    codes, points = torch.randn(3, 6, dtype=torch.float64), torch.rand(10, 2, dtype=torch.float64) * 2 - 1
    expected, _ = reference.decode(codes, seed.decoder_params(), seed.spec, (1, 10), "image", points=points)
    torch.testing.assert_close(seed(codes, coords=points), expected.flatten(2))
    assert seed(codes[0], coords=points).shape == (3, 10)

    inr = INRDecoder(8, hidden=16, norm="image-bn", grid_size=2, grid_channels=1, conditioning="film",
                     embedding="gaussian", num_freqs=3).double()
    codes = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    fused = inr(codes, coords=points)
    plain = evaluate_at_points(inr, codes, points.expand(3, -1, -1))
    torch.testing.assert_close(fused, plain)
    grad_fused, grad_plain = (torch.autograd.grad(c.sum(), [codes, inr.embed_in.weight]) for c in (fused, plain))
    for a, b in zip(grad_fused, grad_plain):
        torch.testing.assert_close(a, b)


def test_bad_points_raise_clear_errors():
    decoder = fastinr.ImageManifoldDecoder(6, num_hidden=16, num_blocks=1)
    codes = torch.randn(2, 6)
    with pytest.raises(ValueError, match=r"coords must have shape \(P, 2\) or \(2, P, 2\).*got \(3, 5, 2\)"):
        decoder(codes, coords=torch.rand(3, 5, 2))
    with pytest.raises(ValueError, match=r"coords must have shape \(P, 2\) or \(2, P, 2\)"):
        decoder(codes, coords=torch.rand(2, 5, 3))
    with pytest.raises(ValueError, match="detach them"):
        decoder(codes, coords=torch.rand(5, 2, requires_grad=True))
    with pytest.raises(TypeError, match="coords must be a floating-point tensor"):
        decoder(codes, coords=torch.ones(5, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="not both"):
        decoder(codes, (4, 4), coords=torch.rand(5, 2))


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_image_points_are_each_images_own(backend):
    """Image b at its own points equals a decode of image b alone at those points (per-image
    statistics: the images are independent), and a per-image basis of equal sets equals the
    shared one."""
    spec = make_spec(hidden=16)
    dtype = torch.float32 if backend == "triton" else torch.float64
    params, _ = make_params(spec, dtype)
    codes = torch.randn(3, spec.code_size, dtype=dtype)
    points = torch.rand(3, 7, 2, dtype=dtype) * 2 - 1
    together, _ = decode_points(codes, params, spec, points, "image", backend=backend)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for b in range(3):
        alone, _ = decode_points(codes[b:b + 1], params, spec, points[b], "image", backend=backend)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=tol, atol=tol)
    shared, _ = decode_points(codes, params, spec, points[0], "image", backend=backend)
    same, _ = decode_points(codes, params, spec, points[:1].expand(3, -1, -1), "image", backend=backend)
    torch.testing.assert_close(same, shared, rtol=tol, atol=tol)


def test_modules_decode_per_image_points_fused():
    torch.manual_seed(0)
    seed = fastinr.ImageManifoldDecoder(6, num_hidden=16, num_blocks=1).double()
    codes, points = torch.randn(3, 6, dtype=torch.float64), torch.rand(3, 10, 2, dtype=torch.float64) * 2 - 1
    expected, _ = reference.decode(codes, seed.decoder_params(), seed.spec, (1, 10), "image", points=points)
    torch.testing.assert_close(seed(codes, coords=points), expected.flatten(2))
    assert seed(codes[0], coords=points[:1]).shape == (3, 10)


@pytest.mark.parametrize("height,width,scale", [(2, 2, 2), (3, 5, 4), (7, 2, 3)])
def test_subpixel_coordinates_cover_each_pixels_own_area(height, width, scale):
    points = fastinr.subpixel_coordinates(height, width, scale, dtype=torch.float64)
    assert points.shape == (height * scale * width * scale, 2)
    centres = fastinr.pixel_coordinates(height, width, dtype=torch.float64)
    nearest = torch.cdist(points, centres).argmin(1).reshape(height * scale, width * scale)
    rows = torch.arange(height).repeat_interleave(scale)[:, None]
    cols = torch.arange(width).repeat_interleave(scale)[None, :]
    assert torch.equal(nearest, rows * width + cols)   # the parent pixel, as in a nearest enlargement
    grid = points.reshape(height * scale, width * scale, 2)
    for axis, size in ((0, width), (1, height)):   # evenly spaced sub-pixels, symmetric about 0
        values = grid[0, :, 0] if axis == 0 else grid[:, 0, 1]
        torch.testing.assert_close(values.diff(), torch.full_like(values.diff(), 2 / ((size - 1) * scale)))
        torch.testing.assert_close(values, -values.flip(0))
    assert torch.equal(fastinr.subpixel_coordinates(height, width, 1), fastinr.pixel_coordinates(height, width))


def test_subpixel_coordinates_reject_bad_arguments():
    with pytest.raises(ValueError, match="scale must be an int >= 1"):
        fastinr.subpixel_coordinates(4, 4, 0)
    with pytest.raises(ValueError, match="height must be an int"):
        fastinr.subpixel_coordinates(2.0, 4, 2)
    with pytest.raises(ValueError, match="must be >= 2 to subdivide"):
        fastinr.subpixel_coordinates(1, 4, 2)
