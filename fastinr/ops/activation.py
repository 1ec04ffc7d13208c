"""Activations and their derivatives inside Triton kernels, selected by the codes of
fastinr.activations (the one table).

    activation(z, ACT)        gelu (exact erf), relu, relu6, silu, tanh, sigmoid, none
    activation_grad(z, ACT)   d activation / d z, evaluated at the pre-activation z

Derivatives follow torch's conventions at the kinks: relu' = [z > 0], relu6' = [0 < z < 6].
A code without a branch here fails to compile (a new activation cannot silently become the
identity).
"""
import triton
import triton.language as tl

from fastinr.activations import activation_code

# The table's codes as compile-time constants for the kernels' `ACT: tl.constexpr` arguments.
GELU = tl.constexpr(activation_code("gelu"))
RELU = tl.constexpr(activation_code("relu"))
RELU6 = tl.constexpr(activation_code("relu6"))
SILU = tl.constexpr(activation_code("silu"))
TANH = tl.constexpr(activation_code("tanh"))
SIGMOID = tl.constexpr(activation_code("sigmoid"))
NONE = tl.constexpr(activation_code("none"))


@triton.jit
def _tanh(z):
    # tanh from exp of a non-positive argument: no overflow, full relative precision near 0 is
    # not needed (absolute error ~1e-7).
    t = tl.exp(-2.0 * tl.abs(z))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(z < 0, -r, r)


@triton.jit
def activation(z, ACT: tl.constexpr):
    """act(z) for activation code ACT; z is float32."""
    if ACT == GELU:
        y = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == RELU:
        y = tl.maximum(z, 0.0)
    elif ACT == RELU6:
        y = tl.minimum(tl.maximum(z, 0.0), 6.0)
    elif ACT == SILU:
        y = z * tl.sigmoid(z)
    elif ACT == TANH:
        y = _tanh(z)
    elif ACT == SIGMOID:
        y = tl.sigmoid(z)
    else:
        tl.static_assert(ACT == NONE, "activation code without a Triton formula")
        y = z
    return y


@triton.jit
def activation_grad(z, ACT: tl.constexpr):
    """d act / d z at z (float32)."""
    if ACT == GELU:
        g = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACT == RELU:
        g = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == RELU6:
        g = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    elif ACT == SILU:
        s = tl.sigmoid(z)
        g = s * (1.0 + z * (1.0 - s))
    elif ACT == TANH:
        t = _tanh(z)
        g = 1.0 - t * t
    elif ACT == SIGMOID:
        s = tl.sigmoid(z)
        g = s * (1.0 - s)
    else:
        tl.static_assert(ACT == NONE, "activation code without a Triton formula")
        g = tl.full(z.shape, 1.0, tl.float32)
    return g
