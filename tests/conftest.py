"""Test-wide settings.

Without a GPU the Triton kernels run under the interpreter; triton reads TRITON_INTERPRET when
a kernel is decorated, so it is set here, before any test imports fastinr.ops.

Every test draws fresh random inputs from a seed of its own. A failing test prints that seed in
its report ("fastinr seed" section) with the command that replays it:
FASTINR_TEST_SEED=N python -m pytest 'tests/test_x.py::test_y[...]'.
"""
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The example's kit (rpgkit) lives beside the example scripts, not in the library.
EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SEED_VARIABLE = "FASTINR_TEST_SEED"


def _test_seed() -> int:
    given = os.environ.get(SEED_VARIABLE)
    if given is None:
        return int.from_bytes(os.urandom(4), "little")
    try:
        return int(given)
    except ValueError:
        raise pytest.UsageError(f"{SEED_VARIABLE} must be an integer, got {given!r}") from None


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Fresh random inputs every test (torch, NumPy, random), replayable from the printed seed."""
    seed = _test_seed()
    request.node.fastinr_seed = seed
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "fastinr_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("fastinr seed", f"seed {seed}; replay with: {SEED_VARIABLE}={seed} "
                                                f"python -m pytest '{item.nodeid}'"))
