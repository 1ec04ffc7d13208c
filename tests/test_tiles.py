"""Tests for rpgkit.data: tile sheet cutting, filtering, cache, split and augmentation."""
import os
import re

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F

import rpgkit.data as data
import rpgkit.data.tiles as tiles_mod
from rpgkit.data import (augment_batch, default_tile_sheets, epoch_permutation, load_tiles,
                          load_tiles_uint8, split_tiles, stream_indices)


def random_cells(n, grid, seed, alpha=255):
    """``n`` distinct random RGBA cells ``(grid, grid, 4)`` uint8 with constant alpha."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (n, grid, grid, 4), dtype=np.uint8)
    cells[..., 3] = alpha
    return list(cells)


def write_sheet(path, cells, cols, width=None, height=None, fill=None):
    """Place ``cells`` row-major on a sheet; extra area is ``fill`` (default transparent)."""
    grid = cells[0].shape[0]
    rows = -(-len(cells) // cols)
    width = width or cols * grid
    height = height or rows * grid
    sheet = np.zeros((height, width, 4), np.uint8) if fill is None else fill
    for i, cell in enumerate(cells):
        r, c = divmod(i, cols)
        sheet[r * grid:(r + 1) * grid, c * grid:(c + 1) * grid] = cell
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(sheet, "RGBA").save(path)
    return path


def as_chw(cell):
    """Opaque RGBA cell (H, W, 4) -> uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(cell[..., :3].transpose(2, 0, 1)))


@pytest.mark.parametrize("grid", [8, 16, 32])
def test_grid_sizes_resized_nearest(tmp_path, grid):
    cells = random_cells(6, grid, seed=grid)
    sheet = write_sheet(tmp_path / "s.png", cells, cols=3)
    out = load_tiles_uint8([f"{sheet}:{grid}"], cache_dir=tmp_path / "cache")
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.uint8
    k = 32 // grid
    for tile, cell in zip(out, cells):
        expected = as_chw(cell).repeat_interleave(k, 1).repeat_interleave(k, 2)
        assert torch.equal(tile, expected)


def test_parse_source(tmp_path):
    assert data.parse_source("a/b.png") == (tiles_mod.Path("a/b.png"), 32)
    assert data.parse_source("a/b.png:16") == (tiles_mod.Path("a/b.png"), 16)
    odd = tmp_path / "x.png:8"
    odd.write_bytes(b"")
    assert data.parse_source(str(odd)) == (odd, 32)  # existing path is taken literally
    with pytest.raises(ValueError):
        data.parse_source("a.png:0")


def test_rgba_premultiplied(tmp_path):
    cell = np.zeros((32, 32, 4), np.uint8)
    cell[:16] = (200, 100, 50, 128)
    cell[16:] = (10, 20, 30, 255)
    cell[0, 0] = (255, 255, 255, 0)
    sheet = write_sheet(tmp_path / "s.png", [cell], cols=1)
    out = load_tiles([sheet], cache_dir=tmp_path / "cache")
    assert out.dtype == torch.float32 and out.shape == (1, 3, 32, 32)
    exp_half = torch.tensor([round(v * 128 / 255) for v in (200, 100, 50)]) / 255
    assert torch.allclose(out[0, :, 5, 5], exp_half.float(), atol=1e-7)
    assert torch.allclose(out[0, :, 20, 5], torch.tensor([10.0, 20.0, 30.0]) / 255, atol=1e-7)
    assert torch.equal(out[0, :, 0, 0], torch.zeros(3))


