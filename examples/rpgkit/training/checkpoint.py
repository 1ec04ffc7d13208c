"""Checkpoints that survive a kill: atomic writes, a kept predecessor, every RNG's state.

`save_checkpoint(path, state)` writes `state` (a dict of tensors, numbers, strings, lists, dicts)
atomically (temporary file + os.replace + folder fsync), so `path` always holds the previous or
the new checkpoint, never a torn one. Before that, the checkpoint it replaces is kept as
`previous_checkpoint(path)` (checkpoint.prev.pt): if the newest one is later damaged (a disk
error, a copy cut short), the run can still go on from the one before.

`load_checkpoint(path)` unpickles with `weights_only=True` (no code runs from the file: only
tensors and plain containers load) and checks the format version; any problem raises
`CheckpointError` naming the file and what to do. `rng_states()` / `set_rng_states()` capture and
restore Python's, NumPy's and torch's global generators (CPU and every CUDA device) in plain
types, so a resumed run draws the same numbers.
"""
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rpgkit.training.atomic import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "previous_checkpoint",
           "rng_states", "save_checkpoint", "set_rng_states"]

# Version 2: weights_only-loadable (NumPy's RNG state as a tensor), "format_version" key.
CHECKPOINT_FORMAT = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def previous_checkpoint(path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path, state: dict) -> None:
    path = Path(path)
    if path.exists():
        _keep_previous(path)
    atomic_write(path, lambda f: torch.save({"format_version": CHECKPOINT_FORMAT, **state}, f))


def _keep_previous(path: Path) -> None:
    """checkpoint.pt -> checkpoint.prev.pt, with checkpoint.pt in place all along (a hard link
    renamed over the old predecessor; a copy where the file system has no hard links)."""
    previous = previous_checkpoint(path)
    if previous.exists() and os.path.samefile(path, previous):
        return  # kept already (a write that was cut short); renaming a link onto itself is a no-op
    staging = previous.with_name(previous.name + ".tmp")
    staging.unlink(missing_ok=True)
    try:
        os.link(path, staging)
    except OSError:
        shutil.copyfile(path, staging)
    os.replace(staging, previous)


def load_checkpoint(path) -> dict:
    """The state saved by save_checkpoint; CheckpointError if it is missing or unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt, or not written by fastinr: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"{_what_to_do(path)}") from err
    version = state.get("format_version") if isinstance(state, dict) else None
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, this fastinr reads version "
            f"{CHECKPOINT_FORMAT}: resume it with the fastinr that wrote it, or start a new run "
            "with another --output")
    return state


def _what_to_do(path: Path) -> str:
    previous = previous_checkpoint(path)
    if previous.is_file():
        return f"the checkpoint before it is {previous}: move it to {path} to resume from there"
    return "start a new run with another --output"


def rng_states() -> dict:
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss),
                  float(cached_gaussian)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss,
                         cached_gaussian))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
