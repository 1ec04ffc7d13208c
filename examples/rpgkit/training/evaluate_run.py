"""`rpg_autoencoder.py --output RUN --evaluate [--tiles PATH ...]`: score a run without training.

The run's model comes from RUN/checkpoint.pt with its saved settings. The tiles scored are every
tile of the sheets and folders of --tiles (all of them test tiles), or without --tiles the run's
own test part (its --split of its tiles). Next to the model: the references of references.py,
fitted on the run's training part. The codes are refined as the run's --refine-steps and
--refine-lr say (both may be given here). A table goes to stdout and RUN/evaluation.json gets
{"tiles": {"count", "sources", "split"}, "l1", "psnr", "edge_l1", "refine_steps", "refine_lr",
"references": {name: {"l1", "psnr", "edge_l1"}}, "run": {"images", "status"}}.
"""
import hashlib
from pathlib import Path

from rpgkit.config import check_refinement, precision_of, resolve_device, saved_config
from rpgkit.data import load_tiles_uint8, split_indices
from rpgkit.models import build_autoencoder
from rpgkit.training.atomic import write_json
from rpgkit.training.checkpoint import CheckpointError, load_checkpoint
from rpgkit.training.evaluation import evaluate
from rpgkit.training.references import reference_scores

# What --evaluate reads from the command line; the run's own settings come from its checkpoint.
EVALUATE_KEYS = {"evaluate", "output", "tiles", "device", "backend", "quiet", "refine_steps",
                 "refine_lr"}


def load_run(parser, folder: Path):
    """(checkpoint, config) of the run in `folder`; parser.error naming the flag otherwise."""
    if not folder.is_dir():
        parser.error(f"--output {folder}: no such folder (--evaluate scores a finished run of "
                     "this example: pass its --output)")
    path = folder / "checkpoint.pt"
    if not path.is_file():
        parser.error(f"--output {folder}: no checkpoint.pt in it (--evaluate needs a run of this "
                     "example that reached its first checkpoint)")
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:
        parser.error(f"--evaluate: {err}")
    return checkpoint, saved_config(checkpoint)


def evaluate_run(parser, args, given: set) -> int:
    extra = sorted(given - EVALUATE_KEYS)
    if extra:
        parser.error("--evaluate scores the saved run with its own settings; these flags do not "
                     "apply: " + ", ".join(f"--{k.replace('_', '-')}" for k in extra))
    folder = Path(args.output)
    checkpoint, cfg = load_run(parser, folder)
    cfg.update({key: getattr(args, key) for key in ("backend", "refine_steps", "refine_lr")
                if key in given})
    check_refinement(cfg, parser)
    cfg["encoder_weights"] = "none"   # the checkpoint holds the weights; nothing to download
    device = resolve_device(args.device, 0)
    try:
        run_tiles = load_tiles_uint8(cfg["tiles"])
    except (FileNotFoundError, ValueError) as err:
        parser.error(f"--evaluate: the run's own tiles do not load here ({err})")
    if hashlib.sha256(run_tiles.numpy().tobytes()).hexdigest() != checkpoint["data_fingerprint"]:
        parser.error(f"--evaluate: the tiles {cfg['tiles'] or 'of the DCSS sheets'} differ from "
                     "the ones the run trained on, so its training part cannot be rebuilt")
    split = split_indices(run_tiles, cfg["split"])
    if args.tiles:
        try:
            tiles = load_tiles_uint8(args.tiles)
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--tiles: {err}")
        where = {"count": len(tiles), "sources": list(args.tiles), "split": None}
        said = f"{len(tiles)} tiles of {', '.join(args.tiles)}"
    else:
        tiles = run_tiles[split.test]
        if not len(tiles):
            parser.error(f"--evaluate: the run's {cfg['split']} split has no test tiles (the "
                         "index split has some only from 5,000 tiles on); pass --tiles")
        where = {"count": len(tiles), "sources": cfg["tiles"], "split": cfg["split"]}
        said = f"the run's {len(tiles)} test tiles ({cfg['split']} split)"
    model = build_autoencoder(cfg)
    model.load_state_dict(checkpoint["model"])
    model.to(device).eval()
    scored = evaluate(model, tiles.to(device), precision=precision_of(cfg, device),
                      refine_steps=cfg["refine_steps"], refine_lr=cfg["refine_lr"])
    references = reference_scores(run_tiles[split.train], tiles, cfg["code_size"])
    finished = checkpoint["step"] >= -(-cfg["max_inputs"] // cfg["batch_size"])
    result = {"tiles": where, "l1": scored["val_l1"], "psnr": scored["val_psnr"],
              "edge_l1": scored["val_edge_l1"], "refine_steps": cfg["refine_steps"],
              "refine_lr": cfg["refine_lr"], "references": references,
              "run": {"images": checkpoint["step"] * cfg["batch_size"],
                      "status": "finished" if finished else "unfinished"}}
    print(f"{folder} after {result['run']['images']:,} training images"
          f"{'' if result['run']['status'] == 'finished' else ' (unfinished)'}, on {said}:")
    print("| | L1 | PSNR dB | Sobel-edge L1 |\n|---|---|---|---|")
    model_name = (f"model, codes refined by {cfg['refine_steps']} steps" if cfg["refine_steps"]
                  else "model")
    for name, row in [(model_name, result), *references.items()]:
        print(f"| {name} | {row['l1']:.4f} | {row['psnr']:.2f} | {row['edge_l1']:.4f} |")
    write_json(folder / "evaluation.json", result)
    print(f"evaluation: {folder / 'evaluation.json'}")
    return 0

