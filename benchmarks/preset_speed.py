"""Training images/s of the example's presets, side by side (encoder + decoder + the example's Adam).

    python benchmarks/preset_speed.py [--rounds 3] [--steps 20] [--hidden 128] [--presets baseline,sharp]
    python benchmarks/preset_speed.py --presets "baseline,sharp,sharp --layers-per-block 1 --batch-size 8"
    python benchmarks/preset_speed.py --presets "sharp --precision fp32,sharp --precision bf16"

The issue's rule for a sharper decoder: not slower per image than the baseline on the same
backend. A training run is one preset in one process, and the process's memory history matters
(freed activations are reused or faulted in afresh), so every measurement is a fresh process
training one preset: a few warm-up steps, then the median of `--steps` steps at the preset's own
batch (or `--batch`). A preset may carry more of the example's flags after its name (a variant of
it). Rounds alternate the presets, so a change of machine load hits all alike;
the median over rounds is printed.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))   # the example's command line and its kit, rpgkit

import rpg_autoencoder  # noqa: E402
from rpgkit.config import decoder_backend, precision_of  # noqa: E402
from rpgkit.training import training_rate  # noqa: E402

WARMUP_STEPS = 3


def measure(variant: str, hidden: int, batch, steps: int) -> dict:
    """Median training images/s of one preset (name, then any further flags) in this process."""
    preset, *flags = variant.split()
    _, cfg, device, dist, _ = rpg_autoencoder.configure(
        ["--preset", preset, "--hidden", str(hidden), "--device", "cpu", "--output", "/nonexistent/never-written",
         *flags])
    dist.close()
    torch.manual_seed(0)
    batch = batch or cfg["batch_size"]
    rate = training_rate(cfg, device, steps=steps, warmup=WARMUP_STEPS, batch=batch)
    return {"name": f"{variant}, batch {batch} ({decoder_backend(cfg, device)}, {precision_of(cfg, device)})",
            "rate": rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=None, help="default: each preset's own")
    parser.add_argument("--presets", default="baseline,sharp")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one measurement, as JSON
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.hidden, args.batch, args.steps)))
        return
    presets = args.presets.split(",")
    results = {preset: [] for preset in presets}
    for round_ in range(args.rounds):
        for preset in presets:
            command = [sys.executable, __file__, "--child", preset, "--hidden", str(args.hidden),
                       "--steps", str(args.steps)] + (["--batch", str(args.batch)] if args.batch else [])
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[preset].append(json.loads(out.strip().splitlines()[-1]))
            print(f"round {round_ + 1}: {results[preset][-1]['name']}: {results[preset][-1]['rate']:.1f} images/s",
                  file=sys.stderr)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, hidden {args.hidden}; median over "
          f"{args.rounds} fresh processes of each one's median of {args.steps} steps")
    first = None
    for preset in presets:
        rate = statistics.median(r["rate"] for r in results[preset])
        spread = ", ".join(f"{r['rate']:.0f}" for r in results[preset])
        first = first or rate
        print(f"  {results[preset][0]['name']:60s} {rate:7.1f} images/s  {rate / first:5.2f}x the first  "
              f"(rounds: {spread})")


if __name__ == "__main__":
    main()
