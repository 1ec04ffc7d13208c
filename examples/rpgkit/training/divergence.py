"""Stop a diverging run before it writes NaN anywhere.

`nonfinite_report(loss, named_parameters)` is None while the loss and every gradient are finite
(one small reduction per parameter, read back once per step) and otherwise says what went
non-finite: the loss's value and the parameters whose gradients hold NaN or inf. The training
loop checks it after backward and before the optimizer step, so the weights, the optimizer state
and every checkpoint stay those of the last finite step.
"""
import math
from typing import Iterable, Optional, Tuple

import torch

__all__ = ["Diverged", "nonfinite_report"]

_LISTED = 3  # parameters named in the message; the rest are counted


class Diverged(RuntimeError):
    """Training produced a non-finite loss, gradient or metric; the message says which."""


def nonfinite_report(loss: torch.Tensor,
                     named_parameters: Iterable[Tuple[str, torch.nn.Parameter]]) -> Optional[str]:
    grads = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    flags = [torch.isfinite(loss).all()] + [torch.isfinite(g).all() for _, g in grads]
    if bool(torch.stack(flags).all()):
        return None
    parts = []
    value = loss.detach().float().item()
    if not math.isfinite(value):
        parts.append(f"the loss is {value}")
    bad = [name for (name, _), ok in zip(grads, flags[1:]) if not bool(ok)]
    if bad:
        listed = ", ".join(bad[:_LISTED]) + (f" and {len(bad) - _LISTED} more"
                                             if len(bad) > _LISTED else "")
        parts.append(f"the gradients of {listed} hold NaN or inf")
    return "; ".join(parts)
