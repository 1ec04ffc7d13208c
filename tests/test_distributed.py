"""DistributedDataParallel (2 gloo processes on the CPU) against one process, a few training steps.

Two processes each decode half of the batch. With `fastinr.sync_running_stats`, the BatchNorm
running statistics must be those of one process that saw the whole batch (per-image statistics:
every image once, in batch order; statistics over the batch: one update from the global batch's
statistics, SyncBatchNorm's semantics); the averaged gradients must be those of the whole batch,
and so must the losses and the weights after STEPS steps of SGD. On the native and the torch
backends. The only difference allowed is float32 rounding, measured as torch's own float32 error:
the one-process float32 run against the same steps in float64 (the `torch` backend); the
two-process result may be at most ERROR_FACTOR times that far from float64 (plus a floor of a few
float32 ulps of the largest value). What differs in the two-process run: DDP's gradient
all-reduce (the mean of two half-batch sums instead of one sum) and, with statistics over the
batch, the moments and gradient sums combined from two halves (in float64) instead of one pass.
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
from tests.conftest import _test_seed

BATCH, SHAPE, CODE = 6, (3, 32, 32), 40
STEPS, LR = 3, 0.05
BACKENDS = ("native", "torch")
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
    # statistics over the global batch (--batch-norm batch, --norm batch-bn)
    "seed-batch-bn": lambda: fastinr.ImageManifoldDecoder(CODE, 3, num_hidden=16, num_blocks=2,
                                                          num_layers_per_block=1, concat_residual=(True, False),
                                                          batch_norm_stats="batch",
                                                          default_shape=SHAPE[1:]),
    "inr-batch-bn": lambda: fastinr.INRDecoder(CODE, 3, hidden=16, num_blocks=2, layers_per_block=1,
                                               norm="batch-bn", conditioning="film",
                                               default_shape=SHAPE[1:]),
}


def build(name, seed, backend):
    torch.manual_seed(seed)
    model = EncoderDecoder(build_encoder("conv", SHAPE, CODE), DECODERS[name]())
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend
    return model


def train(model, images, world=1):
    """STEPS steps of SGD on the L1 loss: the first step's gradients, then the losses (the global
    batch's: the mean of the processes' means), buffers and weights at the end, by name."""
    module = model.module if hasattr(model, "module") else model
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    losses, grads = [], None
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = F.l1_loss(model(images), images)
        loss.backward()
        if grads is None:
            grads = {n: p.grad.detach().clone() for n, p in module.named_parameters()}
        total = loss.detach().clone()
        if world > 1:
            dist.all_reduce(total)
        losses.append(total / world)
        optimizer.step()
    buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}
    return dict(gradient=grads, loss={"loss": torch.stack(losses)}, buffer=buffers, weight=weights)


def _worker(rank, world, port, seed, images, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        share = BATCH // world
        results = {}
        for name in DECODERS:
            for backend in BACKENDS:
                model = build(name, seed, backend)
                assert fastinr.sync_running_stats(model) == 1
                ddp = torch.nn.parallel.DistributedDataParallel(model)
                results[name, backend] = train(ddp, images[rank * share:(rank + 1) * share], world)
                del ddp
        if rank == 0:
            torch.save(results, out)
        # Tear down together: a rank that destroys its gloo group while the other still talks to
        # it can abort ("terminate called without an active exception", seen once in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """(seed, images, every decoder's and backend's results from 2 processes): one spawn for all
    (starting the processes costs more than their steps)."""
    seed = _test_seed()
    torch.manual_seed(seed)
    images = torch.rand(BATCH, *SHAPE)
    images[:, :, :8] = 0  # sprite-like: exact zeros
    out = tmp_path_factory.mktemp("ddp") / "ddp.pt"
    mp.spawn(_worker, args=(2, free_port(), seed, images, out), nprocs=2)
    return seed, images, torch.load(out, weights_only=True)


@pytest.mark.parametrize("name", list(DECODERS))
def test_two_processes_match_one(name, two_processes, request):
    seed, images, results = two_processes
    request.node.fastinr_seed = seed   # the seed the failure report prints: the spawn's
    exact = train(build(name, seed, "torch").double(), images.double())
    per_image = "image" in name
    for backend in BACKENDS:
        two, one = results[name, backend], train(build(name, seed, backend), images)
        tracked = [k for k in one["buffer"] if k.endswith("num_batches_tracked")]
        assert tracked, "the decoder should have BatchNorm buffers"
        for key in tracked:  # per image: every image counted once; over the batch: once a step
            assert int(two["buffer"][key]) == int(one["buffer"][key]) == STEPS * (
                BATCH * (4 if "area" in name else 1) if per_image else 1), key
        for kind in ("loss", "gradient", "buffer", "weight"):
            assert two[kind].keys() == one[kind].keys() == exact[kind].keys()
            for key in one[kind]:
                if not one[kind][key].is_floating_point():
                    continue
                truth = exact[kind][key]
                own = (one[kind][key].double() - truth).abs().max().item()
                floor = ULPS * truth.abs().max().item()
                err = (two[kind][key].double() - truth).abs().max().item()
                assert err <= ERROR_FACTOR * own + floor, (
                    f"{backend} {kind} {key}: two processes are {err:.3g} from float64, one "
                    f"process {own:.3g} (allowed {ERROR_FACTOR} x that + {floor:.3g})")


def test_batch_statistics_stay_local_outside_training_steps():
    """A synced decoder reduces across processes only in a training decode: not in eval mode, and
    not inside local_running_stats (a forward that runs on one process)."""
    decoder = fastinr.ImageManifoldDecoder(CODE, 3, num_hidden=16, num_blocks=1,
                                           batch_norm_stats="batch", default_shape=(4, 4))
    decoder.running_stats_group = object()  # what sync_running_stats sets: any collective fails
    with fastinr.local_running_stats(decoder):
        assert decoder(torch.randn(2, CODE)).shape == (2, 3, 4, 4)
    assert int(decoder.pos_to_color.resblocks[0].layers.norm.num_batches_tracked) == 1
    decoder.eval()  # running statistics: nothing to share
    assert decoder(torch.randn(2, CODE)).shape == (2, 3, 4, 4)


def test_sync_needs_a_process_group():
    with pytest.raises(RuntimeError, match="init_process_group"):
        fastinr.sync_running_stats(torch.nn.Linear(2, 2))
