#!/usr/bin/env python
"""Train the seed's RPG-tile autoencoder (CNN encoder -> code -> implicit decoder) with fastinr.

    python examples/rpg_autoencoder.py                            # DCSS tiles, the sharp preset
    python examples/rpg_autoencoder.py --tiles sheets/ more.png:16 --max-inputs 200000
    python examples/rpg_autoencoder.py --preset seed              # the seed exactly (collapses)
    python examples/rpg_autoencoder.py --preset baseline          # the seed with a linear output
    python examples/rpg_autoencoder.py --decoder inr --conditioning film --grid-size 4 --subpixel
    python examples/rpg_autoencoder.py --output runs/rpg --resume   # continue a stopped run
    python examples/rpg_autoencoder.py --output runs/rpg --evaluate --tiles my_sprites/
    torchrun --nproc_per_node=2 examples/rpg_autoencoder.py        # DistributedDataParallel

Data: 3 x 32 x 32 tiles cut from the Dungeon Crawl Stone Soup sheets (`apt-get install
crawl-tiles-data`) or from --tiles, split by groups of near-copies into training, validation (500
tiles, for tuning and curves) and test (500, scored once when the run finishes) parts
(rpgkit.data.split; --split index: the seed's split, every 10th tile validation); training tiles
get a random shift of up to 4 px and random flips. Model (the default, --preset sharp): the seed's
CNN encoder, whose 102 outputs are read as a 4x4x6 local latent grid and 6 global floats, and
fastinr.INRDecoder (hidden 128, 2 blocks of 2 layers, per-image statistics, log-spaced
frequencies, linear output); L1 with sub-pixel query points, Adam 2e-3 after a warm-up, cosine
schedule, batch 16, budget in training images; the held-out codes are refined by 10 Adam steps
through the decoder before the final scores. --preset baseline is the seed's decoder
(ImageManifoldDecoder, hidden 256, 2 blocks of 2 layers, gelu, frequencies (7, 17)) with a linear
output and no BatchNorm, batch 64, Adam 1e-3: the seed's sigmoid output collapses to black on
these tiles and its per-image BatchNorm is poor in eval mode (--preset seed: the seed exactly).
--decoder inr|conv and their flags select the other variants (explicit flags override a preset).

The output folder gets metrics.csv, loss.png, reconstructions.png, summary.json (with the test
metrics and the references: each tile's mean color, PCA with the code size, the nearest training
tile, on the validation and test tiles) and
checkpoint.pt (written atomically at intervals and on Ctrl-C; --resume continues it exactly), and
TensorBoard event files (`tensorboard --logdir runs`; --no-tensorboard: none): the metrics and
the reconstruction grid at every validation against training images, the settings as text and
hparams.

--evaluate scores a finished run (--output) without training, on the tiles of --tiles (all of
them test tiles) or on its test part: a table and OUTPUT/evaluation.json.

This file is the command line; the pieces live in rpgkit beside it (rpgkit.config: presets and
settings; rpgkit.models; rpgkit.training.loop: the run itself).
"""
import argparse
import os
import sys
from pathlib import Path

import rpgkit  # noqa: F401  (before fastinr: puts a source checkout's library on the path)
from fastinr.activations import ACTIVATIONS
from fastinr.backends import BACKENDS
from fastinr.inr_decoder import CONDITIONINGS, EMBEDDINGS, NORMS, OUTPUTS
from rpgkit.config import (BATCH_NORM_MODES, CPU_DEFAULT_MAX_INPUTS, DEFAULT_PRESET, GPU_DEFAULT_MAX_INPUTS,
                           PRESETS, RUNTIME_KEYS, VALIDATIONS_PER_RUN, apply_preset,
                           changed_settings, check_refinement, resolve_config, resolve_device,
                           saved_config)
