#!/usr/bin/env python
"""Train the seed's RPG-tile autoencoder (CNN encoder -> code -> implicit decoder) with fastinr.

    python examples/rpg_autoencoder.py                            # DCSS tiles, defaults below
    python examples/rpg_autoencoder.py --tiles sheets/ more.png:16 --max-inputs 200000
    python examples/rpg_autoencoder.py --preset seed              # the seed exactly (collapses)
    python examples/rpg_autoencoder.py --preset sharp             # the sharpest variant so far
    python examples/rpg_autoencoder.py --decoder inr --conditioning film --grid-size 4 --subpixel
    python examples/rpg_autoencoder.py --output runs/rpg --resume   # continue a stopped run
    torchrun --nproc_per_node=2 examples/rpg_autoencoder.py        # DistributedDataParallel

Data: 3 x 32 x 32 tiles cut from the Dungeon Crawl Stone Soup sheets (`apt-get install
crawl-tiles-data`) or from --tiles; every 10th tile is validation (500 of them), training tiles
get a random shift of up to 4 px and random flips. Model: the seed's CNN encoder (or resnet18)
and ImageManifoldDecoder(code, 3, hidden 256, 2 blocks of 2 layers, gelu, frequencies (7, 17)).
The default output is linear (bias started at 0.5) without BatchNorm: the seed's sigmoid output
collapses to black on these tiles and its per-image BatchNorm is poor in eval mode.
Training: L1, Adam 1e-3, cosine schedule over the run, batch 64, budget in training images.
--decoder inr selects fastinr.INRDecoder (conditioning, normalization, output, embedding, local
latent grid with an encoder grid head, sub-pixel training) and --decoder conv the ConvDecoder
baseline, both at the same code size; --preset seed|baseline|sharp sets the seed's, the
default's or the best variant's decoder flags (explicit flags override).

The output folder gets metrics.csv, loss.png, reconstructions.png, summary.json and
checkpoint.pt (written atomically at intervals and on Ctrl-C; --resume continues it exactly), and
TensorBoard event files (`tensorboard --logdir runs`; --no-tensorboard: none): the metrics and
the reconstruction grid at every validation against training images, the settings as text and
hparams.
"""
import argparse
import hashlib
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import fastinr
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import fastinr
from fastinr.activations import ACTIVATIONS, canonical_activation
from fastinr.backends import BACKENDS, native_bf16_matmul, resolve_backend
from fastinr.conv_decoder import ConvDecoder
from rpgkit.data import augment_batch, load_tiles_uint8, split_tiles, stream_indices
from fastinr.inr_decoder import CONDITIONINGS, EMBEDDINGS, NORMS, OUTPUTS, INRDecoder
from rpgkit.models import (DECODERS, ENCODERS, RESNET_WEIGHTS, EncoderDecoder, build_encoder,
                            decoder_macs_per_pixel)
from rpgkit.training import (COLLAPSE_RATIO, Diverged, GracefulStop, init_distributed,
                              is_collapsed, load_checkpoint, nonfinite_report, plot_losses,
                              plot_reconstructions, psnr_from_mse, reconstruction_spread,
                              remove_temporaries, rng_states, save_checkpoint, set_rng_states,
                              sobel_edge_l1_sum, write_csv, write_json)
from rpgkit.training.tensorboard import open_tensorboard

SHAPE = (3, 32, 32)
GPU_DEFAULT_MAX_INPUTS = 1_000_000  # the seed's budget
# Measured with the default model (hidden 256), batch 64, on a 2-core CPU: ~71 training images/s
# with the native backend when idle (benchmarks/preset_speed.py --hidden 256 --presets baseline);
# 9 images/s while other jobs shared the cores (10,240 images then took 22 minutes in all,
# validation ~3 of them). 6,400 images (100 steps) keep a busy machine under 20 minutes.
CPU_DEFAULT_MAX_INPUTS = 6_400
CPU_BUSY_IMAGES_PER_SECOND = 9
VALIDATIONS_PER_RUN = 10  # default --val-every: each costs ~1/3 of a training image per tile
RENDER_SCALE = 4
NUM_PICTURES = 8
EVAL_CHUNK = 128
BATCH_NORM_MODES = ("none", "image", "batch")
# Presets set these defaults; flags given on the command line override them. "baseline" is the
# parser's own defaults. "sharp" is the best variant measured so far (docs/experiments.md: two
# seeds at 100k images, hidden 128, 32% below the baseline and 1.08x its training images/s on a
# CPU; sub-pixel training keeps its renders above 32x32 free of lattice artifacts).
PRESETS = {"seed": {"activation_out": "sigmoid", "batch_norm": "image"},
           "baseline": {"activation_out": "none", "batch_norm": "none"},
           "sharp": {"activation_out": "none", "batch_norm": "none", "decoder": "inr",
                     "norm": "instance", "inr_output": "linear", "embedding": "log", "num_freqs": 6,
                     "grid_size": 4, "grid_channels": 6, "grid_head": "linear", "layers_per_block": 1,
                     "batch_size": 16, "lr": 2e-3, "warmup": 5000, "subpixel": True}}
