"""Closed-form reference points for an autoencoder's validation L1: how far simple codes get.

A decoder that trains to a worse L1 than a linear code of the same size is not limited by the
bottleneck. Both references are fit on the training tiles and scored on the validation tiles with
the example's metric (mean |recon - tile| over every value, reconstructions clamped to [0, 1]).
"""
import torch

from rpgkit.training.metrics import psnr_from_mse


def _scores(recon: torch.Tensor, val: torch.Tensor) -> dict:
    diff = recon.clamp(0, 1) - val
    return {"val_l1": diff.abs().mean().item(), "val_psnr": psnr_from_mse(diff.square().mean().item())}


def linear_references(train_tiles: torch.Tensor, val_tiles: torch.Tensor, code_size: int) -> dict:
    """{name: {"val_l1", "val_psnr"}} for uint8 tiles (N, C, H, W):

    - "mean color": each tile replaced by its own mean color (C floats per tile);
    - "PCA-<k>": the tile projected on the first k = code_size principal components of the
      training tiles (the best linear autoencoder with a k-float code, in the L2 sense).
    """
    if code_size < 1:
        raise ValueError(f"code_size must be >= 1, got {code_size}")
    train = train_tiles.double().flatten(1) / 255
    val = val_tiles.double() / 255
    refs = {"mean color": _scores(val.mean(dim=(2, 3), keepdim=True).expand_as(val), val)}
    mean = train.mean(0)
    k = min(code_size, *train.shape)
    _, _, vh = torch.linalg.svd(train - mean, full_matrices=False)
    basis = vh[:k]
    flat = val.flatten(1)
    recon = ((flat - mean) @ basis.t()) @ basis + mean
    refs[f"PCA-{code_size}"] = _scores(recon.reshape(val.shape), val)
    return refs
