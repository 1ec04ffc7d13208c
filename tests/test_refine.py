"""fastinr.refine_codes: test-time refinement of codes through a fixed decoder."""
import pytest
import torch

import fastinr
from fastinr.inr_decoder import INRDecoder

# refine_codes only calls the decoder; every backend's code gradient is checked against the
# oracle elsewhere, so the Triton interpreter (minutes for 60 steps) is left out here.
BACKENDS = [b for b in fastinr.available_backends("cpu") if b != "triton"]


def linear_decoder(seed=0):
    """A fixed float64 linear map codes (B, 5) -> images (B, 2, 3, 4): refinement is then exact
    arithmetic that chunking must not change."""
    weight = torch.randn(5, 24, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return lambda codes: (codes @ weight).reshape(-1, 2, 3, 4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_refinement_recovers_codes_through_the_fused_decoder(backend):
    seed = torch.seed() % 2 ** 31
    torch.manual_seed(seed)
    decoder = INRDecoder(10, 3, hidden=16, num_blocks=1, layers_per_block=1, norm="instance",
                         embedding="log", grid_size=2, grid_channels=2, default_shape=(8, 8),
                         backend=backend).eval()
    truth = torch.randn(6, 10)
    with torch.no_grad():
        targets = decoder(truth)
    start = truth + 0.5 * torch.randn(6, 10)
    before = (decoder(start) - targets).abs().flatten(1).mean(1).detach()
    refined = fastinr.refine_codes(decoder, targets, start, steps=60, lr=0.05,
                                   parameters=decoder.parameters())
    after = (decoder(refined) - targets).abs().flatten(1).mean(1).detach()
    assert (after < 0.5 * before).all(), f"seed {seed}: per-image L1 {before} -> {after}"
    assert all(p.requires_grad and p.grad is None for p in decoder.parameters()), \
        f"seed {seed}: the decoder's parameters must be restored and get no gradient"


def test_every_code_moves_as_if_refined_alone():
    decode = linear_decoder()
    codes = torch.randn(7, 5, dtype=torch.float64)
    targets = torch.rand(7, 2, 3, 4, dtype=torch.float64)
    together = fastinr.refine_codes(decode, targets, codes, steps=15, lr=0.1)
    alone = fastinr.refine_codes(decode, targets, codes, steps=15, lr=0.1, chunk=1)
    in_threes = fastinr.refine_codes(decode, targets, codes, steps=15, lr=0.1, chunk=3)
    torch.testing.assert_close(alone, together, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(in_threes, together, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_loss_falls_and_inputs_stay(loss):
    decode = linear_decoder(1)
    codes = torch.randn(4, 5, dtype=torch.float64)
    original = codes.clone()
    targets = decode(torch.randn(4, 5, dtype=torch.float64))
    refined = fastinr.refine_codes(decode, targets, codes, steps=100, lr=0.05, loss=loss)
    measure = (lambda d: d.abs()) if loss == "l1" else (lambda d: d.square())
    assert measure(decode(refined) - targets).mean() < 0.2 * measure(decode(codes) - targets).mean()
    assert torch.equal(codes, original) and not refined.requires_grad
    assert torch.equal(fastinr.refine_codes(decode, targets, codes, steps=0), codes)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=-1), "steps must be an int >= 0"),
    (dict(steps=2.5), "steps must be an int >= 0"),
    (dict(lr=0.0), "lr must be a finite number > 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(loss="huber"), "loss must be one of l1, mse"),
    (dict(chunk=0), "chunk must be an int >= 1"),
])
def test_bad_arguments_are_named(kwargs, match):
    decode = linear_decoder()
    with pytest.raises(ValueError, match=match):
        fastinr.refine_codes(decode, torch.zeros(2, 2, 3, 4), torch.zeros(2, 5), **kwargs)


def test_bad_shapes_are_named():
    decode = linear_decoder()
    with pytest.raises(ValueError, match="codes must be a float tensor"):
        fastinr.refine_codes(decode, torch.zeros(2, 2, 3, 4), torch.zeros(5))
    with pytest.raises(ValueError, match="one image per code"):
        fastinr.refine_codes(decode, torch.zeros(3, 2, 3, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="shape of decode's output"):
        fastinr.refine_codes(decode, torch.zeros(2, 24), torch.zeros(2, 5, dtype=torch.float64))
