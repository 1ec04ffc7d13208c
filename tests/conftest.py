"""Test-wide settings.

Without a GPU the Triton kernels run under the interpreter; triton reads TRITON_INTERPRET when
a kernel is decorated, so it is set here, before any test imports fastinr.ops.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _fresh_seed():
    """Fresh random inputs every test, yet reproducible from the printed seed on failure."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    yield seed
