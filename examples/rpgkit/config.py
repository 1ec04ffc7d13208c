"""The example's settings: presets and defaults, the resolved config of a run, and its description.

A run's config is a plain dict (the command line's settings after presets and derived values, as
saved in its checkpoint): `resolve_config` makes it from parsed flags, `saved_config` reads it
back from a checkpoint, and the rest of rpgkit takes it as `cfg`.
"""
import argparse
import math

import torch

from fastinr.activations import canonical_activation
from fastinr.backends import native_bf16_gemm_kernel, native_bf16_matmul, resolve_backend
from fastinr.inr_decoder import OUTPUTS

SHAPE = (3, 32, 32)
GPU_DEFAULT_MAX_INPUTS = 1_000_000  # the seed's budget
# On a CPU the default budget is a time (rpgkit/training/budget.py: the images this machine trains
# in ~3 minutes, timed at the start). This count is the fallback where a run cannot time itself
# alone (several processes): ~3 minutes of the default preset on an idle 2-core AVX2 CPU (93
# images/s there; benchmarks/preset_speed.py).
CPU_DEFAULT_MAX_INPUTS = 16_000
VALIDATIONS_PER_RUN = 10  # default --val-every: each costs ~1/3 of a training image per tile
BATCH_NORM_MODES = ("none", "image", "batch")
# Presets set these defaults; flags given on the command line override them. "baseline" is the
# parser's own defaults. "sharp", the example's default, is the best variant measured so far
# (docs/experiments.md): a local latent grid from the seed's encoder, per-image statistics, 2
# blocks of 2 layers at hidden 128, batch 16, sub-pixel training (renders above 32x32 free of
# lattice artifacts) and 10 steps of test-time refinement of the held-out codes.
PRESETS = {"seed": {"activation_out": "sigmoid", "batch_norm": "image"},
           "baseline": {"activation_out": "none", "batch_norm": "none"},
           "sharp": {"activation_out": "none", "batch_norm": "none", "decoder": "inr",
                     "norm": "instance", "inr_output": "linear", "embedding": "log", "num_freqs": 6,
                     "grid_size": 4, "grid_channels": 6, "grid_head": "linear", "hidden": 128,
                     "layers_per_block": 2, "batch_size": 16, "lr": 2e-3, "warmup": 5000,
                     "subpixel": True, "refine_steps": 10}}
DEFAULT_PRESET = "sharp"
# The --decoder inr settings: a preset's values for them apply only when the decoder is inr (so
# `--preset sharp --decoder seed` is the seed's decoder with the sharp training recipe).
INR_KEYS = ("conditioning", "norm", "inr_output", "embedding", "num_freqs", "max_freq", "sigma",
            "grid_size", "grid_channels", "grid_head", "grid_blend", "subpixel")
# --decoder inr without --norm / --inr-output follows --batch-norm / --activation-out.
INR_NORM_FROM_BATCH_NORM = {"none": "none", "image": "image-bn", "batch": "batch-bn"}
INR_OUTPUT_FROM_ACTIVATION_OUT = {"none": "linear", "sigmoid": "sigmoid"}
# Settings added with --decoder (and --split); a checkpoint written before them gets these values
# on --resume (runs before --split trained on the seed's split by index).
DECODER_DEFAULTS = {"preset": "baseline", "decoder": "seed", "conditioning": "concat",
                    "norm": None, "inr_output": None, "embedding": "seed", "num_freqs": 6,
                    "max_freq": None, "sigma": 10.0, "grid_size": 0, "grid_channels": 6,
                    "grid_head": "pool", "grid_blend": "bilinear", "subpixel": False,
                    "conv_channels": 64, "warmup": 0, "split": "index", "refine_steps": 0,
                    "refine_lr": 0.05, "budget_rate": None}
# Settings that may change when a run is resumed; everything else must match the checkpoint.
# (Refinement happens after training: a resumed or evaluated run may change it.)
RUNTIME_KEYS = ("output", "resume", "evaluate", "device", "backend", "tiles", "quiet",
                "tensorboard", "refine_steps", "refine_lr")


def apply_preset(args, given: set) -> None:
    """Set the defaults of --preset on `args` (parsed flags) where no flag in `given` names them."""
    preset = PRESETS[args.preset]
    decoder = args.decoder if "decoder" in given else preset.get("decoder", args.decoder)
    for key, value in preset.items():
        if key not in given and (decoder == "inr" or key not in INR_KEYS):
            setattr(args, key, value)


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
    cfg["budget_rate"] = None   # images/s, where the example times a CPU budget (training/budget.py)
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
    check_refinement(cfg, parser)
    return cfg


