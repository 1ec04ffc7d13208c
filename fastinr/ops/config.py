"""Launch choices shared by every fastinr Triton kernel: dot operand dtype and precision, tile
sizes, warps and stages, and how reductions over rows are split. One object per decode call.

The same methods are what tests/test_triton_aot.py enumerates, so every configuration a launch
can produce is compiled for Hopper ahead of time.
"""
import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

# tl.dot operand dtypes by name: a LaunchConfig holds the name (a plain string is what
# torch.compile can trace and a custom op's schema can carry), the kernels get the tl dtype.
DOT_DTYPES = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}
_AUTOCAST_DOTS = {torch.bfloat16: "bf16", torch.float16: "fp16"}


# Tests set this to fill every kernel output with NaN before the launch, so that an element a
# kernel fails to write shows up as a mismatch instead of as stale memory that happens to match.
POISON_OUTPUTS = False


def kernel_output(*shape, device) -> torch.Tensor:
    """An uninitialised float32 tensor that a kernel is about to write in full."""
    out = torch.empty(*shape, device=device, dtype=torch.float32)
    return out.fill_(float("nan")) if POISON_OUTPUTS else out


def device_guard(tensor: torch.Tensor):
    """Context for a launch on `tensor`'s GPU: Triton launches on the current CUDA device, not on
    the tensors' (a model on cuda:1 without torch.cuda.set_device reads illegal addresses)."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unit_stride(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a contiguous copy when its last dimension is strided: the kernels take the other
    strides as arguments but index the last dimension densely."""
    return t if t.stride(-1) == 1 else t.contiguous()


def feature_block(width: int, cap: int) -> int:
    """Tile size for a feature dimension: a power of two, >= 16 (tl.dot's minimum), <= cap."""
    return max(16, min(cap, triton.next_power_of_2(width)))


@dataclass(frozen=True)
class LaunchConfig:
    dot_dtype: str = "fp32"             # tl.dot operands (DOT_DTYPES; accumulation is float32)
    precision: str = "ieee"             # tl.dot input_precision for float32 operands
    sm_count: int = 132
    block_m: Optional[int] = None       # row tile; None: the GPU default (tests shrink it)

    def __post_init__(self):
        if not isinstance(self.dot_dtype, str):   # a tl dtype: its name
            names = {dtype: name for name, dtype in DOT_DTYPES.items()}
            object.__setattr__(self, "dot_dtype", names[self.dot_dtype])
        if self.dot_dtype not in DOT_DTYPES:
            raise ValueError(f"dot_dtype must be one of {', '.join(DOT_DTYPES)}; got {self.dot_dtype!r}")

    @staticmethod
    def for_call(device: torch.device, block_m: Optional[int] = None) -> "LaunchConfig":
        """Under torch.autocast the dots take the autocast dtype; otherwise float32 dots are
        exact IEEE unless torch's TF32 matmul switch is on."""
        dot_dtype, precision = "fp32", "ieee"
        if torch.is_autocast_enabled(device.type):
            dot_dtype = _AUTOCAST_DOTS.get(torch.get_autocast_dtype(device.type), "fp32")
        if dot_dtype == "fp32" and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
            precision = "tf32"
        sm_count = (torch.cuda.get_device_properties(device).multi_processor_count
                    if device.type == "cuda" else 4)
        if block_m is None and interpreting():
            block_m = 16  # the interpreter's cost is per program and per op, not per element
        return LaunchConfig(dot_dtype, precision, sm_count, block_m)

    @property
    def wide(self) -> bool:
        """Tensor-core friendly operands (bf16/fp16/tf32) get larger tiles than exact fp32."""
        return self.dot_dtype != "fp32" or self.precision == "tf32"

    def _meta(self, block_m, block_n, block_k, num_warps, num_stages):
        return dict(BLOCK_M=self.block_m or block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                    DOT_DTYPE=DOT_DTYPES[self.dot_dtype], PRECISION=self.precision,
                    num_warps=num_warps, num_stages=num_stages)

    # Tiles and warps were chosen by compiling for sm_90 with ptxas -v (tests/test_triton_aot.py):
    # the largest tiles with no register spills. Exact fp32 dots run on FMA units, where each
    # thread holds rows of both operands, so they need 8 warps for a 64x64 tile.
    def linear(self, k: int, n: int) -> dict:
        """_linear_fwd_kernel: (BLOCK_M, BLOCK_N) output tiles, K streamed in BLOCK_K chunks."""
        if self.wide:
            return self._meta(128, feature_block(n, 32), feature_block(k, 32), 8, 3)
        return self._meta(64, feature_block(n, 64), feature_block(k, 32), 8, 3)

    def linear_dx(self, k: int, n: int) -> dict:
        """_linear_bwd_dx_kernel: (BLOCK_M, BLOCK_K) tiles of dx, N streamed in BLOCK_N chunks
        (one chunk, e.g. the output layer's 3 colors: nothing to pipeline, and 3 stages spilled
        with Triton 3.6)."""
        block_n = feature_block(n, 32)
        return self._meta(64, block_n, feature_block(k, 64), 8, 3 if n > block_n else 1)

    def linear_dw(self, k: int, n: int) -> dict:
        """_linear_bwd_dw_kernel: (BLOCK_N, BLOCK_K) tiles of dW, rows streamed in BLOCK_M."""
        block_n, block_k = feature_block(n, 64), feature_block(k, 64)
        return self._meta(32, block_n, block_k, 8 if block_n * block_k >= 64 * 64 else 4, 3)

    def embed(self, hidden: int, e_pad: int) -> dict:
        """_embed_fwd_kernel / _embed_bwd_kernel: (BLOCK_M, BLOCK_N) tiles, K = the embedding.
        8 warps and one stage: every other choice spilled in some backward under Triton 3.6 or
        3.8 (tests/test_triton_aot.py)."""
        return self._meta(32 if e_pad >= 64 else 64, feature_block(hidden, 32), e_pad, 8, 1)

    def modulate(self, n: int) -> dict:
        """_modulate_fwd_kernel / _modulate_bwd_kernel: elementwise (BLOCK_M, BLOCK_N) tiles
        (64x64 on 4 warps spilled in the backward for sm_90; 32x64 does not)."""
        return dict(BLOCK_M=self.block_m or 32, BLOCK_N=feature_block(n, 64), num_warps=4, num_stages=1)

    def one_wave(self, num_warps: int, tiles: int) -> int:
        """How many splits of a reduction over rows, each run by `tiles` programs, fill the GPU
        once. A program of 8 warps may use up to 255 registers per thread, so only one is sure to
        fit an SM's 64K registers (several of the seed's gradient kernels use more than 128:
        tests/test_triton_aot.py); of 4 warps, two. Sizing for two per SM where one fits ran
        2.06 waves as 3."""
        resident = max(1, 65536 // (num_warps * 32 * 255))
        return max(1, self.sm_count * resident // max(tiles, 1))

    def row_splits(self, rows: int, meta: dict, tiles: int):
        """(splits, rows per split) for a reduction over rows by a kernel launched with `meta`:
        one wave of programs (one_wave), each over whole BLOCK_M chunks; the partials are summed
        by one torch reduction."""
        block_m = meta["BLOCK_M"]
        chunks = triton.cdiv(rows, block_m)
        splits = min(chunks, self.one_wave(meta["num_warps"], tiles))
        per_split = triton.cdiv(chunks, splits) * block_m
        return triton.cdiv(rows, per_split), per_split
