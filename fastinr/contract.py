"""The decode contract: what every backend computes, its arguments, and the one validation.

    decode(codes (B, C), params, spec, shape (H, W), norm_stats, running, mods, input_offset,
           reducer=None)
        -> (colors (B, out, H, W), [BlockStats of each BatchNorm block, in training])

`spec` (DecoderSpec) is everything that is not a tensor; `params` (DecoderParams) the tensors in
the seed's layout, with ONE flat order (`flat` / `from_flat` / `names`); `mods` the per-image
modulation (B, 1 + blocks * layers, k, hidden); `input_offset` (InputOffset) a low-rank per-pixel
addition to the input layer. fastinr/reference.py holds the math, fastinr/backends/ the
implementations; `validate` is the check every call through `fastinr.backends.decode` passes
before a backend sees it, so a backend checks only what its own memory safety needs.

norm_stats: "image" (statistics per image over its pixels, the seed's per-image loop),
"batch" (over all pixels of the batch), "running" (the running statistics `running`, eval mode).

reducer (with "batch" only): statistics over a batch split across processes (SyncBatchNorm). A
callable that sums a float64 tensor in place over the processes (e.g. `dist.all_reduce`;
fastinr.running_stats.group_reducer). Every process holds its share of the global batch and
makes the same decode call; the backend reduces its per-channel sums at each BatchNorm, so each
block is normalized with the moments of the global batch, and its backward reduces the gradient
sums (in effect those of dy and dy * xhat) before the input gradient. A call with BatchNorm blocks
reduces, in order: the row count (one value), then per block the sums of x, then the sums of
(x - mean)^2 about the global mean (w_i values each); its backward then reduces each block's
gradient sums, from the last block (their layout is the backend's). The BlockStats returned are
the global ones (count: rows of the global batch). The parameters' gradients stay this
process's share (DDP averages them; with each process's loss the mean over its equal share,
that is the gradient of the global batch's mean loss).
"""
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch

from fastinr.activations import canonical_activation
from fastinr.embedding import pos_embedding_size

NORM_STATS = ("image", "batch", "running")
MODULATIONS = ("none", "shift", "film")


@dataclass(frozen=True)
class DecoderSpec:
    """Everything about a decoder that is not a tensor (kernels specialise on it)."""
    code_size: int
    out_channels: int
    hidden: int
    concat: Tuple[bool, ...]            # per block
    layers_per_block: int
    freqs: Tuple[float, ...]
    batch_norm: bool
    activation: str
    activation_out: str
    eps: float = 1e-5
    modulation: str = "none"            # "none" | "shift" | "film" (see fastinr.reference)
    layer_norm: bool = False            # per pixel over its features (no statistics to keep)

    def __post_init__(self):
        if self.batch_norm and self.layer_norm:
            raise ValueError("a DecoderSpec normalizes with BatchNorm or LayerNorm, not both")

    # The spec as keyword-only arguments of a torch.library custom op (schema types only):
    # op_fields() gives them, from_op_fields() takes them back.
    OP_SCHEMA = ("int code_size, int out_channels, int hidden, bool[] concat, int layers_per_block, "
                 "float[] freqs, bool batch_norm, str activation, str activation_out, float eps, "
                 "str modulation, bool layer_norm")

    def op_fields(self) -> dict:
        return dict(code_size=self.code_size, out_channels=self.out_channels, hidden=self.hidden,
                    concat=tuple(bool(c) for c in self.concat), layers_per_block=self.layers_per_block,
                    freqs=tuple(float(f) for f in self.freqs), batch_norm=bool(self.batch_norm),
                    activation=self.activation, activation_out=self.activation_out, eps=float(self.eps),
                    modulation=self.modulation, layer_norm=bool(self.layer_norm))

    @staticmethod
    def from_op_fields(call: dict) -> "DecoderSpec":
        """The spec whose op_fields are among `call`'s items (the other items are ignored)."""
        fields = {name: call[name] for name in DecoderSpec.__dataclass_fields__}
        return DecoderSpec(**{**fields, "concat": tuple(fields["concat"]), "freqs": tuple(fields["freqs"])})

    @property
    def normalized(self) -> bool:
        """Whether each block starts with a normalization (and has its affine parameters)."""
        return self.batch_norm or self.layer_norm

    @property
    def num_blocks(self) -> int:
        return len(self.concat)

    @property
    def embedding_size(self) -> int:
        return pos_embedding_size(self.freqs)

    @property
    def block_widths(self) -> Tuple[int, ...]:
        """Input width of each block; concatenating blocks double the width after them."""
        widths, width = [], self.hidden
        for concat in self.concat:
            widths.append(width)
            width *= 2 if concat else 1
        return tuple(widths)

    @property
    def modulated_layers(self) -> int:
        return 1 + self.num_blocks * self.layers_per_block

    def mods_shape(self, batch: int) -> Tuple[int, int, int, int]:
        return (batch, self.modulated_layers, 2 if self.modulation == "film" else 1, self.hidden)

    @property
    def out_width(self) -> int:
        """Width of the hidden state entering linear_out."""
        return self.hidden * 2 ** sum(self.concat)


