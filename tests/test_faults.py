"""Fault injection: the example survives kills, stops, divergence and bad inputs with nothing lost.

Kills go to a real subprocess (tests/fault_driver.py sends the signal at a chosen point: inside a
training step, inside a validation, half-way through a checkpoint write); the runs then resume
and must end bit for bit where an uninterrupted run ends (weights, optimizer state, metrics.csv).
The kill points are drawn from the test's seed, so a failure replays with FASTINR_TEST_SEED.
"""
import json
import os
import random
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from rpgkit.data import load_tiles_uint8
from rpgkit.training import CHECKPOINT_FORMAT, load_checkpoint, previous_checkpoint
from tests.test_example import (BATCH, EXAMPLE, ROOT, STEPS, assert_same_run, small_args,
                                sprite_sheet)

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"
CHECKPOINT_EVERY_STEPS = 4
# Validations at steps 0, 6, 12, 18, 20; checkpoints at steps 4, 8, 12, 16, 20.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    seed = int(torch.randint(0, 2 ** 31, ()).item())
    return {"root": root, "sheet": sprite_sheet(root / "sprites.png", 120, seed),
            "seed": seed % 1000, "cache": root / "cache"}


def run_args(env, output, **extra):
    # The default backend (native where it is built): the kills must not disturb the fused path.
    return small_args(env, output, **{"--backend": "auto",
                                      "--checkpoint-every": str(CHECKPOINT_EVERY_STEPS * BATCH),
                                      **extra})


def example(env, args, fault=None, timeout=300):
    """Run the example in a subprocess (through the fault driver when `fault` is given)."""
    cmd = ([sys.executable, str(DRIVER), *fault, "--"] if fault else
           [sys.executable, str(EXAMPLE)]) + list(args)
    return subprocess.run(cmd, env=dict(ENV, FASTINR_CACHE_DIR=str(env["cache"])),
                          capture_output=True, text=True, timeout=timeout)


def resume_args(output):
    return ["--output", str(output), "--resume", "--quiet"]


