"""Training uses the code: a short run of the example beats every decoder that ignores its input.

A decoder whose output does not depend on the image gives one picture for every tile, and under
L1 no single picture does better than the per-pixel median of the tiles it is scored on. So
"below the median picture's L1" is a bound only a model that carries the tile through its code can
pass, not a bias that drifts towards the mean colour, nor a decoder whose code gradient is wrong.
The tiles are made for a short run: every tile has its own background colour (which the code must
carry) and one rectangle of another colour. The negative control trains the same run with the
code zeroed and shows that the bound cannot be met without the code.

The runs are scored from their checkpoints on all tiles of the sheet, so the test does not depend
on how the example splits them. Measured over 9 sheets (fresh seeds): the seed decoder after 60
steps reached 0.25-0.45 of the median picture's L1, the INRDecoder after 120 steps 0.27-0.87.
With the encoder's output detached (no gradient reaches the code) both runs stayed at the median
picture's L1 and failed (0.2433 and 0.2621 against 0.2428).
"""
import contextlib
import io

import numpy as np
import PIL.Image
import pytest
import torch

from rpgkit.config import saved_config
from rpgkit.data import load_tiles_uint8
from rpgkit.models import build_autoencoder
from rpgkit.models.autoencoder import EncoderDecoder
from rpgkit.training import load_checkpoint
from tests.test_example import example, run_env, small_args  # noqa: F401
from tests.test_variants_example import INR

BATCH = 16
# (extra flags, steps, bound as a fraction of the median picture's L1)
RUNS = {"seed-decoder": ({}, 60, 0.6),
        "inr": ({**INR, "--subpixel": None}, 120, 1.0)}


def colour_sheet(path, n, seed, cols=16):
    """n opaque 32x32 tiles, each a random background colour with one rectangle of another."""
    rng = np.random.default_rng(seed)
    sheet = np.zeros((-(-n // cols) * 32, cols * 32, 4), np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        cell = sheet[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32]
        cell[..., :3] = rng.integers(0, 256, 3)
        cell[..., 3] = 255
        y0, x0 = rng.integers(0, 20, 2)
        h, w = rng.integers(6, 12, 2)
        cell[y0:y0 + h, x0:x0 + w, :3] = rng.integers(0, 256, 3)
    PIL.Image.fromarray(sheet, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def colour_env(run_env):
    root = run_env["root"] / "colours"
    root.mkdir()
    sheet = colour_sheet(root / "colours.png", 200, run_env["seed"])
    tiles = load_tiles_uint8([str(sheet)]).float() / 255
    return {**run_env, "root": root, "sheet": sheet, "tiles": tiles}


def median_picture_l1(tiles):
    """The L1 of the best code-blind reconstruction: the per-pixel median of the tiles."""
    return (tiles - tiles.median(dim=0).values).abs().mean().item()


def checkpoint_l1(output, tiles):
    """The L1 of a finished run's reconstructions of `tiles` (eval mode, clamped as the example)."""
    state = load_checkpoint(output / "checkpoint.pt")
    model = build_autoencoder(saved_config(state))
    model.load_state_dict(state["model"])
    with torch.no_grad():
        return (model.eval()(tiles).clamp(0, 1) - tiles).abs().mean().item()


def train(example, env, name, extra, steps):
    output = env["root"] / name
    flags = {k: v for k, v in extra.items() if v is not None}
    args = small_args(env, output, **flags, **{"--max-inputs": str(steps * BATCH),
                                               "--val-every": str(steps * BATCH)})
    args += [k for k, v in extra.items() if v is None]
    with contextlib.redirect_stdout(io.StringIO()):
        assert example.main(args) == 0
    return checkpoint_l1(output, env["tiles"])


def zeroed_code(self, x, shape=None, coords=None, jitter=None):
    """EncoderDecoder.forward with the encoder's code replaced by zeros (same shape)."""
    return self.decode(torch.zeros_like(self.encoder(x)), shape, coords, jitter)


@pytest.mark.parametrize("name", RUNS)
def test_a_short_run_beats_every_code_blind_decoder(example, colour_env, name):
    extra, steps, fraction = RUNS[name]
    bound = median_picture_l1(colour_env["tiles"])
    l1 = train(example, colour_env, name, extra, steps)
    assert l1 < fraction * bound, (f"{name}: L1 {l1:.4f} after {steps} steps, the median picture "
                                   f"(the best code-blind output) {bound:.4f}")


def test_with_the_code_zeroed_the_bound_is_out_of_reach(example, colour_env, monkeypatch):
    """The negative control: the bound above is one that a code-blind model cannot meet."""
    monkeypatch.setattr(EncoderDecoder, "forward", zeroed_code)
    extra, steps, fraction = RUNS["seed-decoder"]
    bound = median_picture_l1(colour_env["tiles"])
    l1 = train(example, colour_env, "zeroed-code", extra, steps)
    # One picture for every tile: no better than the median picture (float32 rounding aside).
    assert l1 >= bound * (1 - 1e-5) and not l1 < fraction * bound