# The --decoder inr settings: a preset's values for them apply only when the decoder is inr (so
# `--preset sharp --decoder seed` is the seed's decoder with the sharp training recipe).
INR_KEYS = ("conditioning", "norm", "inr_output", "embedding", "num_freqs", "max_freq", "sigma",
            "grid_size", "grid_channels", "grid_head", "grid_blend", "subpixel")
# --decoder inr without --norm / --inr-output follows --batch-norm / --activation-out.
INR_NORM_FROM_BATCH_NORM = {"none": "none", "image": "image-bn", "batch": "batch-bn"}
INR_OUTPUT_FROM_ACTIVATION_OUT = {"none": "linear", "sigmoid": "sigmoid"}
# Settings added with --decoder; a checkpoint written before them gets these values on --resume.
DECODER_DEFAULTS = {"preset": "baseline", "decoder": "seed", "conditioning": "concat",
                    "norm": None, "inr_output": None, "embedding": "seed", "num_freqs": 6,
                    "max_freq": None, "sigma": 10.0, "grid_size": 0, "grid_channels": 6,
                    "grid_head": "pool", "grid_blend": "bilinear", "subpixel": False,
                    "conv_channels": 64, "warmup": 0}
# Settings that may change when a run is resumed; everything else must match the checkpoint.
RUNTIME_KEYS = ("output", "resume", "device", "backend", "tiles", "quiet", "tensorboard")
METRIC_COLUMNS = ["images", "step", "train_l1", "val_l1", "val_psnr", "val_edge_l1", "val_spread",
                  "lr",
                  "images_per_second", "elapsed_s"]
