"""Bad input gets a clear error that names the argument and what was expected."""
import pytest
import torch

import fastinr


@pytest.fixture
def decoder():
    return fastinr.ImageManifoldDecoder(6, num_hidden=8, default_shape=(4, 4), backend="torch")


@pytest.mark.parametrize("codes, error, match", [
    (torch.randn(2, 7), ValueError, r"codes must have 6 channels"),
    (torch.randn(2, 3, 6), ValueError, r"codes must have shape \(B, 6\) or \(6,\)"),
    (torch.randn(()), ValueError, r"codes must have shape"),
    (torch.ones(2, 6, dtype=torch.int64), TypeError, r"codes must be a floating-point tensor"),
    (torch.randn(2, 6, dtype=torch.float64), TypeError, r"codes have dtype torch.float64 but"),
    ([0.0] * 6, TypeError, r"codes must be a torch.Tensor"),
])
def test_bad_codes(decoder, codes, error, match):
    with pytest.raises(error, match=match):
        decoder(codes)


def test_codes_on_another_device(decoder):
    codes = torch.randn(2, 6, device="meta")
    with pytest.raises(ValueError, match=r"codes are on meta but the decoder's parameters are on cpu"):
        decoder(codes)


@pytest.mark.parametrize("shape", [(0, 4), (4, -1), (4,), (4, 4, 4), "ab", (2.5, 3), None])
def test_bad_shape(shape):
    decoder = fastinr.ImageManifoldDecoder(6, num_hidden=8, backend="torch")
    match = r"shape must be given as \(H, W\)" if shape is None else r"shape must be \(H, W\)"
    with pytest.raises(ValueError, match=match):
        decoder(torch.randn(2, 6), shape)


def test_bad_default_shape():
    with pytest.raises(ValueError, match=r"default_shape must be \(H, W\) with two positive ints"):
        fastinr.ImageManifoldDecoder(6, default_shape=(0, 32))


@pytest.mark.parametrize("argument", ["activation", "activation_out"])
def test_unknown_activation(argument):
    with pytest.raises(ValueError, match=rf"{argument} must be one of gelu, relu.*got 'swish'"):
        fastinr.ImageManifoldDecoder(6, **{argument: "swish"})


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_hidden=0), r"num_hidden must be a positive int"),
    (dict(num_blocks=-1), r"num_blocks must be an int >= 0"),
    (dict(concat_residual=(True,)), r"concat_residual must be a bool or 2 bools"),
    (dict(batch_norm_stats="pixel"), r"batch_norm_stats must be one of"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastinr.ImageManifoldDecoder(6, **kwargs)


def test_batchnorm_training_on_one_pixel_is_refused_like_the_seed(decoder):
    with pytest.raises(ValueError, match=r"needs more than one value per channel"):
        decoder(torch.randn(3, 6), (1, 1))
    decoder.eval()
    assert decoder(torch.randn(3, 6), (1, 1)).shape == (3, 3, 1, 1)


def test_unknown_backend():
    decoder = fastinr.ImageManifoldDecoder(6, num_hidden=8, default_shape=(4, 4), backend="cuda-magic")
    with pytest.raises(ValueError, match=r"backend must be 'auto' or one of torch, triton, native"):
        decoder(torch.randn(1, 6))
