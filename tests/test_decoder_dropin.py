"""The drop-in ImageManifoldDecoder against the naive per-image seed oracle (fastinr/seed_loop.py).

Same state_dict, same inputs: outputs, gradients of the codes and of every parameter, and the
running statistics after several training steps, in train and eval mode.
"""
import copy

import pytest
import torch

import fastinr
from fastinr.seed_loop import SeedImageManifoldDecoder

# (kwargs, shape, batch): blocks 0-3, layers 1-3, hidden 8..256, concat on/off/mixed, BN on/off,
# every activation, 0-4 frequencies, shapes 1x1 / 7x13 / 32x32, batch 1 and 5.
CONFIGS = [
    (dict(), (7, 13), 5),
    (dict(num_hidden=256), (32, 32), 5),
    (dict(num_hidden=8, num_blocks=1, num_layers_per_block=1, pos_embedding_freqs=()), (7, 13), 1),
    (dict(num_hidden=16, num_blocks=3, num_layers_per_block=3, activation="relu"), (7, 13), 5),
    (dict(num_hidden=12, concat_residual=True, activation="silu"), (7, 13), 5),
    (dict(num_hidden=12, num_blocks=3, concat_residual=(False, True, False), activation="tanh"), (7, 13), 3),
    (dict(num_hidden=20, num_blocks=3, concat_residual=(True, False, True), batch_norm=False,
          activation="relu6", activation_out="none"), (7, 13), 5),
    (dict(num_hidden=24, batch_norm=False, activation="sigmoid", activation_out="tanh",
          pos_embedding_freqs=(1, 2.5, 7, 17)), (32, 32), 5),
    (dict(num_hidden=32, batch_norm=False, pos_embedding_freqs=(3,)), (1, 1), 5),
    (dict(num_hidden=16, num_blocks=0, activation_out="relu"), (7, 13), 5),
    (dict(num_hidden=16, num_blocks=2, num_layers_per_block=0), (7, 13), 5),
    (dict(num_hidden=16, activation="gelu", activation_out="identity", num_output_channels=1,
          pos_embedding_freqs=(2, 4, 8)), (32, 32), 1),
]
DTYPES = [(torch.float64, 1e-10, 1e-10), (torch.float32, 2e-5, 2e-5)]
# In float32 a pre-activation within rounding of relu's or relu6's kink may land on either side in
# two summation orders, and then its derivative legitimately differs (config 6, relu6: 1 draw in
# 80 moved a code gradient by 66%). Those activations are compared in float64, where both paths
# agree to 1e-10; the float32 run of their configs uses silu.
KINKED = ("relu", "relu6")


def make_pair(kwargs, dtype):
    code_size = kwargs.pop("code_size", 11)
    seed = SeedImageManifoldDecoder(code_size, **kwargs).to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm parameters and running statistics
        for name, tensor in seed.state_dict().items():
            if name.endswith(("norm.weight", "running_var")):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(("norm.bias", "running_mean")):
                tensor.normal_(0, 0.3)
    ours = fastinr.ImageManifoldDecoder(code_size, backend="torch", **kwargs).to(dtype)
    ours.load_state_dict(seed.state_dict(), strict=True)
    return seed, ours, code_size


def run_step(model, codes, shape, upstream):
    codes = codes.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out = model(codes, shape)
    (out * upstream).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out.detach(), codes.grad, grads


def assert_close_scaled(actual, expected, atol, rtol, msg=None, truth=None):
    """assert_close with atol relative to the tensor's magnitude: gradients are sums over every
    pixel of the batch, so their float32 rounding error grows with their size, not with 1.

    With `truth` (the seed's result in float64), atol is also at least 8x the seed's own float32
    error: per-image BatchNorm over a few near-constant channels is ill-conditioned (the hidden-8,
    no-frequency config), and two float32 summation orders then differ by more than 2e-5."""
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    tolerance = atol * scale
    if truth is not None and expected.numel() and expected.is_floating_point():
        tolerance = max(tolerance, 8 * (expected.double() - truth.double()).abs().max().item())
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=rtol, msg=msg)


def assert_models_match(seed, ours, codes, shape, atol, rtol):
    upstream = torch.randn(codes.shape[0], seed.num_output_channels, *shape, dtype=codes.dtype)
    state_before = copy.deepcopy(seed.state_dict())
    out_s, dcodes_s, grads_s = run_step(seed, codes, shape, upstream)
    out_o, dcodes_o, grads_o = run_step(ours, codes, shape, upstream)
    truth = {}
    if codes.dtype != torch.float64:  # the same step of the seed in float64, from the same state
        seed64 = copy.deepcopy(seed).double()
        seed64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state_before.items()})
        out64, dcodes64, grads64 = run_step(seed64, codes.double(), shape, upstream.double())
        truth = {"out": out64, "codes": dcodes64, **{f"grad {k}": v for k, v in grads64.items()},
                 **{f"state {k}": v for k, v in seed64.state_dict().items()}}
    assert_close_scaled(out_o, out_s, atol=atol, rtol=rtol, truth=truth.get("out"))
    assert_close_scaled(dcodes_o, dcodes_s, atol=atol, rtol=rtol, truth=truth.get("codes"))
    assert grads_o.keys() == grads_s.keys()
    for name in grads_s:
        assert_close_scaled(grads_o[name], grads_s[name], atol=atol, rtol=rtol, msg=name,
                            truth=truth.get(f"grad {name}"))
    state_s, state_o = seed.state_dict(), ours.state_dict()
    for name in state_s:
        assert_close_scaled(state_o[name], state_s[name], atol=atol, rtol=rtol, msg=name,
                            truth=truth.get(f"state {name}"))


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("kwargs, shape, batch", CONFIGS)
def test_matches_seed_in_train_and_eval_mode(kwargs, shape, batch, dtype, atol, rtol):
    if dtype == torch.float32 and kwargs.get("activation") in KINKED:
        kwargs = {**kwargs, "activation": "silu"}
    seed, ours, code_size = make_pair(dict(kwargs), dtype)
    for step in range(3):
        codes = torch.randn(batch, code_size, dtype=dtype)
        assert_models_match(seed, ours, codes, shape, atol, rtol)
        with torch.no_grad():  # the same optimizer step on both, so the next step differs
            for p_s, p_o in zip(seed.parameters(), ours.parameters()):
                p_s -= 0.01 * p_s.grad
                p_o.copy_(p_s)
    seed.eval(), ours.eval()
    assert_models_match(seed, ours, torch.randn(batch, code_size, dtype=dtype), shape, atol, rtol)


