#!/usr/bin/env python
"""The sharper-decoder ablation ladder: every variant for N seeds at one budget, then a table.

    python examples/ablation.py --output runs/ablation --seeds 2 --hidden 128 --max-inputs 100000
    python examples/ablation.py --output runs/ablation --seeds 2 --hidden 256 --max-inputs 1000000
    python examples/ablation.py --output runs/ablation --aggregate-only   # table and curves only

Each run is examples/rpg_autoencoder.py in a subprocess, in OUTPUT/<variant>/seed<k>: a finished
run (summary.json says so) is skipped, a stopped one is resumed, so rerunning the same command
continues the campaign (`tensorboard --logdir OUTPUT` shows it: one run per variant and seed,
from the event files each run writes). Arguments after `--` go to every run unchanged (e.g.
`-- --tiles x.png --device cpu`). All runs share the code size (102 floats), validation tiles,
augmentation and schedule. The ladder (each rung adds to the previous unless it says otherwise):

    seed            the seed exactly: sigmoid output, per-image BatchNorm (--preset seed)
    seed-linear     + linear output
    baseline        + no BatchNorm (--preset baseline)
    instance        per-image statistics in training AND evaluation (INRDecoder norm instance)
    film            instance + FiLM conditioning
    grid            instance + 4x4x6 local grid (+ 6 global floats), made by the encoder's pooled
                    grid head
    grid-linear     the same grid, made by the seed's encoder unchanged (its Linear's 102 outputs
                    are read as grid and global code)
    film-grid       instance + FiLM + grid (pooled head)
    grid-area       grid-linear with LIIF's local ensemble (--grid-blend area): the MLP once per
                    cell around each pixel, the 4 colors blended by area (4x the decoder's work,
                    so it is not a base of the sweep)
    <best>-log, <best>-gaussian   the embedding sweep on the best INR rung by validation L1
    conv            the ConvDecoder baseline
    sharp           --preset sharp: the best recipe found so far and the example's default
                    (instance statistics, log-spaced frequencies, the linear-head grid, batch 16,
                    sub-pixel training, refinement of the held-out codes: its test L1 is after
                    the refinement, its validation curve before), so the campaign measures the
                    preset it documents
    sharp-centres   the same trained at the pixel centres only (--no-subpixel): the same L1 at
                    32x32, lattice artifacts in renders above it (examples/render_check.py
                    scores those renders)

Aggregation writes OUTPUT/results.md (validation L1 in eval mode, PSNR, Sobel-edge L1, the test
L1 and PSNR scored once at the end of each run, decoder MACs per pixel, training images/s: mean ±
standard deviation over the seeds; and for the variants with per-image BatchNorm (seed,
seed-linear) the validation L1 with it in training vs eval mode; and the references on the
validation and test tiles: each tile's mean color, PCA with the code size, the nearest training
tile),
OUTPUT/curves.png (validation
L1 against training images, every variant, mean over seeds) and OUTPUT/best_vs_seed.png (the
reconstruction and 4x-render grids of the best variant and the seed config side by side).
"""
import argparse
import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

from rpgkit.results import (mean_spread, mean_spread_cell, references_of_runs,
                            references_table, split_line)
from rpgkit.training import EXIT_DIVERGED, plot_curves

EXAMPLE = Path(__file__).resolve().parent / "rpg_autoencoder.py"
# The INR rungs and conv build on the baseline's recipe (batch 64, Adam 1e-3), not on the
# example's default preset (sharp).
INR_INSTANCE = ["--preset", "baseline", "--decoder", "inr", "--norm", "instance",
                "--inr-output", "linear"]
GRID = ["--grid-size", "4", "--grid-channels", "6"]
LADDER = [
    ("seed", ["--preset", "seed"]),
    ("seed-linear", ["--preset", "seed", "--activation-out", "none"]),
    ("baseline", ["--preset", "baseline"]),
    ("instance", INR_INSTANCE),
    ("film", INR_INSTANCE + ["--conditioning", "film"]),
    ("grid", INR_INSTANCE + GRID),
    ("grid-linear", INR_INSTANCE + GRID + ["--grid-head", "linear"]),
    ("film-grid", INR_INSTANCE + ["--conditioning", "film"] + GRID),
    ("grid-area", INR_INSTANCE + GRID + ["--grid-head", "linear", "--grid-blend", "area"]),
]
# The embedding sweep is run on the best of these (they have an INRDecoder).
SWEEP_BASES = ("instance", "film", "grid", "grid-linear", "film-grid")
EMBEDDINGS = [("log", ["--embedding", "log", "--num-freqs", "6"]),
              ("gaussian", ["--embedding", "gaussian", "--num-freqs", "16", "--sigma", "10"])]
CONV = ("conv", ["--preset", "baseline", "--decoder", "conv"])
SHARP = ("sharp", ["--preset", "sharp"])
SHARP_CENTRES = ("sharp-centres", ["--preset", "sharp", "--no-subpixel"])


def run_dir(root: Path, name: str, seed: int) -> Path:
    return root / name / f"seed{seed}"


