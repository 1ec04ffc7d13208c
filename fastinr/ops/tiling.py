"""Row tiles shared by the training kernels: a group of R rows (one image, or the whole batch)
is cut into `tiles_per_group` tiles of BLOCK_M rows, so a tile never spans two groups and
per-group reductions (BatchNorm statistics, code gradients) can be summed per tile."""
import triton
import triton.language as tl


@triton.jit
def tile_rows(tile, tiles_per_group, R, BLOCK_M: tl.constexpr):
    """(group, row within the group, mask of rows that exist, global row as int64) of a tile."""
    group = tile // tiles_per_group
    local = (tile - group * tiles_per_group) * BLOCK_M + tl.arange(0, BLOCK_M)
    return group, local, local < R, group.to(tl.int64) * R + local
