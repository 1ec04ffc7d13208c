"""Train / validation / test parts of a tile set, by groups of near-copies (the default) or by index.

``split_indices(tiles, method)`` -> ``Split(train, val, test)``, int64 index tensors into ``tiles``
(uint8 ``(N, 3, H, W)``), disjoint, covering every tile, each sorted.

``"groups"``: tiles that are near-copies of each other fall in the same part.

* Near-copies: tiles ``a`` and ``b`` are near-copies when the mean absolute difference (over every
  value, on the ``[0, 1]`` scale) between ``a`` and ``b``, or ``b`` flipped horizontally,
  vertically or both (the augmentation's flips), is below ``NEAR_COPY_L1``. Groups are the
  connected components of that relation (a chain of near-copies is one group). Shifts are not
  searched.
* Held-out sizes: ``min(500, N // 10)`` validation and as many test tiles (at least 1 each).
* Groups of more than ``MAX_HELD_OUT_GROUP`` tiles always train (the large families of floors
  and walls). The other groups are visited in the order of a content hash (the smallest sha256 of
  their tiles' bytes) and each goes whole to the held-out part with more room left that fits
  it (validation on a tie), else to training, until both parts are full. The split depends only
  on the tiles' contents: not on any seed, not on their order.
* The DCSS sheets (6,536 tiles): 14,381 near-copy pairs make 5,138 groups
  (``DCSS_GROUP_COUNTS``): 4,825 single tiles, the largest of 335 tiles (floors), 5,404 tiles in
  groups of at most 4; the split (``DCSS_SPLIT_COUNTS``) is 5,536 training, 500 validation and
  500 test tiles. Every held-out tile is at least 0.03 from every tile of the other parts (by
  construction) and on average 0.092 from its nearest training tile (0.066 in the index split).

Finding the pairs is exact and vectorised: the L1 of cell averages is a lower bound of the L1 of
the tiles (the triangle inequality), so all pairs are screened on 16x16-pixel averages (12 values
per tile), the survivors on 8x8 and 4x4 averages, and only the pairs that pass all three are
compared in full (about 10 s for the DCSS sheets on one CPU core). The result is cached next to
the tile cache, keyed by the tiles' bytes and the criterion.

``"index"``: the seed's split, unchanged: index ``i % 10 == 0`` is a validation candidate, the
first 500 candidates are validation and every other index trains (``tiles.split_tiles``). Its
test part is the candidates after the first 500 (154 tiles of the DCSS sheets; none in sets of
fewer than 5,000 tiles), which its training never saw either; both parts hold near-copies of
training tiles.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import NamedTuple

import torch

from .tiles import default_cache_dir, read_cached, save_atomic

__all__ = ["DCSS_GROUP_COUNTS", "DCSS_SPLIT_COUNTS", "MAX_HELD_OUT_GROUP", "NEAR_COPY_L1",
           "SPLITS", "Split", "cell_means", "groups_split", "held_out_size", "near_copy_groups",
           "near_copy_pairs", "split_indices"]

SPLITS = ("groups", "index")
SPLIT_VERSION = 1
NEAR_COPY_L1 = 0.03
MAX_HELD_OUT_GROUP = 4
HELD_OUT = 500           # validation tiles, and as many test tiles, in a large set
SCREEN_POOLS = (16, 8, 4)  # cell sizes of the averages that screen the pairs, coarsest first
SCREEN_ROWS = 1024       # rows of the all-pairs screen at a time
CHECK_PAIRS = 8192       # candidate pairs compared in full at a time
DCSS_SPLIT_COUNTS = {"train": 5536, "val": 500, "test": 500}
DCSS_GROUP_COUNTS = {"groups": 5138, "largest": 335, "singletons": 4825}


class Split(NamedTuple):
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor


def held_out_size(n: int) -> int:
    """Validation tiles (and as many test tiles) of a set of n: min(500, n // 10), at least 1."""
    return max(1, min(HELD_OUT, n // 10))


def _flips(x: torch.Tensor):
    return (x, x.flip(-1), x.flip(-2), x.flip(-2, -1))


def cell_means(x: torch.Tensor, pools) -> list:
    """x (N, C, H, W) averaged over cells of each size in `pools` that divides H and W, coarsest
    first, then x itself: [(values (N, D), the factor from their L1 to a lower bound of x's)]."""
    levels = [(torch.nn.functional.avg_pool2d(x, p).flatten(1), p * p) for p in pools
              if x.shape[-1] % p == 0 and x.shape[-2] % p == 0 and p > 1]
    return levels + [(x.flatten(1), 1)]


@torch.no_grad()
def near_copy_pairs(tiles: torch.Tensor, threshold: float = NEAR_COPY_L1) -> torch.Tensor:
    """(P, 2) int64 pairs (i < j) of near-copies among uint8 tiles (N, C, H, W): mean |a - flip(b)|
    below `threshold` on the [0, 1] scale for some flip (none, horizontal, vertical, both).

    The averages over cells are screens: the L1 of averages is at most the L1 of the values (the
    triangle inequality), so a pair whose averages differ by the limit or more is no pair. All
    pairs are screened on the coarsest averages; the survivors on finer ones, then in full."""
    n = len(tiles)
    x = tiles.float()                                   # 0..255: the full L1 sums are exact
    limit = threshold * 255 * x[0].numel()              # on the sums of |a - b| over C*H*W values
    screen_limit = limit * (1 + 1e-6)                   # the averages' rounding drops no pair
    mine = cell_means(x, SCREEN_POOLS)
    found = []
    for flipped in _flips(x):
        theirs = cell_means(flipped, SCREEN_POOLS)
        (coarse_a, weight), (coarse_b, _) = mine[0], theirs[0]
        for start in range(0, n, SCREEN_ROWS):
            bound = torch.cdist(coarse_a[start:start + SCREEN_ROWS], coarse_b, p=1) * weight
            i, j = (bound < (limit if weight == 1 else screen_limit)).nonzero(as_tuple=True)
            i = i + start
            keep = i < j   # |a - F b| = |F a - b|: the pair (j, i) under F is the same pair
            i, j = i[keep], j[keep]
            for (a, weight_a), (b, _) in zip(mine[1:], theirs[1:]):
                close = []
                for c in range(0, len(i), CHECK_PAIRS):
                    ii, jj = i[c:c + CHECK_PAIRS], j[c:c + CHECK_PAIRS]
                    close.append((a[ii] - b[jj]).abs().sum(1) * weight_a
                                 < (limit if weight_a == 1 else screen_limit))
                close = torch.cat(close) if close else torch.zeros(0, dtype=torch.bool)
                i, j = i[close], j[close]
            found.append(torch.stack([i, j], 1))
    return torch.unique(torch.cat(found), dim=0) if found else torch.zeros(0, 2, dtype=torch.int64)


def near_copy_groups(n: int, pairs: torch.Tensor) -> torch.Tensor:
    """(n,) int64 group of each tile: the smallest index in its connected component of `pairs`."""
    label = torch.arange(n)
    if len(pairs) == 0:
        return label
    i, j = pairs[:, 0], pairs[:, 1]
    while True:   # min-label propagation with pointer jumping: each label is an index in its group
        low = torch.minimum(label[i], label[j])
        new = label.clone()
        new.scatter_reduce_(0, i, low, "amin")
        new.scatter_reduce_(0, j, low, "amin")
        new = new[new]
        if torch.equal(new, label):
            return label
        label = new


def _tile_hashes(tiles: torch.Tensor) -> torch.Tensor:
    """(N,) int64: the first 8 bytes of each tile's sha256 (a content order, free of tile order)."""
    flat = tiles.reshape(len(tiles), -1).numpy()
    return torch.tensor([int.from_bytes(hashlib.sha256(row.tobytes()).digest()[:8], "big",
                                        signed=True) for row in flat], dtype=torch.int64)


def assign_groups(group: torch.Tensor, tiles: torch.Tensor) -> Split:
    """Held-out parts filled whole group by whole group (module docstring)."""
    n = len(group)
    size = held_out_size(n)
    if n < 3:
        raise ValueError(f"need at least 3 tiles for training, validation and test parts, got {n}")
    counts = torch.bincount(group, minlength=n)
    key = torch.full((n,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    key.scatter_reduce_(0, group, _tile_hashes(tiles), "amin")
    roots = torch.nonzero(counts).flatten()
    big = counts[roots] > MAX_HELD_OUT_GROUP
    order = sorted(zip(big.tolist(), key[roots].tolist(), roots.tolist()))
    part = torch.zeros(n, dtype=torch.int64)    # 0 train, 1 validation, 2 test
    room, training = {1: size, 2: size}, n
    for _, _, root in order:
        if not room[1] and not room[2]:
            break
        members = int(counts[root])
        for choice in sorted((1, 2), key=lambda p: -room[p]):
            if members <= room[choice] and training - members >= 1:
                part[group == root] = choice
                room[choice] -= members
                training -= members
                break
    idx = torch.arange(n)
    return Split(idx[part == 0], idx[part == 1], idx[part == 2])


def index_split(n: int, val_every: int = 10, val_limit: int = HELD_OUT) -> Split:
    idx = torch.arange(n)
    candidate = idx % val_every == 0
    return Split(idx[~candidate], idx[candidate][:val_limit], idx[candidate][val_limit:])


def groups_split(tiles: torch.Tensor, cache_dir=None, use_cache: bool = True):
    """(Split, group (N,) int64: the smallest index of each tile's group) of uint8 `tiles` by
    groups of near-copies; cached in `cache_dir` (default: the tile cache's folder)."""
    tiles = tiles.cpu().contiguous()
    n = len(tiles)
    idx = torch.arange(n)
    h = hashlib.sha256(f"fastinr-split-groups-v{SPLIT_VERSION};l1={NEAR_COPY_L1};"
                       f"max_group={MAX_HELD_OUT_GROUP};held_out={HELD_OUT};"
                       f"shape={tuple(tiles.shape)}".encode())
    h.update(tiles.numpy().tobytes())
    key = h.hexdigest()
    path = Path(cache_dir or default_cache_dir()) / f"split-groups-{key[:32]}.pt"
    cached = read_cached(path, key) if use_cache else None
    if cached is not None:
        parts, group = cached.get("parts"), cached.get("group")
        if all(isinstance(t, torch.Tensor) and t.shape == (n,) for t in (parts, group)):
            return Split(*(idx[parts == p] for p in range(3))), group
    group = near_copy_groups(n, near_copy_pairs(tiles))
    split = assign_groups(group, tiles)
    if use_cache:
        parts = torch.zeros(n, dtype=torch.int64)
        parts[split.val], parts[split.test] = 1, 2
        save_atomic(path, key, {"parts": parts, "group": group})
    return split, group


def split_indices(tiles: torch.Tensor, method: str = "groups", cache_dir=None,
                  use_cache: bool = True) -> Split:
    """The parts of uint8 `tiles` (N, C, H, W) by `method` (SPLITS); see the module docstring."""
    if method not in SPLITS:
        raise ValueError(f"unknown split {method!r}; choose from {', '.join(SPLITS)}")
    if method == "index":
        return index_split(len(tiles))
    return groups_split(tiles, cache_dir, use_cache)[0]
