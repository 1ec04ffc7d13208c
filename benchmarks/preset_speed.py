"""Training images/s of the example's presets, side by side in one process (encoder + decoder).

    python benchmarks/preset_speed.py [--repeat 7] [--hidden 128] [--presets baseline,sharp]

The issue's rule for a sharper decoder: not slower per image than the baseline on the same
backend. Each round times one training step (batch 64 of 32x32 tiles: forward, L1, backward,
Adam) of every preset in turn, so a change of machine load hits all alike; medians are printed.
"""
import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def load_example():
    spec = importlib.util.spec_from_file_location("rpg_autoencoder", ROOT / "examples" / "rpg_autoencoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--presets", default="baseline,sharp")
    args = parser.parse_args()
    example = load_example()
    steps = {}
    for preset in args.presets.split(","):
        _, cfg, device, dist, _ = example.configure(
            ["--preset", preset, "--hidden", str(args.hidden), "--device", "cpu",
             "--output", "/nonexistent/never-written"])
        dist.close()
        torch.manual_seed(0)
        model = example.build_model(cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        images = torch.rand(args.batch, 3, 32, 32)
        steps[f"{preset} ({example.decoder_backend(cfg, device)})"] = \
            lambda m=model, o=optimizer, s=scheduler: example.train_step(m, o, s, images)
    for step in steps.values():  # warm-up
        step()
    times = {name: [] for name in steps}
    for _ in range(args.repeat):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"hidden {args.hidden}, median of {args.repeat}")
    first = None
    for name, t in times.items():
        seconds = statistics.median(t)
        first = first or seconds
        print(f"  {name:40s} {seconds * 1e3:8.1f} ms  {args.batch / seconds:7.1f} images/s  "
              f"{first / seconds:5.2f}x the first")


if __name__ == "__main__":
    main()
