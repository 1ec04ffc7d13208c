// The bf16 GEMM kernel for AVX512-BF16 (x86-64 only); gemm_bf16.cpp calls it only after checking the
// CPU, so the rest of the extension stays generic x86-64.
//
// Register tile: up to 12 rows x 32 columns of C in 24 zmm accumulators; per pair of K, two zmm of
// packed B and one broadcast pair of A per row feed vdpbf16ps (32 multiply-adds each).
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512bf16")
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "gemm_bf16.h"
#include "prefetch.h"

namespace fastinr {
namespace detail {
namespace {

constexpr int kRows = 12;
// The conversions prefetch X (often a saved activation, from memory) this many rows ahead (prefetch.h).
constexpr int64_t kPrefetchRows = 4;

// The pair (A[r][2k], A[r][2k+1]) is at a + r * a_row + k * a_pair (in bf16 values).
template <int MR>
inline void tile(const uint16_t* a, int64_t a_row, int64_t a_pair, const uint16_t* b, int64_t k2, __mmask16 mask0,
                 __mmask16 mask1, bool accumulate, const float* bias, float* c, int64_t ldc) {
  __m512 acc0[MR], acc1[MR];
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  if (accumulate)   // a weight gradient's C is too big for L2: ask for its rows while the products run
    for (int r = 0; r < MR; ++r) prefetch_bytes(c + r * ldc, sizeof(float) * 32);
  for (int64_t k = 0; k < k2; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + k * 64);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + k * 64 + 32);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * a_row + k * a_pair, sizeof(pair));
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
      acc0[r] = _mm512_dpbf16_ps(acc0[r], ar, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], ar, b1);
    }
  }
  if (bias) {
    const __m512 b0 = _mm512_maskz_loadu_ps(mask0, bias), b1 = _mm512_maskz_loadu_ps(mask1, bias + 16);
#pragma GCC unroll 12
    for (int r = 0; r < MR; ++r) {
      acc0[r] = _mm512_add_ps(acc0[r], b0);
      acc1[r] = _mm512_add_ps(acc1[r], b1);
    }
  }
#pragma GCC unroll 12
  for (int r = 0; r < MR; ++r) {
    float* row = c + r * ldc;
    if (accumulate) {
      acc0[r] = _mm512_add_ps(acc0[r], _mm512_maskz_loadu_ps(mask0, row));
      acc1[r] = _mm512_add_ps(acc1[r], _mm512_maskz_loadu_ps(mask1, row + 16));
    }
    _mm512_mask_storeu_ps(row, mask0, acc0[r]);
    _mm512_mask_storeu_ps(row + 16, mask1, acc1[r]);
  }
}

using TileFn = void (*)(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, __mmask16, __mmask16, bool,
                        const float*, float*, int64_t);

template <int... R>
constexpr TileFn tile_for(int rows, std::integer_sequence<int, R...>) {
  constexpr TileFn fns[] = {tile<R + 1>...};
  return fns[rows - 1];
}

inline __mmask16 lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
}

}  // namespace

void bf16_kernel_avx512(const uint16_t* a, int64_t a_row, int64_t a_pair, int64_t m, const uint16_t* b, int64_t k2,
                        int64_t n, bool accumulate, const float* bias, float* c, int64_t ldc) {
  for (int64_t n0 = 0; n0 < n; n0 += 32) {
    const uint16_t* block = b + (n0 / 32) * k2 * 64;
    const __mmask16 mask0 = lanes(n - n0), mask1 = lanes(n - n0 - 16);
    for (int64_t m0 = 0; m0 < m; m0 += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, m - m0));
      const TileFn fn = tile_for(rows, std::make_integer_sequence<int, kRows>());
      fn(a + m0 * a_row, a_row, a_pair, block, k2, mask0, mask1, accumulate, bias ? bias + n0 : nullptr,
         c + m0 * ldc + n0, ldc);
    }
  }
}

// x * scale + shift (fused, as the compiler contracts the decoder's own affine pass), or x
inline __m512 mapped(__m512 x, const ColumnAffine& affine, __mmask16 valid, int64_t column) {
  if (!affine) return x;
  return _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(valid, affine.scale + column),
                         _mm512_maskz_loadu_ps(valid, affine.shift + column));
}

void bf16_rows_avx512(const float* x, int64_t ldx, int64_t n, int64_t k, uint16_t* out, ColumnAffine affine) {
  const int64_t kp = (k + 1) / 2 * 2;
  for (int64_t j = 0; j < n; ++j) {
    const float* src = x + j * ldx;
    uint16_t* dst = out + j * kp;
    prefetch_bytes(src + kPrefetchRows * ldx, sizeof(float) * k);
    for (int64_t i = 0; i < kp; i += 16) {
      const __mmask16 in = lanes(k - i), keep = lanes(kp - i);
      const __m256bh v = _mm512_cvtneps_pbh(mapped(_mm512_maskz_loadu_ps(in, src + i), affine, in, i));
      _mm256_mask_storeu_epi16(dst + i, keep, (__m256i)v);
    }
  }
}