from rpgkit.data import SPLITS
from rpgkit.models import DECODERS, ENCODERS, RESNET_WEIGHTS
from rpgkit.training import CPU_TRAIN_SECONDS, init_distributed, load_checkpoint, timed_budget, training_rate
from rpgkit.training.evaluate_run import evaluate_run
from rpgkit.training.loop import run_training


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and switches (their help says what happens); a flag that the
    default preset sets shows the preset's value first."""

    def _get_help_string(self, action):
        preset = PRESETS[DEFAULT_PRESET]
        if action.dest in preset and action.dest != "preset":
            return (f"{action.help} (default: {preset[action.dest]} from --preset "
                    f"{DEFAULT_PRESET}; {action.default} in --preset baseline)")
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=_HelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--tiles", nargs="+", metavar="PATH", default=None,
                      help="tile sheets (PNG) or folders of PNGs instead of the DCSS sheets; "
                           "PATH:16 cuts a 16 px grid (default grid 32), other sizes are "
                           "resized to 32x32 with nearest-neighbour; with --evaluate: the tiles "
                           "to score (all of them test tiles)")
    data.add_argument("--split", choices=SPLITS, default="groups",
                      help="groups: training, validation (500) and test (500) tiles, near-copies "
                           "(L1 under 0.03, up to flips) always in one part; index: the seed's "
                           "split (every 10th tile validation, the first 500; the next ones test), "
                           "for comparison with the seed's setup")
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                       help="seed: the seed exactly (sigmoid output, per-image BatchNorm; it "
                            "collapses to black on these tiles); baseline: the seed's "
                            "architecture with the linear output and no BatchNorm; sharp: the "
                            "best variant so far and the default (INRDecoder, per-image statistics in "
                            "eval too, 6 log-spaced frequencies up to Nyquist, a 4x4x6 local "
                            "latent grid read from the seed's encoder, hidden 128, 2 blocks of 2 "
                            "layers, linear output, batch 16, Adam 2e-3 after 5,000 images of "
                            "warm-up, sub-pixel training, 10 refinement steps of the held-out "
                            "codes; see docs/experiments.md). Sets the defaults of the flags it "
                            "names (explicit flags win)")
    model.add_argument("--decoder", choices=DECODERS, default="seed",
                       help="seed: fastinr.ImageManifoldDecoder (fused backends); inr: "
                            "fastinr.INRDecoder, the sharper-decoder variants (all fused); conv: "
                            "the ConvDecoder baseline (same code size; --conv-channels sets its "
                            "width, the MLP flags --hidden, --blocks, --activation, --freqs do "
                            "not apply)")
    model.add_argument("--encoder", choices=ENCODERS, default="conv",
                       help="conv: the seed's 3-layer CNN; resnet18: torchvision resnet18 trunk")
    model.add_argument("--encoder-weights", choices=RESNET_WEIGHTS, default="none",
                       help="resnet18 init; imagenet only loads weights already on disk")
    code = model.add_mutually_exclusive_group()
    code.add_argument("--compression-ratio", type=float, default=30.0,
                      help="input values per code value: code size = 3*32*32 // ratio "
                           "(30 -> 102, the seed's code size)")
    code.add_argument("--code-size", type=int, default=None, help="code size (overrides the ratio)")
    model.add_argument("--hidden", type=int, default=256, help="decoder width")
    model.add_argument("--blocks", type=int, default=2, help="decoder residual blocks")
    model.add_argument("--layers-per-block", type=int, default=2,
                       help="Linear + activation layers per block")
    model.add_argument("--activation", default="gelu", help=f"one of {', '.join(ACTIVATIONS)}")
    model.add_argument("--activation-out", default="none",
                       help="decoder output activation; none = linear with bias started at 0.5 "
                            "(the seed: sigmoid)")
    model.add_argument("--batch-norm", choices=BATCH_NORM_MODES, default="none",
                       help="BatchNorm in the decoder blocks: none, image (the seed's per-image "
                            "statistics) or batch (statistics over the whole batch)")
    model.add_argument("--freqs", default="7,17", help="positional embedding frequencies")
    model.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto",
                       help="fastinr decoder backend (--decoder seed and inr; conv runs in plain "
                            "PyTorch)")
    inr = p.add_argument_group("--decoder inr")
    inr.add_argument("--conditioning", choices=CONDITIONINGS, default="concat",
                     help="code into the MLP: concat (the seed), shift or film modulation of "
                          "every hidden layer by the global part of the code")
    inr.add_argument("--norm", choices=NORMS, default=None,
                     help="image-bn (the seed), instance (per-image statistics in eval too), "
                          "batch-bn, layer, none (default: from --batch-norm)")
    inr.add_argument("--inr-output", choices=OUTPUTS, default=None,
                     help="output: linear (+0.5), sigmoid, wide-sigmoid (default: from "
                          "--activation-out: none -> linear, sigmoid -> sigmoid)")
    inr.add_argument("--embedding", choices=EMBEDDINGS, default="seed",
                     help="seed: the frequencies of --freqs; log: --num-freqs log-spaced up to "
                          "--max-freq; gaussian: --num-freqs Gaussian Fourier features of scale "
                          "--sigma")
    inr.add_argument("--num-freqs", type=int, default=6, help="frequencies of log / gaussian")
    inr.add_argument("--max-freq", type=float, default=None,
                     help="top log frequency (default: the Nyquist frequency of 32 pixels)")
    inr.add_argument("--sigma", type=float, default=10.0, help="gaussian embedding scale")
    inr.add_argument("--grid-size", type=int, default=0,
                     help="local latent grid g x g x --grid-channels taken from the code (0: "
                          "none); the rest of the code is global: 4 -> 102 = 4x4x6 + 6. The "
                          "encoder then gets a grid head on its CNN body's spatial features")
    inr.add_argument("--grid-channels", type=int, default=6, help="channels per grid cell")
    inr.add_argument("--grid-head", choices=("pool", "linear"), default="pool",
                     help="how the encoder makes the grid: pool (its CNN body's features averaged "
                          "over each cell, then a 1x1 conv) or linear (the seed's encoder unchanged: "
                          "its Linear head's outputs are read as grid and global code)")
    inr.add_argument("--grid-blend", choices=("bilinear", "area"), default="bilinear",
                     help="how a pixel reads the grid: bilinear (the cells' values blended, one "
                          "MLP evaluation) or area (LIIF's local ensemble: one evaluation per "
                          "cell around the pixel, the 4 colors blended by area; 4x the "
                          "decoder's work)")
    inr.add_argument("--subpixel", action=argparse.BooleanOptionalAction, default=False,
                     help="train on one random point inside every pixel (nearest-pixel target; "
                          "drawn per step, shared by its images, fused) instead of the pixel "
                          "centres, so renders above the training size stay clean; validation "
                          "stays on the pixel grid")
    conv = p.add_argument_group("--decoder conv")
    conv.add_argument("--conv-channels", type=int, default=64, help="conv decoder channels")
    train = p.add_argument_group("training")
    train.add_argument("--max-inputs", type=int, default=None,
                       help=f"training images (default {GPU_DEFAULT_MAX_INPUTS:,} on a GPU; on a "
                            f"CPU, what it trains in about {CPU_TRAIN_SECONDS // 60} minutes, timed "
                            f"at the start ({CPU_DEFAULT_MAX_INPUTS:,} for several processes))")
    train.add_argument("--batch-size", type=int, default=64,
                       help="global batch, split across torchrun processes")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--warmup", type=int, default=0,
                       help="training images of linear learning-rate warm-up before the cosine "
                            "decay (0: cosine from the first step)")
    train.add_argument("--val-every", type=int, default=None,
                       help=f"validate every this many training images (default: "
                            f"{VALIDATIONS_PER_RUN} times a run)")
    train.add_argument("--checkpoint-every", type=int, default=None,
                       help="write the checkpoint every this many images (default: at every "
                            "validation); a killed run loses at most this much")
    train.add_argument("--seed", type=int, default=0,
                       help="model init, data order and augmentation")
    train.add_argument("--refine-steps", type=int, default=0,
                       help="test-time refinement: Adam steps on each held-out tile's code through "
                            "the fixed decoder before it is scored (the final validation, the test "
                            "part, --evaluate, the pictures; the curves stay the encoder's own); "
                            "0: the encoder's codes as they are")
    train.add_argument("--refine-lr", type=float, default=0.05,
                       help="learning rate of the test-time refinement")
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic GPU kernels (slower); CPU runs are deterministic anyway")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--output", default="runs/rpg_autoencoder", help="output folder")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUTPUT/checkpoint.pt with its settings")
    run.add_argument("--evaluate", action="store_true",
                     help="no training: score the run in OUTPUT (its checkpoint) on --tiles or on "
                          "its test tiles, with the references; prints a table and writes "
                          "OUTPUT/evaluation.json")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                     help="write TensorBoard event files into the output folder (on by default; "
                          "a resumed run appends to them)")
    run.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="bf16: the training step and evaluation under torch.autocast(bfloat16); "
                          "auto (default): bf16 where the native backend has the CPU's bf16 GEMMs "
                          "(same quality at 100k images, docs/experiments.md), else fp32")
    return p


