"""The example with the sharper-decoder variants (--decoder inr / conv, presets) and the
ablation script's planning and aggregation, on tiny runs over generated tile sheets."""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rpgkit.config import DECODER_DEFAULTS, decoder_backend
from rpgkit.data import load_tiles_uint8, split_indices
from rpgkit.models import ConvEncoder, build_autoencoder
from rpgkit.training import (EXIT_INTERRUPTED, evaluate, load_checkpoint, nearest_render_l1_sum,
                             save_checkpoint, sobel_edge_l1_sum, subpixel_jitter)
from tests.test_example import (OUTPUTS, assert_same_run, example, interrupt_at,  # noqa: F401
                                read_metrics, run_env, run_files, small_args)

ROOT = Path(__file__).resolve().parents[1]
STEPS, BATCH = 10, 16
INR = {"--decoder": "inr", "--conditioning": "film", "--grid-size": "4", "--grid-channels": "6",
       "--norm": "instance"}


def tiny(env, output, **extra):
    args = {"--max-inputs": str(STEPS * BATCH), "--val-every": str(4 * BATCH), **extra}
    return small_args(env, output, **args) + (["--subpixel"] if extra.get("--decoder") == "inr"
                                              else [])


@pytest.fixture(scope="module")
def ablation():
    """The ablation script (examples/ is on sys.path: tests/conftest.py)."""
    import ablation
    return ablation


@pytest.fixture(scope="module")
def inr_run(example, run_env):
    output = run_env["root"] / "inr"
    assert example.main(tiny(run_env, output, **INR)) == 0
    return output


@pytest.fixture(scope="module")
def conv_run(example, run_env):
    output = run_env["root"] / "conv"
    assert example.main(tiny(run_env, output, **{"--decoder": "conv", "--conv-channels": "8"})) == 0
    return output


def check_learned_outputs(output):
    assert run_files(output) == OUTPUTS
    rows = read_metrics(output)
    assert [int(r["step"]) for r in rows] == [0, 4, 8, 10]
    val = [float(r["val_l1"]) for r in rows]
    assert val[-1] < val[0]  # the plumbing; that training uses the code: test_learning.py
    assert all(float(r["val_edge_l1"]) > 0 for r in rows)
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["val_l1"] == pytest.approx(val[-1])
    assert summary["decoder_macs_per_pixel"] > 0
    return summary


def test_inr_grid_film_subpixel_run(inr_run):
    summary = check_learned_outputs(inr_run)
    cfg = summary["config"]
    assert (cfg["decoder"], cfg["conditioning"], cfg["norm"], cfg["inr_output"]) == \
        ("inr", "film", "instance", "linear")
    assert cfg["subpixel"] and cfg["grid_size"] == 4 and cfg["code_size"] == 102
    # FiLM, the grid and the sub-pixel jitter go through the decode contract (here its torch
    # backend, as small_args asks), not the plain PyTorch path
    assert summary["backend"] == "torch"
    assert summary["val_l1_bn_train_mode"] is None  # no per-image BatchNorm here
    model = load_checkpoint(inr_run / "checkpoint.pt")["model"]
    # The encoder's grid head makes the 96 grid floats, its Linear the 6 global ones.
    assert model["encoder.grid_head.conv.weight"].shape == (6, 32, 1, 1)
    assert model["encoder.linear.weight"].shape[0] == 102 - 96
    assert "decoder.grid_in.weight" in model and "decoder.modulation.weight" in model


