"""End-to-end tests of examples/rpg_autoencoder.py on small generated tile sheets.

Runs are tiny (a small decoder, batch 16, a few hundred images) and in-process, except the
two-process DistributedDataParallel run, which goes through torchrun (gloo on the CPU).
"""
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

import rpgkit.data.tiles as tiles_mod
import rpgkit.training.loop as training_loop
from rpgkit.models import ConvEncoder, ResNet18Encoder, build_encoder
from rpgkit.training import (EXIT_INTERRUPTED, collapse_message, is_collapsed, load_checkpoint,
                             make_scheduler, save_checkpoint)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rpg_autoencoder.py"
EVENTS = "events.out.tfevents.*"  # TensorBoard's event files, named by time, host and process
OUTPUTS = {"metrics.csv", "loss.png", "reconstructions.png", "summary.json", "checkpoint.pt",
           "checkpoint.prev.pt", EVENTS}
TIMING = {"images_per_second", "elapsed_s"}
STEPS, BATCH, VAL_EVERY_STEPS = 20, 16, 6


@pytest.fixture(scope="module")
def example():
    """The example's command line (examples/ is on sys.path: tests/conftest.py)."""
    import rpg_autoencoder
    return rpg_autoencoder


def sprite_sheet(path, n, seed, cols=16):
    """n sprite-like RGBA 32x32 tiles: transparent background, a few opaque rectangles."""
    rng = np.random.default_rng(seed)
    rows = -(-n // cols)
    sheet = np.zeros((rows * 32, cols * 32, 4), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        cell = sheet[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
        for _ in range(rng.integers(1, 4)):
            y0, x0 = rng.integers(0, 24, 2)
            h, w = rng.integers(4, 16, 2)
            cell[y0:y0 + h, x0:x0 + w, :3] = rng.integers(0, 256, 3)
            cell[y0:y0 + h, x0:x0 + w, 3] = 255
    PIL.Image.fromarray(sheet, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def run_env(tmp_path_factory):
    """A sheet of 200 generated tiles, a private tile cache and a fresh data seed."""
    root = tmp_path_factory.mktemp("example")
    seed = int(torch.randint(0, 2 ** 31, ()).item())
    sheet = sprite_sheet(root / "sprites.png", 200, seed)
    cache = root / "cache"
    old = os.environ.get("FASTINR_CACHE_DIR")
    os.environ["FASTINR_CACHE_DIR"] = str(cache)
    yield {"root": root, "sheet": sheet, "seed": seed % 1000}
    if old is None:
        os.environ.pop("FASTINR_CACHE_DIR", None)
    else:
        os.environ["FASTINR_CACHE_DIR"] = old


def small_args(env, output, **extra):
    # The baseline preset (the seed's decoder), not the example's default: these tests are about
    # the run's machinery, and the seed's decoder is its smallest, fastest case.
    args = {"--preset": "baseline", "--tiles": str(env["sheet"]), "--hidden": "32", "--blocks": "1",
            "--layers-per-block": "1", "--batch-size": str(BATCH),
            "--max-inputs": str(STEPS * BATCH), "--val-every": str(VAL_EVERY_STEPS * BATCH),
            "--seed": str(env["seed"]), "--device": "cpu", "--output": str(output),
            # The reference backend and float32: these tests are about the example, not the
            # kernels (some compare runs within float32 rounding; --precision: test_native_bf16).
            "--backend": "torch", "--precision": "fp32"}
    args.update(extra)
    flat = [item for pair in args.items() for item in pair]
    return flat + ["--quiet"]


def run_files(output):
    """The names in a run folder, TensorBoard's event files as EVENTS."""
    return {EVENTS if p.match(EVENTS) else p.name for p in output.iterdir()}


def read_metrics(output):
    with open(output / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight_run(example, run_env):
    """One uninterrupted run; the reference for the resume and distributed tests."""
    output = run_env["root"] / "straight"
    assert example.main(small_args(run_env, output)) == 0
    return output


def test_end_to_end_writes_outputs_and_learns(straight_run):
    assert run_files(straight_run) == OUTPUTS  # no temporary files left
    rows = read_metrics(straight_run)
    steps = [int(r["step"]) for r in rows]
    assert steps == [0, 6, 12, 18, 20]
    assert rows[0]["train_l1"] == "" and all(r["train_l1"] for r in rows[1:])
    val = [float(r["val_l1"]) for r in rows]
    assert val[-1] < val[0]  # the plumbing; that training uses the code: test_learning.py
    summary = json.loads((straight_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["images"] == STEPS * BATCH
    assert summary["val_l1"] == pytest.approx(val[-1])
    assert summary["val_psnr"] == pytest.approx(float(rows[-1]["val_psnr"]))
    assert summary["device"] == "cpu" and summary["backend"] in ("torch", "native", "triton")
    assert summary["images_per_second"] > 0
    # 20 steps may or may not get past the code-blind start; the flag must agree with the numbers.
    assert summary["collapsed"] == is_collapsed(summary["val_spread"], summary["val_tiles_spread"])
    assert summary["config"]["hidden"] == 32 and summary["config"]["activation_out"] == "none"
    assert summary["config"]["batch_norm"] == "none" and summary["config"]["code_size"] == 102
    tiles = summary["tiles"]
    assert tiles["split"] == "groups" and tiles["val"] == tiles["test"] == 20
    assert tiles["train"] + tiles["val"] + tiles["test"] <= 200   # exact duplicates dropped
    # The test tiles scored once, at the end; the references on both held-out parts.
    assert set(summary["test"]) == {"l1", "psnr", "edge_l1", "tiles"}
    assert summary["test"]["tiles"] == 20 and 0 < summary["test"]["l1"] < 1
    assert set(summary["references"]) == {"val", "test"}
    for part in summary["references"].values():
        assert set(part) == {"mean color", "PCA-102", "nearest training tile"}
        assert all(0 < ref["l1"] < 1 and ref["psnr"] > 0 for ref in part.values())
    for name, min_size in (("loss.png", 200), ("reconstructions.png", 400)):
        with PIL.Image.open(straight_run / name) as image:
            assert min(image.size) >= min_size
    state = load_checkpoint(straight_run / "checkpoint.pt")
    assert state["step"] == STEPS
    # The linear output starts at mid grey: the model keeps the seed's state_dict layout.
    assert "decoder.pos_to_color.linear_out.bias" in state["model"]
    assert "encoder.convolution.layers.0.weight" in state["model"]


def assert_same_run(a: Path, b: Path):
    sa, sb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert sa["step"] == sb["step"]
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), key
    for pa, pb in zip(sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert torch.equal(sa["augment_rng"], sb["augment_rng"])
    ra, rb = read_metrics(a), read_metrics(b)
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in ra] == \
        [{k: v for k, v in r.items() if k not in TIMING} for r in rb]
    ja, jb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert (ja["val_l1"], ja["val_psnr"]) == (jb["val_l1"], jb["val_psnr"])


def interrupt_at(monkeypatch, call, action):
    """Run `action` inside the `call`-th training step of the run's loop."""
    real = training_loop.train_step
    calls = []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(training_loop, "train_step", step)


def test_ctrl_c_checkpoints_and_resume_matches(example, run_env, straight_run, monkeypatch):
    output = run_env["root"] / "ctrl_c"
    interrupt_at(monkeypatch, 8, lambda: signal.raise_signal(signal.SIGINT))
    assert example.main(small_args(run_env, output)) == EXIT_INTERRUPTED
    assert load_checkpoint(output / "checkpoint.pt")["step"] == 8  # the step in flight finishes
    assert json.loads((output / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.undo()
    assert example.main(["--output", str(output), "--resume", "--quiet"]) == 0
    assert_same_run(straight_run, output)


def test_killed_run_loses_at_most_one_interval(example, run_env, straight_run, monkeypatch):
    output = run_env["root"] / "killed"
    args = small_args(run_env, output, **{"--checkpoint-every": str(4 * BATCH)})

    def kill():
        raise KeyboardInterrupt  # no clean stop: what a hard kill leaves behind

    interrupt_at(monkeypatch, 11, kill)
    with pytest.raises(KeyboardInterrupt):
        example.main(args)
    assert load_checkpoint(output / "checkpoint.pt")["step"] == 8  # last interval checkpoint
    monkeypatch.undo()
    assert example.main(["--output", str(output), "--resume", "--quiet"]) == 0
    assert_same_run(straight_run, output)


def test_resume_refuses_changed_settings(example, straight_run, capsys):
    with pytest.raises(SystemExit):
        example.main(["--output", str(straight_run), "--resume", "--hidden", "64", "--quiet"])
    assert "--hidden" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a fresh run never overwrites a checkpoint
        example.main(["--output", str(straight_run), "--quiet"])
    assert "--resume" in capsys.readouterr().err


def test_refined_codes_are_scored_at_the_end_and_by_evaluate(example, run_env, capsys):
    output = run_env["root"] / "refined"
    assert example.main(small_args(run_env, output, **{"--refine-steps": "3"})) == 0
    summary = json.loads((output / "summary.json").read_text())
    refined, test = summary["val_refined"], summary["test"]
    assert (test["refine_steps"], test["refine_lr"], refined["refine_steps"]) == (3, 0.05, 3)
    # The encoder's own codes are what the curves show; refinement moved them.
    assert refined["encoder"]["l1"] == pytest.approx(summary["val_l1"], rel=1e-6)
    assert refined["l1"] != refined["encoder"]["l1"] and test["l1"] != test["encoder"]["l1"]
    # --evaluate refines as the run says, or as told.
    assert example.main(["--output", str(output), "--evaluate"]) == 0
    result = json.loads((output / "evaluation.json").read_text())
    assert result["l1"] == pytest.approx(test["l1"], rel=1e-6) and result["refine_steps"] == 3
    assert example.main(["--output", str(output), "--evaluate", "--refine-steps", "0"]) == 0
    result = json.loads((output / "evaluation.json").read_text())
    assert result["l1"] == pytest.approx(test["encoder"]["l1"], rel=1e-6)
    for flags, words in ((["--refine-steps", "-1"], "--refine-steps must be >= 0"),
                         (["--refine-lr", "0"], "--refine-lr must be a finite number > 0")):
        with pytest.raises(SystemExit):
            example.main(["--output", str(output), "--evaluate", *flags])
        assert words in capsys.readouterr().err
        with pytest.raises(SystemExit):
            example.main(small_args(run_env, run_env["root"] / "bad_refine", **dict([flags])))
        assert words in capsys.readouterr().err


def test_evaluate_scores_a_finished_run_without_training(example, run_env, straight_run, tmp_path,
                                                         capsys):
    checkpoint = (straight_run / "checkpoint.pt").read_bytes()
    summary = json.loads((straight_run / "summary.json").read_text())
    assert example.main(["--output", str(straight_run), "--evaluate"]) == 0
    result = json.loads((straight_run / "evaluation.json").read_text())
    # Without --tiles: the run's test tiles, the numbers the run wrote when it finished.
    assert result["tiles"] == {"count": 20, "sources": [str(run_env["sheet"])], "split": "groups"}
    assert result["l1"] == pytest.approx(summary["test"]["l1"], rel=1e-6)
    assert result["psnr"] == pytest.approx(summary["test"]["psnr"], rel=1e-6)
    for name, ref in summary["references"]["test"].items():
        assert result["references"][name] == pytest.approx(ref, rel=1e-9)
    out = capsys.readouterr().out
    assert f"| model | {result['l1']:.4f} |" in out and "| PCA-102 |" in out
    # With --tiles: every tile of the sheets counts; a tile seen in training has itself as its
    # nearest training tile, so that reference drops below its test-split value.
    other = sprite_sheet(tmp_path / "other.png", 30, run_env["seed"] + 1)
    assert example.main(["--output", str(straight_run), "--evaluate", "--tiles",
                         str(run_env["sheet"]), str(other)]) == 0
    result = json.loads((straight_run / "evaluation.json").read_text())
    all_tiles = summary["tiles"]["train"] + summary["tiles"]["val"] + summary["tiles"]["test"]
    assert result["tiles"]["count"] == all_tiles + 30 and result["tiles"]["split"] is None
    assert result["references"]["nearest training tile"]["l1"] < \
        summary["references"]["test"]["nearest training tile"]["l1"]
    assert (straight_run / "checkpoint.pt").read_bytes() == checkpoint   # nothing trained
    capsys.readouterr()
    # Bad values: one line naming the flag.
    empty = tmp_path / "empty"
    empty.mkdir()
    constant = tmp_path / "constant.png"
    PIL.Image.new("RGBA", (64, 32), (9, 9, 9, 255)).save(constant)
    for argv, words in (
            (["--output", str(tmp_path / "nothing")], ("--output", "no such folder")),
            (["--output", str(empty)], ("--output", "no checkpoint.pt")),
            (["--output", str(straight_run), "--tiles", str(empty)], ("--tiles", "no PNG files")),
            (["--output", str(straight_run), "--tiles", str(constant)],
             ("--tiles", "no usable")),
            (["--output", str(straight_run), "--hidden", "8"], ("do not apply", "--hidden"))):
        with pytest.raises(SystemExit):
            example.main(argv + ["--evaluate"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "error: " in err
        assert all(word in err for word in words), err


def test_collapse_is_reported(example, run_env, monkeypatch):
    """A decoder whose reconstructions ignore the input is flagged, naming cause and flag."""
    build = training_loop.build_autoencoder

    def code_blind(cfg):
        model = build(cfg)
        model.encoder.linear.weight.data.zero_()
        model.encoder.linear.weight.requires_grad_(False)
        model.encoder.linear.bias.requires_grad_(False)
        return model

    monkeypatch.setattr(training_loop, "build_autoencoder", code_blind)
    output = run_env["root"] / "collapsed"
    args = small_args(run_env, output, **{"--max-inputs": str(4 * BATCH),
                                          "--val-every": str(2 * BATCH)})
    assert example.main(args + ["--activation-out", "sigmoid"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["collapsed"] and summary["val_spread"] < 1e-6
    assert summary["val_tiles_spread"] > 0.05
    assert "sigmoid" in summary["collapse_message"]
    assert "--activation-out none" in summary["collapse_message"]
    linear = collapse_message({"activation_out": "none", "batch_norm": "image"}, 1e-5, 0.2)
    assert "ignores its code" in linear and "--batch-norm none" in linear


def test_cpu_default_budget_is_timed_on_the_machine(example, run_env, monkeypatch, capsys):
    """Without --max-inputs a CPU run times its own training steps and trains CPU_TRAIN_SECONDS'
    worth of images, saved with the run (its checkpoint resumes that count); with --max-inputs, or
    on --resume, nothing is timed."""
    from rpgkit.training import CPU_TRAIN_SECONDS
    rate = (3 * BATCH + 0.5) / CPU_TRAIN_SECONDS   # three batches' worth
    calls = []

    def timed(cfg, device, **kwargs):
        calls.append((cfg["batch_size"], device.type))
        return rate

    monkeypatch.setattr(example, "training_rate", timed)
    output = run_env["root"] / "timed"
    args = small_args(run_env, output, **{"--val-every": str(BATCH)})
    at = args.index("--max-inputs")
    del args[at:at + 2]
    assert example.main(args) == 0
    assert calls == [(BATCH, "cpu")]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["images"] == 3 * BATCH and summary["config"]["max_inputs"] == 3 * BATCH
    assert summary["config"]["budget_rate"] == pytest.approx(rate)
    assert "timed on this machine" in capsys.readouterr().out
    assert load_checkpoint(output / "checkpoint.pt")["config"]["max_inputs"] == 3 * BATCH
    assert example.main(small_args(run_env, run_env["root"] / "fixed")) == 0
    assert len(calls) == 1


def test_timed_budget_is_whole_batches_of_a_readable_count():
    from rpgkit.training import CPU_TRAIN_SECONDS, timed_budget
    assert timed_budget(93.0, 16) == 14_992        # 15,810 images -> 15,000 -> whole batches
    assert timed_budget(1.0, 16, seconds=170) == 160
    assert timed_budget(0.001, 16) == 16           # at least one batch
    assert timed_budget(300.0, 64, seconds=CPU_TRAIN_SECONDS) == 50_944


def test_training_rate_leaves_the_random_state(example):
    from rpgkit.training import training_rate
    _, cfg, device, dist, _ = example.configure(
        ["--preset", "baseline", "--hidden", "16", "--blocks", "1", "--layers-per-block", "1",
         "--batch-size", "4", "--output", "/nonexistent/never-written", "--device", "cpu",
         "--backend", "torch"])
    dist.close()
    state = torch.get_rng_state()
    assert training_rate(cfg, device, steps=1, warmup=0) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_missing_tiles_message(example, tmp_path, monkeypatch):
    monkeypatch.setattr(tiles_mod, "_dpkg_tile_dirs", lambda: [])
    monkeypatch.setattr(tiles_mod, "KNOWN_TILE_DIRS", (str(tmp_path),))
    with pytest.raises(SystemExit) as info:
        example.main(["--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"])
    message = str(info.value.code)
    assert "apt-get install crawl-tiles-data" in message and "--tiles" in message


def test_corrupt_tile_file_named(example, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SystemExit) as info:
        example.main(["--tiles", str(bad), "--output", str(tmp_path / "out"), "--device", "cpu",
                      "--quiet"])
    assert str(bad) in str(info.value.code)


def torchrun(args, timeout=300):
    env = dict(os.environ,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(EXAMPLE)] + args
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


# One step of each: the default (no BatchNorm), the seed exactly (per-image BatchNorm: its running
# statistics must see all 16 images, in order, on every process), the sharp preset (instance
# statistics, a local grid, sub-pixel training) and statistics over the global batch (the fused
# native decoder: one running-statistics update from the whole batch's statistics; INRDecoder's
# batch-bn and the torch backend are checked at the library level, tests/test_distributed.py).
DDP_CONFIGS = {"default": [], "seed": ["--preset", "seed"],
               "sharp": ["--preset", "sharp", "--warmup", "0"],
               "batch-bn": ["--batch-norm", "batch", "--backend", "native"]}
PER_IMAGE_BN, BATCH_BN = {"seed"}, {"batch-bn"}


@pytest.mark.parametrize("config", list(DDP_CONFIGS))
def test_two_process_gloo_matches_single_process(example, run_env, config):
    """Two processes on halves of each batch against one process, after one step.

    The only op that differs is DDP's gradient all-reduce: the mean of two half-batch gradients
    instead of one full-batch sum, so gradients differ by float32 rounding (bounded in
    tests/test_distributed.py: at most 4x torch's own float32 error). Adam's first step moves each
    weight by lr * g / (|g| + eps), i.e. by ~lr in the direction of sign(g): a weight whose
    gradient is zero up to rounding may move the other way, so weights agree within 2 lr, and
    everything computed before the update (the BatchNorm statistics, from the same weights and
    images) agrees within float32 rounding."""
    one_step = DDP_CONFIGS[config] + ["--max-inputs", str(BATCH), "--val-every", str(BATCH)]
    single = run_env["root"] / f"single-{config}"
    assert example.main(small_args(run_env, single) + one_step) == 0
    output = run_env["root"] / f"ddp-{config}"
    proc = torchrun(small_args(run_env, output) + one_step)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert run_files(output) == OUTPUTS - {"checkpoint.prev.pt"}  # rank 0 alone writes
    assert len(list(output.glob(EVENTS))) == 1
    summary = json.loads((output / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images"] == BATCH
    one = load_checkpoint(single / "checkpoint.pt")["model"]
    two = load_checkpoint(output / "checkpoint.pt")["model"]
    assert one.keys() == two.keys()
    lr = json.loads((single / "summary.json").read_text())["config"]["lr"]
    buffers = [k for k in one if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert bool(buffers) == (config in PER_IMAGE_BN | BATCH_BN)
    for key, value in one.items():
        if key.endswith("num_batches_tracked"):  # every image, once; or the batch, once
            assert int(two[key]) == int(value) == (1 if config in BATCH_BN else BATCH), key
        elif key in buffers:
            assert torch.allclose(two[key], value, rtol=1e-5, atol=1e-6), key
        else:
            diff = (two[key] - value).abs().max().item()
            assert diff <= 2 * lr * (1 + 1e-4), f"{key}: {diff:.3g} apart (Adam's step is {lr})"
    single_summary = json.loads((single / "summary.json").read_text())
    assert summary["val_l1"] == pytest.approx(single_summary["val_l1"], rel=1e-3)


# ----------------------------------------------------------------------------- models


def test_conv_encoder_is_the_seeds():
    encoder = ConvEncoder((3, 32, 32), 102)
    assert encoder.linear.in_features == 32 * 26 * 26 == 21632
    assert [type(m).__name__ for m in encoder.convolution.layers] == ["Conv2d", "ReLU"] * 3
    assert encoder(torch.rand(5, 3, 32, 32)).shape == (5, 102)
    with pytest.raises(ValueError, match="code_size"):
        ConvEncoder((3, 32, 32), 0)
    with pytest.raises(ValueError, match="too small"):
        ConvEncoder((3, 6, 6), 8)


def test_resnet18_encoder(tmp_path, monkeypatch):
    encoder = build_encoder("resnet18", (3, 32, 32), 40)
    assert encoder.linear.in_features == 512
    assert encoder(torch.rand(3, 3, 32, 32)).shape == (3, 40)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not on disk"):
        ResNet18Encoder((3, 32, 32), 40, weights="imagenet")
    with pytest.raises(ValueError, match="encoder must be one of"):
        build_encoder("vgg")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"a": torch.arange(3)})

    def torn(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"a": torch.arange(5)})
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(3))
    # The predecessor was set aside as the write began: the same checkpoint, no temporary left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.prev.pt", "ckpt.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "ckpt.prev.pt")["a"], torch.arange(3))


def test_warmup_then_cosine_and_exact_resume():
    """--warmup: the learning rate rises linearly, then follows the cosine; a scheduler restored
    from its state_dict continues on the same curve. Without warm-up it is the plain cosine."""
    def optimizer():
        return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)

    opt = optimizer()
    scheduler = make_scheduler(opt, total_steps=20, warmup_steps=4)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), scheduler.step()
    assert lrs[:4] == pytest.approx([1e-2 * f * 0.5 * (1 + np.cos(np.pi * s / 20))
                                     for s, f in enumerate((0.25, 0.5, 0.75, 1.0))])
    assert lrs[4:] == pytest.approx([1e-2 * 0.5 * (1 + np.cos(np.pi * s / 20)) for s in range(4, 20)])
    assert lrs[-1] < 1e-4

    opt2 = optimizer()
    resumed = make_scheduler(opt2, total_steps=20, warmup_steps=4)
    state = make_scheduler(optimizer(), total_steps=20, warmup_steps=4)
    for _ in range(7):
        state.optimizer.step(), state.step()
    resumed.load_state_dict(state.state_dict())
    later = []
    for _ in range(13):
        later.append(resumed.get_last_lr()[0])
        opt2.step(), resumed.step()
    assert later == pytest.approx(lrs[7:])

    plain = make_scheduler(optimizer(), total_steps=20, warmup_steps=0)
    assert isinstance(plain, torch.optim.lr_scheduler.CosineAnnealingLR)