def test_single_code_and_default_shape():
    seed, ours, code_size = make_pair(dict(num_hidden=16, default_shape=(5, 6)), torch.float64)
    seed.default_shape = (5, 6)
    code = torch.randn(code_size, dtype=torch.float64)
    out = ours(code)
    assert out.shape == (3, 5, 6)
    torch.testing.assert_close(out, seed(code))
    assert ours(code, (4, 9)).shape == (3, 4, 9)


def test_batch_statistics_option_matches_whole_batch_batchnorm():
    """batch_norm_stats="batch" is one BatchNorm over all pixels of all images."""
    seed, ours, code_size = make_pair(dict(num_hidden=16), torch.float64)
    ours.batch_norm_stats = "batch"
    codes = torch.randn(4, code_size, dtype=torch.float64)
    emb = seed.embedding(6, 7, like=codes)
    inputs = torch.cat([codes[:, None].expand(-1, 42, -1), emb[None].expand(4, -1, -1)], dim=2)
    expected = seed.pos_to_color(inputs.reshape(4 * 42, -1)).reshape(4, 42, 3).permute(0, 2, 1)
    torch.testing.assert_close(ours(codes, (6, 7)).reshape(4, 3, 42), expected)
    for name, tensor in seed.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], tensor, msg=name)
    assert int(ours.state_dict()["pos_to_color.resblocks.resblock_1.layers.norm.num_batches_tracked"]) == 1


def test_per_image_statistics_count_every_image():
    _, ours, code_size = make_pair(dict(num_hidden=8), torch.float32)
    ours(torch.randn(7, code_size), (4, 4))
    assert int(ours.state_dict()["pos_to_color.resblocks.resblock_2.layers.norm.num_batches_tracked"]) == 7


def test_cumulative_momentum_matches_seed():
    seed, ours, code_size = make_pair(dict(num_hidden=8), torch.float64)
    for model in (seed, ours):
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.momentum = None
    assert_models_match(seed, ours, torch.randn(3, code_size, dtype=torch.float64), (5, 5), 1e-10, 1e-10)


def test_state_dict_loads_both_ways_strictly():
    kwargs = dict(num_hidden=16, num_blocks=3, concat_residual=(True, False, True))
    seed = SeedImageManifoldDecoder(10, **kwargs)
    ours = fastinr.ImageManifoldDecoder(10, **kwargs)
    assert list(seed.state_dict()) == list(ours.state_dict())
    for name, tensor in seed.state_dict().items():
        assert ours.state_dict()[name].shape == tensor.shape, name
    ours.load_state_dict(seed.state_dict(), strict=True)
    seed2 = SeedImageManifoldDecoder(10, **kwargs)
    seed2.load_state_dict(ours.state_dict(), strict=True)
    for name, tensor in seed.state_dict().items():
        assert torch.equal(seed2.state_dict()[name], tensor), name


def test_parameter_count_matches_seed():
    seed = SeedImageManifoldDecoder(102, default_shape=(32, 32))
    ours = fastinr.ImageManifoldDecoder(102, default_shape=(32, 32))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in seed.parameters())
    assert "pos_embedding_freqs=(7, 17)" in repr(ours) and "GELU" in repr(ours)


def test_macs_per_pixel_counts_every_linear_at_every_pixel():
    """code ⊕ embedding (10 values for 2 frequencies) into hidden 12, two blocks of two layers
    whose concatenated residuals double the width after each block, then 3 outputs."""
    code, hidden, emb = 102, 12, 10
    decoder = fastinr.ImageManifoldDecoder(code, 3, num_hidden=hidden, num_blocks=2,
                                           num_layers_per_block=2, concat_residual=True)
    expected = ((code + emb) * hidden + 2 * hidden ** 2 + 2 * (2 * hidden) ** 2
                + 4 * hidden * 3)
    assert decoder.macs_per_pixel() == expected
    assert decoder.macs_per_pixel((7, 13)) == expected   # nothing per image to spread


def test_init_output_bias_starts_a_linear_output_there():
    decoder = fastinr.ImageManifoldDecoder(6, 3, num_hidden=8, activation_out="none",
                                           batch_norm=False, backend="torch")
    assert decoder.init_output_bias(0.5) is decoder
    bias = decoder.pos_to_color.linear_out.bias
    assert bias.is_leaf and bias.requires_grad and torch.equal(bias, torch.full((3,), 0.5))
    with torch.no_grad():
        decoder.pos_to_color.linear_out.weight.zero_()
    assert torch.equal(decoder(torch.randn(2, 6), (5, 4)), torch.full((2, 3, 5, 4), 0.5))