class DecoderParams(NamedTuple):
    """The decoder's tensors, in the seed's layout (nn.Linear weights are (out, in))."""
    w_in: torch.Tensor                          # (hidden, C + E)
    b_in: torch.Tensor                          # (hidden,)
    norm_weight: Tuple[torch.Tensor, ...]       # per block (w_i,), empty without a norm
    norm_bias: Tuple[torch.Tensor, ...]
    weights: Tuple[Tuple[torch.Tensor, ...], ...]   # [block][layer] (w_i, w_i)
    biases: Tuple[Tuple[torch.Tensor, ...], ...]    # [block][layer] (w_i,)
    w_out: torch.Tensor                         # (out, out_width)
    b_out: torch.Tensor                         # (out,)

    def flat(self) -> list:
        """All tensors in one list (for custom ops and the native core): THE flat order.
        `from_flat` and `names` follow it; nothing else spells it out."""
        tensors = [self.w_in, self.b_in, *self.norm_weight, *self.norm_bias]
        for ws, bs in zip(self.weights, self.biases):
            tensors += [*ws, *bs]
        return tensors + [self.w_out, self.b_out]

    def map(self, fn: Callable) -> "DecoderParams":
        """The same structure with fn applied to every leaf (e.g. `params.map(torch.Tensor.cuda)`)."""
        leaves = lambda group: tuple(fn(t) for t in group)  # noqa: E731
        return DecoderParams(fn(self.w_in), fn(self.b_in), leaves(self.norm_weight),
                             leaves(self.norm_bias), tuple(leaves(ws) for ws in self.weights),
                             tuple(leaves(bs) for bs in self.biases), fn(self.w_out), fn(self.b_out))

    @staticmethod
    def names(spec: DecoderSpec) -> "DecoderParams":
        """The structure `spec` asks for with each tensor's name in its place ("w_in",
        "norm_weight[0]", "weights[1][0]", ...); `names(spec).flat()` names the flat list."""
        norms = range(spec.num_blocks if spec.normalized else 0)
        blocks, layers = range(spec.num_blocks), range(spec.layers_per_block)
        return DecoderParams(
            "w_in", "b_in", tuple(f"norm_weight[{i}]" for i in norms),
            tuple(f"norm_bias[{i}]" for i in norms),
            tuple(tuple(f"weights[{i}][{j}]" for j in layers) for i in blocks),
            tuple(tuple(f"biases[{i}][{j}]" for j in layers) for i in blocks), "w_out", "b_out")

    @staticmethod
    def shapes(spec: DecoderSpec) -> "DecoderParams":
        """The structure `spec` asks for with each tensor's expected shape in its place."""
        widths = spec.block_widths
        norms = widths if spec.normalized else ()
        return DecoderParams(
            (spec.hidden, spec.code_size + spec.embedding_size), (spec.hidden,),
            tuple((w,) for w in norms), tuple((w,) for w in norms),
            tuple(((w, w),) * spec.layers_per_block for w in widths),
            tuple(((w,),) * spec.layers_per_block for w in widths),
            (spec.out_channels, spec.out_width), (spec.out_channels,))

    @staticmethod
    def from_flat(spec: DecoderSpec, tensors: Sequence[torch.Tensor]) -> "DecoderParams":
        """Inverse of `flat` for the structure `spec` asks for."""
        names = DecoderParams.names(spec)
        order, tensors = names.flat(), list(tensors)
        if len(tensors) != len(order):
            raise ValueError(f"this spec's DecoderParams hold {len(order)} tensors, got {len(tensors)}")
        return names.map(dict(zip(order, tensors)).__getitem__)


