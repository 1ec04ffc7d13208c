"""Backend selection: auto, FASTINR_BACKEND, and forced backends that cannot run."""
import pytest
import torch

import fastinr
from fastinr import backends as backend, reference
from fastinr.backends import torch_backend
from fastinr.contract import InputOffset


def test_torch_backend_is_the_chunked_reference():
    name, decode = fastinr.resolve_backend("torch", "cpu")
    assert name == "torch" and decode is torch_backend.decode


@pytest.mark.parametrize("norm_stats", ["image", "running", "batch"])
def test_chunked_torch_backend_equals_the_reference(monkeypatch, norm_stats):
    """Chunks of images (forced tiny here) give the reference's colors, gradients and stats."""
    monkeypatch.setattr(torch_backend, "CHUNK_BYTES", 1)
    model = fastinr.ImageManifoldDecoder(9, num_hidden=16, concat_residual=(True, False),
                                         backend="torch").double()
    params, spec = model.decoder_params(), model.spec
    running = [(torch.randn(w, dtype=torch.float64), torch.rand(w, dtype=torch.float64) + 0.5)
               for w in spec.block_widths]
    codes = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    results = []
    for decode in (torch_backend.decode, reference.decode):
        colors, stats = decode(codes, params, spec, (3, 4), norm_stats, running)
        grads = torch.autograd.grad((colors * colors.detach().cos()).sum(), [codes, *params.flat()])
        results.append((colors, [tuple(s) for s in stats], grads))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_image", [False, True], ids=["shared", "per_image"])
def test_chunked_torch_backend_splits_the_input_offset(monkeypatch, per_image):
    """An input offset's cells, and a per-image basis (B, H, W, K), are split like the codes; a
    shared basis (H, W, K) goes to every chunk whole."""
    monkeypatch.setattr(torch_backend, "CHUNK_BYTES", 1)
    model = fastinr.ImageManifoldDecoder(9, num_hidden=16, backend="torch").double()
    params, spec = model.decoder_params(), model.spec
    codes = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    basis = torch.rand(*((5,) if per_image else ()), 3, 4, 2, dtype=torch.float64)
    cells = torch.randn(5, 2, 16, dtype=torch.float64, requires_grad=True)
    results = []
    for decode in (torch_backend.decode, reference.decode):
        colors, stats = decode(codes, params, spec, (3, 4), "image", (), None, InputOffset(basis, cells))
        grads = torch.autograd.grad((colors * colors.detach().cos()).sum(), [codes, cells, *params.flat()])
        results.append((colors, [tuple(s) for s in stats], grads))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_environment_forces_a_backend(monkeypatch):
    monkeypatch.setenv("FASTINR_BACKEND", "torch")
    assert fastinr.resolve_backend("auto", "cpu")[0] == "torch"
    monkeypatch.setenv("FASTINR_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="FASTINR_BACKEND"):
        fastinr.resolve_backend("auto", "cpu")


def test_forced_backend_that_cannot_run_raises(monkeypatch):
    # Triton reads TRITON_INTERPRET when a kernel is decorated: import the kernels as every other
    # test does before taking the interpreter away, or later tests get kernels without it.
    backend._load("triton")
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
