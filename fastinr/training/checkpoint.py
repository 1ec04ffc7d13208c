"""Checkpoints that survive a kill: atomic writes and every random number generator's state.

`save_checkpoint(path, state)` writes `state` (any torch.save-able dict) atomically (temporary
file + os.replace), so `path` always holds the previous or the new checkpoint, never a torn one.
`rng_states()` / `set_rng_states()` capture and restore Python's, NumPy's and torch's global
generators (CPU and every CUDA device) so a resumed run draws the same numbers.
"""
import random
from pathlib import Path

import numpy as np
import torch

from fastinr.training.atomic import atomic_write

__all__ = ["load_checkpoint", "rng_states", "save_checkpoint", "set_rng_states"]


def save_checkpoint(path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path) -> dict:
    """The state saved by save_checkpoint; a clear error if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        # Our own file, holding NumPy and Python RNG states: not loadable with weights_only.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err


def rng_states() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
