"""INRDecoder: the seed as one of its variants, and the properties each variant promises."""
import itertools

import pytest
import torch

import fastinr
from fastinr.inr_decoder import CONDITIONINGS, EMBEDDINGS, NORMS, OUTPUTS, INRDecoder
from fastinr.inr_points import evaluate_at_points


def seed_as_inr(seed):
    """An INRDecoder holding the weights of an ImageManifoldDecoder (no concat blocks)."""
    C = seed.num_input_channels
    p = seed.decoder_params()
    inr = INRDecoder(C, hidden=seed.spec.hidden, num_blocks=seed.spec.num_blocks,
                     layers_per_block=seed.spec.layers_per_block, norm="image-bn", output="sigmoid",
                     freqs=seed.spec.freqs).double()
    with torch.no_grad():
        inr.code_in.weight.copy_(p.w_in[:, :C])
        inr.embed_in.weight.copy_(p.w_in[:, C:])
        inr.embed_in.bias.copy_(p.b_in)
        for block, weights, biases in zip(inr.blocks, p.weights, p.biases):
            for linear, w, b in zip(block, weights, biases):
                linear.weight.copy_(w)
                linear.bias.copy_(b)
        for norm, w, b in zip(inr.norms, p.norm_weight, p.norm_bias):
            norm.weight.copy_(w)
            norm.bias.copy_(b)
        inr.linear_out.weight.copy_(p.w_out)
        inr.linear_out.bias.copy_(p.b_out)
    return inr


def test_the_seed_is_one_variant():
    seed = fastinr.ImageManifoldDecoder(7, num_hidden=16, backend="torch").double()
    inr = seed_as_inr(seed)
    inr.backend = "torch"
    for step in range(2):
        codes = torch.randn(3, 7, dtype=torch.float64)
        torch.testing.assert_close(inr(codes, (5, 6)), seed(codes, (5, 6)), rtol=1e-12, atol=1e-12)
    for a, b in zip(inr.norms, seed._norms()):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-12, atol=1e-12)
    inr.eval(), seed.eval()
    codes = torch.randn(2, 7, dtype=torch.float64)
    torch.testing.assert_close(inr(codes, (4, 4)), seed(codes, (4, 4)), rtol=1e-12, atol=1e-12)


# Every conditioning x normalization pair, with the outputs, embeddings and grids rotated through.
VARIANTS = [(conditioning, norm, output, embedding, grid) for (conditioning, norm), output, embedding, grid
            in zip(itertools.product(CONDITIONINGS, NORMS), itertools.cycle(OUTPUTS),
                   itertools.cycle(EMBEDDINGS), itertools.cycle((0, 2, 3)))]


@pytest.mark.parametrize("conditioning, norm, output, embedding, grid", VARIANTS)
def test_every_variant_trains(conditioning, norm, output, embedding, grid):
    """Right shape, finite, every parameter and the codes receive a gradient, and the gradients
    fit a batch: 40 Adam steps on the codes and weights cut the L1 to random targets by at least
    15% (every variant reaches 0.72x or less in 60 seeded trials; a wrong or missing gradient
    leaves it at 1x or above)."""
    code_size = 3 * 3 * 2 + 5
    model = INRDecoder(code_size, hidden=12, conditioning=conditioning, norm=norm, output=output,
                       embedding=embedding, num_freqs=3, grid_size=grid, grid_channels=2 if grid else 0)
    codes = torch.randn(4, code_size, requires_grad=True)
    colors = model(codes, (6, 5))
    assert colors.shape == (4, 3, 6, 5) and torch.isfinite(colors).all()
    (colors * torch.randn_like(colors)).sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
    if conditioning != "film":  # FiLM starts as the identity: the code's gradient is 0 at first
        assert codes.grad.abs().sum() > 0
        for name, parameter in model.named_parameters():
            assert parameter.grad.abs().sum() > 0, name
    target = torch.rand(4, 3, 6, 5)
    optimizer = torch.optim.Adam([*model.parameters(), codes], lr=1e-2)
    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = (model(codes, (6, 5)) - target).abs().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], f"L1 {losses[0]:.4f} -> {losses[-1]:.4f}"


