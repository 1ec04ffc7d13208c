"""TensorBoard event files of examples/rpg_autoencoder.py, read back with TensorBoard's own reader.

Tiny in-process runs on generated tiles (the helpers of tests/test_example.py): a straight run,
a Ctrl-C'd and resumed one, one killed between a validation and its checkpoint, --no-tensorboard,
a missing tensorboard package, and the campaign layouts (ablation, compare_runs --logdir).
"""
import json
import shutil
import signal
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

import rpgkit.training.tensorboard as tb
from rpgkit.training import EXIT_INTERRUPTED, Training, load_checkpoint, metric_tag, open_tensorboard
from tests.test_example import (BATCH, EVENTS, STEPS, TIMING,  # noqa: F401
                                VAL_EVERY_STEPS, example, interrupt_at, read_metrics, run_env,
                                small_args)

TINY = {"--hidden": "16"}
VALIDATION_IMAGES = [step * BATCH for step in (*range(0, STEPS, VAL_EVERY_STEPS), STEPS)]
SCALAR_TAGS = {"train/l1", "val/l1", "val/psnr", "val/edge_l1", "lr", "images_per_second"}
NOT_SCALARS = {"images", "step", "elapsed_s"}
RENDER_SCALE, PICTURES = 4, 8


def read_events(folder):
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def assert_events_match_metrics(folder):
    """Every scalar and the image once per validation, steps increasing, values = metrics.csv."""
    events, rows = read_events(folder), read_metrics(folder)
    tags = events.Tags()
    assert SCALAR_TAGS <= set(tags["scalars"])
    for column in rows[0]:
        if column in NOT_SCALARS:
            continue
        expected = [(int(r["images"]), np.float32(r[column])) for r in rows if r[column] != ""]
        logged = [(e.step, np.float32(e.value)) for e in events.Scalars(metric_tag(column))]
        assert logged == expected, column  # the same steps in the same order, each once
    assert [int(r["images"]) for r in rows] == VALIDATION_IMAGES
    images = events.Images("reconstructions")
    assert [image.step for image in images] == VALIDATION_IMAGES
    cell = RENDER_SCALE * 32 + 2                        # a 4x render and its white gap
    assert {(im.height, im.width) for im in images} == {(PICTURES * cell + 2, 3 * cell + 2)}
    return events


def run(example, run_env, name, *extra, **flags):
    output = run_env["root"] / name
    assert example.main(small_args(run_env, output, **TINY, **flags) + list(extra)) == 0
    return output


@pytest.fixture(scope="module")
def tensorboard_run(example, run_env):
    return run(example, run_env, "tensorboard")


def test_run_writes_metrics_image_and_config(tensorboard_run):
    assert len(list(tensorboard_run.glob(EVENTS))) == 1
    events = assert_events_match_metrics(tensorboard_run)
    (text,) = events.Tensors("config/text_summary")
    assert text.step == 0 and b"| hidden | 16 |" in text.tensor_proto.string_val[0]
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    # The test tiles: scored once, at the last step.
    test = json.loads((tensorboard_run / "summary.json").read_text())["test"]
    for key in ("l1", "psnr", "edge_l1"):
        logged = [(e.step, np.float32(e.value)) for e in events.Scalars(f"test/{key}")]
        assert logged == [(STEPS * BATCH, np.float32(test[key]))], key


def test_no_tensorboard_writes_no_events_and_trains_the_same(example, run_env, tensorboard_run):
    output = run(example, run_env, "no_tensorboard", "--no-tensorboard")
    assert not list(output.glob(EVENTS))
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(output)]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING}
                     for r in read_metrics(tensorboard_run)]


def test_ctrl_c_and_resume_continue_one_curve(example, run_env, monkeypatch):
    output = run_env["root"] / "ctrl_c"
    interrupt_at(monkeypatch, 8, lambda: signal.raise_signal(signal.SIGINT))
    assert example.main(small_args(run_env, output, **TINY)) == EXIT_INTERRUPTED
    monkeypatch.undo()
    assert read_events(output).Images("reconstructions")[-1].step == VAL_EVERY_STEPS * BATCH
    assert example.main(["--output", str(output), "--resume", "--quiet"]) == 0
    assert len(list(output.glob(EVENTS))) == 2
    events = assert_events_match_metrics(output)
    assert len(events.Tensors("config/text_summary")) == 1  # the resumed run had one already