def test_grey_and_palette_modes(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    PIL.Image.fromarray(grey, "L").save(tmp_path / "a_grey.png")
    la = np.stack([grey, np.full_like(grey, 51)], -1)
    PIL.Image.fromarray(la, "LA").save(tmp_path / "b_la.png")
    pal = PIL.Image.fromarray(rng.integers(0, 4, (32, 32), dtype=np.uint8), "P")
    pal.putpalette([9, 9, 9, 200, 10, 20, 30, 250, 40, 0, 0, 255])
    pal.save(tmp_path / "c_pal.png", transparency=0)  # index 0 fully transparent
    out = load_tiles_uint8([tmp_path], use_cache=False)
    assert len(out) == 3
    assert torch.equal(out[0], torch.from_numpy(grey).expand(3, 32, 32))
    # Premultiplied in float64: grey * 51 in uint8 would wrap around.
    expected_la = np.rint(grey.astype(np.float64) * 51 / 255.0).astype(np.uint8)
    assert torch.equal(out[1], torch.from_numpy(expected_la).expand(3, 32, 32))
    colours = torch.tensor([[0, 0, 0], [200, 10, 20], [30, 250, 40], [0, 0, 255]],
                           dtype=torch.uint8)
    expected = colours[torch.from_numpy(np.asarray(pal).astype(np.int64))].permute(2, 0, 1)
    assert torch.equal(out[2], expected)


def test_ragged_sheet_edges_ignored(tmp_path):
    cells = random_cells(6, 32, seed=3)
    fill = np.random.default_rng(4).integers(0, 256, (2 * 32 + 5, 3 * 32 + 13, 4), dtype=np.uint8)
    sheet = write_sheet(tmp_path / "s.png", cells, cols=3, fill=fill)
    with pytest.warns(UserWarning, match="s.png .*the right 13 px and bottom 5 px"):
        out = load_tiles_uint8([sheet], cache_dir=tmp_path / "cache")
    assert out.shape == (6, 3, 32, 32)
    for tile, cell in zip(out, cells):
        assert torch.equal(tile, as_chw(cell))


def test_constant_and_transparent_tiles_dropped(tmp_path):
    a, b = random_cells(2, 32, seed=5)
    transparent = np.random.default_rng(6).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    transparent[..., 3] = 0  # colour under alpha 0 premultiplies to black
    grey = np.full((32, 32, 4), 77, np.uint8)
    grey[..., 3] = 255
    sheet = write_sheet(tmp_path / "s.png", [transparent, a, grey, b], cols=2)
    out = load_tiles_uint8([sheet], cache_dir=tmp_path / "cache")
    assert len(out) == 2
    assert torch.equal(out[0], as_chw(a)) and torch.equal(out[1], as_chw(b))


def test_duplicates_dropped_keep_first(tmp_path):
    a, b, c, d = random_cells(4, 32, seed=7)
    s1 = write_sheet(tmp_path / "s1.png", [a, b, a, c, b], cols=5)
    s2 = write_sheet(tmp_path / "s2.png", [d, c, a], cols=3)
    out = load_tiles_uint8([s1, s2], cache_dir=tmp_path / "cache")
    expected = torch.stack([as_chw(x) for x in (a, b, c, d)])
    assert torch.equal(out, expected)


def test_folder_source(tmp_path):
    a, b, c, d = random_cells(4, 16, seed=8)
    folder = tmp_path / "tiles"
    write_sheet(folder / "b.png", [b, c], cols=2)           # 32x16 sheet: two tiles
    write_sheet(folder / "a.png", [a], cols=1)              # one tile
    write_sheet(folder / "sub" / "c.PNG", [d], cols=1)      # nested, upper-case suffix
    PIL.Image.fromarray(a[:8, :8], "RGBA").save(folder / "small.png")  # below grid: nothing
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="small.png .*smaller than one 16 px cell"):
        out = load_tiles_uint8([f"{folder}:16"], cache_dir=tmp_path / "cache")
    expected = torch.stack([as_chw(x).repeat_interleave(2, 1).repeat_interleave(2, 2)
                            for x in (a, b, c, d)])
    assert torch.equal(out, expected)