# The variants whose per-pixel function is the seed's shape, and the backends that fuse them.
FUSED_VARIANTS = [("concat", "none", "linear", "seed"), ("concat", "image-bn", "sigmoid", "log"),
                  ("concat", "instance", "linear", "log"), ("concat", "batch-bn", "linear", "seed"),
                  ("film", "none", "linear", "log"), ("shift", "instance", "sigmoid", "seed"),
                  ("film", "image-bn", "linear", "seed"), ("concat", "instance", "wide-sigmoid", "gaussian"),
                  ("film", "none", "linear", "gaussian"), ("concat", "layer", "linear", "log"),
                  ("shift", "layer", "sigmoid", "seed")]


def plain_forward(model, codes, shape, jitter=None):
    """The plain PyTorch path of the same module (fastinr.inr_points): nothing fused."""
    xy = fastinr.pixel_coordinates(*shape, dtype=codes.dtype)
    if jitter is not None:   # (H, W, 2) shared or (B, H, W, 2) per image
        xy = xy + jitter.reshape(*jitter.shape[:-3], -1, 2)
    colors = evaluate_at_points(model, codes, xy.expand(codes.shape[0], -1, -1))
    return colors.reshape(codes.shape[0], model.out_channels, *shape)


def random_jitter(shape, dtype, batch=None):
    """Up to half a pixel off every pixel centre, as sub-pixel training draws it (one per image
    with `batch`)."""
    pixel = torch.tensor([2 / (shape[1] - 1), 2 / (shape[0] - 1)], dtype=dtype)
    return (torch.rand(*((batch,) if batch else ()), *shape, 2, dtype=dtype) - 0.5) * pixel


@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("conditioning, norm, output, embedding", FUSED_VARIANTS)
def test_fused_paths_match_the_plain_path(backend, conditioning, norm, output, embedding):
    """Training (colors, every gradient, running statistics) and eval, fused vs plain PyTorch."""
    if backend not in fastinr.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run here")
    check_fused_matches_plain(backend, 9, dict(conditioning=conditioning, norm=norm, output=output,
                                                embedding=embedding))


# (code size, conditioning, norm, grid size, grid channels, blend): a global part, FiLM of the
# global part, and a grid that takes the whole code; the area blend with each normalization kind
# (its 4 members are 4 batches of images to them) and with Gaussian features.
GRID_VARIANTS = [(2 * 2 * 3 + 5, "concat", "instance", 2, 3, "bilinear"),
                 (3 * 3 * 2 + 4, "film", "batch-bn", 3, 2, "bilinear"),
                 (2 * 2 * 2, "concat", "none", 2, 2, "bilinear"),
                 (2 * 2 * 3 + 5, "concat", "instance", 2, 3, "area"),
                 (3 * 3 * 2 + 4, "film", "image-bn", 3, 2, "area"),
                 (3 * 3 * 2 + 4, "shift", "batch-bn", 3, 2, "area"),
                 (2 * 2 * 2, "concat", "layer", 2, 2, "area")]


@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("code_size, conditioning, norm, grid_size, grid_channels, blend", GRID_VARIANTS)
def test_fused_grid_matches_the_plain_path(backend, code_size, conditioning, norm, grid_size, grid_channels,
                                           blend):
    """The local latent grid through the decode contract's input_offset, vs sampling per pixel."""
    if backend not in fastinr.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run here")
    check_fused_matches_plain(backend, code_size, dict(conditioning=conditioning, norm=norm, embedding="log",
                                                        grid_size=grid_size, grid_channels=grid_channels,
                                                        grid_blend=blend))


# Sub-pixel jitter: alone (seed and log embeddings, FiLM) and with a grid (its weights move too).
JITTER_VARIANTS = [(9, dict(conditioning="concat", norm="none", embedding="seed")),
                   (9, dict(conditioning="film", norm="instance", embedding="log")),
                   (9, dict(conditioning="concat", norm="instance", embedding="gaussian")),
                   (2 * 2 * 3 + 5, dict(conditioning="concat", norm="image-bn", embedding="log",
                                        grid_size=2, grid_channels=3)),
                   (2 * 2 * 3 + 5, dict(conditioning="concat", norm="instance", embedding="gaussian",
                                        grid_size=2, grid_channels=3, grid_blend="area"))]