EXIT_INTERRUPTED = 130
EXIT_DIVERGED = 3  # a non-finite loss, gradient or validation metric stopped the run


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None and switches (their help says what happens)."""

    def _get_help_string(self, action):
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
                           "resized to 32x32 with nearest-neighbour")
    model = p.add_argument_group("model")
    model.add_argument("--preset", choices=tuple(PRESETS), default="baseline",
                       help="seed: the seed exactly (sigmoid output, per-image BatchNorm; it "
                            "collapses to black on these tiles); baseline: the seed's "
                            "architecture with the linear output and no BatchNorm; sharp: the "
                            "best variant so far (INRDecoder, per-image statistics in eval too, "
                            "6 log-spaced frequencies up to Nyquist, a 4x4x6 local latent grid "
                            "read from the seed's encoder, 2 blocks of 1 layer, linear output, "
                            "batch 16, Adam 2e-3 after 5,000 images of warm-up; "
                            "see docs/experiments.md). Sets the defaults of the flags it names "
                            "(explicit flags win)")
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
                       help=f"training images (default {GPU_DEFAULT_MAX_INPUTS:,} on a GPU, "
                            f"{CPU_DEFAULT_MAX_INPUTS:,} on a CPU)")
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
    train.add_argument("--deterministic", action="store_true",
                       help="deterministic GPU kernels (slower); CPU runs are deterministic anyway")
    run = p.add_argument_group("run")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    run.add_argument("--output", default="runs/rpg_autoencoder", help="output folder")
    run.add_argument("--resume", action="store_true",
                     help="continue from OUTPUT/checkpoint.pt with its settings")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                     help="write TensorBoard event files into the output folder (on by default; "
                          "a resumed run appends to them)")
    run.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32",
                     help="bf16: the training step and evaluation under torch.autocast(bfloat16); "
                          "auto: bf16 where the native backend has the CPU's bf16 GEMMs, else fp32")
    return p


def explicit_keys(parser: argparse.ArgumentParser, argv) -> set:
    """Names of the settings given on the command line (to check them against a checkpoint)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def resolve_config(args: argparse.Namespace, parser, device: torch.device) -> dict:
    """Validated settings, with derived values filled in (code size, budget)."""
    cfg = vars(args).copy()
    for key in ("lr", "compression_ratio", "sigma", "max_freq"):
        if cfg[key] is not None and not math.isfinite(cfg[key]):
            parser.error(f"--{key.replace('_', '-')} must be a finite number, got {cfg[key]}")
    if cfg["decoder"] == "inr":
        if cfg["norm"] is None:
            cfg["norm"] = INR_NORM_FROM_BATCH_NORM[cfg["batch_norm"]]
    try:
        cfg["activation"] = canonical_activation(cfg["activation"], "--activation")
        cfg["activation_out"] = canonical_activation(cfg["activation_out"], "--activation-out")
        cfg["freqs"] = [float(f) for f in str(cfg["freqs"]).split(",") if f.strip()]
    except ValueError as err:
        parser.error(str(err))
    if cfg["decoder"] == "inr" and cfg["inr_output"] is None:
        if cfg["activation_out"] not in INR_OUTPUT_FROM_ACTIVATION_OUT:
            parser.error(f"--decoder inr: --activation-out {cfg['activation_out']} has no INR "
                         f"output; choose --inr-output from {', '.join(OUTPUTS)}")
        cfg["inr_output"] = INR_OUTPUT_FROM_ACTIVATION_OUT[cfg["activation_out"]]
    if cfg["subpixel"] and cfg["decoder"] != "inr":
        parser.error("--subpixel queries points inside pixels: it needs --decoder inr")
    if cfg["code_size"] is None:
        if cfg["compression_ratio"] <= 0:
            parser.error(f"--compression-ratio must be > 0, got {cfg['compression_ratio']}")
        cfg["code_size"] = int(math.prod(SHAPE) // cfg["compression_ratio"])
    if cfg["backend"] not in ("auto", "torch") and cfg["decoder"] == "conv":
        parser.error(f"--backend {cfg['backend']}: the conv decoder has only the PyTorch path, so "
                     "it runs in plain PyTorch (--backend auto or torch)")
    if cfg["max_inputs"] is None:
        cfg["max_inputs"] = (GPU_DEFAULT_MAX_INPUTS if device.type == "cuda"
                             else CPU_DEFAULT_MAX_INPUTS)
    for key in ("code_size", "hidden", "batch_size", "max_inputs"):
        if cfg[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["max_inputs"] < cfg["batch_size"]:
        parser.error(f"--max-inputs {cfg['max_inputs']} is less than one batch (--batch-size "
                     f"{cfg['batch_size']}): a run trains whole batches")
    if not all(math.isfinite(f) for f in cfg["freqs"]):
        parser.error(f"--freqs must be finite numbers, got {args.freqs}")
    for key in ("blocks", "layers_per_block"):
        if cfg[key] < 0:
            parser.error(f"--{key.replace('_', '-')} must be >= 0, got {cfg[key]}")
    for key in ("val_every", "checkpoint_every"):
        if cfg[key] is not None and cfg[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1 images, got {cfg[key]}")
    if not cfg["freqs"]:
        parser.error("--freqs needs at least one frequency, e.g. 7,17")
    for key in ("num_freqs", "grid_channels", "conv_channels"):
        if cfg[key] < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    if cfg["grid_size"] < 0:
        parser.error(f"--grid-size must be >= 0, got {cfg['grid_size']}")
    if cfg["grid_size"] and cfg["decoder"] != "inr":
        parser.error("--grid-size: only --decoder inr has a local latent grid")
    if cfg["grid_blend"] != "bilinear" and not cfg["grid_size"]:
        parser.error(f"--grid-blend {cfg['grid_blend']} blends grid cells: it needs --grid-size >= 1")
    if cfg["grid_size"] and cfg["grid_size"] ** 2 * cfg["grid_channels"] >= cfg["code_size"]:
        parser.error(f"--grid-size {cfg['grid_size']} x --grid-channels {cfg['grid_channels']} "
                     f"= {cfg['grid_size'] ** 2 * cfg['grid_channels']} floats leave no global "
                     f"part in the code of {cfg['code_size']}")
    if cfg["sigma"] <= 0 or (cfg["max_freq"] is not None and cfg["max_freq"] <= 0):
        parser.error("--sigma and --max-freq must be > 0")
    if cfg["lr"] <= 0:
        parser.error(f"--lr must be > 0, got {cfg['lr']}")
    return cfg


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def make_optimizer(model: torch.nn.Module, lr: float, device: torch.device):
    """Adam; its fused kernel where torch has one (one pass over all parameters instead of a
    dozen foreach passes: about 7x faster on a 2-core CPU, which matters at small batches)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)


def make_scheduler(optimizer, total_steps: int, warmup_steps: int):
    """Cosine decay over the run, after `warmup_steps` of linear warm-up when asked."""
    if not warmup_steps:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)

    def factor(step):
        warm = min(1.0, (step + 1) / warmup_steps)
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def decoder_backend(cfg: dict, device: torch.device) -> str:
    """The fastinr backend the decoder trains on, or why it runs in plain PyTorch."""
    if cfg["decoder"] == "conv":
        return "plain PyTorch"
    return resolve_backend(cfg["backend"], device)[0]


def build_model(cfg: dict) -> EncoderDecoder:
    pooled_grid = cfg["decoder"] == "inr" and cfg["grid_head"] == "pool"
    grid = (cfg["grid_size"], cfg["grid_channels"]) if pooled_grid else (0, 0)
    encoder = build_encoder(cfg["encoder"], SHAPE, cfg["code_size"], cfg["encoder_weights"], *grid)
    if cfg["decoder"] == "inr":
        decoder = INRDecoder(
            cfg["code_size"], SHAPE[0], hidden=cfg["hidden"], num_blocks=cfg["blocks"],
            layers_per_block=cfg["layers_per_block"], activation=cfg["activation"],
            conditioning=cfg["conditioning"], norm=cfg["norm"], output=cfg["inr_output"],
            embedding=cfg["embedding"], freqs=cfg["freqs"], num_freqs=cfg["num_freqs"],
            max_freq=cfg["max_freq"], train_size=SHAPE[1], sigma=cfg["sigma"],
            grid_size=cfg["grid_size"], grid_channels=cfg["grid_channels"],
            grid_blend=cfg["grid_blend"], default_shape=SHAPE[1:], seed=cfg["seed"],
            backend=cfg["backend"])
        return EncoderDecoder(encoder, decoder)
    if cfg["decoder"] == "conv":
        return EncoderDecoder(encoder, ConvDecoder(cfg["code_size"], SHAPE[0],
                                                   channels=cfg["conv_channels"], size=SHAPE[1]))
    decoder = fastinr.ImageManifoldDecoder(
        cfg["code_size"], SHAPE[0], num_hidden=cfg["hidden"], num_blocks=cfg["blocks"],
        num_layers_per_block=cfg["layers_per_block"], pos_embedding_freqs=cfg["freqs"],
        batch_norm=cfg["batch_norm"] != "none", default_shape=SHAPE[1:],
        activation=cfg["activation"], activation_out=cfg["activation_out"],
        batch_norm_stats="batch" if cfg["batch_norm"] == "batch" else "image",
        backend=cfg["backend"])
    if cfg["activation_out"] == "none":
        with torch.no_grad():  # start at mid grey, the middle of the [0, 1] target range
            decoder.pos_to_color.linear_out.bias.fill_(0.5)
    return EncoderDecoder(encoder, decoder)


def batch_for_step(step: int, cfg: dict, train_tiles: torch.Tensor, generator: torch.Generator,
                   rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of the augmented global batch of `step`.

    Every rank builds and augments the whole global batch (cheap: tiles are in memory) so the
    augmentation generator advances identically everywhere and matches a single-process run.
    """
    batch = cfg["batch_size"]
    idx = stream_indices(step * batch, batch, len(train_tiles), cfg["seed"])
    images = train_tiles[idx.to(train_tiles.device)].float().div_(255.0)
    images = augment_batch(images, generator)
    share = batch // world_size
    return images[rank * share:(rank + 1) * share]


def subpixel_jitter(step: int, cfg: dict, device: torch.device) -> torch.Tensor:
    """(H, W, 2): one uniform random offset inside every pixel, shared by the step's images.

    Pixel (i, j)'s query point stays within half a pixel of its centre, so its target is that
    pixel (the nearest one). One offset per pixel for the whole batch keeps the step fused (the
    decoder's input offset); every step draws anew. From a generator seeded by the step: the same
    on every rank and after a resume, and independent of every other random stream.
    """
    height, width = SHAPE[1:]
    generator = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)
    pixel = torch.tensor([2 / (width - 1), 2 / (height - 1)])   # pixel centres span [-1, 1]
    jitter = (torch.rand(height, width, 2, generator=generator) - 0.5) * pixel
    return jitter.to(device)


def precision_of(cfg: dict, device: torch.device) -> str:
    """--precision resolved: auto is bf16 where the native backend runs bf16 GEMMs on this CPU."""
    precision = cfg.get("precision", "fp32")   # runs saved before the flag were float32
    if precision == "auto":
        return "bf16" if native_bf16_matmul(device) and decoder_backend(cfg, device) == "native" else "fp32"
    return precision


def autocast(precision: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def train_step(model, optimizer, scheduler, images: torch.Tensor,
               jitter: torch.Tensor = None, precision: str = "fp32", check=None) -> torch.Tensor:
    """One optimizer step on the L1 reconstruction loss; returns the loss (detached).

    With `jitter` (H, W, 2), each pixel is queried off its centre and its target stays that pixel.
    `check(loss)` runs after backward and before the optimizer step (it raises to skip the step)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(precision, images.device):
        out = model(images) if jitter is None else model(images, jitter=jitter)
    loss = F.l1_loss(out.float(), images)
    loss.backward()
    if check is not None:
        check(loss)
    optimizer.step()
    scheduler.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, val_tiles: torch.Tensor, train_mode: bool = False, precision: str = "fp32") -> dict:
    """Validation L1, PSNR, Sobel-edge L1 and spread, outputs clamped to [0, 1].

    In eval mode, or with `train_mode` in training mode (BatchNorm then normalizes with the
    statistics of what it sees; every buffer it updates is restored afterwards)."""
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
                recon = model(images).float().clamp_(0, 1)
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


def batch_statistics(cfg: dict) -> bool:
    """Whether the decoder normalizes with statistics over the whole batch in training."""
    return (cfg["decoder"] == "seed" and cfg["batch_norm"] == "batch") or \
        (cfg["decoder"] == "inr" and cfg["norm"] == "batch-bn")


def per_image_batch_norm(cfg: dict) -> bool:
    """Whether the decoder has the seed's per-image BatchNorm (running statistics in eval)."""
    return (cfg["decoder"] == "seed" and cfg["batch_norm"] == "image") or \
        (cfg["decoder"] == "inr" and cfg["norm"] == "image-bn")


@torch.no_grad()
def sample_pictures(model, val_tiles: torch.Tensor):
    """(originals, reconstructions, renders at RENDER_SCALE x) of NUM_PICTURES validation tiles."""
    was_training = model.training
    model.eval()
    pick = torch.linspace(0, len(val_tiles) - 1, min(NUM_PICTURES, len(val_tiles))).round().long()
    images = val_tiles[pick.to(val_tiles.device)].float().div_(255.0)
    codes = model.encoder(images)
    recon = model.decode(codes).clamp_(0, 1)
    size = (RENDER_SCALE * SHAPE[1], RENDER_SCALE * SHAPE[2])
    render = model.decode(codes, size).clamp_(0, 1)  # the conv decoder: a bilinear resample
    model.train(was_training)
    return images.cpu(), recon.cpu(), render.cpu()


def pictures(model, val_tiles: torch.Tensor, path: Path) -> None:
    plot_reconstructions(*sample_pictures(model, val_tiles), path, scale=RENDER_SCALE)


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


def load_data(cfg: dict, dist, parser):
    """(train, val) uint8 tiles on the CPU and a fingerprint of the whole tile set."""
    def load():
        try:
            return load_tiles_uint8(cfg["tiles"])
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}")
    if dist.is_main:  # builds the cache once; the other ranks then read it
        tiles = load()
    dist.barrier()
    if not dist.is_main:
        tiles = load()
    fingerprint = hashlib.sha256(tiles.numpy().tobytes()).hexdigest()
    train, val = split_tiles(tiles)
    if len(train) == 0 or len(val) < 1:
        parser.error(f"need at least 2 tiles for a training and a validation set, got {len(tiles)}")
    return train, val, fingerprint


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
        cfg = {**DECODER_DEFAULTS, **checkpoint["config"]}
        changed = [k for k in sorted(given) if k not in RUNTIME_KEYS
                   and _normalized(k, getattr(args, k)) != cfg.get(k)]
        if changed:
            parser.error("--resume continues the saved run; these settings differ from its "
                         "checkpoint: " + ", ".join(f"--{k.replace('_', '-')}" for k in changed)
                         + " (start a new run with another --output to change them)")
        cfg.update({k: getattr(args, k) for k in RUNTIME_KEYS if k in given})
        cfg.update(output=args.output, resume=True)
        device = resolve_device(cfg["device"], local_rank)
    else:
        if checkpoint_path.exists():
            parser.error(f"{checkpoint_path} exists; pass --resume to continue that run, or "
                         "choose another --output")
        preset = PRESETS[args.preset]
        decoder = args.decoder if "decoder" in given else preset.get("decoder", args.decoder)
        for key, value in preset.items():
            if key not in given and (decoder == "inr" or key not in INR_KEYS):
                setattr(args, key, value)
        device = resolve_device(args.device, local_rank)
        cfg = resolve_config(args, parser, device)
    dist = init_distributed(device.type)
    if cfg["batch_size"] % dist.world_size:
        parser.error(f"--batch-size {cfg['batch_size']} must be divisible by the number of "
                     f"processes ({dist.world_size})")
    if dist.enabled and batch_statistics(cfg):
        parser.error(f"{'--norm batch-bn' if cfg['decoder'] == 'inr' else '--batch-norm batch'} "
                     "normalizes with statistics over the batch, which the fused decoders do not "
                     "reduce across processes: under torchrun use per-image statistics "
                     "(--batch-norm image, --norm image-bn or instance), or train in one process")
    return parser, cfg, device, dist, checkpoint


def _normalized(key, value):
    """A command-line value in the form saved in the config (for the resume check)."""
    if key in ("activation", "activation_out"):
        return canonical_activation(value, "--" + key.replace("_", "-"))
    if key == "freqs":
        return [float(f) for f in str(value).split(",") if f.strip()]
    return value


def set_seeds(seed: int, deterministic: bool, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def describe_decoder(cfg: dict) -> str:
    if cfg["decoder"] == "conv":
        return f"conv ({cfg['conv_channels']} channels)"
    layers = f"hidden {cfg['hidden']}, {cfg['blocks']}x{cfg['layers_per_block']} layers"
    if cfg["decoder"] == "seed":
        return (f"seed ({layers}, output {cfg['activation_out']}, BatchNorm {cfg['batch_norm']})")
    grid = (f", grid {cfg['grid_size']}x{cfg['grid_size']}x{cfg['grid_channels']} "
            f"({cfg['grid_head']} head, {cfg['grid_blend']})" if cfg["grid_size"] else "")
    return (f"inr ({layers}, {cfg['conditioning']}, norm {cfg['norm']}, output "
            f"{cfg['inr_output']}, embedding {cfg['embedding']}{grid}"
            + (", sub-pixel training" if cfg["subpixel"] else "") + ")")


def describe_run(cfg, model, backend, device, dist, n_train, n_val, total_steps, step) -> str:
    counts = {name: sum(p.numel() for p in part.parameters())
              for name, part in (("encoder", model.encoder), ("decoder", model.decoder))}
    batch = cfg["batch_size"]
    lines = [
        f"tiles: {n_train} training, {n_val} validation "
        f"({', '.join(cfg['tiles']) if cfg['tiles'] else 'DCSS sheets'})",
        f"model: {cfg['encoder']} encoder ({counts['encoder']:,} parameters) -> code "
        f"{cfg['code_size']} -> {describe_decoder(cfg)} decoder ({counts['decoder']:,} "
        f"parameters, {decoder_macs_per_pixel(model.decoder, SHAPE[1:]):,.0f} MACs per pixel); "
        f"backend {backend} on {device}, precision {precision_of(cfg, device)}"
        + (f"; {dist.world_size} processes" if dist.enabled else ""),
    ]
    budget = f"budget {total_steps * batch:,} training images ({total_steps:,} steps of {batch})"
    if device.type == "cpu" and cfg["max_inputs"] == CPU_DEFAULT_MAX_INPUTS:
        minutes = CPU_DEFAULT_MAX_INPUTS / CPU_BUSY_IMAGES_PER_SECOND / 60
        budget += (f": the CPU default, sized to finish in under 20 minutes on a busy 2-core CPU "
                   f"(about {minutes:.0f} minutes of training at {CPU_BUSY_IMAGES_PER_SECOND} "
                   f"images/s, under 2 on an idle one); the seed's budget, --max-inputs "
                   f"{GPU_DEFAULT_MAX_INPUTS}, is meant for a GPU")
    lines.append(budget + (f"; resuming at {step * batch:,} images" if step else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    from tqdm import tqdm

    parser, cfg, device, dist, checkpoint = configure(argv)
    try:
        code = run(parser, cfg, device, dist, checkpoint, tqdm)
    except BaseException:
        dist.close()
        raise
    dist.close(together=True)
    return code


def run(parser, cfg, device, dist, checkpoint, tqdm) -> int:
    training = Training(parser, cfg, device, dist, checkpoint, tqdm)
    training.loop()
    training.finish()
    return {"finished": 0, "interrupted": EXIT_INTERRUPTED, "diverged": EXIT_DIVERGED}[training.status]


class Training:
    """One run of the example: its state (model, optimizer, data order, history) and the stages
    that use it: set up or restore, the training loop with validations and checkpoints, the
    final pictures and summary. Everything a checkpoint holds lives on `self`."""

    def __init__(self, parser, cfg, device, dist, checkpoint, tqdm):
        self.cfg, self.device, self.dist, self.tqdm = cfg, device, dist, tqdm
        self.output = Path(cfg["output"])
        set_seeds(cfg["seed"], cfg["deterministic"], device)
        # A saturated sigmoid (the seed's collapse) drives values into the denormal range, where
        # CPU float math is ~5x slower; flushing them to zero changes nothing measurable.
        torch.set_flush_denormal(True)
        train_cpu, val_cpu, self.fingerprint = load_data(cfg, dist, parser)
        if checkpoint is not None and checkpoint["data_fingerprint"] != self.fingerprint:
            parser.error("--resume: the tiles differ from the ones the checkpoint was trained on "
                         "(same sources and sheets needed)")
        self.n_train, self.n_val = len(train_cpu), len(val_cpu)
        if cfg["batch_size"] > self.n_train:
            parser.error(f"--batch-size {cfg['batch_size']} is larger than the {self.n_train} "
                         "training tiles")
        self.train_tiles, self.val_tiles = train_cpu.to(device), val_cpu.to(device)
        self.target_spread = reconstruction_spread(val_cpu.float() / 255) if len(val_cpu) > 1 else 0.0
        if dist.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            remove_temporaries(self.output)  # half-written files of a killed run

        try:
            self.model = build_model(cfg).to(device)
        except FileNotFoundError as err:  # resnet18 ImageNet weights not on disk
            raise SystemExit(f"error: {err}")
        self.backend = decoder_backend(cfg, device)
        self.precision = precision_of(cfg, device)
        self.train_model = self.model
        if dist.enabled:
            # Each process's BatchNorm running statistics see every image of the global batch.
            fastinr.sync_running_stats(self.model)
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.batch = batch = cfg["batch_size"]
        self.total_steps = -(-cfg["max_inputs"] // batch)
        self.val_steps = (max(1, round(cfg["val_every"] / batch)) if cfg["val_every"]
                          else max(1, self.total_steps // VALIDATIONS_PER_RUN))
        self.ckpt_steps = (max(1, round(cfg["checkpoint_every"] / batch)) if cfg["checkpoint_every"]
                           else self.val_steps)
        self.optimizer = make_optimizer(self.model, cfg["lr"], device)
        self.scheduler = make_scheduler(self.optimizer, self.total_steps, -(-cfg["warmup"] // batch))
        self.generator = torch.Generator().manual_seed(cfg["seed"] + 1)  # augmentation
        # Sum of per-rank batch losses and their count since the last validation (over all ranks
        # when saved, so a resumed run reports the same interval mean).
        self.loss_acc = torch.zeros(2, dtype=torch.float64, device=device)
        self.step, self.history, self.train_seconds, self.collapse = 0, [], 0.0, None
        self.divergence = None  # what went non-finite, once the run has diverged
        self.checkpoint_step = None if checkpoint is None else checkpoint["step"]
        if checkpoint is not None:
            try:
                self.restore(checkpoint)
            except (KeyError, RuntimeError, ValueError) as err:
                parser.error(f"--resume: {self.output / 'checkpoint.pt'} does not fit the run its "
                             f"settings describe ({type(err).__name__}: "
                             f"{' '.join(str(err).split())[:300]})"
                             "; start a new run with another --output")
        self.say = tqdm.write if dist.is_main else (lambda *a, **k: None)
        if dist.is_main:
            self.say(describe_run(cfg, self.model, self.backend, device, dist, self.n_train,
                                  self.n_val, self.total_steps, self.step))
        # Rank 0 alone; a resumed run drops the events written after its checkpoint.
        resume_images = self.step * batch if checkpoint is not None else None
        self.board = (open_tensorboard(self.output, resume_images, cfg, self.say)
                      if dist.is_main and cfg.get("tensorboard", True) else None)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps

    @property
    def status(self) -> str:
        if self.divergence:
            return "diverged"
        return "finished" if self.finished else "interrupted"

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_states(checkpoint["rng"])
        self.generator.set_state(checkpoint["augment_rng"])
        self.step, self.history = checkpoint["step"], checkpoint["history"]
        self.train_seconds, self.collapse = checkpoint["train_seconds"], checkpoint["collapse"]
        if self.dist.is_main:
            self.loss_acc.copy_(checkpoint["loss_acc"])

    def validate(self, interval_seconds: float, interval_images: int):
        """Validation row (main process; None elsewhere): metrics.csv, loss.png, collapse check."""
        totals = self.dist.all_reduce_sum(self.loss_acc.clone())
        self.loss_acc.zero_()
        if not self.dist.is_main:
            return None
        row = {"images": self.step * self.batch, "step": self.step,
               "train_l1": (totals[0] / totals[1]).item() if totals[1] > 0 else None,
               **evaluate(self.model, self.val_tiles, precision=self.precision),
               "lr": self.optimizer.param_groups[0]["lr"],
               "images_per_second": (interval_images / interval_seconds if interval_seconds
                                     else None),
               "elapsed_s": self.train_seconds}
        self.history.append(row)
        # The state of the latest validation (a fresh model is not judged); said when it starts.
        was_collapsed = self.collapse is not None
        self.collapse = (collapse_message(self.cfg, row["val_spread"], self.target_spread)
                         if self.step > 0 and row["val_spread"] is not None
                         and is_collapsed(row["val_spread"], self.target_spread) else None)
        if self.collapse and not was_collapsed:
            self.say(self.collapse)
        write_csv(self.output / "metrics.csv", self.history, METRIC_COLUMNS)
        plot_losses(self.history, self.output / "loss.png", title="RPG tiles autoencoder")
        if self.board:
            self.board.log_row(row)
            # 8 tiles and their 4x renders: about a third of the validation's time (hidden 256, CPU)
            self.board.log_reconstructions(*sample_pictures(self.model, self.val_tiles),
                                           step=row["images"])
            self.board.flush()  # before the checkpoint that follows, so a kill keeps both
        return row

    def check_finite(self, loss: torch.Tensor) -> None:
        """Raise Diverged (on every rank) if the loss or a gradient is non-finite."""
        report = nonfinite_report(loss, self.model.named_parameters())
        if self.dist.any(report is not None, self.device):
            raise Diverged(f"at step {self.step + 1}, "
                           + (report or "another process's loss or gradients are non-finite"))

    def check_validation(self, row) -> None:
        """Raise Diverged (on every rank) if the main process validated a non-finite L1."""
        bad = row is not None and not math.isfinite(row["val_l1"])
        if self.dist.any(bad, self.device):
            raise Diverged(f"after step {self.step}, the validation L1 is "
                           + (f"{row['val_l1']}" if row else "non-finite"))

    def write_checkpoint(self) -> None:
        totals = self.dist.all_reduce_sum(self.loss_acc.clone())
        if self.dist.is_main:
            save_checkpoint(self.output / "checkpoint.pt", {
                "config": self.cfg, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": rng_states(), "augment_rng": self.generator.get_state(),
                "loss_acc": totals.cpu(), "history": self.history,
                "train_seconds": self.train_seconds, "collapse": self.collapse,
                "data_fingerprint": self.fingerprint})
        self.checkpoint_step = self.step
        self.dist.barrier()

    def loop(self) -> None:
        """Train to the budget or to Ctrl-C / SIGTERM, validating and checkpointing on schedule."""
        cfg, dist, batch = self.cfg, self.dist, self.batch
        if self.step == 0:
            self.validate(0.0, 0)
        last = self.history[-1] if self.history else {}
        bar = self.tqdm(total=self.total_steps * batch, initial=self.step * batch, unit="img",
                        unit_scale=True, dynamic_ncols=True, disable=cfg["quiet"] or not dist.is_main,
                        smoothing=0.05)
        bar.set_postfix(val_l1=_fmt(last.get("val_l1")))
        with GracefulStop() as stop:
            try:
                self.train(stop, bar, last)
            except Diverged as err:
                kept = self.output / "checkpoint.pt"
                kept = (f"{kept} holds step {self.checkpoint_step}, the last checkpoint written"
                        if self.checkpoint_step is not None else "no checkpoint was written")
                self.divergence = (
                    f"training diverged {err} ({self.step * batch:,} images trained, lr "
                    f"{self.optimizer.param_groups[0]['lr']:.3g}); {kept}. Lower --lr, or look "
                    "for bad tiles")
            self.stop_signal = stop.signal_name
        bar.close()

    def train(self, stop, bar, last) -> None:
        """The steps with their validations and checkpoints, to the budget or a stop request."""
        cfg, dist, batch = self.cfg, self.dist, self.batch
        # Training time only (validation, pictures and checkpoints excluded) for images/s.
        segment_start, val_seconds, val_start_step = time.perf_counter(), 0.0, self.step
        while self.step < self.total_steps:
            images = batch_for_step(self.step, cfg, self.train_tiles, self.generator, dist.rank,
                                    dist.world_size)
            jitter = subpixel_jitter(self.step, cfg, self.device) if cfg["subpixel"] else None
            loss = train_step(self.train_model, self.optimizer, self.scheduler, images, jitter,
                              self.precision, check=self.check_finite)
            self.loss_acc += torch.stack([loss.double(), loss.new_ones((), dtype=torch.float64)])
            self.step += 1
            step = self.step
            bar.update(batch)
            # Every rank must stop at the same step; asking the others costs a host sync, so
            # a distributed run asks every 8 steps (a single process checks every step).
            stopped = (dist.any(stop.requested, self.device)
                       if step % 8 == 0 or step == self.total_steps else False) \
                if dist.enabled else stop.requested
            due_val = step % self.val_steps == 0 or step == self.total_steps
            due_ckpt = step % self.ckpt_steps == 0 or step == self.total_steps or stopped
            if step % 25 == 0 and dist.is_main:
                bar.set_postfix(train_l1=_fmt(loss.item()), val_l1=_fmt(last.get("val_l1")))
            if due_val or due_ckpt:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                seconds = time.perf_counter() - segment_start
                self.train_seconds += seconds
                val_seconds += seconds
                if due_val:
                    row = self.validate(val_seconds, (step - val_start_step) * batch)
                    self.check_validation(row)
                    last = row or last
                    val_seconds, val_start_step = 0.0, step
                    if dist.is_main:
                        bar.set_postfix(train_l1=_fmt(last.get("train_l1")),
                                        val_l1=_fmt(last.get("val_l1")))
                if due_ckpt:
                    self.write_checkpoint()
                segment_start = time.perf_counter()
            if stopped:
                break

    def finish(self) -> None:
        """Pictures, summary.json and the closing line (main process)."""
        if not self.dist.is_main:
            return
        cfg, model, output = self.cfg, self.model, self.output
        status = self.status
        if status != "diverged":  # a diverged model's pictures and statistics would be NaN
            pictures(model, self.val_tiles, output / "reconstructions.png")
        final = self.history[-1]
        # The per-image BatchNorm hypothesis: the seed's eval mode (running statistics) against
        # its training mode (each image's own statistics) on the same final weights.
        bn_train = (evaluate(model, self.val_tiles, train_mode=True, precision=self.precision)
                    if per_image_batch_norm(cfg) and status != "diverged" else None)
        summary = {
            "status": status, "divergence": self.divergence,
            "images": self.step * self.batch, "steps": self.step,
            "val_l1": final["val_l1"], "val_psnr": final["val_psnr"],
            "val_edge_l1": final.get("val_edge_l1"),  # absent in older checkpoints
            "val_l1_bn_train_mode": bn_train and bn_train["val_l1"],
            "val_psnr_bn_train_mode": bn_train and bn_train["val_psnr"],
            "decoder_macs_per_pixel": decoder_macs_per_pixel(model.decoder, SHAPE[1:]),
            "val_spread": final["val_spread"], "val_tiles_spread": self.target_spread,
            "val_at_images": final["images"],
            "collapsed": self.collapse is not None, "collapse_message": self.collapse,
            "images_per_second": (self.step * self.batch / self.train_seconds
                                  if self.train_seconds else None),
            "train_seconds": self.train_seconds, "device": str(self.device), "backend": self.backend,
            "world_size": self.dist.world_size,
            "tiles": {"train": self.n_train, "val": self.n_val, "fingerprint": self.fingerprint},
            "torch": torch.__version__, "config": cfg,
        }
        write_json(output / "summary.json", summary)
        if status == "diverged":
            print(f"error: {self.divergence}; summary in {output / 'summary.json'}",
                  file=sys.stderr)
        elif status == "interrupted":
            self.say(f"stopped by {self.stop_signal} at {self.step * self.batch:,} images; "
                     f"checkpoint saved. Continue with: --output {output} --resume")
        else:
            self.say(f"done: validation L1 {final['val_l1']:.4f}, PSNR {final['val_psnr']:.2f} dB, "
                     f"{summary['images_per_second']:.1f} images/s; outputs in {output}")
        if self.collapse:
            self.say(self.collapse)
        if self.board:
            self.board.close()


if __name__ == "__main__":
    sys.exit(main())
