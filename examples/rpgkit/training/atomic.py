"""Atomic file writes: a reader (or a kill at any moment) sees the old file or the new one.

The data goes to a temporary file in the target's folder, is flushed to disk, and is renamed over
the target with os.replace (atomic on POSIX and Windows); the folder is then flushed too, so the
rename itself survives a power loss. `write_json` writes strict JSON (no NaN or Infinity, which
no JSON parser but Python's accepts): non-finite floats become null.
"""
import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Callable

__all__ = ["atomic_write", "fsync_folder", "json_safe", "remove_temporaries", "write_json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Call write(file) on a temporary file, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_folder(path.parent)


def remove_temporaries(folder) -> list:
    """Delete the temporary files (`*.tmp`) a killed writer left in `folder`; their names."""
    removed = []
    for tmp in sorted(Path(folder).glob("*.tmp")):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp.name)
    return removed


def fsync_folder(folder) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders can't be
    opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_safe(value):
    """`value` with every non-finite float (NaN, +-inf) replaced by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path, value) -> None:
    """Write `value` as indented strict JSON, atomically."""
    text = json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")