void bf16_pairs_avx512(const float* x, int64_t ldx, int64_t k, int64_t n, int64_t block, uint16_t* out,
                       ColumnAffine affine) {
  // vcvtne2ps2bf16 gives [row 2k2 (16 values) | row 2k2+1 (16)]; this permutation interleaves them
  alignas(64) uint16_t order[32];
  for (int j = 0; j < 32; ++j) order[j] = static_cast<uint16_t>((j & 1) * 16 + j / 2);
  const __m512i interleave = _mm512_load_si512(order);
  const int64_t k2n = (k + 1) / 2;
  for (int64_t k2 = 0; k2 < k2n; ++k2) {
    const float* row0 = x + 2 * k2 * ldx;
    const float* row1 = row0 + ldx;
    const bool has_row1 = 2 * k2 + 1 < k;
    prefetch_bytes(row0 + kPrefetchRows * ldx, sizeof(float) * n);
    prefetch_bytes(row1 + kPrefetchRows * ldx, sizeof(float) * n);
    for (int64_t c0 = 0; c0 < n; c0 += 16) {
      const __mmask16 valid = lanes(n - c0);
      const __m512 lo = mapped(_mm512_maskz_loadu_ps(valid, row0 + c0), affine, valid, c0);
      const __m512 hi = has_row1 ? mapped(_mm512_maskz_loadu_ps(valid, row1 + c0), affine, valid, c0)
                                 : _mm512_setzero_ps();   // the zero row of an odd k stays zero
      const __m512i both = _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      _mm512_storeu_si512(out + ((c0 / block) * k2n + k2) * 2 * block + (c0 % block) * 2, both);
    }
  }
}

// The 16 x 16 floats in r transposed in place: pairs of rows interleaved, then pairs of pairs (within each
// 128-bit lane, so lane L of r[4 i + j] holds column 4 L + j of rows 4 i .. 4 i + 3), then the lanes gathered.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  const auto lo = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  const auto hi = [](__m512 a, __m512 b) {
    return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
  };
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = lo(t[4 * i], t[4 * i + 2]);
    r[4 * i + 1] = hi(t[4 * i], t[4 * i + 2]);
    r[4 * i + 2] = lo(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = hi(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int j = 0; j < 4; ++j) {
    const __m512 even01 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), odd01 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 even23 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 odd23 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_f32x4(even01, even23, 0x88);        // lane 0 of each: column j
    t[4 + j] = _mm512_shuffle_f32x4(odd01, odd23, 0x88);      // lane 1: column 4 + j
    t[8 + j] = _mm512_shuffle_f32x4(even01, even23, 0xDD);    // lane 2: column 8 + j
    t[12 + j] = _mm512_shuffle_f32x4(odd01, odd23, 0xDD);     // lane 3: column 12 + j
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

void bf16_transposed_avx512(const float* x, int64_t ldx, int64_t k, int64_t n, uint16_t* out) {
  const int64_t kp = (k + 1) / 2 * 2;
  __m512 block[16];
  for (int64_t c0 = 0; c0 < n; c0 += 16) {
    const __mmask16 columns = lanes(n - c0);
    const int64_t out_rows = std::min<int64_t>(16, n - c0);
    for (int64_t k0 = 0; k0 < kp; k0 += 16) {
      for (int i = 0; i < 16; ++i)   // rows past k (an odd k's pad, the last block's tail) read as zeros
        block[i] = k0 + i < k ? _mm512_maskz_loadu_ps(columns, x + (k0 + i) * ldx + c0) : _mm512_setzero_ps();
      transpose16(block);
      const __mmask16 keep = lanes(kp - k0);
      for (int64_t r = 0; r < out_rows; ++r)
        _mm256_mask_storeu_epi16(out + (c0 + r) * kp + k0, keep, (__m256i)_mm512_cvtneps_pbh(block[r]));
    }
  }
}

}  // namespace detail
}  // namespace fastinr
#else
#include <stdexcept>

#include "gemm_bf16.h"

namespace fastinr {
namespace detail {
// Never called: bf16_gemm_supported() is false off x86-64.
void bf16_kernel_avx512(const uint16_t*, int64_t, int64_t, int64_t, const uint16_t*, int64_t, int64_t, bool,
                        const float*, float*, int64_t) {
  throw std::logic_error("fastinr: no bf16 GEMM kernel on this architecture");
}
void bf16_rows_avx512(const float*, int64_t, int64_t, int64_t, uint16_t*, ColumnAffine) {
  throw std::logic_error("fastinr: no bf16 GEMM kernel on this architecture");
}
void bf16_pairs_avx512(const float*, int64_t, int64_t, int64_t, int64_t, uint16_t*, ColumnAffine) {
  throw std::logic_error("fastinr: no bf16 GEMM kernel on this architecture");
}
void bf16_transposed_avx512(const float*, int64_t, int64_t, int64_t, uint16_t*) {
  throw std::logic_error("fastinr: no bf16 GEMM kernel on this architecture");
}
}  // namespace detail
}  // namespace fastinr
#endif
