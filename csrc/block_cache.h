// A cache of large CPU blocks that the decoder allocates afresh every training step: the saved
// activations (bindings.cpp wraps them as tensors) and the backward's carry buffers.
//
// Training allocates the same few large buffers every step (at batch 64 and hidden 128, nine
// saved tensors of 32 MiB) and frees them after the backward. glibc serves blocks that large with
// a fresh mmap and unmaps them on free, so every step paid page faults, zeroing and munmap for
// ~300 MiB: 15-30% of a native training step on a 2-core CPU. Freed blocks go back to this cache
// instead and the next step reuses them (exact byte size: a training loop asks for the same sizes).
//
// Only released blocks are reused. The cache keeps at most 2 GiB; empty_block_cache() returns all
// of it to the system (fastinr.backends.native_backend.empty_cache()).
#pragma once
#include <cstddef>
#include <cstdint>

namespace fastinr {

// An uninitialised block of at least `bytes` (64-byte aligned), and its return to the cache.
void* take_block(size_t bytes);
void give_back_block(void* block, size_t bytes);

// The byte size take_block really uses for a request (what give_back_block must be told).
size_t block_size(size_t bytes);

// A block held for the lifetime of this object.
class CachedBlock {
 public:
  explicit CachedBlock(size_t bytes) : bytes_(block_size(bytes)), data_(take_block(bytes_)) {}
  ~CachedBlock() { give_back_block(data_, bytes_); }
  CachedBlock(const CachedBlock&) = delete;
  CachedBlock& operator=(const CachedBlock&) = delete;
  template <typename T>
  T* data() const { return static_cast<T*>(data_); }

 private:
  size_t bytes_;
  void* data_;
};

// Bytes the cache holds for reuse (not counting blocks in use), and a call that frees them.
int64_t cached_block_bytes();
void empty_block_cache();

}  // namespace fastinr
