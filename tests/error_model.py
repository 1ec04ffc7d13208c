"""The error model for low-precision results: ours against float64 within K times torch's own.

Torch's own result in the same precision (the reference under the same autocast, or in the same
dtype) against the float64 oracle sets the scale of what that precision costs, tensor by tensor:

- Torch's error on a tensor is the worse of its results on the inputs and on the inputs moved by
  one unit roundoff (`moved`): what the rounded inputs carry anyway, so a result that torch rounds
  well by luck sets no bar.
- On a tensor of a few values (an output bias's gradient) torch's output rounding can cancel most
  of the error both share, so the bar is never below the call's typical error: the median over
  the call's tensors of torch's error relative to each tensor's scale, times this one's scale.
- Where torch's own result is not finite (its CPU float16 autocast overflows in some first-layer
  gradients), there is no error of torch's for that tensor; the bar is the call's worst relative
  error of torch's, times its scale.
Ours may be K times that bar.
"""
import statistics

import torch


def moved(t, dtype=None):
    """t with every element moved up or down at random by what rounding to `dtype` leaves
    uncertain: one ulp of t's own dtype (default), or one unit roundoff of a coarser `dtype`."""
    if t is None:
        return None
    up = torch.randint(0, 2, t.shape, device=t.device).bool()
    if dtype is None or dtype == t.dtype:   # 1 +- u itself would round to 1 in t's dtype
        inf = torch.tensor(float("inf"), dtype=t.dtype, device=t.device)
        return torch.where(up, torch.nextafter(t, inf), torch.nextafter(t, -inf))
    u = torch.finfo(dtype).eps / 2
    return (t.double() * (1 + u * (2 * up.double() - 1))).to(t.dtype)


def _relative(a, truth) -> float:
    return (a.double() - truth.double()).abs().max().item() / max(truth.abs().max().item(), 1e-3)


def assert_within_torch_error(k: float, results, precision: str = "bf16"):
    """Each of ours within k times its bar; results: [(what, ours, [torch's own results],
    float64 truth)] of one call."""
    torch_relative = [max(_relative(t, truth) for t in ts) for _, _, ts, truth in results]
    finite = [r for r in torch_relative if r < float("inf")]  # nan and inf are not below inf
    assert finite, "torch's own results are all non-finite: no error to compare with"
    typical, worst = statistics.median(finite), max(finite)
    for (what, ours, _, truth), torch_rel in zip(results, torch_relative):
        assert ours.shape == truth.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(truth.shape)}"
        assert torch.isfinite(ours).all(), f"{what}: non-finite values"
        scale = max(truth.abs().max().item(), 1e-3)
        err = _relative(ours, truth) * scale
        bar = max(torch_rel, typical) if torch_rel < float("inf") else worst
        # a floor of float32 rounding for results torch happens to get exact (all-zero gradients)
        allowed = k * bar * scale + 1e-6 * scale
        assert err <= allowed, (f"{what}: max error {err:.3e} > {k} x torch's {precision} error "
                                f"{torch_rel * scale:.3e} (typical {typical * scale:.3e} at this scale)")
