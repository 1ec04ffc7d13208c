"""RPG tile dataset: cut PNG tile sheets into RGB tiles, cache them, split them.

``load_tiles(sources)`` -> float32 ``(N, 3, size, size)`` in ``[0, 1]`` (size 32):

* Sources: PNG sheets or folders of PNGs (recursive, sorted by relative path);
  ``"path"`` uses a 32 px grid, ``"path:16"`` a 16 px grid.  Images are cut on
  the grid row-major, ragged right/bottom remainders ignored (an image one cell
  big is one tile); for sources given by the caller a warning names the images
  with such remainders and those smaller than one cell (no tiles).  A file that is not a readable PNG is a
  ``ValueError`` naming it.  Cells of another grid are resized to ``size`` with
  nearest-neighbour (pixel centres; integer factors = exact pixel replication).
* ``PIL convert("RGBA")`` then premultiply: ``rgb * alpha`` computed in float64
  on ``[0, 1]`` and rounded to uint8 (ties to even); ``uint8 / 255`` is the
  float view.
* Zero-variance tiles (min == max over all values of all channels, e.g. fully
  transparent) are dropped, then exact duplicates (after premultiplication),
  keeping the first in source order, row-major within a sheet.  The default
  DCSS sheets (Debian ``crawl-tiles-data`` 0.28) give 6,656 cells, 67 constant
  and 53 duplicates, so 6,536 tiles.

Cache: the uint8 tensor is ``torch.save``-d in ``cache_dir`` (argument), else
``$FASTINR_CACHE_DIR/tiles``, else ``~/.cache/fastinr/tiles``, keyed by sha256 of
``FORMAT_VERSION``, ``size`` and each source file's grid and content sha256.
Written atomically (temp file + ``os.replace``); a bad cache file is rebuilt.

``split_tiles``: the seed's split. Index ``i % val_every == 0`` is a validation
candidate; the first ``val_limit`` (500) candidates are validation, later
candidates are in neither set (so training never depends on ``val_limit``); the
rest is training. The example's default splits by groups of near-copies instead
(``split.py``, which keeps this one as ``--split index``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

FORMAT_VERSION = 1
DEFAULT_GRID = 32
DEFAULT_SHEETS = ("floor", "wall", "feat", "main", "player", "gui", "icons")
KNOWN_TILE_DIRS = ("/usr/share/crawl/dat/tiles", "/usr/share/games/crawl/dat/tiles",
                   "/usr/local/share/crawl/dat/tiles")
MISSING_SHEETS_HINT = ("install them with `apt-get install crawl-tiles-data` (Debian/Ubuntu) "
                       "or pass `--tiles PATH...` to the example")

SourceSpec = str | os.PathLike


def _dpkg_tile_dirs() -> list[Path]:
    """Folders holding ``floor.png`` according to ``dpkg -L crawl-tiles-data``."""
    try:
        out = subprocess.run(["dpkg", "-L", "crawl-tiles-data"], capture_output=True,
                             text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line).parent for line in out.splitlines() if line.endswith("/floor.png")]


def default_tile_sheets(search_dirs: Iterable[SourceSpec] | None = None) -> list[Path]:
    """Paths of the DCSS sheets ``DEFAULT_SHEETS`` from the first folder holding all of them:
    ``search_dirs`` if given, else ``dpkg -L crawl-tiles-data`` then ``KNOWN_TILE_DIRS``.
    Raises ``FileNotFoundError`` with installation instructions if none does."""
    dirs = [Path(d) for d in search_dirs] if search_dirs is not None else (
        _dpkg_tile_dirs() + [Path(d) for d in KNOWN_TILE_DIRS])
    for d in dirs:
        sheets = [d / f"{name}.png" for name in DEFAULT_SHEETS]
        if all(p.is_file() for p in sheets):
            return sheets
    names = ", ".join(f"{n}.png" for n in DEFAULT_SHEETS)
    looked = ", ".join(str(d) for d in dict.fromkeys(dirs)) or "nowhere"
    raise FileNotFoundError(f"Dungeon Crawl Stone Soup tile sheets ({names}) not found "
                            f"(looked in {looked}); {MISSING_SHEETS_HINT}.")


def parse_source(spec: SourceSpec) -> tuple[Path, int]:
    """Split ``"path"`` / ``"path:16"`` into ``(Path, grid)``; a path that exists
    as written is taken literally (so names containing ``:`` still work)."""
    text = os.fspath(spec)
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and head and not Path(text).exists():
        grid = int(tail)
        if grid < 1:
            raise ValueError(f"tile grid must be >= 1 in source spec {text!r}")
        return Path(head), grid
    return Path(text), DEFAULT_GRID


def expand_sources(sources: Sequence[SourceSpec]) -> list[tuple[Path, int]]:
    """Ordered ``(png_file, grid)`` list; folders give their ``*.png`` (any case, recursive)
    sorted by relative POSIX path, so the order does not depend on the file system."""
    files: list[tuple[Path, int]] = []
    for spec in sources:
        path, grid = parse_source(spec)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.suffix.lower() == ".png" and p.is_file()]
            if not found:
                raise FileNotFoundError(f"no PNG files in tile folder {path}")
            found.sort(key=lambda p: p.relative_to(path).as_posix())
            files.extend((p, grid) for p in found)
        elif path.is_file():
            files.append((path, grid))
        else:
            raise FileNotFoundError(f"tile source not found: {path}")
    return files


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read tile sheet {path}: {err}") from err


def _nearest_index(n_out: int, n_in: int) -> np.ndarray:
    """Source pixel for each output pixel, sampling at pixel centres."""
    return np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)


def cut_sheet(data: bytes, grid: int = DEFAULT_GRID, size: int = DEFAULT_GRID,
              name: str = "<bytes>") -> np.ndarray:
    """Decode PNG ``data`` into premultiplied uint8 tiles ``(n, 3, size, size)``, row-major,
    ragged edges ignored; ``ValueError`` naming ``name`` if it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgba = np.asarray(im.convert("RGBA"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise ValueError(f"cannot read tile sheet {name}: {err}") from err
    rows, cols = rgba.shape[0] // grid, rgba.shape[1] // grid
    if rows == 0 or cols == 0:
        return np.zeros((0, 3, size, size), np.uint8)
    f = rgba[: rows * grid, : cols * grid].astype(np.float64) / 255.0
    rgb = np.rint(f[..., :3] * f[..., 3:] * 255.0).astype(np.uint8)
    tiles = rgb.reshape(rows, grid, cols, grid, 3).transpose(0, 2, 4, 1, 3)
    tiles = tiles.reshape(rows * cols, 3, grid, grid)
    if grid != size:
        idx = _nearest_index(size, grid)
        tiles = tiles[:, :, idx[:, None], idx[None, :]]
    return np.ascontiguousarray(tiles)


def filter_tiles(tiles: np.ndarray) -> np.ndarray:
    """Drop zero-variance tiles, then exact duplicates (first occurrence kept)."""
    if len(tiles) == 0:  # (reshape cannot infer -1 from zero elements)
        return tiles
    flat = tiles.reshape(len(tiles), -1)
    varied = flat.min(axis=1) != flat.max(axis=1)
    first: dict[bytes, int] = {}
    for i in np.flatnonzero(varied):
        first.setdefault(flat[i].tobytes(), int(i))
    return tiles[np.fromiter(first.values(), dtype=np.int64, count=len(first))]


def _png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header (its first 24 bytes); None if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def grid_mismatches(files: Sequence[tuple[Path, int]]) -> list[str]:
    """One line for each PNG whose size is not a multiple of its grid (read from its header, so a
    cache hit decodes nothing): what of it is ignored. A file that is not a PNG is left to the
    decoder, which names it if it cannot read it."""
    notes = []
    for path, grid in files:
        size = _png_size(path)
        if size is None:
            continue
        width, height = size
        if width < grid or height < grid:
            notes.append(f"{path} ({width}x{height} px) is smaller than one {grid} px cell: "
                         "no tiles")
        elif width % grid or height % grid:
            notes.append(f"{path} ({width}x{height} px): the right {width % grid} px and bottom "
                         f"{height % grid} px are not whole {grid} px cells and are ignored")
    return notes


def _warn_grid_mismatches(files: Sequence[tuple[Path, int]]) -> None:
    notes = grid_mismatches(files)
    if notes:
        shown = notes[:5] + ([f"... and {len(notes) - 5} more"] if len(notes) > 5 else [])
        warnings.warn(f"{len(notes)} of {len(files)} tile images do not fit their grid:\n  "
                      + "\n  ".join(shown), stacklevel=3)


def build_tiles(files: Sequence[tuple[Path, int]], size: int = DEFAULT_GRID) -> torch.Tensor:
    """Cut, filter and deduplicate ``files`` (no cache): uint8 ``(N, 3, size, size)``."""
    parts = [cut_sheet(_read_bytes(path), grid, size, name=str(path)) for path, grid in files]
    tiles = np.concatenate(parts) if parts else np.zeros((0, 3, size, size), np.uint8)
    return torch.from_numpy(filter_tiles(tiles))


def default_cache_dir() -> Path:
    """``$FASTINR_CACHE_DIR/tiles`` if the variable is set, else ``~/.cache/fastinr/tiles``."""
    root = os.environ.get("FASTINR_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "fastinr") / "tiles"


def cache_key(files: Sequence[tuple[Path, int]], size: int = DEFAULT_GRID) -> str:
    """sha256 over format version, output size and each file's grid and content hash."""
    h = hashlib.sha256(f"fastinr-tiles-v{FORMAT_VERSION};size={size}".encode())
    for path, grid in files:
        digest = hashlib.sha256(_read_bytes(path)).hexdigest()
        h.update(f";grid={grid};sha256={digest}".encode())
    return h.hexdigest()


def read_cached(path: Path, key: str) -> dict | None:
    """The dict saved by `save_atomic(path, key, ...)`, or None if it is missing, unreadable or
    of another format version or key (the caller then rebuilds it)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated, garbage: rebuild
        return None
    if not isinstance(obj, dict) or obj.get("version") != FORMAT_VERSION or obj.get("key") != key:
        return None
    return obj


def _read_cache(path: Path, key: str, size: int) -> torch.Tensor | None:
    obj = read_cached(path, key)
    tiles = None if obj is None else obj.get("tiles")
    ok = (isinstance(tiles, torch.Tensor) and tiles.dtype == torch.uint8
          and tiles.dim() == 4 and tuple(tiles.shape[1:]) == (3, size, size) and len(tiles) > 0)
    return tiles.contiguous() if ok else None


def save_atomic(path: Path, key: str, payload: dict) -> None:
    """torch.save {version, key, **payload} to `path` atomically (temp file + os.replace); a
    failure to write is a warning (the cache is an optimisation)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save({"version": FORMAT_VERSION, "key": key, **payload}, f)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(f"could not write cache file {path}: {err}", stacklevel=3)
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load_tiles_uint8(sources: Sequence[SourceSpec] | None = None,
                     cache_dir: SourceSpec | None = None, size: int = DEFAULT_GRID,
                     use_cache: bool = True) -> torch.Tensor:
    """Like :func:`load_tiles` but returns the cached uint8 tensor ``(N, 3, size, size)``."""
    given = sources is not None  # the DCSS sheets' remainders are known (module docstring)
    if sources is None:
        sources = default_tile_sheets()
    elif isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if len(sources) == 0:
        raise ValueError("no tile sources given")
    files = expand_sources(sources)
    if given:
        _warn_grid_mismatches(files)
    if not use_cache:
        tiles = build_tiles(files, size)
    else:
        key = cache_key(files, size)
        path = Path(cache_dir or default_cache_dir()) / f"tiles-{size}-{key[:32]}.pt"
        tiles = _read_cache(path, key, size)
        if tiles is None:
            tiles = build_tiles(files, size)
            if len(tiles):
                save_atomic(path, key, {"tiles": tiles})
    if len(tiles) == 0:
        raise ValueError(f"no usable (non-constant) tiles in {[str(p) for p, _ in files]}")
    return tiles


def load_tiles(sources: Sequence[SourceSpec] | None = None,
               cache_dir: SourceSpec | None = None, size: int = DEFAULT_GRID,
               use_cache: bool = True) -> torch.Tensor:
    """Tiles from ``sources`` (default: DCSS sheets) as float32 ``(N, 3, size, size)`` in [0, 1]."""
    return load_tiles_uint8(sources, cache_dir, size, use_cache).float().div_(255.0)


def split_tiles(tiles: torch.Tensor, val_every: int = 10,
                val_limit: int | None = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic ``(train, val)`` split along dim 0.

    Index ``i`` is a validation candidate iff ``i % val_every == 0``; the first
    ``val_limit`` candidates (all if ``None``) form ``val``.  Candidates beyond
    the limit are left out of both sets; every other index is training.
    """
    if val_every < 1:
        raise ValueError(f"val_every must be >= 1, got {val_every}")
    if val_limit is not None and val_limit < 0:
        raise ValueError(f"val_limit must be >= 0 or None, got {val_limit}")
    idx = torch.arange(len(tiles), device=tiles.device)
    is_candidate = idx % val_every == 0
    val_idx = idx[is_candidate][:val_limit]
    return tiles[idx[~is_candidate]], tiles[val_idx]
