"""The decoders' BatchNorm running statistics, updated as the seed's per-image loop left them,
in one process or across the processes of DistributedDataParallel.

A decoder's BatchNorm plumbing is two calls around its decode: `decode_norm_stats(decoder,
norms, mode)` picks the statistics from its state (`mode`, "image" or "batch", in training or
without running statistics; the running ones in eval) and the `running` argument; after the
decode, `fold_decode_stats(decoder, norms, stats)` folds the returned statistics (`BlockStats`:
per image, or over the batch) into the BatchNorms' buffers (`fold_running_stats`), once per
image in batch order for per-image statistics.

Under DDP every process sees only its share of the global batch. After
`sync_running_stats(model)`, each decoder gathers the per-image statistics of all processes
(one all_gather per forward) and every process applies the same update, in global batch order
(process 0's images first), so the buffers equal a single process's that saw the whole batch.
Statistics over the batch are reduced across processes inside the decode, SyncBatchNorm's
semantics: `batch_reducer(decoder, mode)` gives the decode a reducer (an all_reduce over the
process group; fastinr.contract), every BatchNorm normalizes with the global batch's moments and
its backward reduces the sums of dy and dy * xhat, and the returned statistics are the global
batch's, so every process applies the one update a single process would.
"""
import contextlib
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from fastinr.contract import BlockStats
from fastinr.reference import update_running_stats as update_buffers

__all__ = ["batch_reducer", "decode_norm_stats", "fold_decode_stats", "fold_running_stats",
           "group_reducer", "local_running_stats", "sync_running_stats"]

_ATTRIBUTE = "running_stats_group"  # set on a decoder by sync_running_stats


def sync_running_stats(model: nn.Module, process_group=None) -> int:
    """Make every fastinr decoder inside `model` update its running statistics from the whole
    global batch (torch.distributed must be initialized). Returns the number of decoders."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("sync_running_stats needs an initialized torch.distributed process "
                           "group (torch.distributed.init_process_group)")
    count = 0
    for module in model.modules():
        if hasattr(module, _ATTRIBUTE):
            setattr(module, _ATTRIBUTE, process_group or dist.group.WORLD)
            count += 1
    return count


@contextlib.contextmanager
def local_running_stats(model: nn.Module):
    """Inside, the decoders of `model` update their running statistics from this process's
    images only (for a forward that runs on one process, e.g. a training-mode evaluation)."""
    saved = [(m, getattr(m, _ATTRIBUTE)) for m in model.modules() if hasattr(m, _ATTRIBUTE)]
    for module, _ in saved:
        setattr(module, _ATTRIBUTE, None)
    try:
        yield
    finally:
        for module, group in saved:
            setattr(module, _ATTRIBUTE, group)


_GROUP_REDUCERS = {}  # process group -> its reducer: one object per group (the native ops keep it)


def group_reducer(process_group):
    """The reducer (fastinr.contract) of `process_group`: an all_reduce sum in place (a CPU tensor
    of an nccl group goes through the current CUDA device)."""
    if process_group not in _GROUP_REDUCERS:
        def reduce_(tensor: torch.Tensor) -> None:
            if tensor.device.type == "cpu" and dist.get_backend(process_group) == "nccl":
                on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
                dist.all_reduce(on_device, group=process_group)
                tensor.copy_(on_device)
            else:
                dist.all_reduce(tensor, group=process_group)
        _GROUP_REDUCERS[process_group] = reduce_
    return _GROUP_REDUCERS[process_group]


def batch_reducer(decoder: nn.Module, norm_stats: str):
    """The reducer for a decode of `decoder` with `norm_stats` (from decode_norm_stats): its process
    group's when the decoder is synced and normalizes with statistics over the batch, else None."""
    group = getattr(decoder, _ATTRIBUTE, None)
    return group_reducer(group) if group is not None and norm_stats == "batch" else None


def decode_norm_stats(decoder: nn.Module, norms: Sequence[nn.BatchNorm1d], mode: str):
    """(norm_stats, running) for a decode of `decoder`, whose BatchNorms are `norms` (none: no
    BatchNorm): `mode` ("image" or "batch") in training or when the norms keep no running
    statistics, else "running" with their (running_mean, running_var)."""
    if not norms:
        return "running", []   # unused without BatchNorm
    if decoder.training or not norms[0].track_running_stats:
        return mode, []
    return "running", [(norm.running_mean, norm.running_var) for norm in norms]


def fold_decode_stats(decoder: nn.Module, norms: Sequence[nn.BatchNorm1d], stats: Sequence[BlockStats],
                      members: int = 1) -> None:
    """After a decode in training: its statistics into the running buffers of `norms` (gathered
    across processes when the decoder is synced; see fold_running_stats for `members`)."""
    if stats and decoder.training and norms[0].track_running_stats:
        fold_running_stats(norms, stats, getattr(decoder, _ATTRIBUTE, None), members)


def fold_running_stats(norms: Sequence[nn.BatchNorm1d], stats: Sequence[BlockStats],
                         process_group=None, members: int = 1) -> None:
    """Fold one forward's statistics into the BatchNorms' buffers.

    Per-image statistics are gathered across processes (`process_group`); statistics over the
    batch came out of a synced decode already global (batch_reducer), one update as in one process.
    `members` > 1: the batch is `members` copies of the images one after the other (the area
    ensemble's members), each copy gathered across processes in its own place.
    """
    for norm, block_stats in zip(norms, stats):
        if process_group is not None and block_stats.mean.ndim == 2:
            block_stats = _gather(block_stats, process_group, members)
        update_buffers(norm.running_mean, norm.running_var, norm.num_batches_tracked,
                       block_stats, norm.momentum)


def _gather(stats: BlockStats, group, members: int) -> BlockStats:
    """Per-image statistics of every process, in global batch order."""
    world = dist.get_world_size(group)
    packed = torch.stack([stats.mean.detach(), stats.var.detach()])        # (2, N, w)
    sizes = [torch.zeros((), dtype=torch.long, device=packed.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor(packed.shape[1], device=packed.device), group=group)
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"every process must decode the same number of images to share running "
                         f"statistics, got {[int(s) for s in sizes]}")
    parts = [torch.empty_like(packed) for _ in range(world)]
    dist.all_gather(parts, packed.contiguous(), group=group)
    width = packed.shape[-1]
    full = torch.cat([p.reshape(2, members, -1, width) for p in parts], dim=2).reshape(2, -1, width)
    return BlockStats(full[0], full[1], stats.count)

