// oneDNN's brgemm microkernel (at::native::cpublas::brgemm, bundled with torch >= 2.8 on x86-64) as the
// bf16 GEMMs' kernel, and the run-time choice between it and ours (gemm_bf16.h, Bf16Kernel). It reads B in
// oneDNN's "pack32" layout with a leading dimension of 32, which is exactly one column block of our packed
// B, and A in bf16 rows, which bf16_rows_avx512 writes: the operands are shared, only the products differ.
// On AMX CPUs it runs the tile instructions; torch keeps one generated kernel per shape and thread. The
// calls leave out is_vnni (true by default where torch has the argument, implied where it has not).
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "gemm_bf16.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && \
    (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8))
#define FASTINR_ONEDNN_BRGEMM 1
#include <ATen/Context.h>
#include <ATen/native/CPUBlas.h>
#endif

namespace fastinr {
namespace {

bool cpu_has_amx_bf16() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("amx-bf16") && __builtin_cpu_supports("amx-tile");
#else
  return false;
#endif
}

#ifdef FASTINR_ONEDNN_BRGEMM
using at::BFloat16;

// True where torch's brgemm multiplies bf16 operands here (the microkernel is compiled in and the CPU is one
// it runs on): a small product of small integers (exact in bf16 and in float sums), its operands packed as the
// decoder packs them, against the known answer. Asked once.
bool probe() {
  if (!bf16_gemm_supported()) return false;
  try {
    const int64_t m = 3, k = 4, n = 5, k2 = k / 2;
    std::vector<float> a(m * k), b(k * n), c(m * n);
    for (int64_t i = 0; i < m * k; ++i) a[i] = static_cast<float>(i % 7 - 3);
    for (int64_t i = 0; i < k * n; ++i) b[i] = static_cast<float>(i % 5 - 2);
    std::vector<uint16_t> rows(m * k);
    detail::bf16_rows_avx512(a.data(), k, m, k, rows.data(), {});
    const Bf16PackedB packed(b.data(), k, n, false);
    at::native::cpublas::brgemm(m, n, 2 * k2, 2 * k2, 32, n, false, reinterpret_cast<const BFloat16*>(rows.data()),
                                reinterpret_cast<const BFloat16*>(packed.data()), c.data());
    at::native::cpublas::brgemm_release();
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        float want = 0.0f;
        for (int64_t kk = 0; kk < k; ++kk) want += a[i * k + kk] * b[kk * n + j];
        if (c[i * n + j] != want) return false;
      }
    return true;
  } catch (const std::exception&) {
    return false;
  }
}
#endif

// FASTINR_BF16_GEMM=avx512|onednn picks the kernel; otherwise oneDNN where it brings the AMX tiles.
Bf16Kernel default_kernel() {
  const char* asked = std::getenv("FASTINR_BF16_GEMM");
  if (asked && std::string(asked) == "onednn" && onednn_bf16_available()) return Bf16Kernel::onednn;
  if (asked && std::string(asked) == "avx512") return Bf16Kernel::avx512;
  return cpu_has_amx_bf16() && onednn_bf16_available() ? Bf16Kernel::onednn : Bf16Kernel::avx512;
}

std::atomic<int>& chosen() {
  static std::atomic<int> kernel{static_cast<int>(default_kernel())};
  return kernel;
}

}  // namespace

bool onednn_bf16_available() {
#ifdef FASTINR_ONEDNN_BRGEMM
  static const bool available = probe();
  return available;
#else
  return false;
#endif
}

Bf16Kernel bf16_kernel() { return static_cast<Bf16Kernel>(chosen().load(std::memory_order_relaxed)); }

void set_bf16_kernel(Bf16Kernel kernel) {
  if (kernel == Bf16Kernel::onednn && !onednn_bf16_available())
    throw std::invalid_argument("fastinr: oneDNN's bf16 brgemm is not available here (torch >= 2.8 on x86-64 with "
                                "AVX512-BF16 and its oneDNN microkernels)");
  chosen().store(static_cast<int>(kernel), std::memory_order_relaxed);
}

namespace detail {

bool onednn_bf16_block(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* b, int64_t k2, int64_t width,
                       bool accumulate, const float* bias, float* c, int64_t ldc) {
#ifdef FASTINR_ONEDNN_BRGEMM
  // torch.backends.mkldnn.enabled = False makes brgemm refuse (it would throw inside our threads)
  if (!at::globalContext().userEnabledMkldnn()) return false;
  // No epilogue here: a bias is copied into C's rows first and added to (a failed call is then redone by
  // our kernel, which overwrites them), or, on top of an accumulation, added after.
  const bool bias_first = bias && !accumulate;
  if (bias_first)
    for (int64_t r = 0; r < m; ++r) std::memcpy(c + r * ldc, bias, sizeof(float) * width);
  try {   // it throws before writing C, if at all
    at::native::cpublas::brgemm(m, width, 2 * k2, a_row, 32, ldc, accumulate || bias_first,
                                reinterpret_cast<const BFloat16*>(a), reinterpret_cast<const BFloat16*>(b), c);
  } catch (const std::exception&) {
    return false;
  }
  if (bias && !bias_first)
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < width; ++j) c[r * ldc + j] += bias[j];
  return true;
#else
  (void)a, (void)a_row, (void)m, (void)b, (void)k2, (void)width, (void)accumulate, (void)bias, (void)c, (void)ldc;
  return false;
#endif
}

void onednn_bf16_release() {
#ifdef FASTINR_ONEDNN_BRGEMM
  at::native::cpublas::brgemm_release();
#endif
}

}  // namespace detail
}  // namespace fastinr
