// Run-time choice of the float activation kernels, and the double ones (libm, exact).
#include "elementwise.h"

#include <math.h>

namespace fastinr {
namespace generic {
void act_forward_float(Act act, const float* z, float* a, int64_t n);
void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n);
}  // namespace generic
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
void act_forward_float(Act act, const float* z, float* a, int64_t n);
void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n);
}  // namespace avx2
#endif

namespace {

struct FloatKernels {
  void (*forward)(Act, const float*, float*, int64_t);
  void (*backward)(Act, const float*, const float*, float*, int64_t);
  void (*forward_grad)(Act, const float*, float*, float*, int64_t);
  const char* isa;
};

FloatKernels pick_float_kernels() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return {avx2::act_forward_float, avx2::act_backward_float, avx2::act_forward_grad_float, "avx2"};
  }
#endif
  return {generic::act_forward_float, generic::act_backward_float, generic::act_forward_grad_float,
          "generic"};
}

const FloatKernels& float_kernels() {
  static const FloatKernels kernels = pick_float_kernels();
  return kernels;
}

constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

inline double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

}  // namespace

void act_forward(Act act, const float* z, float* a, int64_t n) { float_kernels().forward(act, z, a, n); }

void act_backward(Act act, const float* z, const float* g, float* dz, int64_t n) {
  float_kernels().backward(act, z, g, dz, n);
}

void act_forward_grad(Act act, const float* z, float* a, float* d, int64_t n) {
  float_kernels().forward_grad(act, z, a, d, n);
}

const char* elementwise_isa() { return float_kernels().isa; }

void act_forward(Act act, const double* z, double* a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    double x = z[k];
    switch (act) {
      case Act::gelu: a[k] = 0.5 * x * (1.0 + erf(x * kSqrtHalf)); break;
      case Act::relu: a[k] = x < 0.0 ? 0.0 : x; break;
      case Act::relu6: a[k] = x < 0.0 ? 0.0 : (x > 6.0 ? 6.0 : x); break;
      case Act::silu: a[k] = x * sigmoid(x); break;
      case Act::tanh: a[k] = tanh(x); break;
      case Act::sigmoid: a[k] = sigmoid(x); break;
      case Act::none: a[k] = x; break;
    }
  }
}

void act_backward(Act act, const double* z, const double* g, double* dz, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    double x = z[k], d = 1.0;
    switch (act) {
      case Act::gelu: d = 0.5 * (1.0 + erf(x * kSqrtHalf)) + x * kInvSqrt2Pi * exp(-0.5 * x * x); break;
      case Act::relu: d = x > 0.0 ? 1.0 : 0.0; break;
      case Act::relu6: d = (x > 0.0 && x < 6.0) ? 1.0 : 0.0; break;
      case Act::silu: { double s = sigmoid(x); d = s * (1.0 + x * (1.0 - s)); break; }
      case Act::tanh: { double t = tanh(x); d = 1.0 - t * t; break; }
      case Act::sigmoid: { double s = sigmoid(x); d = s * (1.0 - s); break; }
      case Act::none: d = 1.0; break;
    }
    dz[k] = g[k] * d;
  }
}

void act_forward_grad(Act act, const double* z, double* a, double* d, int64_t n) {
  act_forward(act, z, a, n);
  for (int64_t k = 0; k < n; ++k) d[k] = 1.0;
  act_backward(act, z, d, d, n);
}

}  // namespace fastinr