class InputOffset(NamedTuple):
    """basis[y, x] @ cells[b] is added to pixel (x, y) of image b before the input activation
    (basis[b, y, x] @ cells[b] with a per-image basis)."""
    basis: torch.Tensor    # (H, W, K) fixed per pixel, or (B, H, W, K) per image; a constant
    cells: torch.Tensor    # (B, K, hidden), per image

    @property
    def per_image(self) -> bool:
        """Whether the basis is per image, (B, H, W, K)."""
        return self.basis.ndim == 4

    def dense(self) -> torch.Tensor:
        """(B, H*W, hidden)."""
        rows = (self.basis.shape[0], -1, self.basis.shape[-1]) if self.per_image else (-1, self.basis.shape[-1])
        return self.basis.reshape(rows) @ self.cells

    def images(self, index) -> "InputOffset":
        """The offset of the images `index` selects (a slice of the batch): cells and a per-image
        basis are indexed alike, a shared basis stays."""
        return InputOffset(self.basis[index] if self.per_image else self.basis, self.cells[index])


def concat_offsets(offsets: Sequence[Optional[InputOffset]]) -> Optional[InputOffset]:
    """One input offset that adds up those of `offsets` that are not None (their bases and cells
    side by side); None if there are none."""
    offsets = [o for o in offsets if o is not None]
    if len(offsets) <= 1:
        return offsets[0] if offsets else None
    if any(o.per_image for o in offsets):   # a shared basis joins per-image ones as a copy per image
        batch = offsets[0].cells.shape[0]
        bases = [o.basis if o.per_image else o.basis.expand(batch, *o.basis.shape) for o in offsets]
    else:
        bases = [o.basis for o in offsets]
    return InputOffset(torch.cat(bases, dim=-1).contiguous(), torch.cat([o.cells for o in offsets], dim=1))


StatsReducer = Callable[[torch.Tensor], None]   # sums a float64 tensor in place over the processes


_REDUCERS = {}   # handle -> reducer
_HANDLES = {}    # reducer (or its id, if unhashable) -> handle


def reducer_handle(reducer: Optional[StatsReducer]) -> int:
    """An int for `reducer` (0 for None), how a custom op's schema carries it (reducer_of gives it
    back). A reducer is kept for the life of the process, so a backward finds it: pass the same one
    every step (fastinr.running_stats keeps one per process group), not a fresh closure."""
    if reducer is None:
        return 0
    try:
        hash(reducer)
        key = reducer
    except TypeError:
        key = id(reducer)
    if key not in _HANDLES:
        _HANDLES[key] = len(_REDUCERS) + 1
        _REDUCERS[_HANDLES[key]] = reducer
    return _HANDLES[key]


def reducer_of(handle: int) -> Optional[StatsReducer]:
    """The reducer of reducer_handle's int (None for 0)."""
    return _REDUCERS.get(handle)


def reduced_rows(reducer: StatsReducer, rows: int, device) -> int:
    """Rows of the global batch: this process's `rows` summed over the processes by `reducer`."""
    total = torch.tensor([float(rows)], dtype=torch.float64, device=device)
    reducer(total)
    return int(round(total.item()))


class BlockStats(NamedTuple):
    """Normalization statistics of one block's input, for the running-statistics update."""
    mean: torch.Tensor      # (B, w) per image, or (w,) per batch
    var: torch.Tensor       # unbiased, same shape
    count: int              # values per statistic


