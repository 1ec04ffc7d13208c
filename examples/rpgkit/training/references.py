"""Reference points for an autoencoder's scores: how far codes without any training get.

A decoder is only interesting below all of them. On uint8 tiles (N, C, H, W), each reference
reconstructs the scored tiles and is measured with the example's metrics (L1, PSNR, Sobel-edge
L1; reconstructions clamped to [0, 1]):

- "mean color": each tile replaced by its own mean color (C floats per tile; nothing is fitted);
- "PCA-<k>": each tile projected on the first k principal components of the training tiles (k =
  the code size: the best linear autoencoder with a k-float code in the L2 sense), from the
  eigendecomposition of their covariance matrix (C*H*W square) in float64, or of their Gram
  matrix (N square, the same components) when there are fewer training tiles than values;
- "nearest training tile": each tile replaced by the training tile with the smallest L1 to it
  (exact: the sums of |a - b| over 0..255 integers are exact in float32; ties go to the lower
  index). Its code is an index, about log2(N) bits.
"""
import hashlib
from pathlib import Path

import torch

from rpgkit.data.split import cell_means
from rpgkit.data.tiles import default_cache_dir, read_cached, save_atomic
from rpgkit.training.metrics import psnr_from_mse, sobel_edge_l1_sum

__all__ = ["NEAREST", "MEAN_COLOR", "cached_pca", "fit_pca", "nearest_training_tiles", "pca_name",
           "reference_scores", "scores"]

MEAN_COLOR = "mean color"
NEAREST = "nearest training tile"
CHUNK = 256
CANDIDATES = 32   # training tiles compared in full with each tile (more where the bound says so)


def pca_name(code_size: int) -> str:
    return f"PCA-{code_size}"


def scores(recon: torch.Tensor, tiles: torch.Tensor) -> dict:
    """{"l1", "psnr", "edge_l1"} of reconstructions against tiles, both (N, C, H, W) in [0, 1]."""
    recon = recon.clamp(0, 1)
    diff = recon - tiles
    edge_sum, edge_count = sobel_edge_l1_sum(recon.float(), tiles.float())
    return {"l1": diff.abs().mean().item(), "psnr": psnr_from_mse(diff.square().mean().item()),
            "edge_l1": edge_sum / edge_count}


@torch.no_grad()
def fit_pca(train_tiles: torch.Tensor, k: int):
    """(mean (D,), basis (k', D)) float64 of uint8 training tiles, k' = min(k, N, D) components,
    the largest first."""
    if k < 1:
        raise ValueError(f"code_size must be >= 1, got {k}")
    x = train_tiles.double().flatten(1) / 255
    mean = x.mean(0)
    x = x - mean
    n, d = x.shape
    k = min(k, n, d)
    if d <= n:
        _, vectors = torch.linalg.eigh(x.t() @ x)               # ascending eigenvalues
        basis = vectors[:, -k:].flip(1).t()
    else:   # the Gram matrix: x v = s u  =>  x^T u / s is the component
        values, vectors = torch.linalg.eigh(x @ x.t())
        values, vectors = values[-k:].flip(0), vectors[:, -k:].flip(1)
        keep = values > values[0] * 1e-10   # the null directions of a centred set
        basis = (x.t() @ vectors[:, keep] / values[keep].sqrt()).t()
    return mean, basis


def cached_pca(train_tiles: torch.Tensor, k: int, cache_dir=None):
    """fit_pca's result, cached next to the tile cache (about 20 s on one core for the DCSS
    training tiles: the eigendecomposition of a 3072 x 3072 matrix), keyed by the tiles' bytes."""
    h = hashlib.sha256(f"fastinr-pca-v1;k={k};shape={tuple(train_tiles.shape)}".encode())
    h.update(train_tiles.cpu().contiguous().numpy().tobytes())
    key = h.hexdigest()
    path = Path(cache_dir or default_cache_dir()) / f"pca-{k}-{key[:32]}.pt"
    cached = read_cached(path, key)
    if cached is not None and isinstance(cached.get("basis"), torch.Tensor):
        return cached["mean"], cached["basis"]
    mean, basis = fit_pca(train_tiles, k)
    save_atomic(path, key, {"mean": mean, "basis": basis})
    return mean, basis


@torch.no_grad()
def nearest_training_tiles(train_tiles: torch.Tensor, tiles: torch.Tensor):
    """(index (M,), L1 (M,)) of the nearest training tile (uint8 (N, ...)) to each tile (M, ...):
    the mean |a - b| on the [0, 1] scale; ties go to the lower index.

    Exact, without comparing every pair in full: the L1 of 4x4-pixel averages is a lower bound of
    the L1 (the triangle inequality). Each tile is compared in full with the CANDIDATES training
    tiles of the lowest bounds; where a tile not compared could still be as near (its bound is
    not above the best found), that tile is compared with every training tile."""
    train = train_tiles.float()
    flat_train = train.flatten(1)
    n, values = len(train), flat_train.shape[1]
    coarse_train, weight = cell_means(train, (4,))[0]
    found, sums = [], []
    for start in range(0, len(tiles), CHUNK):
        query = tiles[start:start + CHUNK].float()
        flat = query.flatten(1)
        if n <= CANDIDATES or weight == 1:
            best, index = torch.cdist(flat, flat_train, p=1).min(1)
        else:
            bound = torch.cdist(cell_means(query, (4,))[0][0], coarse_train, p=1) * weight
            low, order = bound.topk(CANDIDATES + 1, largest=False)   # sorted, lowest first
            picked = order[:, :CANDIDATES]
            exact = torch.stack([(flat[k] - flat_train[picked[k]]).abs().sum(1)
                                 for k in range(len(flat))])
            # The lowest sum, the lower index among equal sums (float64 holds both exactly).
            key = exact.double() * n + picked.double()
            where = key.argmin(1)
            index = picked.gather(1, where[:, None])[:, 0]
            best = exact.gather(1, where[:, None])[:, 0]
            unsure = low[:, CANDIDATES] * (1 - 1e-6) <= best
            if unsure.any():
                full_best, full_index = torch.cdist(flat[unsure], flat_train, p=1).min(1)
                best[unsure], index[unsure] = full_best, full_index
        found.append(index)
        sums.append(best.double())
    return torch.cat(found), torch.cat(sums) / (255 * values)


@torch.no_grad()
def reference_scores(train_tiles: torch.Tensor, tiles: torch.Tensor, code_size: int,
                     pca=None) -> dict:
    """{name: scores} of the three references on uint8 `tiles`, fitted on uint8 `train_tiles`;
    `pca` is fit_pca's result when the caller already has it (default: cached_pca's)."""
    mean, basis = pca if pca is not None else cached_pca(train_tiles, code_size)
    target = tiles.double() / 255
    flat = target.flatten(1)
    projected = ((flat - mean) @ basis.t()) @ basis + mean
    nearest, _ = nearest_training_tiles(train_tiles, tiles)
    return {MEAN_COLOR: scores(target.mean(dim=(2, 3), keepdim=True).expand_as(target), target),
            pca_name(code_size): scores(projected.reshape(target.shape), target),
            NEAREST: scores(train_tiles[nearest].double() / 255, target)}
