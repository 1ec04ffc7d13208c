// See block_cache.h.
#include "block_cache.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <new>

namespace fastinr {
namespace {

constexpr int64_t kMaxCachedBytes = int64_t(2) << 30;   // 2 GiB: beyond it freed blocks go to the system
constexpr size_t kAlignment = 64;                        // a cache line, and any SIMD width

class BlockCache {
 public:
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end()) {
        void* block = it->second;
        free_.erase(it);
        cached_ -= static_cast<int64_t>(bytes);
        return block;
      }
    }
    void* block = std::aligned_alloc(kAlignment, bytes);
    if (block == nullptr) throw std::bad_alloc();
    return block;
  }

  void give_back(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (cached_ + static_cast<int64_t>(bytes) <= kMaxCachedBytes) {
        free_.emplace(bytes, block);
        cached_ += static_cast<int64_t>(bytes);
        return;
      }
    }
    std::free(block);
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  void clear() {
    std::multimap<size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (auto& entry : blocks) std::free(entry.second);
  }

 private:
  std::mutex mutex_;
  std::multimap<size_t, void*> free_;   // byte size -> block
  int64_t cached_ = 0;
};

// Never destroyed: tensors may be freed after static destructors have run (interpreter exit).
BlockCache& cache() {
  static BlockCache* instance = new BlockCache();
  return *instance;
}

}  // namespace

size_t block_size(size_t bytes) {
  // A multiple of the alignment (aligned_alloc's contract), at least one line.
  return std::max<size_t>(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
}

void* take_block(size_t bytes) { return cache().take(block_size(bytes)); }

void give_back_block(void* block, size_t bytes) { cache().give_back(block, block_size(bytes)); }

int64_t cached_block_bytes() { return cache().cached(); }

void empty_block_cache() { cache().clear(); }

}  // namespace fastinr
