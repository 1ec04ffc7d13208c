"""Pictures of a training run (matplotlib, headless).

* `plot_losses`: train and validation L1 against training images.
* `plot_reconstructions`: one row per image: original | reconstruction | the decoder's render at
  `scale` times the resolution | a nearest-neighbour upscale of the original by the same factor.
* `plot_renders`: one row per image: the nearest-neighbour upscale | each model's render.
* `plot_curves`: validation L1 against training images of several variants, each the mean over
  its runs (seeds).
"""
import statistics
from typing import Dict, List, Sequence, Tuple

import torch

from rpgkit.training.atomic import atomic_write

__all__ = ["plot_curves", "plot_losses", "plot_reconstructions", "plot_renders"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(rows: Sequence[Dict], path, title: str = "") -> None:
    """rows: dicts with `images`, and `train_l1` and/or `val_l1` (None where not measured)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (("train_l1", "train L1 (augmented, mean since the previous point)"),
                       ("val_l1", "validation L1")):
        points = [(r["images"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, label=label)
    ax.set_xlabel("training images")
    ax.set_ylabel("L1")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _to_hwc(image: torch.Tensor):
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


def _image_grid(columns, path, size: float) -> None:
    """One row per image, one titled column per (name, images (N, 3, h, w)); written atomically."""
    plt = _pyplot()
    n = len(columns[0][1])
    fig, axes = plt.subplots(n, len(columns), figsize=(size * len(columns), size * n), squeeze=False)
    for row in range(n):
        for col, (name, images) in enumerate(columns):
            ax = axes[row][col]
            ax.imshow(_to_hwc(images[row]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def plot_reconstructions(originals: torch.Tensor, reconstructions: torch.Tensor,
                         renders: torch.Tensor, path, scale: int = 4) -> None:
    """originals, reconstructions (N, 3, H, W); renders (N, 3, scale*H, scale*W); all in [0, 1]."""
    if not (len(originals) == len(reconstructions) == len(renders)) or len(originals) == 0:
        raise ValueError("need the same positive number of originals, reconstructions and renders")
    nearest = originals.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    _image_grid([("original", originals), ("reconstruction", reconstructions),
                 (f"render {renders.shape[-2]}x{renders.shape[-1]}", renders),
                 (f"original, nearest {scale}x", nearest)], path, 2.2)


def plot_renders(nearest: torch.Tensor, renders: Dict[str, torch.Tensor], path) -> None:
    """nearest (N, 3, H, W): the targets enlarged; renders: label -> (N, 3, H, W); all in [0, 1]."""
    if len(nearest) == 0 or any(r.shape != nearest.shape for r in renders.values()):
        raise ValueError(f"every render must have the targets' shape {tuple(nearest.shape)} (N > 0)")
    _image_grid([("tile, nearest", nearest), *renders.items()], path, 2.4)


def plot_curves(curves: Dict[str, List[List[Tuple[int, float]]]], path) -> None:
    """curves: variant -> its runs, each a list of (training images, validation L1)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (name, runs) in enumerate(curves.items()):
        # Mean over the seeds at the validation points they share.
        points = {}
        for run in runs:
            for images, value in run:
                points.setdefault(images, []).append(value)
        xs = sorted(x for x in points if len(points[x]) == len(runs))
        # Past the 10 colours of the default cycle, dashed lines keep the variants apart.
        ax.plot(xs, [statistics.fmean(points[x]) for x in xs], marker="o" if len(xs) < 30 else None,
                linestyle="-" if i < 10 else "--", label=f"{name} ({len(runs)} seeds)")
    ax.set_xlabel("training images")
    ax.set_ylabel("validation L1 (eval mode)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
