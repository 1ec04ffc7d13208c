// The float activation kernels compiled for AVX-512 (F, DQ, VL, BW) with 512-bit vectors (x86-64
// only); elementwise.cpp calls them only after checking the CPU, so the rest stays generic x86-64.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma,prefer-vector-width=512")
#include <cstdint>

#include "elementwise.h"
#include "prefetch.h"
#include "rows.h"

namespace fastinr {
namespace avx512 {
#include "elementwise_impl.h"
#include "rows_impl.h"
}  // namespace avx512
}  // namespace fastinr
#endif
