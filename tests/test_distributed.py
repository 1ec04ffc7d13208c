"""DistributedDataParallel (2 gloo processes on the CPU) against one process, one training step.

Two processes each decode half of the batch. With `fastinr.sync_running_stats`, the BatchNorm
running statistics must be those of one process that saw the whole batch (every image once, in
batch order); the averaged gradients must be those of the whole batch. The only difference
allowed is float32 rounding, measured as torch's own float32 error: the one-process float32 run
against the same step in float64 (the `torch` backend); the two-process result may be at most
ERROR_FACTOR times that far from float64 (plus a floor of a few float32 ulps of the largest value).
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import fastinr
from rpgkit.models import EncoderDecoder, build_encoder

BATCH, SHAPE, CODE = 6, (3, 32, 32), 40
ERROR_FACTOR = 4
ULPS = 8 * torch.finfo(torch.float32).eps

DECODERS = {
    # the seed's decoder with its per-image BatchNorm
    "seed-image-bn": lambda: fastinr.ImageManifoldDecoder(CODE, 3, num_hidden=16, num_blocks=2,
                                                          num_layers_per_block=1,
                                                          default_shape=SHAPE[1:]),
    # LIIF's area ensemble: 4 members per image, each normalized per image
    "inr-area-image-bn": lambda: fastinr.INRDecoder(CODE, 3, hidden=16, num_blocks=1,
                                                    layers_per_block=1, norm="image-bn",
                                                    grid_size=2, grid_channels=4,
                                                    grid_blend="area", default_shape=SHAPE[1:]),
}


def build(name, seed):
    torch.manual_seed(seed)
    return EncoderDecoder(build_encoder("conv", SHAPE, CODE), DECODERS[name]())


def step(model, images):
    """Forward + backward: (gradients, buffers) by name."""
    loss = F.l1_loss(model(images), images)
    loss.backward()
    module = model.module if hasattr(model, "module") else model
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    return grads, buffers


def _worker(rank, world, port, name, seed, images, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = build(name, seed)
        assert fastinr.sync_running_stats(model) == 1
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        share = BATCH // world
        result = step(ddp, images[rank * share:(rank + 1) * share])
        if rank == 0:
            torch.save(result, out)
        # Tear down together: a rank that destroys its gloo group while the other still talks to
        # it can abort ("terminate called without an active exception", seen once in CI).
        del ddp
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("name", list(DECODERS))
def test_two_processes_match_one(name, tmp_path, _fresh_seed):
    images = torch.rand(BATCH, *SHAPE)
    images[:, :, :8] = 0  # sprite-like: exact zeros
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, free_port(), name, _fresh_seed, images, out), nprocs=2)
    two_grads, two_buffers = torch.load(out, weights_only=True)

    one_grads, one_buffers = step(build(name, _fresh_seed), images)
    oracle = build(name, _fresh_seed).double()
    for module in oracle.modules():
        if hasattr(module, "backend"):
            module.backend = "torch"
    oracle_grads, oracle_buffers = step(oracle, images.double())

    assert two_buffers.keys() == one_buffers.keys() and two_grads.keys() == one_grads.keys()
    tracked = [k for k in one_buffers if k.endswith("num_batches_tracked")]
    assert tracked, "the decoder should have BatchNorm buffers"
    for key in tracked:  # every image counted once, on every process
        assert int(two_buffers[key]) == int(one_buffers[key]) == BATCH * (
            4 if "area" in name else 1), key
    for kind, two, one, exact in (("buffer", two_buffers, one_buffers, oracle_buffers),
                                  ("gradient", two_grads, one_grads, oracle_grads)):
        for key in one:
            if not one[key].is_floating_point():
                continue
            own = (one[key].double() - exact[key]).abs().max().item()
            floor = ULPS * exact[key].abs().max().item()
            err = (two[key].double() - exact[key]).abs().max().item()
            assert err <= ERROR_FACTOR * own + floor, (
                f"{kind} {key}: two processes are {err:.3g} from float64, one process "
                f"{own:.3g} (allowed {ERROR_FACTOR} x that + {floor:.3g})")


def test_batch_statistics_refused_across_processes():
    decoder = fastinr.ImageManifoldDecoder(CODE, 3, num_hidden=16, num_blocks=1,
                                           batch_norm_stats="batch", default_shape=(4, 4))
    decoder.running_stats_group = object()  # what sync_running_stats sets
    with pytest.raises(ValueError, match="statistics over the batch cannot run across processes"):
        decoder(torch.randn(2, CODE))
    decoder.eval()  # running statistics: nothing to share
    assert decoder(torch.randn(2, CODE)).shape == (2, 3, 4, 4)


def test_sync_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        fastinr.sync_running_stats(torch.nn.Linear(2, 2))