@pytest.mark.parametrize("blend", ["bilinear", "area"])
def test_sharp_with_a_linear_grid_head_runs_fused(example, run_env, blend):
    """--grid-head linear keeps the seed's encoder (its Linear makes all 102 floats, 96 of them read
    as the grid); the grid then trains on the fused backend, read bilinearly or by LIIF's area blend."""
    output = run_env["root"] / f"sharp-grid-{blend}"
    args = small_args(run_env, output, **{"--max-inputs": str(4 * BATCH), "--val-every": str(2 * BATCH)})
    assert example.main(args + ["--preset", "sharp", "--grid-size", "4", "--grid-head", "linear",
                                "--grid-blend", blend]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["backend"] in ("native", "torch") and summary["config"]["grid_head"] == "linear"
    assert summary["config"]["grid_blend"] == blend
    rows = read_metrics(output)
    assert float(rows[-1]["val_l1"]) < float(rows[0]["val_l1"])
    model = load_checkpoint(output / "checkpoint.pt")["model"]
    assert model["encoder.linear.weight"].shape[0] == 102
    assert not any(name.startswith("encoder.grid_head") for name in model)
    assert model["decoder.grid_in.weight"].shape[1] == 6 + 2


def test_inr_resume_matches(example, run_env, inr_run, monkeypatch):
    output = run_env["root"] / "inr_ctrl_c"
    interrupt_at(monkeypatch, 6, lambda: signal.raise_signal(signal.SIGINT))
    assert example.main(tiny(run_env, output, **INR)) == EXIT_INTERRUPTED
    monkeypatch.undo()
    assert example.main(["--output", str(output), "--resume", "--quiet"]) == 0
    assert_same_run(inr_run, output)


def test_conv_decoder_run(conv_run):
    summary = check_learned_outputs(conv_run)
    assert summary["config"]["decoder"] == "conv" and summary["backend"] == "plain PyTorch"
    assert "decoder.project.weight" in load_checkpoint(conv_run / "checkpoint.pt")["model"]


def test_seed_preset_records_batch_norm_train_and_eval(example, run_env):
    output = run_env["root"] / "seed_preset"
    args = small_args(run_env, output, **{"--max-inputs": str(2 * BATCH),
                                          "--val-every": str(2 * BATCH), "--preset": "seed"})
    assert example.main(args) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert (summary["config"]["activation_out"], summary["config"]["batch_norm"]) == \
        ("sigmoid", "image")
    # Both numbers are the final weights measured on the validation tiles: in eval mode (running
    # statistics) and in training mode (each image's own statistics).
    saved = load_checkpoint(output / "checkpoint.pt")["model"]
    model = build_autoencoder(summary["config"])
    model.load_state_dict(saved)
    tiles = load_tiles_uint8([run_env["sheet"]])
    val = tiles[split_indices(tiles, summary["config"]["split"]).val]
    assert evaluate(model, val)["val_l1"] == pytest.approx(summary["val_l1"], rel=1e-6)
    assert evaluate(model, val, train_mode=True)["val_l1"] == \
        pytest.approx(summary["val_l1_bn_train_mode"], rel=1e-6)
    # Measuring in training mode leaves the running statistics as they were.
    tiles = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    evaluate(model, tiles, train_mode=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_preset_is_overridden_by_explicit_flags(example):
    _, cfg, *_ = example.configure(["--preset", "seed", "--activation-out", "none",
                                    "--output", "/nonexistent/never-written", "--device", "cpu"])
    assert (cfg["activation_out"], cfg["batch_norm"]) == ("none", "image")
    _, cfg, *_ = example.configure(["--decoder", "inr", "--preset", "seed",
                                    "--output", "/nonexistent/never-written", "--device", "cpu"])
    assert (cfg["norm"], cfg["inr_output"]) == ("image-bn", "sigmoid")
    _, cfg, *_ = example.configure(["--preset", "baseline", "--output", "/nonexistent/never-written",
                                    "--device", "cpu"])
    assert (cfg["preset"], cfg["decoder"], cfg["activation_out"], cfg["batch_norm"], cfg["hidden"],
            cfg["layers_per_block"], cfg["batch_size"], cfg["lr"], cfg["refine_steps"]) == \
        ("baseline", "seed", "none", "none", 256, 2, 64, 1e-3, 0)   # the seed with a linear output
    _, default, *_ = example.configure(["--output", "/nonexistent/never-written", "--device", "cpu"])
    _, cfg, *_ = example.configure(["--preset", "sharp", "--num-freqs", "8",
                                    "--output", "/nonexistent/never-written", "--device", "cpu"])
    assert default["preset"] == "sharp" and {**default, "num_freqs": 8} == cfg   # the default
    assert (cfg["decoder"], cfg["norm"], cfg["inr_output"], cfg["embedding"], cfg["num_freqs"],
            cfg["batch_size"], cfg["lr"], cfg["warmup"]) == ("inr", "instance", "linear", "log", 8, 16, 2e-3, 5000)
    assert (cfg["grid_size"], cfg["grid_channels"], cfg["grid_head"], cfg["hidden"], cfg["blocks"],
            cfg["layers_per_block"], cfg["subpixel"], cfg["refine_steps"]) == \
        (4, 6, "linear", 128, 2, 2, True, 10)
    assert cfg["grid_size"] ** 2 * cfg["grid_channels"] + 6 == cfg["code_size"] == 102
    assert decoder_backend(cfg, torch.device("cpu")) in ("native", "torch")  # fused
    for decoder in ("seed", "conv"):   # another decoder takes the preset's recipe, not its INR settings
        _, cfg, *_ = example.configure(["--preset", "sharp", "--decoder", decoder,
                                        "--output", "/nonexistent/never-written", "--device", "cpu"])
        assert (cfg["decoder"], cfg["grid_size"], cfg["subpixel"], cfg["batch_size"], cfg["lr"]) == \
            (decoder, 0, False, 16, 2e-3)


@pytest.mark.parametrize("argv, message", [
    (["--subpixel"], "--decoder inr"),
    (["--decoder", "inr", "--grid-size", "5"], "leave no global part"),
    (["--decoder", "conv", "--backend", "native"], "only the PyTorch path"),
    (["--grid-size", "4"], "only --decoder inr"),
    (["--decoder", "inr", "--grid-blend", "area"], "needs --grid-size >= 1"),
    (["--decoder", "inr", "--activation-out", "tanh"], "--inr-output"),
])
def test_bad_variant_flags(example, argv, message, capsys):
    with pytest.raises(SystemExit):   # on the baseline preset's seed decoder unless they name one
        example.configure(["--preset", "baseline"] + argv +
                          ["--output", "/nonexistent/never-written", "--device", "cpu"])
    assert message in capsys.readouterr().err


def test_subpixel_training_is_fused_and_can_be_turned_off(example):
    _, cfg, *_ = example.configure(["--preset", "sharp", "--backend", "native",
                                    "--output", "/nonexistent/never-written", "--device", "cpu"])
    assert cfg["subpixel"] and decoder_backend(cfg, torch.device("cpu")) == "native"
    _, cfg, *_ = example.configure(["--preset", "sharp", "--no-subpixel",
                                    "--output", "/nonexistent/never-written", "--device", "cpu"])
    assert not cfg["subpixel"]


def test_subpixel_points_stay_in_their_pixel():
    cfg = {"seed": 3, "batch_size": 4}
    jitter = subpixel_jitter(7, cfg, torch.device("cpu"))
    assert jitter.shape == (32, 32, 2)
    offset = jitter * (31 / 2)          # in pixels
    assert offset.abs().max() <= 0.5 and offset.abs().max() > 0.4 and offset.std() > 0.2
    assert torch.equal(jitter, subpixel_jitter(7, cfg, torch.device("cpu")))  # resumable
    assert not torch.equal(jitter, subpixel_jitter(8, cfg, torch.device("cpu")))


def test_grid_encoder_layout():
    encoder = ConvEncoder((3, 32, 32), 102, grid_size=4, grid_channels=6)
    images = torch.rand(2, 3, 32, 32)
    codes = encoder(images)
    assert codes.shape == (2, 102)
    features = encoder.convolution(images)
    pooled = torch.nn.functional.adaptive_avg_pool2d(features, 4)
    grid = encoder.grid_head.conv(pooled)                       # (2, 6, 4, 4)
    torch.testing.assert_close(codes[:, :96].reshape(2, 6, 4, 4), grid)
    torch.testing.assert_close(codes[:, 96:], encoder.linear(features.flatten(1)))
    with pytest.raises(ValueError, match="no global part"):
        ConvEncoder((3, 32, 32), 96, grid_size=4, grid_channels=6)


def test_sobel_edge_l1():
    target = torch.zeros(1, 1, 5, 5)
    target[..., 2:] = 1.0                                     # a vertical edge
    total, count = sobel_edge_l1_sum(torch.zeros_like(target), target)
    assert count == 2 * 9 and total == pytest.approx(4 * 6)   # 6 of 9 x-responses are 4
    assert sobel_edge_l1_sum(target, target)[0] == 0
    with pytest.raises(ValueError, match="same"):
        sobel_edge_l1_sum(target, target[..., :4])


def test_nearest_render_l1():
    target = torch.rand(2, 3, 4, 5)
    nearest = target.repeat_interleave(3, -2).repeat_interleave(3, -1)
    assert nearest_render_l1_sum(nearest, target) == (0.0, 2 * 3 * 12 * 15)
    total, count = nearest_render_l1_sum(nearest + 0.25, target)
    assert total / count == pytest.approx(0.25)
    with pytest.raises(ValueError, match="whole multiple"):
        nearest_render_l1_sum(nearest[..., :14], target)


@torch.no_grad()
def test_render_samples_each_enlarged_pixel_at_its_own_centre(inr_run, conv_run):
    """At scale 3 the middle sub-pixel of every pixel is its centre: the render's every third
    pixel is the decode at the training grid, for the implicit and the conv decoder alike (the
    implicit one without per-image normalization, whose statistics are over the points decoded)."""
    import render_check
    for run in (inr_run, conv_run):
        model, cfg = render_check.load_model(run)
        if cfg["decoder"] == "inr":
            cfg["norm"] = "none"
            model = build_autoencoder(cfg).eval()
        images = render_check.held_out_tiles(cfg)[0][:3].float().div(255.0)
        codes = model.encoder(images)
        render = model.render(codes, 3)
        assert render.shape == (3, 3, 96, 96)
        torch.testing.assert_close(render[..., 1::3, 1::3], model.decode(codes), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(model.render(codes, 1), model.decode(codes), atol=2e-5, rtol=1e-4)


def test_render_check_rebuilds_runs_and_scores_their_renders(inr_run, conv_run, tmp_path):
    """The command as documented: each run's model from its checkpoint, scored on its own test
    tiles as the run scored them when it finished."""
    picture = tmp_path / "renders.png"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "render_check.py"), "--output",
                           str(picture), "--pictures", "2", f"inr={inr_run}", f"conv={conv_run}"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    for label, run in (("inr", inr_run), ("conv", conv_run)):
        l1 = json.loads((run / "summary.json").read_text())["test"]["l1"]
        assert f"| {label} | 1 | {l1:.4f} ± 0.0000 | 0." in proc.stdout
    assert picture.stat().st_size > 1000
    bad = subprocess.run([sys.executable, str(ROOT / "examples" / "render_check.py"), "--output",
                          str(picture), f"x={tmp_path}"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "has no checkpoint.pt" in bad.stderr


def test_ablation_plans_skips_and_aggregates(ablation, inr_run, conv_run, run_env, tmp_path, capsys):
    root = tmp_path / "campaign"
    for name, run in (("film-grid", inr_run), ("conv", conv_run)):
        shutil.copytree(run, ablation.run_dir(root, name, 0))
    shutil.copytree(conv_run, ablation.run_dir(root, "conv", 1))
    table = ablation.aggregate(root, ["seed", "film-grid", "conv"], ["--tiles", str(run_env["sheet"])])
    inr_l1 = json.loads((inr_run / "summary.json").read_text())["val_l1"]
    conv_l1 = json.loads((conv_run / "summary.json").read_text())["val_l1"]
    assert f"| film-grid | 1 | {inr_l1:.4f} ± 0.0000 |" in table
    assert f"| conv | 2 | {conv_l1:.4f} ± 0.0000 |" in table
    assert "| seed |" not in table
    summary = json.loads((inr_run / "summary.json").read_text())
    assert f"Split: groups ({summary['tiles']['train']:,} training, " in table
    refs = summary["references"]
    for name in ("mean color", "PCA-102", "nearest training tile"):
        assert f"| {name} | {refs['val'][name]['l1']:.4f} | " in table
        assert f" | {refs['test'][name]['l1']:.4f} | {refs['test'][name]['psnr']:.2f} | " in table
    assert (root / "results.md").read_text() == table
    assert (root / "curves.png").stat().st_size > 1000
    assert ablation.best_variant(root, ["film-grid", "conv"]) == \
        ("film-grid" if inr_l1 < conv_l1 else "conv")
    # Finished runs are skipped, a stopped one is resumed, a missing one is started.
    (ablation.run_dir(root, "grid", 0)).mkdir(parents=True)
    (ablation.run_dir(root, "grid", 0) / "checkpoint.pt").write_bytes(b"")
    capsys.readouterr()
    ablation.run_variant(root, "conv", ["--decoder", "conv"], range(3), ["--hidden", "8"],
                         dry_run=True)
    ablation.run_variant(root, "grid", ["--grid-size", "4"], range(1), [], dry_run=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[skip] conv seed 0") and out[1].startswith("[skip] conv seed 1")
    assert out[2].startswith("[run] conv seed 2") and "--seed 2 --decoder conv --hidden 8" in out[2]
    assert out[3].startswith("[run] grid seed 0") and "--resume" in out[3]


def test_resume_of_a_checkpoint_from_before_the_variants(example, run_env):
    """A checkpoint whose config lacks the decoder settings resumes as the seed decoder."""
    output = run_env["root"] / "old_style"
    args = small_args(run_env, output, **{"--max-inputs": str(2 * BATCH),
                                          "--val-every": str(BATCH)})
    assert example.main(args) == 0
    state = load_checkpoint(output / "checkpoint.pt")
    assert not any(key.startswith("encoder.grid_head") for key in state["model"])
    for key in DECODER_DEFAULTS:
        state["config"].pop(key)
    state["step"] = 1  # one step left to train
    save_checkpoint(output / "checkpoint.pt", state)
    assert example.main(["--output", str(output), "--resume", "--quiet"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["config"]["decoder"] == "seed"
