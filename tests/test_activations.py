"""The activation table (fastinr/activations.py) and the kernels that read it agree.

The table is the one list: the C++ extension's codes (csrc/activations.h) and the Triton constants
(fastinr/ops/activation.py) must be its codes, so that a new activation added to the table but not
to a kernel fails here by name. The formulas themselves are checked against the reference by
tests/test_native.py and tests/test_triton.py, which loop over ACTIVATION_NAMES.
"""
import os

import pytest
import torch

from fastinr.activations import (ACTIVATION_CODES, ACTIVATION_NAMES, ACTIVATIONS, activation_code,
                                 activation_module, apply_activation, canonical_activation)


def test_codes_are_distinct_and_dense():
    assert sorted(ACTIVATION_CODES.values()) == list(range(len(ACTIVATION_NAMES)))
    assert tuple(ACTIVATION_CODES) == ACTIVATION_NAMES


@pytest.mark.parametrize("alias", sorted(set(ACTIVATIONS) - set(ACTIVATION_NAMES)))
def test_aliases_name_a_canonical_activation(alias):
    assert canonical_activation(alias) in ACTIVATION_NAMES
    assert activation_code(alias) == ACTIVATION_CODES[canonical_activation(alias)]


def test_unknown_name_lists_every_activation():
    with pytest.raises(ValueError, match=rf"act must be one of {', '.join(ACTIVATIONS)}; got 'swish'"):
        canonical_activation("swish", "act")


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_function_and_module_agree(name):
    x = torch.randn(257, dtype=torch.float64) * 4
    x[:3] = torch.tensor([0.0, 6.0, -1e-3])    # relu's and relu6's kinks, and a point near them
    assert torch.equal(apply_activation(name, x), activation_module(name)(x))


def test_cpp_codes_equal_the_table():
    if os.environ.get("FASTINR_SKIP_EXT", "0") == "1":
        pytest.skip("FASTINR_SKIP_EXT=1: the native extension was deliberately not built")
    from fastinr import _C   # must import: a missing build fails here, loudly
    assert dict(_C.activation_codes()) == ACTIVATION_CODES


def test_triton_constants_equal_the_table():
    pytest.importorskip("triton")
    from fastinr.ops import activation as triton_activation
    constants = {name: getattr(triton_activation, name.upper(), None) for name in ACTIVATION_NAMES}
    assert {name: getattr(c, "value", c) for name, c in constants.items()} == ACTIVATION_CODES
