"""Datasets for the examples.

``load_tiles`` gives RPG tiles as float32 ``(N, 3, 32, 32)`` in ``[0, 1]``
(default: Dungeon Crawl Stone Soup sheets, cached as uint8), ``split_indices``
splits them deterministically into train, validation and test parts (by groups
of near-copies, or the seed's ``split_tiles`` by index), ``augment_batch``
randomly shifts and flips a ``(B, C, H, W)`` batch reproducibly on any device and
``stream_indices`` gives the training order as a function of (seed, position).
"""

from .augment import augment_batch
from .order import epoch_permutation, stream_indices
from .split import SPLITS, Split, split_indices
from .tiles import (
    DEFAULT_SHEETS,
    FORMAT_VERSION,
    MISSING_SHEETS_HINT,
    build_tiles,
    default_cache_dir,
    default_tile_sheets,
    expand_sources,
    load_tiles,
    load_tiles_uint8,
    parse_source,
    split_tiles,
)

__all__ = [
    "DEFAULT_SHEETS",
    "FORMAT_VERSION",
    "MISSING_SHEETS_HINT",
    "SPLITS",
    "Split",
    "augment_batch",
    "build_tiles",
    "default_cache_dir",
    "default_tile_sheets",
    "epoch_permutation",
    "expand_sources",
    "load_tiles",
    "load_tiles_uint8",
    "parse_source",
    "split_indices",
    "split_tiles",
    "stream_indices",
]
