// A cache of the CPU blocks behind the decoder's saved activations (bindings.cpp).
//
// Training allocates the same few large tensors every step (at batch 64 and hidden 128, nine of
// 32 MiB) and frees them after the backward. glibc serves blocks that large with a fresh mmap and
// unmaps them on free, so every step paid page faults, zeroing and munmap for ~300 MiB: 15-30% of
// a native training step on a 2-core CPU. Freed blocks go back to this cache instead and the next
// step reuses them (exact byte size: a training loop asks for the same sizes again).
//
// Only blocks that autograd has released are reused. The cache keeps at most `kMaxCachedBytes`;
// empty_block_cache() returns all of it to the system (fastinr.native.empty_cache()).
#pragma once
#include <torch/extension.h>

#include <cstdint>

namespace fastinr {

// An uninitialised CPU tensor whose memory comes from (and returns to) the cache.
torch::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Bytes the cache holds for reuse (not counting blocks in use), and a call that frees them.
int64_t cached_block_bytes();
void empty_block_cache();

}  // namespace fastinr
