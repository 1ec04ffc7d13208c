#!/usr/bin/env python
"""Compare finished runs of rpg_autoencoder.py: one table and one PNG of validation curves.

    python examples/compare_runs.py --output runs/compare.png \
        baseline=runs/a/baseline baseline=runs/b/baseline sharp=runs/a/sharp ...

Each argument is LABEL=FOLDER (a run's --output). Runs that share a label are seeds of one
variant: the table gives mean ± standard deviation over them and the curve their mean, as
examples/ablation.py does for its ladder (whose layout this does not need). Diverged runs are
listed under the table, apart from it.
"""
import argparse
import csv
import json
import sys
from pathlib import Path

from ablation import _cell, plot_curves


def load_run(folder: Path):
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise SystemExit(f"error: {folder} has no summary.json (not a run of rpg_autoencoder.py?)")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") == "diverged":
        return summary, None
    if summary.get("status") != "finished":
        raise SystemExit(f"error: {folder} has not finished (status {summary.get('status')!r})")
    with open(folder / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return summary, [(int(r["images"]), float(r["val_l1"])) for r in rows if r["val_l1"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--output", required=True, help="the PNG of validation curves to write")
    args = parser.parse_args(argv)
    variants, diverged = {}, []
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"error: expected LABEL=FOLDER, got {item!r}")
        summary, curve = load_run(Path(folder))
        if curve is None:
            diverged.append(f"{label} ({folder}): {summary.get('divergence') or 'diverged'}")
        else:
            variants.setdefault(label, []).append((summary, curve))
    print("| variant | seeds | val L1 (eval) | PSNR dB | Sobel-edge L1 | batch | images |")
    print("|---|---|---|---|---|---|---|")
    for label, runs in variants.items():
        summaries = [s for s, _ in runs]
        batches = sorted({s["config"]["batch_size"] for s in summaries})
        print(f"| {label} | {len(runs)} | {_cell([s['val_l1'] for s in summaries], 4)} | "
              f"{_cell([s['val_psnr'] for s in summaries], 2)} | "
              f"{_cell([s.get('val_edge_l1') for s in summaries], 4)} | "
              f"{', '.join(map(str, batches))} | {summaries[0]['images']:,} |")
    if diverged:
        print("\ndiverged (not in the table):\n" + "\n".join(f"- {line}" for line in diverged))
    plot_curves({label: [curve for _, curve in runs] for label, runs in variants.items()}, Path(args.output))
    print(f"curves: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
