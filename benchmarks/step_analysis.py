"""Launches and bytes per training step of the seed configuration on the triton backend, as a
GPU would run it: an analysis, not a measurement. Runs on any machine in seconds.

    PYTHONPATH=. python benchmarks/step_analysis.py [--precision tf32] [--batch 64] [--size 32]

The seed decoder (code 102, hidden 256, 2x2 blocks, per-image BatchNorm) takes one step: forward,
L1 loss, backward, fused Adam. fastinr.ops.launches.as_on_gpu gives the launchers an H200's
configuration (tiles, 132 SMs); LaunchCounter(run_kernels=False) records every Triton launch
without running it, and counts the torch ops, which do run (on the CPU). Bytes follow its model:
every distinct storage a launch touches is read or written once, so it is DRAM traffic with a
perfect cache inside each launch and none between launches (a kernel that re-reads a tile through
L2 counts it once). A = one (B*H*W, hidden) float32 activation.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# The module's backend check then accepts CPU tensors; no kernel runs either way.
os.environ.setdefault("TRITON_INTERPRET", "1")

DOTS = {"fp32": ("float32", "ieee"), "tf32": ("float32", "tf32"), "bf16": ("bfloat16", "ieee")}


def analyse(precision="tf32", batch=64, size=32, hidden=256):
    """{phase: LaunchCounter} for one step after a first (cache-filling) one."""
    import torch
    import triton.language as tl

    from fastinr import ImageManifoldDecoder
    from fastinr.ops.launches import LaunchCounter, as_on_gpu
    dtype_name, dot_precision = DOTS[precision]
    torch.manual_seed(0)
    model = ImageManifoldDecoder(102, 3, hidden, 2, 2, pos_embedding_freqs=(7, 17), backend="triton")
    codes = torch.randn(batch, 102, requires_grad=True)
    target = torch.rand(batch, 3, size, size)
    optimizer = torch.optim.Adam(list(model.parameters()) + [codes], lr=1e-4, fused=True)
    with as_on_gpu(getattr(tl, dtype_name), dot_precision):
        for _ in range(2):
            phases = {name: LaunchCounter(run_kernels=False)
                      for name in ("forward + loss", "backward", "Adam")}
            optimizer.zero_grad(set_to_none=True)
            with phases["forward + loss"]:
                loss = (model(codes, (size, size)) - target).abs().mean()
            with phases["backward"]:
                loss.backward()
            with phases["Adam"]:
                optimizer.step()
    return phases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", choices=sorted(DOTS), default="tf32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    args = parser.parse_args(argv)
    phases = analyse(args.precision, args.batch, args.size, args.hidden)
    activation = args.batch * args.size ** 2 * args.hidden * 4
    print(f"seed step, batch {args.batch} at {args.size}x{args.size}, hidden {args.hidden}, "
          f"{args.precision} (analysis; A = {activation / 2 ** 20:.0f} MiB)")
    print(f"{'phase':<15} {'triton':>7} {'torch':>6} {'MiB (triton)':>13} {'MiB (torch)':>12} {'A':>6}")
    totals = [0, 0, 0, 0]
    for name, counter in phases.items():
        triton_bytes = sum(counter.bytes[k] for k in counter.triton)
        torch_bytes = sum(counter.bytes[k] for k in counter.torch)
        row = [sum(counter.triton.values()), sum(counter.torch.values()), triton_bytes, torch_bytes]
        totals = [t + r for t, r in zip(totals, row)]
        print(f"{name:<15} {row[0]:>7} {row[1]:>6} {row[2] / 2 ** 20:>13.0f} {row[3] / 2 ** 20:>12.0f} "
              f"{(row[2] + row[3]) / activation:>6.1f}")
    print(f"{'step':<15} {totals[0]:>7} {totals[1]:>6} {totals[2] / 2 ** 20:>13.0f} "
          f"{totals[3] / 2 ** 20:>12.0f} {(totals[2] + totals[3]) / activation:>6.1f}")
    for name, counter in phases.items():
        ops = ", ".join(f"{k} {v}" for k, v in counter.torch.most_common())
        print(f"\n{name}: triton {dict(counter.triton)}\n  torch: {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
