// Software prefetch for the passes that stream a saved activation back from memory. The hardware
// prefetcher left them waiting on it: perf put a third of the GELU derivative's time, and most of the
// bf16 conversion's, on their first load of a saved value. Prefetching never faults, so a span past
// the end of an array is harmless.
//
// Internal linkage on purpose: the per-ISA kernel files include this, and an inline function shared
// between them could let the linker keep an AVX-512 copy for the generic build (elementwise_impl.h).
#pragma once
#include <cstdint>

namespace fastinr {
namespace {

constexpr int64_t kCacheLine = 64;

// Asks for the cache lines of `bytes` bytes from p into L1.
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* at = static_cast<const char*>(p);
  for (int64_t offset = 0; offset < bytes; offset += kCacheLine) __builtin_prefetch(at + offset, 0, 3);
}

// body(k0, k1) over [0, n) in chunks of kChunk values, each chunk first prefetching the values of
// `stream` kAhead chunks ahead of it (one chunk's call overhead is ~2% of a GELU over it).
template <typename T, typename Body>
inline void prefetched_chunks(int64_t n, const T* stream, Body body) {
  constexpr int64_t kChunk = 256, kAhead = 2;
  for (int64_t k0 = 0; k0 < n; k0 += kChunk) {
    if (k0 + kAhead * kChunk < n) prefetch_bytes(stream + k0 + kAhead * kChunk, sizeof(T) * kChunk);
    body(k0, k0 + kChunk < n ? k0 + kChunk : n);
  }
}

}  // namespace
}  // namespace fastinr
