"""Activations by name: the one table that every backend reads.

    name      code  torch function          nn.Module (what the seed put in its module tree)
    gelu      0     F.gelu (exact erf form) nn.GELU
    relu      1     F.relu                  nn.ReLU
    relu6     2     F.relu6                 nn.ReLU6
    silu      3     F.silu                  nn.SiLU
    tanh      4     torch.tanh              nn.Tanh
    sigmoid   5     torch.sigmoid           nn.Sigmoid
    none      6     identity                nn.Identity   (aliases: identity, linear, None)

The torch backend calls the function; the kernels get the integer code. Triton specialises on
it (fastinr/ops/activation.py: one named constant and one formula per code); the C++ extension
looks the name up in csrc/activations.h, whose codes must equal these (tests/test_activations.py
compares them).

How to add an activation (three files, nothing else):
  1. here: a row of _TABLE with the next free code, its torch function and nn.Module;
  2. fastinr/ops/activation.py: its constant, and its branch in `activation` and `activation_grad`;
  3. csrc/activations.h: its `Act` value and name, and its case in `act_value` / `act_grad`;
then rebuild the extension. The tests take their list of activations from ACTIVATION_NAMES.
"""
from typing import Callable, NamedTuple, Type

import torch
import torch.nn.functional as F
from torch import nn


class Activation(NamedTuple):
    name: str
    code: int                          # what the Triton and C++ kernels are specialised on
    function: Callable[[torch.Tensor], torch.Tensor]
    module: Type[nn.Module]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


_TABLE = (
    Activation("gelu", 0, F.gelu, nn.GELU),
    Activation("relu", 1, F.relu, nn.ReLU),
    Activation("relu6", 2, F.relu6, nn.ReLU6),
    Activation("silu", 3, F.silu, nn.SiLU),
    Activation("tanh", 4, torch.tanh, nn.Tanh),
    Activation("sigmoid", 5, torch.sigmoid, nn.Sigmoid),
    Activation("none", 6, _identity, nn.Identity),
)
_BY_NAME = {activation.name: activation for activation in _TABLE}
_ALIASES = {"identity": "none", "linear": "none", None: "none"}

ACTIVATION_NAMES = tuple(_BY_NAME)     # the canonical names, in code order
ACTIVATIONS = ACTIVATION_NAMES + tuple(name for name in _ALIASES if name is not None)
ACTIVATION_CODES = {activation.name: activation.code for activation in _TABLE}


def canonical_activation(name, argument: str = "activation") -> str:
    """Returns the canonical name of an activation; raises ValueError naming `argument`."""
    if isinstance(name, str):
        name = name.lower()
    name = _ALIASES.get(name, name)
    if name not in _BY_NAME:
        raise ValueError(f"{argument} must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    return name


def activation_code(name: str) -> int:
    """The kernels' integer code of a canonical activation name."""
    return _BY_NAME[canonical_activation(name)].code


def apply_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    return _BY_NAME[name].function(x)


def activation_module(name: str) -> nn.Module:
    """The torch module of an activation (what the seed put in its module tree)."""
    return _BY_NAME[name].module()
