"""Activations by name, shared by every backend.

The names are the seed's: gelu (exact erf form, like ``nn.GELU()``), relu, relu6, silu, tanh,
sigmoid, and none/identity (meant for the output).
"""
import torch
import torch.nn.functional as F
from torch import nn

_FUNCTIONS = {
    "gelu": F.gelu,
    "relu": F.relu,
    "relu6": F.relu6,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "none": lambda x: x,
}
_MODULES = {
    "gelu": nn.GELU, "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid, "none": nn.Identity,
}
_ALIASES = {"identity": "none", "linear": "none", None: "none"}

ACTIVATIONS = tuple(_FUNCTIONS) + tuple(name for name in _ALIASES if name is not None)


def canonical_activation(name, argument: str = "activation") -> str:
    """Returns the canonical name of an activation; raises ValueError naming `argument`."""
    if isinstance(name, str):
        name = name.lower()
    name = _ALIASES.get(name, name)
    if name not in _FUNCTIONS:
        raise ValueError(f"{argument} must be one of {', '.join(ACTIVATIONS)}; got {name!r}")
    return name


def apply_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    return _FUNCTIONS[name](x)


def activation_module(name: str) -> nn.Module:
    """The torch module of an activation (what the seed put in its module tree)."""
    return _MODULES[name]()
