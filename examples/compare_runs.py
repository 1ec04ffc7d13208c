#!/usr/bin/env python
"""Compare finished runs of rpg_autoencoder.py: one table and one PNG of validation curves.

    python examples/compare_runs.py --output runs/compare.png --logdir runs/compare \
        baseline=runs/a/baseline baseline=runs/b/baseline sharp=runs/a/sharp ...
    tensorboard --logdir runs/compare

Each argument is LABEL=FOLDER (a run's --output). Runs that share a label are seeds of one
variant: the table gives mean ± standard deviation over them (validation and the test scored
once at the end) and the curve their mean, as examples/ablation.py does for its ladder (whose
layout this does not need), with its references table (from the runs' summary.json). Diverged
runs are listed under the table, apart from it. --logdir gathers
the runs into one TensorBoard log dir, LOGDIR/<label>/seed<k>: a copy of each run's event files,
or for a run without any (written with --no-tensorboard, or before the example wrote them) its
metrics.csv as scalars.
"""
import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from rpgkit.results import mean_spread_cell, references_of_runs, split_line
from rpgkit.training import plot_curves
from rpgkit.training.tensorboard import EVENT_FILE_GLOB, open_tensorboard


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


def gather_tensorboard(logdir: Path, runs) -> None:
    """runs: (label, folder, summary) -> LOGDIR/<label>/seed<k> (seed<k>-2, ... for repeats)."""
    taken = set()
    for label, folder, summary in runs:
        name, repeat = f"seed{summary['config']['seed']}", 1
        while (label, name) in taken:
            repeat += 1
            name = f"seed{summary['config']['seed']}-{repeat}"
        taken.add((label, name))
        target = logdir / label / name
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob(EVENT_FILE_GLOB):  # an earlier gathering of this run
            old.unlink()
        events = sorted(folder.glob(EVENT_FILE_GLOB))
        for event_file in events:
            shutil.copy2(event_file, target / event_file.name)
        if not events:
            log = open_tensorboard(target, config=summary["config"])
            if log is None:
                raise SystemExit("error: --logdir needs the tensorboard package (pip install "
                                 "tensorboard)")
            with open(folder / "metrics.csv", newline="") as f:
                for row in csv.DictReader(f):
                    log.log_row({k: float(v) for k, v in row.items() if v != ""})
            log.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--output", required=True, help="the PNG of validation curves to write")
    parser.add_argument("--logdir", default=None,
                        help="also gather the runs here as one TensorBoard log dir, one run per "
                             "label and seed (LOGDIR/<label>/seed<k>)")
    args = parser.parse_args(argv)
    variants, diverged, folders = {}, [], []
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not label or not folder:
            raise SystemExit(f"error: expected LABEL=FOLDER, got {item!r}")
        summary, curve = load_run(Path(folder))
        if curve is None:
            diverged.append(f"{label} ({folder}): {summary.get('divergence') or 'diverged'}")
        else:
            variants.setdefault(label, []).append((summary, curve))
            folders.append((label, Path(folder), summary))
    print("| variant | seeds | val L1 (eval) | PSNR dB | Sobel-edge L1 | test L1 | test PSNR dB | "
          "batch | images |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, runs in variants.items():
        summaries = [s for s, _ in runs]
        batches = sorted({s["config"]["batch_size"] for s in summaries})
        print(f"| {label} | {len(runs)} | {mean_spread_cell([s['val_l1'] for s in summaries], 4)} | "
              f"{mean_spread_cell([s['val_psnr'] for s in summaries], 2)} | "
              f"{mean_spread_cell([s.get('val_edge_l1') for s in summaries], 4)} | "
              f"{mean_spread_cell([(s.get('test') or {}).get('l1') for s in summaries], 4)} | "
              f"{mean_spread_cell([(s.get('test') or {}).get('psnr') for s in summaries], 2)} | "
              f"{', '.join(map(str, batches))} | {summaries[0]['images']:,} |")
    finished = [s for runs in variants.values() for s, _ in runs]
    references = references_of_runs(finished)
    if references:
        print("\n" + "\n".join(split_line(finished) + references).rstrip())
    if diverged:
        print("\ndiverged (not in the table):\n" + "\n".join(f"- {line}" for line in diverged))
    plot_curves({label: [curve for _, curve in runs] for label, runs in variants.items()}, Path(args.output))
    print(f"curves: {args.output}")
    if args.logdir:
        gather_tensorboard(Path(args.logdir), folders)
        print(f"TensorBoard: tensorboard --logdir {args.logdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
