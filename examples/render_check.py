#!/usr/bin/env python
"""How crisp a run's decoder renders above the training resolution: a score and one PNG.

    python examples/render_check.py --output runs/renders.png \
        sharp=runs/ablation/sharp/seed0 subpixel=runs/ablation/sharp-subpixel/seed0

Each LABEL=FOLDER is a finished run of rpg_autoencoder.py (its --output). Every run's decoder
renders the test tiles of its own split (its --split of its tiles; the validation tiles where that
split has no test part: the index split of fewer than 5,000 tiles) at --scale times their size.
The table gives the L1 at the pixel centres and the render's L1 against the tiles enlarged by
nearest neighbour: the target of sub-pixel training, low when each pixel stays a flat square,
raised by blur and ringing between the centres that the L1 at the centres cannot see. The render
samples each enlarged pixel at its own centre (EncoderDecoder.render), so it covers the tile's
pixels as the enlargement does. A run's
codes are refined as it was told (--refine-steps, --refine-lr), as its test scores were. Runs that
share a label are seeds: mean ± standard deviation. The PNG shows the renders of the first
run of each label side by side, next to the nearest-neighbour enlargement.
"""
import argparse
import sys
from pathlib import Path

import torch

from rpgkit.config import saved_config
from rpgkit.data import load_tiles_uint8, split_indices
from rpgkit.models import build_autoencoder
from rpgkit.results import mean_spread_cell
from rpgkit.training import load_checkpoint, nearest_render_l1_sum, plot_renders
from rpgkit.training.evaluation import encode

CHUNK = 50


def load_model(folder: Path):
    """The run's model (eval mode, CPU) and its config, from its checkpoint."""
    checkpoint = load_checkpoint(folder / "checkpoint.pt")
    cfg = saved_config(checkpoint)
    cfg["encoder_weights"] = "none"   # the checkpoint holds the weights; nothing to download
    model = build_autoencoder(cfg)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), cfg


@torch.no_grad()
def held_out_tiles(cfg: dict):
    """(uint8 tiles, part name): the run's test tiles, or its validation tiles without any."""
    tiles = load_tiles_uint8(cfg["tiles"])
    split = split_indices(tiles, cfg["split"])
    return (tiles[split.test], "test") if len(split.test) else (tiles[split.val], "validation")


def score(model, val: torch.Tensor, scale: int, pictures: int, refine_steps: int = 0,
          refine_lr: float = 0.05):
    """(centre L1, nearest-render L1, the first `pictures` renders)."""
    centre = render_sum = render_count = 0.0
    shown = None
    for start in range(0, len(val), CHUNK):
        images = val[start:start + CHUNK].float().div_(255.0)
        codes = encode(model, images, refine_steps, refine_lr)
        with torch.no_grad():
            centre += (model.decode(codes).clamp_(0, 1) - images).abs().sum().item()
            render = model.render(codes, scale).clamp_(0, 1)
        s, n = nearest_render_l1_sum(render, images)
        render_sum, render_count = render_sum + s, render_count + n
        if shown is None:
            shown = render[:pictures]
    return centre / val.numel(), render_sum / render_count, shown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--output", required=True, help="the PNG of renders to write")
    parser.add_argument("--scale", type=int, default=4, help="render size / tile size")
    parser.add_argument("--pictures", type=int, default=6, help="test tiles in the PNG")
    args = parser.parse_args(argv)
    if args.scale < 1 or args.pictures < 1:
        raise SystemExit("error: --scale and --pictures must be >= 1")
    runs = []
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"error: expected LABEL=FOLDER, got {item!r}")
        if not (Path(folder) / "checkpoint.pt").is_file():
            raise SystemExit(f"error: {folder} has no checkpoint.pt (not a run of rpg_autoencoder.py?)")
        runs.append((label, Path(folder)))
    val_sets, scores, renders = {}, {}, {}
    for label, folder in runs:
        model, cfg = load_model(folder)
        key = (tuple(cfg["tiles"] or ()), cfg["split"])
        if key not in val_sets:
            val_sets[key] = held_out_tiles(cfg)
        centre, render_l1, shown = score(model, val_sets[key][0], args.scale, args.pictures,
                                         cfg["refine_steps"], cfg["refine_lr"])
        print(f"{label} ({folder}): centre L1 {centre:.4f}, {args.scale}x render L1 vs nearest "
              f"{render_l1:.4f}", flush=True)
        scores.setdefault(label, []).append((centre, render_l1))
        renders.setdefault(label, shown)
    if len(val_sets) > 1:
        print("warning: the runs use different tiles or splits; their scores are not comparable")
    part = next(iter(val_sets.values()))[1]
    print(f"\n| variant | seeds | {part} L1 at the pixel centres | {args.scale}x render L1 vs "
          "nearest |")
    print("|---|---|---|---|")
    for label, values in scores.items():
        print(f"| {label} | {len(values)} | {mean_spread_cell([c for c, _ in values], 4)} | "
              f"{mean_spread_cell([r for _, r in values], 4)} |")
    val = next(iter(val_sets.values()))[0][:args.pictures].float().div(255.0)
    nearest = val.repeat_interleave(args.scale, -2).repeat_interleave(args.scale, -1)
    plot_renders(nearest, renders, Path(args.output))
    print(f"renders: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