@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("code_size, variant", JITTER_VARIANTS)
def test_fused_jitter_matches_the_plain_path(backend, code_size, variant):
    """Query points off the pixel centres through input_offset, vs the same points as coords."""
    if backend not in fastinr.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run here")
    check_fused_matches_plain(backend, code_size, variant, jitter=True)


@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("code_size, variant", [JITTER_VARIANTS[1], JITTER_VARIANTS[4]])
def test_fused_per_image_jitter_matches_the_plain_path(backend, code_size, variant):
    """A jitter (B, H, W, 2), one per image: a per-image basis through input_offset (the area
    blend repeats it per member), vs the same points per image."""
    if backend not in fastinr.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run here")
    check_fused_matches_plain(backend, code_size, variant, jitter="per_image")


@pytest.mark.parametrize("backend", ["native", "triton", "torch"])
@pytest.mark.parametrize("code_size, variant", JITTER_VARIANTS)
def test_per_image_coords_fused_match_the_plain_path(backend, code_size, variant):
    """coords (B, P, 2) without a gradient run fused (a 1 x P grid with a per-image jitter):
    colors, every gradient and the running statistics equal evaluate_at_points'."""
    if backend not in fastinr.available_backends("cpu"):
        pytest.skip(f"backend {backend!r} does not run here")
    dtype, tol = (torch.float32, 2e-4) if backend == "triton" else (torch.float64, 1e-9)
    torch.manual_seed(0)
    kwargs = dict(hidden=16, num_blocks=2, layers_per_block=2, num_freqs=3, **variant)
    fused = INRDecoder(code_size, backend=backend, **kwargs).to(dtype)
    if fused.modulation is not None:
        with torch.no_grad():
            fused.modulation.weight.normal_(0, 0.3)
            fused.modulation.bias.normal_(0, 0.3)
    plain = INRDecoder(code_size, **kwargs).to(dtype)
    plain.load_state_dict(fused.state_dict())
    codes = torch.randn(3, code_size, dtype=dtype)
    xy = torch.rand(3, 17, 2, dtype=dtype) * 2 - 1
    upstream = torch.randn(3, 3, 17, dtype=dtype)
    assert_same_step(fused, lambda m, c: m(c, coords=xy), plain, lambda m, c: evaluate_at_points(m, c, xy),
                     codes, upstream, tol)
    for name, buffer in fused.named_buffers():
        torch.testing.assert_close(buffer, dict(plain.named_buffers())[name], rtol=tol, atol=tol, msg=name)
    fused.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(codes, coords=xy), evaluate_at_points(plain, codes, xy),
                                   rtol=tol, atol=tol)


def assert_same_step(fused, fused_forward, plain, plain_forward_, codes, upstream, tol):
    """The fused and the plain module give the same colors and gradients (codes, every parameter)."""
    results = []
    for model, forward in ((fused, fused_forward), (plain, plain_forward_)):
        c = codes.clone().requires_grad_(True)
        colors = forward(model, c)
        grads = torch.autograd.grad(colors, [c, *model.parameters()], upstream)
        results.append((colors.detach(), grads))
    (colors_f, grads_f), (colors_p, grads_p) = results
    torch.testing.assert_close(colors_f, colors_p, rtol=tol, atol=tol)
    names = ["codes"] + [name for name, _ in fused.named_parameters()]
    for name, a, b in zip(names, grads_f, grads_p):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(1.0, b.abs().max().item()),
                                   msg=lambda m, name=name: f"grad of {name}: {m}")


