"""Activations and their derivatives inside Triton kernels, and the codes that select them.

    act(z)        gelu (exact erf), relu, relu6, silu, tanh, sigmoid, none
    act_grad(z)   d act / d z, evaluated at the pre-activation z

Derivatives follow torch's conventions at the kinks: relu' = [z > 0], relu6' = [0 < z < 6].
"""
import triton
import triton.language as tl

ACTIVATION_CODES = {"gelu": 0, "relu": 1, "relu6": 2, "silu": 3, "tanh": 4, "sigmoid": 5, "none": 6}


@triton.jit
def _tanh(z):
    # tanh from exp of a non-positive argument: no overflow, full relative precision near 0 is
    # not needed (absolute error ~1e-7).
    t = tl.exp(-2.0 * tl.abs(z))
    r = (1.0 - t) / (1.0 + t)
    return tl.where(z < 0, -r, r)


@triton.jit
def _act(z, ACT: tl.constexpr):
    """act(z) for activation code ACT (see ACTIVATION_CODES); z is float32."""
    if ACT == 0:
        y = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACT == 1:
        y = tl.maximum(z, 0.0)
    elif ACT == 2:
        y = tl.minimum(tl.maximum(z, 0.0), 6.0)
    elif ACT == 3:
        y = z * tl.sigmoid(z)
    elif ACT == 4:
        y = _tanh(z)
    elif ACT == 5:
        y = tl.sigmoid(z)
    else:
        y = z
    return y


@triton.jit
def _act_grad(z, ACT: tl.constexpr):
    """d act / d z at z (float32)."""
    if ACT == 0:
        g = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476)) + z * 0.3989422804014327 * tl.exp(-0.5 * z * z)
    elif ACT == 1:
        g = tl.where(z > 0.0, 1.0, 0.0)
    elif ACT == 2:
        g = tl.where((z > 0.0) & (z < 6.0), 1.0, 0.0)
    elif ACT == 3:
        s = tl.sigmoid(z)
        g = s * (1.0 + z * (1.0 - s))
    elif ACT == 4:
        t = _tanh(z)
        g = 1.0 - t * t
    elif ACT == 5:
        s = tl.sigmoid(z)
        g = s * (1.0 - s)
    else:
        g = tl.full(z.shape, 1.0, tl.float32)
    return g


def activation_code(name: str) -> int:
    if name not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATION_CODES)}; got {name!r}")
    return ACTIVATION_CODES[name]
