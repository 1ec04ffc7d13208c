"""Training order as a pure function of (seed, position): resuming needs only the position.

The training stream visits the n training tiles epoch after epoch, each epoch in its own random
permutation drawn from a generator seeded with (seed, epoch). `stream_indices(start, count, ...)`
gives the tile indices at stream positions start .. start + count - 1, so the batch of step s is
`stream_indices(s * batch_size, batch_size, ...)` whatever happened before.
"""
from functools import lru_cache

import torch

__all__ = ["epoch_permutation", "stream_indices"]


@lru_cache(maxsize=4)
def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n tiles in `epoch` (int64, CPU); depends only on its arguments."""
    if n < 1:
        raise ValueError(f"need at least one training tile, got n={n}")
    generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2 ** 63))
    return torch.randperm(n, generator=generator)


def stream_indices(start: int, count: int, n: int, seed: int) -> torch.Tensor:
    """Tile indices (count,) at stream positions [start, start + count), crossing epochs."""
    if n < 1:
        raise ValueError(f"need at least one training tile, got n={n}")
    if start < 0 or count < 0:
        raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
    parts, position, end = [], start, start + count
    while position < end:
        epoch, offset = divmod(position, n)
        take = min(n - offset, end - position)
        parts.append(epoch_permutation(n, seed, epoch)[offset:offset + take])
        position += take
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)