def check_fused_matches_plain(backend, code_size, variant, jitter=False):
    dtype, tol = (torch.float32, 2e-4) if backend == "triton" else (torch.float64, 1e-9)
    torch.manual_seed(0)
    kwargs = dict(hidden=16, num_blocks=2, layers_per_block=2, num_freqs=3, **variant)
    fused = INRDecoder(code_size, backend=backend, **kwargs).to(dtype)
    if fused.modulation is not None:  # away from FiLM's identity start, so every path is exercised
        with torch.no_grad():
            fused.modulation.weight.normal_(0, 0.3)
            fused.modulation.bias.normal_(0, 0.3)
    plain = INRDecoder(code_size, **kwargs).to(dtype)
    plain.load_state_dict(fused.state_dict())
    shape = (5, 7)
    for step in range(2):
        codes = torch.randn(3, code_size, dtype=dtype)
        upstream = torch.randn(3, 3, *shape, dtype=dtype)
        j = random_jitter(shape, dtype, 3 if jitter == "per_image" else None) if jitter else None
        assert_same_step(fused, lambda m, c: m(c, shape, jitter=j),
                         plain, lambda m, c: plain_forward(m, c, shape, j), codes, upstream, tol)
    for name, buffer in fused.named_buffers():
        torch.testing.assert_close(buffer, dict(plain.named_buffers())[name], rtol=tol, atol=tol, msg=name)
    fused.eval(), plain.eval()
    codes = torch.randn(2, code_size, dtype=dtype)
    with torch.no_grad():
        torch.testing.assert_close(fused(codes, shape), plain_forward(plain, codes, shape), rtol=tol, atol=tol)


def test_film_starts_as_the_identity_and_learns():
    model = INRDecoder(6, hidden=16, conditioning="film")
    codes = torch.randn(2, 6)
    colors = model(codes, (4, 4))
    torch.testing.assert_close(colors[0], colors[1])  # the code only enters through FiLM
    (colors[0] - colors[1] * 0.5).square().sum().backward()
    assert model.modulation.weight.grad.abs().sum() > 0


def test_instance_norm_is_the_same_in_train_and_eval():
    model = INRDecoder(6, hidden=16, norm="instance")
    codes = torch.randn(3, 6)
    torch.testing.assert_close(model.train()(codes, (5, 5)), model.eval()(codes, (5, 5)))
    assert not any(name.endswith("running_mean") for name in model.state_dict())


def test_grid_sampling_hits_cell_values_at_cell_centres():
    model = INRDecoder(2 * 2 * 3 + 1, grid_size=2, grid_channels=3)
    grid = torch.randn(1, 3, 2, 2)
    centres = torch.tensor([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])[None]
    features = model.grid.sample(grid, centres)
    torch.testing.assert_close(features[0, :, :3], grid[0].flatten(1).t())
    torch.testing.assert_close(features[0, :, 3:], torch.zeros(4, 2))
    corners = model.grid.sample(grid, torch.tensor([[[-1.0, -1.0], [0.999, 0.999]]]))[0, :, 3:]
    assert corners.min() >= -0.5 and corners.max() <= 0.5


def liif_local_ensemble(grid, xy, predict):
    """LIIF's local ensemble as its paper writes it, one point at a time: shift the point by half a
    cell each way, take the cell it lands in, predict from that cell's values and the point relative
    to the cell's centre (in cells), and weight each prediction by the area its diagonal opposite
    spans with the point."""
    g = grid.shape[-1]
    outputs = []
    for x, y in xy.tolist():
        predictions, areas = [], []
        for vy, vx in itertools.product((-1, 1), (-1, 1)):
            sx, sy = (min(max(t + v / g, -1 + 1e-6), 1 - 1e-6) for t, v in ((x, vx), (y, vy)))
            ix, iy = (min(int((s + 1) * g / 2), g - 1) for s in (sx, sy))
            rel = torch.tensor([(x + 1) * g / 2 - ix - 0.5, (y + 1) * g / 2 - iy - 0.5], dtype=grid.dtype)
            predictions.append(predict(torch.cat([grid[:, iy, ix], rel])))
            areas.append(abs(rel[0] * rel[1]).item() + 1e-12)
        total = sum(areas)
        outputs.append(sum(p * a / total for p, a in zip(predictions, reversed(areas))))
    return torch.stack(outputs)


