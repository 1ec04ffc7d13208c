"""Backend selection: auto, FASTINR_BACKEND, and forced backends that cannot run."""
import pytest
import torch

import fastinr
from fastinr import backend, reference


def test_torch_backend_is_the_reference():
    name, decode = fastinr.resolve_backend("torch", "cpu")
    assert name == "torch" and decode is reference.decode


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv("FASTINR_BACKEND", "torch")
    assert fastinr.resolve_backend("auto", "cpu")[0] == "torch"
    monkeypatch.setenv("FASTINR_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTINR_BACKEND"):
        fastinr.resolve_backend("auto", "cpu")


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(backend.BackendUnavailable, match=r"'triton' was requested but cannot run.*CUDA"):
        fastinr.resolve_backend("triton", "cpu")


def test_auto_degrades_with_one_warning(monkeypatch):
    monkeypatch.delenv("FASTINR_BACKEND", raising=False)
    monkeypatch.setattr(backend, "_load", lambda name: (reference, None) if name == "torch"
                        else (None, "ImportError: not built"))
    monkeypatch.setattr(backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"backend 'native' is unavailable on cpu \(ImportError: not built\)"):
        assert fastinr.resolve_backend("auto", "cpu")[0] == "torch"
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastinr.resolve_backend("auto", "cpu")[0] == "torch"


def test_available_backends_always_has_torch():
    assert "torch" in fastinr.available_backends("cpu")


def test_embedding_values_and_order():
    emb = fastinr.pos_embedding(3, 5, (7.0, 17.0), dtype=torch.float64)
    assert emb.shape == (15, fastinr.pos_embedding_size((7, 17))) == (15, 10)
    row, col = 2, 1  # pixel index 11
    x, y = -1 + 2 * col / 4, -1 + 2 * row / 2
    expected = torch.tensor([x, y, *(f(k * v) for f in (torch.sin, torch.cos) for k in (7.0, 17.0)
                                     for v in (torch.tensor(x), torch.tensor(y)))], dtype=torch.float64)
    torch.testing.assert_close(emb[row * 5 + col], expected)
    assert fastinr.pos_embedding(1, 1, ()).tolist() == [[-1.0, -1.0]]