def test_kill_between_validation_and_checkpoint_drops_the_orphaned_steps(example, run_env,
                                                                         monkeypatch):
    """Killed after the second validation was logged, before its checkpoint: the resumed run
    (from the first) logs the second again, and TensorBoard shows only the new one."""
    output = run_env["root"] / "killed"
    write_checkpoint, calls = Training.write_checkpoint, []

    def killed_on_second(self):
        calls.append(self.step)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a hard kill leaves behind
        write_checkpoint(self)

    monkeypatch.setattr(Training, "write_checkpoint", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        example.main(small_args(run_env, output, **TINY))
    monkeypatch.undo()
    assert calls == [VAL_EVERY_STEPS, 2 * VAL_EVERY_STEPS]
    assert load_checkpoint(output / "checkpoint.pt")["step"] == VAL_EVERY_STEPS
    (first,) = output.glob(EVENTS)
    orphaned = read_events(first).Scalars("images_per_second")
    assert [e.step for e in orphaned] == VALIDATION_IMAGES[1:3]  # on disk before the kill
    assert example.main(["--output", str(output), "--resume", "--quiet"]) == 0
    # images_per_second is measured anew: the value read back must be the resumed run's.
    assert_events_match_metrics(output)


def test_missing_tensorboard_is_said_once_and_the_run_goes_on(example, run_env, monkeypatch,
                                                              capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now fails
    monkeypatch.setattr(tb, "_missing_said", False)
    said = []
    assert open_tensorboard(run_env["root"] / "unused", say=said.append) is None
    assert open_tensorboard(run_env["root"] / "unused", say=said.append) is None
    assert len(said) == 1 and "pip install tensorboard" in said[0]
    monkeypatch.setattr(tb, "_missing_said", False)
    output = run_env["root"] / "without_package"
    args = small_args(run_env, output, **TINY, **{"--max-inputs": str(2 * BATCH)})
    assert example.main(args) == 0
    assert capsys.readouterr().out.count("TensorBoard logging is off") == 1
    assert not list(output.glob(EVENTS)) and (output / "metrics.csv").is_file()


def test_ablation_folder_is_a_log_dir_with_a_run_per_variant_and_seed(tensorboard_run, tmp_path):
    import ablation   # examples/ is on sys.path (tests/conftest.py)
    for name, seed in (("baseline", 0), ("baseline", 1), ("sharp", 0)):
        shutil.copytree(tensorboard_run, ablation.run_dir(tmp_path, name, seed))
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path)).Reload().Runs()
    assert set(runs) == {"baseline/seed0", "baseline/seed1", "sharp/seed0"}


def test_compare_runs_gathers_a_log_dir(example, run_env, tensorboard_run, tmp_path, monkeypatch):
    """One run per label and seed: event files copied; a run without any, from metrics.csv."""
    no_events = run_env["root"] / "no_tensorboard_for_compare"
    shutil.copytree(tensorboard_run, no_events)
    for event_file in no_events.glob(EVENTS):
        event_file.unlink()
    import compare_runs as compare   # examples/ is on sys.path (tests/conftest.py)
    logdir = tmp_path / "logdir"
    argv = ["--output", str(tmp_path / "curves.png"), "--logdir", str(logdir),
            f"a={tensorboard_run}", f"a={no_events}", f"b={tensorboard_run}"]
    for _ in range(2):  # gathering again replaces, never duplicates
        assert compare.main(argv) == 0
    seed = run_env["seed"]
    runs = EventMultiplexer().AddRunsFromDirectory(str(logdir)).Reload()
    assert set(runs.Runs()) == {f"a/seed{seed}", f"a/seed{seed}-2", f"b/seed{seed}"}
    for name in runs.Runs():
        assert len(list((logdir / name).glob(EVENTS))) == 1
    rebuilt, rows = read_events(logdir / f"a/seed{seed}-2"), read_metrics(tensorboard_run)
    assert [(e.step, np.float32(e.value)) for e in rebuilt.Scalars("val/l1")] == \
        [(int(r["images"]), np.float32(r["val_l1"])) for r in rows]


def test_metric_tags():
    assert [metric_tag(c) for c in ("train_l1", "val_edge_l1", "test_psnr", "lr",
                                    "images_per_second", "val_")] == \
        ["train/l1", "val/edge_l1", "test/psnr", "lr", "images_per_second", "val_"]


def test_reconstruction_grid_places_every_picture():
    originals, recons = torch.rand(3, 3, 5, 7), torch.rand(3, 3, 5, 7)
    renders = torch.rand(3, 3, 10, 14)
    grid = tb.reconstruction_grid(originals, recons, renders, padding=2)
    assert grid.shape == (3, 3 * 12 + 2, 3 * 16 + 2)
    for row in range(3):
        top = 2 + row * 12
        cells = [grid[:, top:top + 10, 2 + col * 16:2 + col * 16 + 14] for col in range(3)]
        nearest = originals[row].repeat_interleave(2, -2).repeat_interleave(2, -1)
        assert torch.equal(cells[0], nearest)
        assert torch.equal(cells[1], recons[row].repeat_interleave(2, -2).repeat_interleave(2, -1))
        assert torch.equal(cells[2], renders[row])
    assert grid[:, :2].eq(1).all() and grid[:, :, -2:].eq(1).all()  # white gaps
    with pytest.raises(ValueError, match="whole multiple"):
        tb.reconstruction_grid(originals, recons, torch.rand(3, 3, 11, 14))
    with pytest.raises(ValueError, match="renders"):
        tb.reconstruction_grid(originals, recons[:2], renders)