def test_area_blend_is_liifs_local_ensemble():
    """The area blend's members and weights, blended through a nonlinear function, against LIIF's
    recipe, on random points inside the grid and past its outer cell centres."""
    torch.manual_seed(0)
    model = INRDecoder(3 * 3 * 2 + 1, grid_size=3, grid_channels=2, grid_blend="area").double()
    grid = torch.randn(2, 3, 3, dtype=torch.float64)
    xy = torch.rand(40, 2, dtype=torch.float64) * 2 - 1
    mixing = torch.randn(4, 5, dtype=torch.float64)
    predict = lambda features: torch.tanh(features @ mixing)   # noqa: E731
    features, weights = model.grid.area_features(grid[None], xy[None])
    ours = (predict(features).reshape(4, 1, 40, 5) * weights).sum(0)[0]
    torch.testing.assert_close(ours, liif_local_ensemble(grid, xy, predict), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(weights.sum(0), torch.ones(1, 40, 1, dtype=torch.float64))


def test_area_blend_costs_four_evaluations():
    bilinear = INRDecoder(2 * 2 * 3 + 1, hidden=16, grid_size=2, grid_channels=3)
    area = INRDecoder(2 * 2 * 3 + 1, hidden=16, grid_size=2, grid_channels=3, grid_blend="area")
    assert area.macs_per_pixel() == 4 * bilinear.macs_per_pixel()


@pytest.mark.parametrize("conditioning", ["concat", "film"])
def test_macs_per_pixel_spreads_the_per_image_work_over_the_shape(conditioning):
    """Per query point: embedding, 2x2 hidden layers, output (and the grid's projection); per
    image: the code's projection (concat) or the 5 layers' scales and shifts (film)."""
    code, hidden, grid = 2 * 2 * 3 + 10, 16, 2 * 2 * 3
    model = INRDecoder(code, hidden=hidden, conditioning=conditioning, grid_size=2, grid_channels=3)
    per_point = 10 * hidden + 4 * hidden ** 2 + hidden * 3 + (3 + 2) * hidden
    per_image = (code - grid) * (hidden if conditioning == "concat" else 5 * 2 * hidden)
    assert model.macs_per_pixel() == per_point
    assert model.macs_per_pixel((4, 8)) == pytest.approx(per_point + per_image / 32, rel=1e-15)


def test_init_output_bias_is_added_before_the_output():
    model = INRDecoder(8, hidden=16, output="linear", backend="torch")
    assert model.init_output_bias(0.25) is model
    assert model.linear_out.bias.is_leaf and torch.equal(model.linear_out.bias, torch.full((3,), 0.25))
    with torch.no_grad():
        model.linear_out.weight.zero_()
    torch.testing.assert_close(model(torch.randn(2, 8), (3, 5)), torch.full((2, 3, 3, 5), 0.75))


def test_query_points_equal_the_pixel_grid():
    model = INRDecoder(8, hidden=16, embedding="log", num_freqs=4)
    codes = torch.randn(2, 8)
    xy = fastinr.pixel_coordinates(3, 7)
    torch.testing.assert_close(model(codes, coords=xy), model(codes, (3, 7)).flatten(2))
    torch.testing.assert_close(model(codes, coords=xy.expand(2, -1, -1)), model(codes, (3, 7)).flatten(2))
    assert model(codes[0], (3, 7)).shape == (3, 3, 7)


def test_log_frequencies_reach_nyquist_and_gaussian_features_are_saved():
    model = INRDecoder(4, embedding="log", num_freqs=5, train_size=32)
    assert model.freqs[0] == pytest.approx(1.0) and model.freqs[-1] == pytest.approx(3.14159265 * 31 / 2)
    a, b = INRDecoder(4, embedding="gaussian", seed=1), INRDecoder(4, embedding="gaussian", seed=1)
    torch.testing.assert_close(a.fourier_matrix, b.fourier_matrix)
    assert "fourier_matrix" in a.state_dict()


@pytest.mark.parametrize("kwargs, match", [
    (dict(conditioning="add"), r"conditioning must be one of concat, shift, film; got 'add'"),
    (dict(norm="group"), r"norm must be one of"),
    (dict(output="tanh"), r"output must be one of"),
    (dict(embedding="hash"), r"embedding must be one of"),
    (dict(grid_size=4, grid_channels=1), r"do not fit in code_size=10"),
    (dict(grid_size=2, grid_channels=0), r"grid_channels must be >= 1"),
    (dict(grid_size=1, grid_channels=10, conditioning="film"), r"modulates with the global part"),
    (dict(grid_size=2, grid_channels=2, grid_blend="nearest"), r"grid_blend must be one of bilinear, area"),
    (dict(grid_blend="area"), r"grid_blend='area' .* needs grid_size >= 1"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        INRDecoder(10, **kwargs)


def test_bad_forward_inputs():
    model = INRDecoder(5)
    with pytest.raises(ValueError, match=r"codes must have 5 channels \(code_size\), got \(2, 4\)"):
        model(torch.randn(2, 4), (3, 3))
    with pytest.raises(ValueError, match=r"codes must have shape \(B, 5\) or \(5,\)"):
        model(torch.randn(2, 3, 5), (3, 3))
    with pytest.raises(ValueError, match=r"shape must be given"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"coords must have shape \(P, 2\) or \(2, P, 2\)"):
        model(torch.randn(2, 5), coords=torch.rand(3, 9, 2))
    with pytest.raises(ValueError, match=r"jitter must be a float tensor of shape \(3, 4, 2\) \(H, W, 2\) or "
                                         r"\(2, 3, 4, 2\) \(B, H, W, 2\)"):
        model(torch.randn(2, 5), (3, 4), jitter=torch.zeros(4, 3, 2))
    with pytest.raises(ValueError, match=r"jitter must be a float tensor of shape \(3, 4, 2\)"):
        model(torch.randn(2, 5), (3, 4), jitter=torch.zeros(3, 3, 4, 2))
    with pytest.raises(ValueError, match=r"jitter moves the query points by constants; detach it"):
        model(torch.randn(2, 5), (3, 4), jitter=torch.zeros(3, 4, 2, requires_grad=True))
    with pytest.raises(ValueError, match=r"with coords, give the points themselves"):
        model(torch.randn(2, 5), coords=torch.rand(9, 2), jitter=torch.zeros(3, 3, 2))


def test_conv_decoder_baseline():
    from fastinr.conv_decoder import ConvDecoder
    model = ConvDecoder(102)
    codes = torch.randn(2, 102, requires_grad=True)
    colors = model(codes)
    assert colors.shape == (2, 3, 32, 32)
    colors.sum().backward()
    assert codes.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"codes must have shape \(B, 102\)"):
        model(torch.randn(102))


@pytest.mark.parametrize("size, channels", [(32, 64), (8, 5)])
def test_conv_decoder_macs_per_pixel_counts_what_a_forward_runs(size, channels):
    """The closed count against the multiply-adds of every Linear and Conv2d seen in a forward."""
    from fastinr.conv_decoder import ConvDecoder
    model = ConvDecoder(102, channels=channels, size=size)
    seen = []

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.append(module.in_features * module.out_features * output.shape[0])
        else:
            kh, kw = module.kernel_size
            seen.append(output.numel() * module.in_channels * kh * kw)

    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.register_forward_hook(count)
    model(torch.randn(1, 102))
    assert model.macs_per_pixel() == model.macs_per_pixel((size, size)) == sum(seen) / size ** 2
    with pytest.raises(ValueError, match=f"decodes only {size}x{size}"):
        model.macs_per_pixel((size, 2 * size))


def test_conv_decoder_init_output_bias():
    from fastinr.conv_decoder import ConvDecoder
    model = ConvDecoder(10, channels=4, size=8)
    assert model.init_output_bias(-0.5) is model and torch.equal(model.to_colors.bias, torch.full((3,), -0.5))
    with torch.no_grad():
        model.to_colors.weight.zero_()
    assert torch.equal(model(torch.randn(2, 10)), torch.zeros(2, 3, 8, 8))