def _shape_text(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _autocast(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type without autocast (e.g. meta)
        return False


def check_shape(shape, argument: str = "shape") -> Tuple[int, int]:
    """(H, W) as two positive ints; raises ValueError naming `argument`."""
    try:
        height, width = (int(s) for s in shape)
        valid = not isinstance(shape, (str, bytes)) and all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        valid = False
    if not valid or height < 1 or width < 1:
        raise ValueError(f"{argument} must be (H, W) with two positive ints, got {shape!r}")
    return height, width


def check_codes(codes, channels: int, attribute: str, single: bool = False) -> None:
    """codes (B, channels) with B >= 1, floating point; with `single` also one code (channels,).
    `attribute` names where `channels` comes from (e.g. "spec.code_size")."""
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
    if codes.ndim not in ((1, 2) if single else (2,)):
        expected = f"(B, {channels}) or ({channels},)" if single else f"(B, {channels})"
        raise ValueError(f"codes must have shape {expected}, got {tuple(codes.shape)}")
    if codes.shape[-1] != channels:
        raise ValueError(f"codes must have {channels} channels ({attribute}), got {tuple(codes.shape)}")
    if codes.ndim == 2 and codes.shape[0] < 1:
        raise ValueError(f"codes must hold at least one code (B >= 1), got {tuple(codes.shape)}")
    if not codes.is_floating_point():
        raise TypeError(f"codes must be a floating-point tensor, got {codes.dtype}")


def check_norm_pixels(norm_stats: str, batch: int, pixels: int) -> None:
    """BatchNorm in training needs more than one value per channel, as nn.BatchNorm1d does."""
    count = pixels if norm_stats == "image" else batch * pixels
    if norm_stats != "running" and count < 2:
        raise ValueError(
            f"BatchNorm with {norm_stats} statistics needs more than one value per channel, got "
            f"{batch} image(s) of {pixels} pixel(s); use a larger shape or eval mode")


def check_mods(spec: DecoderSpec, batch: int, mods: Optional[torch.Tensor]) -> None:
    """Clear errors for a `mods` that does not fit spec.modulation."""
    if spec.modulation not in MODULATIONS:
        raise ValueError(f"spec.modulation must be one of {MODULATIONS}, got {spec.modulation!r}")
    if spec.modulation == "none":
        if mods is not None:
            raise ValueError("mods were given but spec.modulation is 'none'")
        return
    if any(spec.concat):
        raise ValueError(f"modulation={spec.modulation!r} needs blocks of constant width (no concat)")
    expected = spec.mods_shape(batch)
    if not isinstance(mods, torch.Tensor) or tuple(mods.shape) != expected:
        raise ValueError(f"mods must be a tensor of shape {expected} (B, layers, k, hidden) for "
                         f"modulation={spec.modulation!r}, got "
                         f"{tuple(mods.shape) if isinstance(mods, torch.Tensor) else mods!r}")


def check_input_offset(spec: DecoderSpec, batch: int, shape, input_offset: Optional[InputOffset]) -> None:
    """Clear errors for an `input_offset` that does not fit: basis (H, W, K) shared by the batch or
    (B, H, W, K) per image, cells (B, K, hidden)."""
    if input_offset is None:
        return
    if not isinstance(input_offset, InputOffset):
        raise TypeError(f"input_offset must be an InputOffset(basis, cells), got {type(input_offset).__name__}")
    basis, cells = input_offset
    for name, tensor in (("basis", basis), ("cells", cells)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"input_offset.{name} must be a torch.Tensor, got {type(tensor).__name__}")
    height, width = int(shape[0]), int(shape[1])
    if (basis.ndim not in (3, 4) or tuple(basis.shape[-3:-1]) != (height, width) or basis.shape[-1] < 1
            or (basis.ndim == 4 and basis.shape[0] != batch)):
        raise ValueError(f"input_offset.basis must have shape ({height}, {width}, K) (H, W, K) or "
                         f"({batch}, {height}, {width}, K) (B, H, W, K) with K >= 1 (shared by the batch "
                         f"or per image), got {tuple(basis.shape)}")
    if tuple(cells.shape) != (batch, basis.shape[-1], spec.hidden):
        raise ValueError(f"input_offset.cells must have shape {(batch, basis.shape[-1], spec.hidden)} "
                         f"(B, K, hidden), got {tuple(cells.shape)}")
    if basis.requires_grad:
        raise ValueError("input_offset.basis is a constant of the pixel grid; detach it (no gradient "
                         "flows to it)")


_LAYOUTS = {}  # spec -> (names, flat names, flat shapes)


def _layout(spec: DecoderSpec):
    # torch.compile builds it in the trace: a traced cache is guarded on (a recompile once filled)
    if torch.compiler.is_compiling():
        return _build_layout(spec)
    if spec not in _LAYOUTS:
        _LAYOUTS[spec] = _build_layout(spec)
    return _LAYOUTS[spec]


def _build_layout(spec: DecoderSpec):
    names = DecoderParams.names(spec)
    return names, names.flat(), DecoderParams.shapes(spec).flat()


def check_params(params, spec: DecoderSpec) -> None:
    """params hold the tensors `spec` asks for, each of its shape, floating point, of one dtype
    and on one device."""
    if not isinstance(params, DecoderParams):
        raise TypeError(f"params must be a DecoderParams, got {type(params).__name__}")
    names, flat_names, flat_shapes = _layout(spec)
    groups = (params.norm_weight, params.norm_bias, params.weights, params.biases)
    layers = spec.layers_per_block
    if (not all(isinstance(g, (tuple, list)) for g in groups)
            or (len(params.norm_weight), len(params.norm_bias)) != (len(names.norm_weight),) * 2
            or (len(params.weights), len(params.biases)) != (spec.num_blocks,) * 2
            or not all(isinstance(g, (tuple, list)) and len(g) == layers
                       for g in (*params.weights, *params.biases))):
        raise ValueError(f"params must hold {len(names.norm_weight)} norm_weight and norm_bias, and "
                         f"{spec.num_blocks} blocks of {layers} weights and biases for this spec, got "
                         f"{_structure(params)}")
    dtype, device = params.w_in.dtype if isinstance(params.w_in, torch.Tensor) else None, None
    for name, shape, tensor in zip(flat_names, flat_shapes, params.flat()):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"params.{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.shape != shape:
            raise ValueError(f"params.{name} must have shape {list(shape)}, got {_shape_text(tensor)}")
        if tensor.dtype != dtype:
            raise TypeError(f"params.{name} has dtype {tensor.dtype} but params.w_in has {dtype}; "
                            f"every parameter must have the same dtype")
        device = tensor.device if device is None else device
        if tensor.device != device:
            raise ValueError(f"params.{name} is on {tensor.device} but params.w_in is on {device}; "
                             f"every parameter must be on one device")
    if not params.w_in.is_floating_point():
        raise TypeError(f"params must be floating point, got {dtype}")


def _structure(params: DecoderParams) -> str:
    """How many tensors each group of `params` holds, for an error message."""
    def count(group):
        if not isinstance(group, (tuple, list)):
            return type(group).__name__
        return [count(g) for g in group] if any(isinstance(g, (tuple, list)) for g in group) else len(group)
    return ", ".join(f"{field} {count(getattr(params, field))}"
                     for field in ("norm_weight", "norm_bias", "weights", "biases"))


def _check_alongside(name: str, tensor: torch.Tensor, codes: torch.Tensor, dtype: torch.dtype) -> None:
    """A per-call tensor (mods, offset, running statistics) on the codes' device, in the
    parameters' dtype unless autocast is on."""
    if tensor.device != codes.device:
        raise ValueError(f"{name} is on {tensor.device} but codes are on {codes.device}")
    if not tensor.is_floating_point() or (tensor.dtype != dtype and not _autocast(codes.device)):
        raise TypeError(f"{name} has dtype {tensor.dtype} but the parameters have {dtype}; convert it "
                        f"or use torch.autocast")


def validate(codes, params, spec, shape, norm_stats="image", running=(), mods=None,
             input_offset=None, reducer=None) -> Tuple[int, int]:
    """Every check of a decode call, in one place; returns (H, W). Errors name the argument and
    what was expected (TypeError for a wrong type or dtype, ValueError otherwise)."""
    if not isinstance(spec, DecoderSpec):
        raise TypeError(f"spec must be a DecoderSpec, got {type(spec).__name__}")
    for argument in ("activation", "activation_out"):
        name = getattr(spec, argument)
        if canonical_activation(name, f"spec.{argument}") != name:
            raise ValueError(f"spec.{argument} must be a canonical activation name "
                             f"({canonical_activation(name)!r}), got {name!r}")
    if norm_stats not in NORM_STATS:
        raise ValueError(f"norm_stats must be one of {NORM_STATS}, got {norm_stats!r}")
    if reducer is not None:
        if not callable(reducer):
            raise TypeError(f"reducer must be a callable that sums a float64 tensor in place across "
                            f"processes, got {type(reducer).__name__}")
        if norm_stats != "batch":
            raise ValueError(f"a reducer shares statistics over the batch across processes; it needs "
                             f"norm_stats='batch', got {norm_stats!r}")
    check_codes(codes, spec.code_size, "spec.code_size")
    check_params(params, spec)
    if codes.device != params.w_in.device:
        raise ValueError(f"codes are on {codes.device} but the decoder's parameters are on "
                         f"{params.w_in.device}; move one of them (.to(device))")
    dtype = params.w_in.dtype
    if codes.dtype != dtype and not _autocast(codes.device):
        raise TypeError(f"codes have dtype {codes.dtype} but the decoder's parameters have {dtype}; "
                        f"convert one of them or use torch.autocast")
    height, width = check_shape(shape, "shape")
    batch = codes.shape[0]
    if spec.batch_norm and spec.num_blocks:
        if norm_stats == "running":
            _check_running(running, spec, codes)
        check_norm_pixels(norm_stats, batch, height * width)
    check_mods(spec, batch, mods)
    if mods is not None:
        _check_alongside("mods", mods, codes, dtype)
    check_input_offset(spec, batch, (height, width), input_offset)
    if input_offset is not None:
        _check_alongside("input_offset.basis", input_offset.basis, codes, dtype)
        _check_alongside("input_offset.cells", input_offset.cells, codes, dtype)
    return height, width


def _check_running(running, spec: DecoderSpec, codes: torch.Tensor) -> None:
    if not isinstance(running, (tuple, list)) or len(running) != spec.num_blocks:
        got = len(running) if isinstance(running, (tuple, list)) else type(running).__name__
        raise ValueError(f"running must hold (running_mean, running_var) for each of the "
                         f"{spec.num_blocks} blocks with norm_stats='running', got {got}")
    for i, (pair, width) in enumerate(zip(running, spec.block_widths)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"running[{i}] must be a pair (running_mean, running_var), got {pair!r}")
        for part, tensor in zip(("mean", "var"), pair):
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"running[{i}].{part} must be a torch.Tensor, got {type(tensor).__name__}")
            if tuple(tensor.shape) != (width,):
                raise ValueError(f"running[{i}].{part} must have shape [{width}], got {_shape_text(tensor)}")
            if tensor.device != codes.device:
                raise ValueError(f"running[{i}].{part} is on {tensor.device} but codes are on {codes.device}")
            if not tensor.is_floating_point():
                raise TypeError(f"running[{i}].{part} must be floating point, got {tensor.dtype}")


def needs_grad(codes: torch.Tensor, params: DecoderParams, mods=None, input_offset=None) -> bool:
    """Whether a backward through this call can happen (grad mode on and some input requires it)."""
    if not torch.is_grad_enabled():
        return False
    extra = [t for t in (mods, input_offset.cells if input_offset is not None else None) if t is not None]
    return any(t.requires_grad for t in (codes, *extra, *params.flat()))


__all__ = ["BlockStats", "DecoderParams", "DecoderSpec", "InputOffset", "MODULATIONS", "NORM_STATS",
           "StatsReducer", "check_codes", "check_input_offset", "check_mods", "check_norm_pixels", "check_params",
           "check_shape", "needs_grad", "reduced_rows", "reducer_handle", "reducer_of", "validate"]
