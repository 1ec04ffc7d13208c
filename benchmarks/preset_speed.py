"""Training images/s of the example's presets, side by side in one process (encoder + decoder).

    python benchmarks/preset_speed.py [--repeat 7] [--hidden 128] [--presets baseline,sharp]

The issue's rule for a sharper decoder: not slower per image than the baseline on the same
backend. Each round times one training step (each preset's own batch of 32x32 tiles unless --batch:
forward, L1, backward, Adam) of every preset in turn, so a change of machine load hits all alike;
median images/s are printed.
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
    parser.add_argument("--batch", type=int, default=None, help="default: each preset's own")
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
        batch = args.batch or cfg["batch_size"]
        images = torch.rand(batch, 3, 32, 32)
        name = f"{preset}, batch {batch} ({example.decoder_backend(cfg, device)})"
        steps[name] = (batch, lambda m=model, o=optimizer, s=scheduler, x=images: example.train_step(m, o, s, x))
    for _, step in steps.values():  # warm-up
        step()
    rates = {name: [] for name in steps}
    for _ in range(args.repeat):
        for name, (batch, step) in steps.items():
            start = time.perf_counter()
            step()
            rates[name].append(batch / (time.perf_counter() - start))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, hidden {args.hidden}, "
          f"median of {args.repeat}")
    first = None
    for name, r in rates.items():
        rate = statistics.median(r)
        first = first or rate
        print(f"  {name:45s} {rate:7.1f} images/s  {rate / first:5.2f}x the first")


if __name__ == "__main__":
    main()
