"""The csrc/ extension's forward and backward as torch.library custom ops, so torch.compile sees
each as one node (a fake kernel gives every output's shape and dtype) and autograd connects them:

    fastinr::native_forward(codes (B, C), params [DecoderParams.flat()], running [mean_0, var_0, ...],
                            mods (B, M, k, hidden)?,
                            offset_basis (H, W, K) or (B, H, W, K)?, offset_cells (B, K, hidden)?,
                            *, <the DecoderSpec's fields>, height, width, norm_stats, bf16_matmul,
                            reducer, global_rows, save)
        -> colors (B, out, H, W), means [(groups, w_i)], vars [(groups, w_i)], saved [...]
    fastinr::native_backward(grad_colors, codes, params, running, saved, mods?, offset_basis?,
                             offset_cells?, *, <the same keywords but save>)
        -> [the gradient of each params tensor, of codes, of mods (if modulated), of offset_cells (if given)]

groups is B with per-image statistics and 1 with statistics over the batch; means and vars are
empty without batch statistics, saved is empty without `save`. Gradients flow to codes, params,
mods and offset_cells (running and offset_basis are constants).

Custom-op arguments are schema types, so the spec travels as its fields (keyword-only); the C++
DecoderPlan, the spec checked once, is looked up from a cache keyed by them. A reducer (statistics
over a batch split across processes, fastinr.contract) travels as an int handle
(fastinr.contract.reducer_handle; 0: none) with the rows of the global batch; the backward gets
both with the other keywords.
"""
import functools
from typing import Tuple

import torch

from fastinr import _C
from fastinr.contract import DecoderSpec, reducer_of

SPEC_FIELDS = tuple(DecoderSpec.__dataclass_fields__)
_CALL_SCHEMA = "int height, int width, str norm_stats, bool bf16_matmul, int reducer=0, int global_rows=0"

@functools.lru_cache(maxsize=64)
def _cached_plan(key: Tuple) -> "_C.DecoderPlan":
    return _C.DecoderPlan(**dict(zip(SPEC_FIELDS, key)))


def plan_of(fields: dict) -> "_C.DecoderPlan":
    """The DecoderPlan of the spec given by its fields (DecoderSpec.op_fields, or an op's keywords)."""
    return _cached_plan(tuple(tuple(fields[name]) if name in ("concat", "freqs") else fields[name]
                              for name in SPEC_FIELDS))


def plan(spec) -> "_C.DecoderPlan":
    """The spec checked once, as the extension takes it (cached per spec)."""
    return plan_of(spec.op_fields())


def _split(call: dict):
    """(the spec's fields, the rest) of an op's keyword arguments."""
    return ({name: call[name] for name in SPEC_FIELDS},
            {name: value for name, value in call.items() if name not in SPEC_FIELDS})


def _extension_call(call: dict):
    """(the spec's fields, the extension's keywords): the reducer's handle as the reducer."""
    spec, rest = _split(call)
    return spec, dict(rest, reducer=reducer_of(rest.get("reducer", 0)))


@torch.library.custom_op(
    "fastinr::native_forward", mutates_args=(),
    schema=f"(Tensor codes, Tensor[] params, Tensor[] running, Tensor? mods, Tensor? offset_basis, "
           f"Tensor? offset_cells, *, {DecoderSpec.OP_SCHEMA}, {_CALL_SCHEMA}, bool save) "
           f"-> (Tensor, Tensor[], Tensor[], Tensor[])")
def native_forward(codes, params, running, mods, offset_basis, offset_cells, **call):
    spec, rest = _extension_call(call)
    return _C.forward(plan_of(spec), codes, params, running, mods, offset_basis, offset_cells, **rest)


@native_forward.register_fake
def _native_forward_fake(codes, params, running, mods, offset_basis, offset_cells, **call):
    spec, rest = _split(call)
    decoder = plan_of(spec)
    batch, height, width, norm_stats = codes.shape[0], rest["height"], rest["width"], rest["norm_stats"]
    groups = batch if norm_stats == "image" else 1
    colors = codes.new_empty((batch, spec["out_channels"], height, width))
    means = [codes.new_empty((groups, w)) for w in decoder.stats_widths(norm_stats)]
    variances = [codes.new_empty((groups, w)) for w in decoder.stats_widths(norm_stats)]
    saved = [codes.new_empty((groups, w), dtype=torch.float64) if statistic
             else codes.new_empty((batch * height * width, w))
             for w, statistic in decoder.saved_layout(norm_stats)] if rest["save"] else []
    return colors, means, variances, saved


@torch.library.custom_op(
    "fastinr::native_backward", mutates_args=(),
    schema=f"(Tensor grad_colors, Tensor codes, Tensor[] params, Tensor[] running, Tensor[] saved, "
           f"Tensor? mods, Tensor? offset_basis, Tensor? offset_cells, *, {DecoderSpec.OP_SCHEMA}, {_CALL_SCHEMA}) "
           f"-> Tensor[]")
def native_backward(grad_colors, codes, params, running, saved, mods, offset_basis, offset_cells, **call):
    spec, rest = _extension_call(call)
    return _C.backward(plan_of(spec), grad_colors, codes, params, running, saved, mods, offset_basis,
                       offset_cells, **rest)


@native_backward.register_fake
def _native_backward_fake(grad_colors, codes, params, running, saved, mods, offset_basis, offset_cells,
                          **call):
    # contiguous, as the extension allocates them
    return [t.new_empty(t.shape) for t in (*params, codes, mods, offset_cells) if t is not None]


def _setup_context(ctx, inputs, keyword_only_inputs, output):
    codes, params, running, mods, offset_basis, offset_cells = inputs
    _, means, variances, saved = output
    # Only colors carry a gradient; none is made up for the statistics and the saved activations.
    ctx.mark_non_differentiable(*means, *variances, *saved)
    ctx.set_materialize_grads(False)
    ctx.call = {name: value for name, value in keyword_only_inputs.items() if name != "save"}
    ctx.counts = (len(params), len(running))
    ctx.save_for_backward(codes, mods, offset_basis, offset_cells, *params, *running, *saved)


def _backward(ctx, grad_colors, grad_means, grad_variances, grad_saved):
    codes, mods, offset_basis, offset_cells, *tensors = ctx.saved_tensors
    num_params, num_running = ctx.counts
    params, running = tensors[:num_params], tensors[num_params:num_params + num_running]
    saved = tensors[num_params + num_running:]
    if grad_colors is None:
        return None, [None] * num_params, [None] * num_running, None, None, None
    grads = torch.ops.fastinr.native_backward(grad_colors, codes, params, running, saved, mods, offset_basis,
                                              offset_cells, **ctx.call)
    inputs = iter(grads[num_params:])
    grad_codes = next(inputs)
    grad_mods = next(inputs) if mods is not None else None
    grad_cells = next(inputs) if offset_cells is not None else None
    return grad_codes, grads[:num_params], [None] * num_running, grad_mods, None, grad_cells


native_forward.register_autograd(_backward, setup_context=_setup_context)
