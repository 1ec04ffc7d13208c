// The float activation kernels compiled for AVX2+FMA (x86-64 only); elementwise.cpp calls them
// only after checking the CPU, so the rest of the extension stays generic x86-64.
#if defined(__x86_64__) || defined(_M_X64)
#pragma GCC target("avx2,fma")
#include <cstdint>

#include "elementwise.h"
#include "prefetch.h"
#include "rows.h"

namespace fastinr {
namespace avx2 {
#include "elementwise_impl.h"
#include "rows_impl.h"
}  // namespace avx2
}  // namespace fastinr
#endif