def check_refinement(cfg: dict, parser) -> None:
    """parser.error unless --refine-steps and --refine-lr are usable (also after a resume, which
    may change them)."""
    if cfg["refine_steps"] < 0:
        parser.error(f"--refine-steps must be >= 0, got {cfg['refine_steps']}")
    if not (math.isfinite(cfg["refine_lr"]) and cfg["refine_lr"] > 0):
        parser.error(f"--refine-lr must be a finite number > 0, got {cfg['refine_lr']}")


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


def saved_config(checkpoint: dict) -> dict:
    """A checkpoint's config, with the defaults of the settings added after it was written."""
    return {**DECODER_DEFAULTS, **checkpoint["config"]}


def changed_settings(args, given: set, cfg: dict) -> list:
    """The settings in `given` (flags on the command line) whose values in `args` differ from the
    saved `cfg`, leaving out those a resumed run may change (RUNTIME_KEYS)."""
    return [k for k in sorted(given) if k not in RUNTIME_KEYS
            and _as_saved(k, getattr(args, k)) != cfg.get(k)]


def _as_saved(key, value):
    """A command-line value in the form saved in the config (for the resume check)."""
    if key in ("activation", "activation_out"):
        return canonical_activation(value, "--" + key.replace("_", "-"))
    if key == "freqs":
        return [float(f) for f in str(value).split(",") if f.strip()]
    return value


def decoder_backend(cfg: dict, device: torch.device) -> str:
    """The fastinr backend the decoder trains on, or why it runs in plain PyTorch."""
    if cfg["decoder"] == "conv":
        return "plain PyTorch"
    return resolve_backend(cfg["backend"], device)[0]


def precision_of(cfg: dict, device: torch.device) -> str:
    """--precision resolved: auto is bf16 where the native backend runs bf16 GEMMs on this CPU."""
    precision = cfg.get("precision", "fp32")   # runs saved before the flag were float32
    if precision == "auto":
        return "bf16" if native_bf16_matmul(device) and decoder_backend(cfg, device) == "native" else "fp32"
    return precision


def describe_precision(cfg: dict, device: torch.device, backend: str) -> str:
    """The precision, and for native bf16 which kernel multiplies (its own, or oneDNN's with AMX)."""
    precision = precision_of(cfg, device)
    kernel = native_bf16_gemm_kernel(device) if precision == "bf16" and backend == "native" else None
    return f"{precision} ({kernel} GEMMs)" if kernel else precision


def per_image_batch_norm(cfg: dict) -> bool:
    """Whether the decoder has the seed's per-image BatchNorm (running statistics in eval)."""
    return (cfg["decoder"] == "seed" and cfg["batch_norm"] == "image") or \
        (cfg["decoder"] == "inr" and cfg["norm"] == "image-bn")


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


def describe_run(cfg, model, backend, device, dist, n_train, n_val, n_test, total_steps,
                 step) -> str:
    counts = {name: sum(p.numel() for p in part.parameters())
              for name, part in (("encoder", model.encoder), ("decoder", model.decoder))}
    batch = cfg["batch_size"]
    lines = [
        f"tiles: {n_train} training, {n_val} validation, {n_test} test, split by "
        f"{cfg['split']} ({', '.join(cfg['tiles']) if cfg['tiles'] else 'DCSS sheets'})",
        f"model: {cfg['encoder']} encoder ({counts['encoder']:,} parameters) -> code "
        f"{cfg['code_size']} -> {describe_decoder(cfg)} decoder ({counts['decoder']:,} "
        f"parameters, {model.decoder.macs_per_pixel(SHAPE[1:]):,.0f} MACs per pixel); "
        f"backend {backend} on {device}, precision {describe_precision(cfg, device, backend)}"
        + (f"; {dist.world_size} processes" if dist.enabled else ""),
    ]
    budget = f"budget {total_steps * batch:,} training images ({total_steps:,} steps of {batch})"
    if cfg.get("budget_rate"):
        budget += (f": the CPU default, about {cfg['max_inputs'] / cfg['budget_rate'] / 60:.0f} "
                   f"minutes of training at the {cfg['budget_rate']:.0f} images/s timed on this "
                   f"machine at the start (--max-inputs sets a fixed budget)")
    elif device.type == "cpu" and cfg["max_inputs"] == CPU_DEFAULT_MAX_INPUTS:
        budget += (f": the CPU default of a run in several processes; --max-inputs "
                   f"{GPU_DEFAULT_MAX_INPUTS} is the seed's budget, meant for a GPU")
    lines.append(budget + (f"; resuming at {step * batch:,} images" if step else ""))
    return "\n".join(lines)

