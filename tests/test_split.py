"""The train / validation / test split by groups of near-copies (rpgkit.data.split).

Generated tiles with planted near-copies check the criterion against a brute-force search; the
real DCSS sheets check the documented counts and that no held-out tile has a near-copy in another
part (the criterion measured directly, on a sample).
"""
import itertools
import math

import pytest
import torch

import rpgkit.data.split as split_mod
from rpgkit.data import default_tile_sheets, load_tiles_uint8, split_indices, split_tiles
from tests.test_tiles import IN_CI, _dcss_installed

FLIPS = (lambda t: t, lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.flip(-2, -1))


def planted_tiles(n_free, families, generator, size=32):
    """`n_free` random uint8 tiles plus, for each size in `families`, that many near-copies of one
    random tile (flipped at random, noise of +-2 levels): a shuffled (N, 3, size, size)."""
    def rand(n):
        return torch.randint(0, 256, (n, 3, size, size), generator=generator, dtype=torch.uint8)
    parts = [rand(n_free)]
    for members in families:
        base = rand(1)[0]
        for k in range(members):
            noise = torch.randint(-2, 3, base.shape, generator=generator)
            parts.append((FLIPS[k % 4](base).int() + noise).clamp(0, 255).to(torch.uint8)[None])
    tiles = torch.cat(parts)
    return tiles[torch.randperm(len(tiles), generator=generator)]


def brute_force_pairs(tiles, threshold):
    x = tiles.double() / 255
    found = set()
    for i, j in itertools.combinations(range(len(x)), 2):
        if min((x[i] - flip(x[j])).abs().mean().item() for flip in FLIPS) < threshold:
            found.add((i, j))
    return found


def test_near_copy_pairs_match_a_brute_force_search():
    gen = torch.Generator().manual_seed(torch.randint(0, 2 ** 31, ()).item())
    tiles = planted_tiles(20, (3, 2, 5), gen)
    # Also pairs just inside and just outside the threshold: a uniform offset of d levels is an
    # L1 of d / 255 exactly.
    base = torch.randint(40, 200, (1, 3, 32, 32), generator=gen, dtype=torch.uint8)
    limit_levels = split_mod.NEAR_COPY_L1 * 255
    edge = torch.cat([base, base + math.floor(limit_levels),
                      base.flip(-1) + math.ceil(limit_levels)])
    tiles = torch.cat([tiles, edge])
    pairs = split_mod.near_copy_pairs(tiles)
    expected = brute_force_pairs(tiles, split_mod.NEAR_COPY_L1)
    assert {tuple(p) for p in pairs.tolist()} == expected
    n = len(tiles)
    assert (n - 3, n - 2) in expected and (n - 3, n - 1) not in expected
    assert len(expected) >= 3 + 1 + 10   # the planted families are found


def test_groups_are_connected_components():
    pairs = torch.tensor([[0, 5], [5, 9], [2, 3], [7, 8], [3, 8], [10, 11]])
    group = split_mod.near_copy_groups(12, pairs)
    assert group.tolist() == [0, 1, 2, 2, 4, 0, 6, 2, 2, 0, 10, 10]
    assert split_mod.near_copy_groups(3, torch.zeros(0, 2, dtype=torch.int64)).tolist() == [0, 1, 2]


def assert_partition(split, n):
    every = torch.cat(list(split)).sort().values
    assert torch.equal(every, torch.arange(n))     # disjoint and covering
    for part in split:
        assert torch.equal(part, part.sort().values)


def test_groups_split_keeps_near_copies_together_and_depends_only_on_contents(tmp_path):
    gen = torch.Generator().manual_seed(torch.randint(0, 2 ** 31, ()).item())
    tiles = planted_tiles(150, (2, 2, 3, 4, 7, 12), gen)
    n = len(tiles)
    split = split_indices(tiles, "groups", cache_dir=tmp_path)
    assert_partition(split, n)
    assert len(split.val) == len(split.test) == split_mod.held_out_size(n) == n // 10
    part = torch.zeros(n, dtype=torch.int64)
    part[split.val], part[split.test] = 1, 2
    pairs = split_mod.near_copy_pairs(tiles)
    assert len(pairs) >= 1 + 1 + 3 + 6 + 21 + 66
    assert bool((part[pairs[:, 0]] == part[pairs[:, 1]]).all())
    group = split_mod.near_copy_groups(n, pairs)
    big = torch.bincount(group, minlength=n)[group] > split_mod.MAX_HELD_OUT_GROUP
    assert bool((part[big] == 0).all())            # families of 7 and 12 train
    # The same tiles in another order: the same tiles in each part; and again from the cache.
    order = torch.randperm(n, generator=gen)
    again = split_indices(tiles[order], "groups", cache_dir=tmp_path)
    for a, b in zip(split, again):
        assert torch.equal(order[b].sort().values, a)
    assert len(list(tmp_path.glob("split-groups-*.pt"))) == 2
    cached = split_indices(tiles, "groups", cache_dir=tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(split, cached))


def test_index_split_is_the_seeds():
    tiles = torch.randint(0, 256, (5200, 3, 2, 2), dtype=torch.uint8)
    split = split_indices(tiles, "index")
    assert_partition(split, len(tiles))
    train, val = split_tiles(tiles)
    assert torch.equal(tiles[split.train], train) and torch.equal(tiles[split.val], val)
    assert split.test.tolist() == list(range(5000, 5200, 10))
    with pytest.raises(ValueError, match="unknown split"):
        split_indices(tiles, "random")


@pytest.mark.skipif(not IN_CI and not _dcss_installed(),
                    reason="crawl-tiles-data not installed (apt-get install crawl-tiles-data); "
                           "never skipped in CI (CI=true)")
def test_dcss_groups_split_counts_and_no_near_copy_across_parts():
    default_tile_sheets()   # in CI a missing package fails here, with install instructions
    tiles = load_tiles_uint8()
    split, group = split_mod.groups_split(tiles)
    assert all(torch.equal(a, b) for a, b in zip(split, split_indices(tiles)))   # the default
    assert_partition(split, len(tiles))
    assert {name: len(part) for name, part in zip(split._fields, split)} == \
        split_mod.DCSS_SPLIT_COUNTS
    sizes = torch.bincount(group)
    sizes = sizes[sizes > 0]
    assert {"groups": len(sizes), "largest": int(sizes.max()),
            "singletons": int((sizes == 1).sum())} == split_mod.DCSS_GROUP_COUNTS
    part = torch.zeros(len(tiles), dtype=torch.int64)
    part[split.val], part[split.test] = 1, 2
    for root in group[part > 0].unique():
        assert len(part[group == root].unique()) == 1      # a held-out group is whole
    # The criterion itself, measured on a sample of held-out tiles against every tile of the
    # other parts, under the four flips.
    gen = torch.Generator().manual_seed(torch.randint(0, 2 ** 31, ()).item())
    sample = {name: held[torch.randperm(len(held), generator=gen)[:16]]
              for name, held in (("val", split.val), ("test", split.test))}
    others = {"val": torch.cat([split.train, split.test]),
              "test": torch.cat([split.train, split.val])}
    values = tiles[0].numel() * 255
    for name, picked in sample.items():
        queries = tiles[picked].flatten(1).float()
        for flip in FLIPS:
            rest = flip(tiles[others[name]]).flatten(1).float()
            nearest = torch.cdist(queries, rest, p=1).min(1).values / values
            assert float(nearest.min()) >= split_mod.NEAR_COPY_L1, name