def test_missing_source_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_tiles([tmp_path / "nope.png"], cache_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_tiles([tmp_path / "empty"], cache_dir=tmp_path)


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_file_error_names_file(tmp_path, kind):
    bad = tmp_path / "bad sheet.png"
    if kind == "garbage":
        bad.write_bytes(b"this is not a png at all")
    else:
        good = write_sheet(tmp_path / "good.png", random_cells(8, 32, seed=9), cols=4)
        bad.write_bytes(good.read_bytes()[:600])
    with pytest.raises(ValueError, match=re.escape(f"cannot read tile sheet {bad}")):
        load_tiles([bad], cache_dir=tmp_path / "cache")


def test_no_default_sheets_message(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as info:
        default_tile_sheets(search_dirs=[tmp_path])
    msg = str(info.value)
    assert "apt-get install crawl-tiles-data" in msg and "--tiles PATH" in msg
    assert str(tmp_path) in msg
    monkeypatch.setattr(tiles_mod, "_dpkg_tile_dirs", lambda: [])
    monkeypatch.setattr(tiles_mod, "KNOWN_TILE_DIRS", (str(tmp_path),))
    with pytest.raises(FileNotFoundError, match="apt-get install crawl-tiles-data"):
        load_tiles(cache_dir=tmp_path / "cache")


def test_cache_hit_does_not_read_images(tmp_path, monkeypatch):
    sheet = write_sheet(tmp_path / "s.png", random_cells(5, 32, seed=10), cols=5)
    cache = tmp_path / "cache"
    first = load_tiles([sheet], cache_dir=cache)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".pt")  # no temp files left behind

    def boom(*args, **kwargs):
        raise AssertionError("PIL.Image.open called on a cache hit")

    monkeypatch.setattr(PIL.Image, "open", boom)
    second = load_tiles([sheet], cache_dir=cache)
    assert torch.equal(first, second)


def test_cache_keyed_by_content_and_grid(tmp_path):
    sheet = tmp_path / "s.png"
    cache = tmp_path / "cache"
    a = random_cells(4, 32, seed=11)
    b = random_cells(4, 32, seed=12)
    write_sheet(sheet, a, cols=2)
    out_a = load_tiles_uint8([sheet], cache_dir=cache)
    write_sheet(sheet, b, cols=2)  # same path, new bytes
    out_b = load_tiles_uint8([sheet], cache_dir=cache)
    assert torch.equal(out_b, torch.stack([as_chw(x) for x in b]))
    assert not torch.equal(out_a, out_b)
    assert load_tiles_uint8([f"{sheet}:16"], cache_dir=cache).shape == (16, 3, 32, 32)
    assert len(os.listdir(cache)) == 3


def test_corrupt_cache_rebuilt(tmp_path):
    sheet = write_sheet(tmp_path / "s.png", random_cells(3, 32, seed=13), cols=3)
    cache = tmp_path / "cache"
    first = load_tiles_uint8([sheet], cache_dir=cache)
    (cache_file,) = cache.iterdir()
    cache_file.write_bytes(b"\x00garbage")
    assert torch.equal(load_tiles_uint8([sheet], cache_dir=cache), first)
    assert torch.equal(torch.load(cache_file, weights_only=True)["tiles"], first)  # rewritten


def test_cache_dir_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTINR_CACHE_DIR", str(tmp_path / "root"))
    assert data.default_cache_dir() == tmp_path / "root" / "tiles"
    sheet = write_sheet(tmp_path / "s.png", random_cells(2, 32, seed=14), cols=2)
    load_tiles([sheet])
    assert len(list((tmp_path / "root" / "tiles").glob("*.pt"))) == 1


def test_split_deterministic_and_sizes():
    tiles = torch.arange(123.0).view(123, 1, 1, 1).expand(123, 3, 2, 2)
    train, val = split_tiles(tiles, val_every=10, val_limit=5)
    assert val[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]
    assert len(train) == 123 - 13  # candidates beyond the limit stay out of training
    assert not set(train[:, 0, 0, 0].tolist()) & set(range(0, 123, 10))
    train2, val2 = split_tiles(tiles, val_every=10, val_limit=5)
    assert torch.equal(train, train2) and torch.equal(val, val2)
    _, val_all = split_tiles(tiles, val_every=10, val_limit=None)
    assert len(val_all) == 13
    big_train, big_val = split_tiles(torch.zeros(6536, 3, 1, 1))
    assert len(big_val) == 500 and len(big_train) == 6536 - 654


# ----------------------------------------------------------------------------- order


def test_stream_indices_visit_every_tile_each_epoch():
    n, seed = 37, int(torch.randint(0, 2 ** 31, ()).item())
    stream = stream_indices(0, 3 * n, n, seed)
    for epoch in range(3):
        chunk = stream[epoch * n:(epoch + 1) * n]
        assert sorted(chunk.tolist()) == list(range(n))
        assert torch.equal(chunk, epoch_permutation(n, seed, epoch))
    assert not torch.equal(stream[:n], stream[n:2 * n])  # a new order each epoch
    assert not torch.equal(stream[:n], stream_indices(0, n, n, seed + 1))


@pytest.mark.parametrize("start, count", [(0, 5), (30, 16), (35, 80), (74, 0)])
def test_stream_indices_depend_only_on_position(start, count):
    """Any window equals the same positions of one long stream: resuming needs only the position."""
    n, seed = 37, int(torch.randint(0, 2 ** 31, ()).item())
    epoch_permutation.cache_clear()
    full = stream_indices(0, 200, n, seed)
    window = stream_indices(start, count, n, seed)
    assert window.dtype == torch.int64 and torch.equal(window, full[start:start + count])


def test_stream_indices_errors():
    with pytest.raises(ValueError, match="at least one training tile"):
        stream_indices(0, 4, 0, 0)
    with pytest.raises(ValueError, match="start and count"):
        stream_indices(-1, 4, 10, 0)


# ----------------------------------------------------------------------------- augment


def reference_augment(images, generator, max_shift, p_hflip, p_vflip):
    """Per-image loop: pad with zeros, crop, flip; draws in the documented order."""
    b, _, h, w = images.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    hflip = torch.rand(b, generator=generator) < p_hflip
    vflip = torch.rand(b, generator=generator) < p_vflip
    padded = F.pad(images, (max_shift,) * 4)
    out = []
    for i in range(b):
        oy, ox = max_shift - int(shift[i, 0]), max_shift - int(shift[i, 1])
        img = padded[i, :, oy:oy + h, ox:ox + w]
        if hflip[i]:
            img = img.flip(-1)
        if vflip[i]:
            img = img.flip(-2)
        out.append(img)
    return torch.stack(out), shift


def test_augment_shape_dtype_determinism():
    images = torch.rand(16, 3, 32, 32)
    for dtype in (torch.float32, torch.uint8):
        x = (images * 255).to(dtype)
        a = augment_batch(x, torch.Generator().manual_seed(0))
        b = augment_batch(x, torch.Generator().manual_seed(0))
        c = augment_batch(x, torch.Generator().manual_seed(1))
        assert a.shape == x.shape and a.dtype == dtype
        assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_flips():
    x = torch.rand(4, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, g, max_shift=0, p_hflip=1, p_vflip=0), x.flip(-1))
    assert torch.equal(augment_batch(x, g, max_shift=0, p_hflip=0, p_vflip=1), x.flip(-2))
    assert torch.equal(augment_batch(x, g, max_shift=0, p_hflip=1, p_vflip=1), x.flip(-1, -2))
    assert torch.equal(augment_batch(x, g, max_shift=0, p_hflip=0, p_vflip=0), x)