def explicit_keys(parser: argparse.ArgumentParser, argv) -> set:
    """Names of the settings given on the command line (to check them against a checkpoint)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def configure(argv):
    """Parse, resolve settings and device, join the process group, open the checkpoint."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = explicit_keys(build_parser(), argv)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    checkpoint_path = Path(args.output) / "checkpoint.pt"
    checkpoint = None
    if args.resume:
        try:
            checkpoint = load_checkpoint(checkpoint_path)
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--resume: {err}")
        cfg = saved_config(checkpoint)
        changed = changed_settings(args, given, cfg)
        if changed:
            parser.error("--resume continues the saved run; these settings differ from its "
                         "checkpoint: " + ", ".join(f"--{k.replace('_', '-')}" for k in changed)
                         + " (start a new run with another --output to change them)")
        cfg.update({k: getattr(args, k) for k in RUNTIME_KEYS if k in given})
        cfg.update(output=args.output, resume=True)
        check_refinement(cfg, parser)
        device = resolve_device(cfg["device"], local_rank)
    else:
        if checkpoint_path.exists():
            parser.error(f"{checkpoint_path} exists; pass --resume to continue that run, or "
                         "choose another --output")
        apply_preset(args, given)
        device = resolve_device(args.device, local_rank)
        cfg = resolve_config(args, parser, device)
    dist = init_distributed(device.type)
    if cfg["batch_size"] % dist.world_size:
        parser.error(f"--batch-size {cfg['batch_size']} must be divisible by the number of "
                     f"processes ({dist.world_size})")
    return parser, cfg, device, dist, checkpoint


def main(argv=None) -> int:
    from tqdm import tqdm

    parser = build_parser()
    args = parser.parse_args(argv)
    given = explicit_keys(build_parser(), argv)
    if args.evaluate:
        return evaluate_run(parser, args, given)
    parser, cfg, device, dist, checkpoint = configure(argv)
    if checkpoint is None and device.type == "cpu" and "max_inputs" not in given and not dist.enabled:
        # The CPU default is a time: this machine's images/s, saved with the run (exact resumes).
        cfg["budget_rate"] = training_rate(cfg, device)
        cfg["max_inputs"] = timed_budget(cfg["budget_rate"], cfg["batch_size"])
    try:
        code = run_training(parser, cfg, device, dist, checkpoint, tqdm)
    except BaseException:
        dist.close()
        raise
    dist.close(together=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
