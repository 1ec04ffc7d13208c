"""The references every table carries (rpgkit.training.references), on small sets where the
answers are known, and the exact nearest-tile search against a brute-force one."""
import math

import pytest
import torch

from rpgkit.training.references import (MEAN_COLOR, NEAREST, cached_pca, fit_pca,
                                        nearest_training_tiles, reference_scores)


def test_references_on_a_set_where_the_answers_are_known():
    gen = torch.Generator().manual_seed(torch.randint(0, 2 ** 31, ()).item())
    # Both ways of computing PCA: covariance (values <= tiles) and Gram matrix (values > tiles).
    for n, side in ((60, 4), (20, 8)):
        train = torch.randint(0, 256, (n, 3, side, side), generator=gen, dtype=torch.uint8)
        # With as many components as training tiles, PCA reproduces every training tile.
        refs = reference_scores(train, train, code_size=n)
        assert refs[f"PCA-{n}"]["l1"] < 1e-9 and refs[f"PCA-{n}"]["psnr"] > 150
        # The nearest training tile of a training tile is itself.
        index, l1 = nearest_training_tiles(train, train)
        assert torch.equal(index, torch.arange(n)) and float(l1.max()) == 0
        assert refs[NEAREST]["l1"] == 0 and refs[NEAREST]["psnr"] == math.inf
        # Components come largest first: fewer of them do worse.
        assert reference_scores(train, train, code_size=3)["PCA-3"]["l1"] > 0.05
        mean, basis = fit_pca(train, 5)
        assert basis.shape == (5, 3 * side * side)
        assert torch.allclose(basis @ basis.t(), torch.eye(5, dtype=torch.float64), atol=1e-9)
    # Tiles of one color per channel: the mean color is exact; a tile's nearest training tile is
    # the one with the closest colors (L1 = the mean of the channel differences).
    colors = torch.tensor([[10, 20, 30], [200, 100, 0], [50, 50, 50]], dtype=torch.uint8)
    flat = colors[:, :, None, None].expand(3, 3, 4, 4).contiguous()
    query = torch.tensor([[12, 20, 33]], dtype=torch.uint8)[:, :, None, None].expand(1, 3, 4, 4)
    refs = reference_scores(flat, query.contiguous(), code_size=1)
    assert refs[MEAN_COLOR]["l1"] == 0 and refs[MEAN_COLOR]["edge_l1"] == 0
    index, l1 = nearest_training_tiles(flat, query.contiguous())
    assert index.tolist() == [0] and float(l1) == pytest.approx(5 / 3 / 255, rel=1e-12)
    assert refs[NEAREST]["l1"] == pytest.approx(5 / 3 / 255, rel=1e-9)


def test_nearest_training_tile_matches_a_brute_force_search():
    gen = torch.Generator().manual_seed(torch.randint(0, 2 ** 31, ()).item())
    train = torch.randint(0, 256, (300, 3, 8, 8), generator=gen, dtype=torch.uint8)
    queries = torch.randint(0, 256, (270, 3, 8, 8), generator=gen, dtype=torch.uint8)
    index, l1 = nearest_training_tiles(train, queries)
    full = (queries.double().flatten(1)[:, None] - train.double().flatten(1)[None]).abs().mean(2)
    best = full.min(1)
    assert torch.equal(index, best.indices)
    assert torch.allclose(l1, best.values / 255, rtol=0, atol=1e-12)


def test_pca_cache_returns_the_fit(tmp_path):
    train = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    fitted = fit_pca(train, 6)
    first = cached_pca(train, 6, cache_dir=tmp_path)
    (path,) = tmp_path.glob("pca-6-*.pt")
    again = cached_pca(train, 6, cache_dir=tmp_path)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(fitted, first, again))
    assert len(list(tmp_path.glob("pca-*.pt"))) == 1
    cached_pca(train[1:], 6, cache_dir=tmp_path)   # other tiles: another entry
    assert len(list(tmp_path.glob("pca-*.pt"))) == 2
