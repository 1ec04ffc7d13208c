"""The Triton launches as torch.library custom ops: torch.compile sees each as one node (a fake
kernel gives its outputs' shapes) and autograd connects each forward op to its backward op, where
an autograd.Function that launches kernels would break the graph.

    @define("triton_linear", "(Tensor x, ...) -> (Tensor, Tensor)")
    def _linear_op(x, ...): ...                        # the body: launches the kernels
    _linear_op.register_fake(...)
    register_autograd(_linear_op, backward, setup_context)
    call("triton_linear", x, ..., **keywords)         # how the backend runs it

`call` takes the custom op under torch.compile, and in eager mode runs the same body, setup and
backward through one plain autograd.Function: a custom op's Python dispatch measured 109 us per
call against 18 us for an autograd.Function (2-core CPU, torch 2.14), and an eager training step
makes ~16 of these calls.

A LaunchConfig travels as the keyword arguments CONFIG_SCHEMA declares (config_args gives them,
split_config takes them back).
"""
import torch

from fastinr.ops.config import LaunchConfig

BODIES = {}      # "<name>" -> the op's Python body
_AUTOGRAD = {}   # "<name>" -> (backward, setup_context), as registered with the op
_NAMES = {}      # id(custom op) -> "<name>"

CONFIG_SCHEMA = "str dot_dtype, str dot_precision, int sm_count, int block_m"
_CONFIG_NAMES = ("dot_dtype", "dot_precision", "sm_count", "block_m")
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def define(name: str, schema: str):
    """Decorator: register the function as the custom op fastinr::<name> with `schema` (no
    argument is mutated; outputs are new tensors)."""
    def register(fn):
        BODIES[name] = fn
        op = torch.library.custom_op(f"fastinr::{name}", fn, mutates_args=(), schema=schema)
        _NAMES[id(op)] = name
        return op
    return register


def register_autograd(op, backward, setup_context) -> None:
    """op.register_autograd, and the same pair for `call`'s eager path."""
    op.register_autograd(backward, setup_context=setup_context)
    _AUTOGRAD[_NAMES[id(op)]] = (backward, setup_context)


class _Eager(torch.autograd.Function):
    """An op's body, setup_context and backward as they run inside the custom op, without its
    dispatch. The op's name and keywords come last, so ctx.needs_input_grad[i] is the op's i-th
    input's, as in the op's own backward."""

    @staticmethod
    def forward(ctx, *args):
        *inputs, name, keywords = args
        output = BODIES[name](*inputs, **keywords)
        ctx.op_name = name
        _AUTOGRAD[name][1](ctx, tuple(inputs), keywords, output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return (*_AUTOGRAD[ctx.op_name][0](ctx, *grads), None, None)


def call(name: str, *inputs, **keywords):
    """Run fastinr::<name> on `inputs`: the custom op while torch.compile traces (Dynamo, or
    AOTAutograd's fake and functional tensors), its body otherwise (through _Eager where it has
    a backward)."""
    if torch.compiler.is_compiling() or any(
            isinstance(t, torch.Tensor) and type(t) not in _PLAIN for t in _tensors(inputs)):
        return getattr(torch.ops.fastinr, name)(*inputs, **keywords)
    if name in _AUTOGRAD:
        return _Eager.apply(*inputs, name, keywords)
    return BODIES[name](*inputs, **keywords)


def _tensors(values):
    for value in values:
        if isinstance(value, (list, tuple)):
            yield from value
        else:
            yield value


def config_args(config: LaunchConfig) -> dict:
    """`config` as the keyword arguments of CONFIG_SCHEMA."""
    return dict(dot_dtype=config.dot_dtype, dot_precision=config.precision,
                sm_count=int(config.sm_count), block_m=int(config.block_m or 0))


def split_config(call_keywords: dict):
    """(LaunchConfig, the other keyword arguments) of an op's keyword arguments."""
    config = LaunchConfig(*(call_keywords[n] for n in _CONFIG_NAMES[:3]),
                          call_keywords["block_m"] or None)
    return config, {k: v for k, v in call_keywords.items() if k not in _CONFIG_NAMES}
