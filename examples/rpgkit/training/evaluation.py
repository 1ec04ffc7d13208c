"""Validation of a model on the held-out tiles: metrics, the picture grid, the collapse message."""
from pathlib import Path

import torch

import fastinr
from rpgkit.training.metrics import (COLLAPSE_RATIO, psnr_from_mse, reconstruction_spread,
                                     sobel_edge_l1_sum)
from rpgkit.training.plots import plot_reconstructions
from rpgkit.training.step import autocast

RENDER_SCALE = 4
NUM_PICTURES = 8
EVAL_CHUNK = 128


def encode(model, images: torch.Tensor, refine_steps: int = 0, refine_lr: float = 0.05) -> torch.Tensor:
    """The encoder's codes of images (B, C, H, W) in [0, 1], refined by `refine_steps` Adam steps
    through the fixed decoder (fastinr.refine_codes) when asked."""
    with torch.no_grad():
        codes = model.encoder(images)
    return fastinr.refine_codes(model.decode, images, codes, steps=refine_steps, lr=refine_lr,
                                parameters=model.parameters()) if refine_steps else codes


def reconstruct(model, images: torch.Tensor, refine_steps: int = 0, refine_lr: float = 0.05) -> torch.Tensor:
    """The model's reconstructions of images (B, C, H, W) in [0, 1], not clamped: its own forward,
    or from refined codes (`encode`) when asked."""
    if not refine_steps:   # the model's own forward, whatever model it is
        with torch.no_grad():
            return model(images)
    codes = encode(model, images, refine_steps, refine_lr)
    with torch.no_grad():
        return model.decode(codes)


@torch.no_grad()
def evaluate(model, val_tiles: torch.Tensor, train_mode: bool = False, precision: str = "fp32",
             refine_steps: int = 0, refine_lr: float = 0.05) -> dict:
    """Validation L1, PSNR, Sobel-edge L1 and spread, outputs clamped to [0, 1].

    In eval mode, or with `train_mode` in training mode (BatchNorm then normalizes with the
    statistics of what it sees; every buffer it updates is restored afterwards). With
    `refine_steps`, each tile's code is refined first (`reconstruct`)."""
    was_training = model.training
    buffers = [b.clone() for b in model.buffers()] if train_mode else None
    model.train(train_mode)
    abs_sum = sq_sum = edge_sum = edge_count = 0.0
    recons = []
    # (on the main process alone: its running statistics are not shared; they are restored)
    with fastinr.local_running_stats(model):
        for start in range(0, len(val_tiles), EVAL_CHUNK):
            images = val_tiles[start:start + EVAL_CHUNK].float().div_(255.0)
            with autocast(precision, images.device):
                recon = reconstruct(model, images, refine_steps, refine_lr).float().clamp_(0, 1)
            diff = recon - images
            abs_sum += diff.abs().sum().item()
            sq_sum += diff.square().sum().item()
            edge = sobel_edge_l1_sum(recon, images)
            edge_sum, edge_count = edge_sum + edge[0], edge_count + edge[1]
            recons.append(recon)
    model.train(was_training)
    if buffers is not None:
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)
    count = val_tiles.numel()
    recons = torch.cat(recons)
    return {"val_l1": abs_sum / count, "val_psnr": psnr_from_mse(sq_sum / count),
            "val_edge_l1": edge_sum / edge_count,
            "val_spread": reconstruction_spread(recons) if len(recons) > 1 else None}


@torch.no_grad()
def sample_pictures(model, val_tiles: torch.Tensor, refine_steps: int = 0, refine_lr: float = 0.05):
    """(originals, reconstructions, renders at RENDER_SCALE x) of NUM_PICTURES validation tiles;
    with `refine_steps`, from refined codes (`encode`)."""
    was_training = model.training
    model.eval()
    pick = torch.linspace(0, len(val_tiles) - 1, min(NUM_PICTURES, len(val_tiles))).round().long()
    images = val_tiles[pick.to(val_tiles.device)].float().div_(255.0)
    codes = encode(model, images, refine_steps, refine_lr)
    recon = model.decode(codes).clamp_(0, 1)
    render = model.render(codes, RENDER_SCALE).clamp_(0, 1)
    model.train(was_training)
    return images.cpu(), recon.cpu(), render.cpu()


def save_pictures(model, val_tiles: torch.Tensor, path: Path, refine_steps: int = 0,
                  refine_lr: float = 0.05) -> None:
    """The picture grid of sample_pictures as a PNG."""
    plot_reconstructions(*sample_pictures(model, val_tiles, refine_steps, refine_lr), path,
                         scale=RENDER_SCALE)


def collapse_message(cfg: dict, spread: float, target_spread: float) -> str:
    inr = cfg.get("decoder") == "inr"
    if (cfg.get("inr_output") if inr else cfg["activation_out"]) == "sigmoid":
        cause = ("the sigmoid output collapsed to black: about half the pixels of these tiles are "
                 "exactly 0, so the sigmoid saturates near 0 and its gradient vanishes; use the "
                 "linear output ("
                 + ("--inr-output linear" if inr else "--activation-out none, the default") + ")")
    else:
        hints = ["a lower --lr", "a wider decoder (--conv-channels)"
                 if cfg.get("decoder") == "conv" else "a larger model (--hidden, --blocks)"]
        if inr and cfg.get("norm") not in (None, "none"):
            hints.insert(0, "--norm none")
        elif not inr and cfg["batch_norm"] != "none":
            hints.insert(0, "--batch-norm none")
        cause = ("the decoder ignores its code: on tiles that are mostly exactly 0 a code-blind "
                 "decoder's L1 optimum is a near-black picture; try " + ", ".join(hints))
    return (f"COLLAPSED: the validation reconstructions do not depend on the input (their spread "
            f"over the validation tiles is {spread:.2e}, under {COLLAPSE_RATIO:.0%} of the tiles' "
            f"own {target_spread:.2f}); {cause}")

