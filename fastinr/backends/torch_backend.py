"""The `torch` backend: the reference math, run over chunks of images on the CPU.

On a CPU one (B*H*W, hidden) float32 tensor of a training batch is tens of MiB: above glibc's
mmap threshold (32 MiB), so every op maps fresh pages and faults them in, and nothing stays in
cache. Chunks of images whose hidden state fits in CHUNK_BYTES stay on the heap and in cache
(seed configuration, 2-core CPU: training step 2.2 s -> 0.97 s). Per-image statistics and the
running statistics are per image anyway, so chunking changes nothing but the speed; statistics
over the whole batch need the whole batch, and GPUs gain nothing, so those run unchunked.
"""
import torch

from fastinr.contract import BlockStats
from fastinr.reference import decode as reference_decode

CHUNK_BYTES = 16 * 2 ** 20


def images_per_chunk(spec, pixels: int, itemsize: int) -> int:
    widest = max((spec.hidden, spec.out_width, *spec.block_widths))
    return max(1, CHUNK_BYTES // (pixels * widest * itemsize))


def supports(device, spec=None, needs_grad=True):
    """The reference math runs every call on every device."""
    return None


def decode(codes, params, spec, shape, norm_stats="image", running=(), mods=None, input_offset=None,
           reducer=None):
    chunk = images_per_chunk(spec, shape[0] * shape[1], params.w_in.element_size())
    if codes.device.type != "cpu" or norm_stats == "batch" or codes.shape[0] <= chunk:
        return reference_decode(codes, params, spec, shape, norm_stats, running, mods, input_offset,
                                reducer=reducer)

    def parts(tensor):   # per-image tensors split like the codes (None stays None)
        return torch.split(tensor, chunk) if tensor is not None else [None] * -(-codes.shape[0] // chunk)
    starts = range(0, codes.shape[0], chunk)
    offsets = ([input_offset.images(slice(start, start + chunk)) for start in starts]
               if input_offset is not None else parts(None))
    pieces = [reference_decode(part, params, spec, shape, norm_stats, running, part_mods, part_offset)
              for part, part_mods, part_offset in zip(torch.split(codes, chunk), parts(mods), offsets)]
    colors = torch.cat([c for c, _ in pieces])
    stats = [BlockStats(torch.cat([s[i].mean for _, s in pieces]),
                        torch.cat([s[i].var for _, s in pieces]), pieces[0][1][i].count)
             for i in range(len(pieces[0][1]))]
    return colors, stats