def test_augment_shift_moves_content_with_zero_fill():
    x = torch.rand(64, 3, 16, 16) + 0.5  # strictly positive, so zeros come from the fill
    out = augment_batch(x, torch.Generator().manual_seed(3), max_shift=4, p_hflip=0, p_vflip=0)
    ref, shift = reference_augment(x, torch.Generator().manual_seed(3), 4, 0.0, 0.0)
    assert torch.equal(out, ref)
    for i in range(64):
        dy, dx = int(shift[i, 0]), int(shift[i, 1])
        assert torch.equal(out[i], torch.roll(x[i], (dy, dx), (1, 2)) * ((out[i] != 0).float()))
        zero_rows = (out[i] == 0).all(dim=(0, 2)).sum().item()
        zero_cols = (out[i] == 0).all(dim=(0, 1)).sum().item()
        assert (zero_rows, zero_cols) == (abs(dy), abs(dx))
    assert (shift != 0).any()


def test_augment_matches_pad_crop_flip_reference():
    x = torch.rand(128, 3, 12, 10)
    out = augment_batch(x, torch.Generator().manual_seed(5), max_shift=3, p_hflip=0.4, p_vflip=0.2)
    ref, _ = reference_augment(x, torch.Generator().manual_seed(5), 3, 0.4, 0.2)
    assert torch.equal(out, ref)


def test_augment_preserves_pixel_values():
    x = torch.randperm(8 * 3 * 16 * 16).float().add_(1).view(8, 3, 16, 16)
    out = augment_batch(x, torch.Generator().manual_seed(7))
    for i in range(8):
        for c in range(3):
            vals = set(out[i, c][out[i, c] != 0].tolist())
            assert vals <= set(x[i, c].flatten().tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_cuda_matches_cpu():
    x = torch.rand(32, 3, 32, 32)
    cpu = augment_batch(x, torch.Generator().manual_seed(9))
    gpu = augment_batch(x.cuda(), torch.Generator().manual_seed(9))
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


# ----------------------------------------------------------------------------- real sheets


def _dcss_installed():
    try:
        default_tile_sheets()
    except FileNotFoundError:
        return False
    return True


IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.mark.skipif(not IN_CI and not _dcss_installed(),
                    reason="crawl-tiles-data not installed (apt-get install crawl-tiles-data); "
                           "never skipped in CI (CI=true)")
def test_real_dcss_sheets(tmp_path):
    """The default Dungeon Crawl Stone Soup sheets; in CI a missing package fails the test."""
    sheets = default_tile_sheets()  # raises FileNotFoundError with install instructions
    assert [p.stem for p in sheets] == list(data.DEFAULT_SHEETS)
    tiles = load_tiles(cache_dir=tmp_path)
    assert len(tiles) == 6536  # 6,656 cells, 67 constant, 53 duplicates (the module docstring)
    assert tiles.shape[1:] == (3, 32, 32) and tiles.dtype == torch.float32
    assert tiles.min() >= 0 and tiles.max() <= 1
    train, val = split_tiles(tiles)
    assert (len(train), len(val)) == (6536 - 654, 500)  # 654 validation candidates, 500 used