def read_summary(folder: Path):
    path = folder / "summary.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:  # written atomically, so only a foreign file gets here
        return None


def is_done(folder: Path) -> bool:
    """Finished, or diverged (rerunning a diverged run would diverge again: it is deterministic)."""
    summary = read_summary(folder)
    return summary is not None and summary.get("status") in ("finished", "diverged")


def run_command(folder: Path, variant_args, seed: int, common) -> list:
    """The example's command line for one run: resume it if it has a checkpoint."""
    if (folder / "checkpoint.pt").exists():
        return [sys.executable, str(EXAMPLE), "--output", str(folder), "--resume", "--quiet"]
    return ([sys.executable, str(EXAMPLE), "--output", str(folder), "--seed", str(seed)]
            + list(variant_args) + list(common) + ["--quiet"])


def run_variant(root: Path, name: str, variant_args, seeds, common, dry_run=False) -> None:
    for seed in seeds:
        folder = run_dir(root, name, seed)
        if is_done(folder):
            print(f"[skip] {name} seed {seed}: {read_summary(folder)['status']}", flush=True)
            continue
        cmd = run_command(folder, variant_args, seed, common)
        print(f"[run] {name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
        if dry_run:
            continue
        proc = subprocess.run(cmd)
        if proc.returncode == EXIT_DIVERGED:  # said by the run; listed apart in results.md
            print(f"[diverged] {name} seed {seed}: see {folder / 'summary.json'}", flush=True)
        elif proc.returncode != 0:
            raise SystemExit(f"error: {name} seed {seed} exited with {proc.returncode}; its "
                             f"output is in {folder} (rerun this command to resume it)")


def variant_runs(root: Path, name: str):
    """Summaries and metrics rows of the finished runs of a variant, by seed folder."""
    runs = []
    for folder in sorted((root / name).glob("seed*")):
        summary = read_summary(folder)
        if summary is None or summary.get("status") != "finished":
            continue
        with open(folder / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        runs.append((folder, summary, rows))
    return runs


def diverged_runs(root: Path, names):
    """(folder, what went non-finite) of every diverged run of the variants `names`."""
    found = []
    for name in names:
        for folder in sorted((root / name).glob("seed*")):
            summary = read_summary(folder)
            if summary is not None and summary.get("status") == "diverged":
                found.append((folder, summary.get("divergence") or "diverged"))
    return found


def best_variant(root: Path, names):
    """The name among `names` with the lowest mean validation L1 (None if none finished)."""
    scored = []
    for name in names:
        mean, _ = mean_spread([s["val_l1"] for _, s, _ in variant_runs(root, name)])
        if mean is not None:
            scored.append((mean, name))
    return min(scored)[1] if scored else None


def computed_references(common) -> dict:
    """{"val": ..., "test": ...} references (rpgkit.training.references) for the tiles and split
    that `common` (the arguments of every run) names; raises if those tiles do not load here."""
    from rpgkit.data import load_tiles_uint8, split_indices
    from rpgkit.training.references import cached_pca, reference_scores
    tiles_args, code_size, split = None, 102, "groups"
    for k, arg in enumerate(common):
        if arg == "--tiles":
            tiles_args = [a for a in itertools.takewhile(lambda a: not a.startswith("--"), common[k + 1:])]
        elif arg == "--code-size" and k + 1 < len(common):
            code_size = int(common[k + 1])
        elif arg == "--split" and k + 1 < len(common):
            split = common[k + 1]
    tiles = load_tiles_uint8(tiles_args)
    train, val, test = (tiles[part] for part in split_indices(tiles, split))
    pca = cached_pca(train, code_size)
    return {"val": reference_scores(train, val, code_size, pca),
            "test": reference_scores(train, test, code_size, pca) if len(test) else None}


def references_text(summaries, common) -> list:
    """The references table (validation and test tiles): from the runs' summary.json, else
    computed for the tiles and split of `common`; a note when neither is possible."""
    from_runs = references_of_runs(summaries)
    if from_runs:
        return from_runs
    try:
        return references_table(computed_references(common))
    except (FileNotFoundError, ValueError) as err:
        return [f"(References skipped: the tiles do not load here: {err})", ""]


def aggregate(root: Path, names, common=()) -> str:
    """Write results.md, curves.png (and best_vs_seed.png when both exist); return the table."""
    root = Path(root)
    lines = ["| variant | seeds | val L1 (eval) | PSNR dB | Sobel-edge L1 | test L1 | test PSNR dB "
             "| decoder MACs/px | train images/s |", "|---|---|---|---|---|---|---|---|---|"]
    curves = {}
    for name in names:
        runs = variant_runs(root, name)
        if not runs:
            continue
        summaries = [s for _, s, _ in runs]
        macs = summaries[0].get("decoder_macs_per_pixel")
        refined = (summaries[0].get("test") or {}).get("refine_steps")
        label = f"{name} (test: codes refined {refined} steps)" if refined else name
        lines.append(
            f"| {label} | {len(runs)} | {mean_spread_cell([s['val_l1'] for s in summaries], 4)} | "
            f"{mean_spread_cell([s['val_psnr'] for s in summaries], 2)} | "
            f"{mean_spread_cell([s.get('val_edge_l1') for s in summaries], 4)} | "
            f"{mean_spread_cell([(s.get('test') or {}).get('l1') for s in summaries], 4)} | "
            f"{mean_spread_cell([(s.get('test') or {}).get('psnr') for s in summaries], 2)} | "
            f"{'-' if macs is None else f'{macs:,.0f}'} | "
            f"{mean_spread_cell([s.get('images_per_second') for s in summaries], 1)} |")
        curves[name] = [[(int(r["images"]), float(r["val_l1"])) for r in rows if r["val_l1"]]
                        for _, _, rows in runs]
    summaries = [s for n in names for _, s, _ in variant_runs(root, n)]
    budgets = sorted({s["images"] for s in summaries})
    text = [f"Budget: {', '.join(f'{b:,}' for b in budgets) or '-'} training images per run; "
            "mean ± standard deviation over seeds.", "", *split_line(summaries), *lines, "",
            *references_text(summaries, list(common))]
    # The per-image BatchNorm hypothesis, on every variant that has it (seed, seed-linear).
    for name in names:
        runs = variant_runs(root, name)
        bn_train = [s.get("val_l1_bn_train_mode") for _, s, _ in runs]
        if runs and all(v is not None for v in bn_train):
            bn_eval = mean_spread_cell([s["val_l1"] for _, s, _ in runs], 4)
            text += [f"{name} (per-image BatchNorm), validation L1 on the same final weights: "
                     f"eval mode (running statistics) {bn_eval}, training mode (each image's "
                     f"own statistics) {mean_spread_cell(bn_train, 4)}.", ""]
    diverged = diverged_runs(root, names)
    if diverged:
        text += ["Diverged runs (not in the table above): "
                 + "; ".join(f"{folder.parent.name} {folder.name}: {message}"
                             for folder, message in diverged) + ".", ""]
    seed_runs = variant_runs(root, "seed")
    collapsed = [n for n in names for _, s, _ in variant_runs(root, n) if s.get("collapsed")]
    if collapsed:
        text += ["Collapsed runs (reconstructions independent of the input): "
                 + ", ".join(sorted(set(collapsed))) + ".", ""]
    table = "\n".join(text)
    (root / "results.md").write_text(table)
    if curves:
        plot_curves(curves, root / "curves.png")
    best = best_variant(root, [n for n in names if n != "seed"])
    if best and seed_runs:
        side_by_side(variant_runs(root, best)[0][0] / "reconstructions.png", best,
                     seed_runs[0][0] / "reconstructions.png", "seed", root / "best_vs_seed.png")
    return table


def side_by_side(left: Path, left_name: str, right: Path, right_name: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    images = [plt.imread(str(p)) for p in (left, right)]
    fig, axes = plt.subplots(1, 2, figsize=(14, 8))
    for ax, image, name in zip(axes, images, (left_name, right_name)):
        ax.imshow(image)
        ax.set_title(name)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output", default="runs/ablation", help="campaign folder")
    p.add_argument("--seeds", type=int, default=2, help="seeds per variant (0, 1, ...)")
    p.add_argument("--hidden", type=int, default=128, help="decoder width of every run")
    p.add_argument("--max-inputs", type=int, default=100_000, help="training images per run")
    p.add_argument("--only", default=None,
                   help="comma-separated variant names to run (default: the whole ladder)")
    p.add_argument("--aggregate-only", action="store_true", help="no runs: table and plots")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("common", nargs=argparse.REMAINDER,
                   help="after --: arguments for every run of the example")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1 or args.hidden < 1 or args.max_inputs < 1:
        raise SystemExit("error: --seeds, --hidden and --max-inputs must be >= 1")
    common = [a for a in args.common if a != "--"] if args.common else []
    common = ["--hidden", str(args.hidden), "--max-inputs", str(args.max_inputs)] + common
    root = Path(args.output)
    root.mkdir(parents=True, exist_ok=True)
    seeds = range(args.seeds)
    ladder = LADDER + [CONV, SHARP, SHARP_CENTRES]
    known = [n for n, _ in ladder] + [f"{b}-{e}" for b in SWEEP_BASES for e, _ in EMBEDDINGS]
    only = None if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    if only is not None and set(only) - set(known):
        raise SystemExit(f"error: --only: unknown variants {sorted(set(only) - set(known))}; "
                         f"known: {', '.join(known)}")
    if not args.aggregate_only:
        for name, variant in ladder:
            if only is None or name in only:
                run_variant(root, name, variant, seeds, common, args.dry_run)
        best = best_variant(root, SWEEP_BASES)
        for base, variant in LADDER:
            if base != best:
                continue
            for emb, emb_args in EMBEDDINGS:
                name = f"{base}-{emb}"
                if only is None or name in only:
                    run_variant(root, name, variant + emb_args, seeds, common, args.dry_run)
    names = [n for n in known if (root / n).is_dir()]
    print(aggregate(root, names, common))
    return 0


if __name__ == "__main__":
    sys.exit(main())
