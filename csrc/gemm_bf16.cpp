// Packing, float -> bf16 rounding and the run-time CPU check of the bf16 GEMMs (gemm_bf16.h); our
// kernel itself is in gemm_bf16_avx512.cpp, oneDNN's in gemm_bf16_onednn.cpp. The per-call bf16 copies
// of X (and, for weight gradients, of A^T and B) live in per-thread buffers: the decoder calls these
// from its OpenMP threads on one row tile at a time.
#include "gemm_bf16.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace fastinr {
namespace {

// Round to nearest even, as vcvtneps2bf16 and torch's float -> bfloat16 conversion; NaN stays NaN.
inline uint16_t to_bf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

int64_t pairs(int64_t k) { return (k + 1) / 2; }
int64_t column_blocks(int64_t n) { return (n + 31) / 32; }

// B[k][col] (read through `at`) into the packed layout of gemm_bf16.h.
template <typename At>
void pack(int64_t k, int64_t n, At at, uint16_t* out) {
  const int64_t k2 = pairs(k);
  std::memset(out, 0, sizeof(uint16_t) * column_blocks(n) * k2 * 64);
  for (int64_t kk = 0; kk < k; ++kk)
    for (int64_t col = 0; col < n; ++col)
      out[(((col / 32) * k2 + kk / 2) * 32 + col % 32) * 2 + (kk & 1)] = to_bf16(at(kk, col));
}

std::vector<uint16_t>& thread_buffer(int which) {
  thread_local std::vector<uint16_t> buffers[2];
  return buffers[which];
}

// C (m x n) = A B (+ C) (+ bias) for A in bf16 rows (m x 2 k2) and B packed: by column block through
// oneDNN where it is chosen and can run, else (and for any block it refuses) through our kernel.
void product(const uint16_t* a, int64_t m, const uint16_t* b, int64_t k2, int64_t n, bool accumulate,
             const float* bias, float* c, int64_t ldc) {
  if (bf16_kernel() != Bf16Kernel::onednn) {
    detail::bf16_kernel_avx512(a, 2 * k2, 2, m, b, k2, n, accumulate, bias, c, ldc);
    return;
  }
  for (int64_t n0 = 0; n0 < n; n0 += 32) {
    const uint16_t* block = b + (n0 / 32) * k2 * 64;
    const int64_t width = std::min<int64_t>(32, n - n0);
    const float* block_bias = bias ? bias + n0 : nullptr;
    if (!detail::onednn_bf16_block(a, 2 * k2, m, block, k2, width, accumulate, block_bias, c + n0, ldc))
      detail::bf16_kernel_avx512(a, 2 * k2, 2, m, block, k2, width, accumulate, block_bias, c + n0, ldc);
  }
  detail::onednn_bf16_release();
}

void require_support() {
  if (!bf16_gemm_supported())
    throw std::runtime_error("fastinr: the bf16 GEMM needs a CPU with AVX512-BF16 (checked before calling)");
}

}  // namespace

bool bf16_gemm_supported() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  }();
  return supported;
#else
  return false;
#endif
}

Bf16PackedB::Bf16PackedB(const float* w, int64_t k, int64_t n, bool transpose_w) : k_(k), n_(n) {
  packed_.reset(new uint16_t[column_blocks(n) * pairs(k) * 64]);
  if (transpose_w)   // W stored (n x k)
    pack(k, n, [&](int64_t kk, int64_t col) { return w[col * k + kk]; }, packed_.get());
  else               // W stored (k x n)
    pack(k, n, [&](int64_t kk, int64_t col) { return w[kk * n + col]; }, packed_.get());
}

void bf16_gemm(const float* x, int64_t ldx, int64_t m, const Bf16PackedB& b, bool accumulate, float* c,
               int64_t ldc, const float* bias, ColumnAffine affine) {
  if (m <= 0 || b.n() <= 0) return;
  require_support();
  const int64_t k2 = pairs(b.k());
  std::vector<uint16_t>& a = thread_buffer(0);
  a.resize(m * 2 * k2);
  detail::bf16_rows_avx512(x, ldx, m, b.k(), a.data(), affine);
  product(a.data(), m, b.data(), k2, b.n(), accumulate, bias, c, ldc);
}

void bf16_gemm_tn_accumulate(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                             int64_t ldb, float* c, int64_t ldc, ColumnAffine b_affine) {
  if (m <= 0 || n <= 0 || k <= 0) return;
  require_support();
  const int64_t k2 = pairs(k);
  std::vector<uint16_t>& packed = thread_buffer(1);   // B in the packed layout (blocks of 32 columns)
  packed.resize(column_blocks(n) * k2 * 64);
  detail::bf16_pairs_avx512(b, ldb, k, n, 32, packed.data(), b_affine);
  std::vector<uint16_t>& at = thread_buffer(0);
  if (bf16_kernel() == Bf16Kernel::onednn) {   // A^T in rows (m x 2 K2), as brgemm reads A
    at.resize(m * 2 * k2);
    detail::bf16_transposed_avx512(a, lda, k, m, at.data());
    product(at.data(), m, packed.data(), k2, n, true, nullptr, c, ldc);
    return;
  }
  // Our kernel reads A^T's pairs along A's rows as they are: the pair (r, k2) at (k2 * width + r) * 2
  // with width m rounded up to 16 (one column block of bf16_pairs), which skips the transpose.
  const int64_t width = (m + 15) / 16 * 16;
  at.resize(k2 * 2 * width);
  detail::bf16_pairs_avx512(a, lda, k, m, width, at.data(), {});
  detail::bf16_kernel_avx512(at.data(), 2, 2 * width, m, packed.data(), k2, n, true, nullptr, c, ldc);
}

}  // namespace fastinr