@pytest.fixture(scope="module")
def straight(env):
    output = env["root"] / "straight"
    proc = example(env, run_args(env, output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return output


def test_sigkill_anywhere_then_resume_is_bit_identical(env, straight):
    """SIGKILL inside a step, then inside a validation, then half-way through a checkpoint write
    (each in a fresh process resuming the last): the final run equals the uninterrupted one."""
    output = env["root"] / "killed"
    # (phase, n, the process's own args): the first kill lands after the first checkpoint; the
    # third process resumes at step 16 at the latest, so it has at least one write (step 20) to cut.
    faults = [("step", random.randint(CHECKPOINT_EVERY_STEPS + 1, 11), run_args(env, output)),
              ("validation", random.randint(1, 2), resume_args(output)),
              ("checkpoint", 1, resume_args(output))]
    steps_done = []
    for phase, n, args in faults:
        proc = example(env, args, fault=(phase, str(n), "KILL"))
        assert proc.returncode == -signal.SIGKILL, (phase, n, proc.stderr[-3000:])
        steps_done.append(load_checkpoint(output / "checkpoint.pt")["step"])
    assert steps_done == sorted(steps_done) and steps_done[-1] < STEPS, steps_done
    proc = example(env, resume_args(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight, output)
    assert not list(output.glob("*.tmp")), "a killed write's temporary file was left behind"


def test_sigterm_stops_cleanly_and_resumes(env, straight):
    output = env["root"] / "terminated"
    n = random.randint(1, STEPS - 2)
    proc = example(env, run_args(env, output), fault=("step", str(n), "TERM"))
    assert proc.returncode == 130, proc.stderr[-3000:]
    assert "SIGTERM" in proc.stdout + proc.stderr and "--resume" in proc.stdout + proc.stderr
    assert strict_json(output / "summary.json")["status"] == "interrupted"
    assert load_checkpoint(output / "checkpoint.pt")["step"] == n  # the step in flight finishes
    proc = example(env, resume_args(output))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(straight, output)


def test_sigkill_mid_checkpoint_keeps_both_checkpoints_readable(env):
    output = env["root"] / "torn"
    proc = example(env, run_args(env, output), fault=("checkpoint", "2", "KILL"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert load_checkpoint(output / "checkpoint.pt")["step"] == CHECKPOINT_EVERY_STEPS
    assert list(output.glob("*.tmp")), "the torn write should have left its temporary file"
    proc = example(env, resume_args(output), fault=("checkpoint", "2", "KILL"))
    assert proc.returncode == -signal.SIGKILL
    # Resumed at 4, it wrote 8 and was killed writing 12: 8 stands, and is also the kept
    # predecessor (set aside when the torn write began).
    assert load_checkpoint(output / "checkpoint.pt")["step"] == 2 * CHECKPOINT_EVERY_STEPS
    assert load_checkpoint(previous_checkpoint(output / "checkpoint.pt"))["step"] == \
        2 * CHECKPOINT_EVERY_STEPS


# ----------------------------------------------------------------------------- divergence


def test_diverging_run_stops_and_keeps_the_last_finite_checkpoint(env, tmp_path, monkeypatch):
    """A weight turned NaN at a random step: the run stops there with exit code 3, says what went
    non-finite, writes strict JSON and keeps the checkpoint of the last finite step."""
    import rpg_autoencoder
    import rpgkit.training.loop as training_loop
    poison_at = random.randint(CHECKPOINT_EVERY_STEPS + 1, STEPS)
    real, calls = training_loop.train_step, []

    def step(model, *args, **kwargs):
        calls.append(1)
        if len(calls) == poison_at:
            with torch.no_grad():
                next(model.parameters())[0].fill_(float("nan"))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(training_loop, "train_step", step)
    monkeypatch.setenv("FASTINR_CACHE_DIR", str(env["cache"]))
    output = tmp_path / "diverged"
    code = rpg_autoencoder.main(run_args(env, output))
    assert code == training_loop.EXIT_DIVERGED == 3
    summary = strict_json(output / "summary.json")
    assert summary["status"] == "diverged"
    assert f"at step {poison_at}" in summary["divergence"] and "nan" in summary["divergence"]
    state = load_checkpoint(output / "checkpoint.pt")
    last_checkpoint = (poison_at - 1) // CHECKPOINT_EVERY_STEPS * CHECKPOINT_EVERY_STEPS
    assert state["step"] == last_checkpoint
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (output / "reconstructions.png").exists()


@pytest.fixture(scope="module")
def diverged(env):
    """A run whose learning rate sends it to NaN at once: (its folder, the process)."""
    output = env["root"] / "lr"
    proc = example(env, run_args(env, output, **{"--lr": "1e38", "--max-inputs": str(4 * BATCH)}))
    return output, proc


def test_huge_learning_rate_diverges_with_strict_json(diverged):
    output, proc = diverged
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: training diverged" in proc.stderr and "--lr" in proc.stderr
    assert strict_json(output / "summary.json")["status"] == "diverged"


def test_campaign_tools_list_diverged_runs_apart(env, straight, diverged, tmp_path):
    """ablation.py's table and compare_runs.py keep a diverged run out of the means and name it."""
    import shutil

    import ablation
    root = tmp_path / "campaign"
    shutil.copytree(straight, root / "good" / "seed0")
    shutil.copytree(diverged[0], root / "bad" / "seed0")
    assert ablation.is_done(root / "bad" / "seed0")  # not rerun: it would diverge again
    table = ablation.aggregate(root, ["good", "bad"])
    variants = table.partition("References")[0]    # the references table follows
    rows = [line for line in variants.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["good"]
    assert "Diverged runs" in table and "bad seed0" in table and "nan" in table
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "compare_runs.py"),
                           f"good={root / 'good' / 'seed0'}", f"bad={root / 'bad' / 'seed0'}",
                           "--output", str(tmp_path / "curves.png")],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table, _, diverged_part = proc.stdout.partition("diverged (not in the table)")
    assert "| good |" in table and "| bad |" not in table and "- bad (" in diverged_part


# ----------------------------------------------------------------------------- bad state


def test_truncated_checkpoint_is_named_with_what_to_do(env, straight, tmp_path, capsys):
    output = tmp_path / "truncated"
    output.mkdir()
    data = (straight / "checkpoint.pt").read_bytes()
    (output / "checkpoint.pt").write_bytes(data[:len(data) // 3])
    proc = example(env, resume_args(output))
    assert proc.returncode == 2
    assert str(output / "checkpoint.pt") in proc.stderr and "truncated or corrupt" in proc.stderr
    assert "another --output" in proc.stderr
    (output / "checkpoint.prev.pt").write_bytes(data)  # with a predecessor, it is named
    proc = example(env, resume_args(output))
    assert proc.returncode == 2 and "checkpoint.prev.pt" in proc.stderr


def test_checkpoint_of_another_format_or_config_is_refused(env, straight, tmp_path):
    state = torch.load(straight / "checkpoint.pt", weights_only=True)
    output = tmp_path / "other"
    output.mkdir()
    torch.save({**state, "format_version": CHECKPOINT_FORMAT + 1}, output / "checkpoint.pt")
    proc = example(env, resume_args(output))
    assert proc.returncode == 2 and f"format version {CHECKPOINT_FORMAT + 1}" in proc.stderr
    other = {**state, "config": {**state["config"], "hidden": 48}}  # weights of hidden 32
    torch.save(other, output / "checkpoint.pt")
    proc = example(env, resume_args(output))
    assert proc.returncode == 2 and "does not fit" in proc.stderr and "size mismatch" in proc.stderr


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("flag, values, words", [
    ("--batch-size", {"--batch-size": "4096", "--max-inputs": "8192"}, "larger than the"),
    ("--max-inputs", {"--max-inputs": "8"}, "less than one batch"),
    ("--lr", {"--lr": "nan"}, "finite"),
    ("--compression-ratio", {"--compression-ratio": "inf"}, "finite"),
])
def test_bad_flag_values_are_named(env, tmp_path, flag, values, words):
    proc = example(env, run_args(env, tmp_path / "out", **values))
    assert proc.returncode == 2 and flag in proc.stderr and words in proc.stderr, proc.stderr


def test_corrupt_and_odd_tile_sources(env, tmp_path):
    good = env["sheet"]
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    not_image = tmp_path / "notes.png"
    not_image.write_text("these are notes, not pixels")
    for bad in (truncated, not_image):
        with pytest.raises(ValueError, match=str(bad)):
            load_tiles_uint8([bad], cache_dir=env["cache"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no PNG files"):
        load_tiles_uint8([empty], cache_dir=env["cache"])
    tiny = tmp_path / "tiny.png"
    PIL.Image.fromarray(np.full((1, 1, 4), 200, np.uint8), "RGBA").save(tiny)
    with pytest.warns(UserWarning, match="tiny.png .*smaller than one 32 px cell"):
        with pytest.raises(ValueError, match="no usable"):
            load_tiles_uint8([tiny], cache_dir=env["cache"])
    ragged = tmp_path / "ragged.png"
    with PIL.Image.open(good) as sheet:
        sheet.crop((0, 0, 32 * 5 + 7, 32 * 2 + 3)).save(ragged)
    with pytest.warns(UserWarning, match="right 7 px and bottom 3 px"):
        tiles = load_tiles_uint8([ragged, tiny], cache_dir=env["cache"])
    whole = load_tiles_uint8([good], cache_dir=env["cache"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a sheet that fits its grid is not reported
        load_tiles_uint8([good], cache_dir=env["cache"])
    assert len(tiles) <= 10 and all(any(torch.equal(t, w) for w in whole) for t in tiles)


def test_folder_of_ten_thousand_files(tmp_path):
    """Every file of a big folder is read, in path order; constant and repeated tiles dropped."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(random.randint(0, 2 ** 31))
    distinct, first = 0, None
    for i in range(10_000):
        if i % 10 == 0:   # every tenth is a constant tile (dropped)
            tile = np.full((32, 32, 4), 255, np.uint8)
        elif i % 10 == 1 and i > 1:  # and another tenth repeats the first tile (dropped)
            tile = first
        else:
            tile = rng.integers(0, 256, (32, 32, 4), dtype=np.uint8)
            tile[..., 3] = 255
            distinct += 1
            if i == 1:
                first = tile
        PIL.Image.fromarray(tile, "RGBA").save(folder / f"{i:05d}.png", compress_level=0)
    tiles = load_tiles_uint8([folder], cache_dir=tmp_path / "cache")
    assert len(tiles) == distinct == 8_001
    assert torch.equal(tiles[0], torch.from_numpy(first[..., :3]).permute(2, 0, 1))


def test_checkpoint_after_a_torn_write_leaves_no_temporary(tmp_path, monkeypatch):
    """A write cut short has already set its predecessor aside (checkpoint.prev.pt is then the
    same file as checkpoint.pt); the next write keeps that one and leaves nothing behind."""
    from rpgkit.training import save_checkpoint
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": torch.tensor(1)})
    save_checkpoint(path, {"step": torch.tensor(2)})

    def torn(obj, f):
        raise KeyboardInterrupt  # the kill, after the predecessor was set aside
    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": torch.tensor(3)})
    monkeypatch.undo()
    save_checkpoint(path, {"step": torch.tensor(4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]
    assert int(load_checkpoint(path)["step"]) == 4
    assert int(load_checkpoint(previous_checkpoint(path))["step"]) == 2
