// Run-time choice of the kernel set (float activations, float and double row kernels of rows.h) by
// instruction set, and the double activations (the exact formulas of activations.h).
#include "elementwise.h"
#include "rows.h"

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastinr {
namespace generic {
void act_forward_float(Act act, const float* z, float* a, int64_t n);
void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n);
detail::RowKernels row_kernels();
}  // namespace generic
#if defined(__x86_64__) || defined(_M_X64)
namespace avx2 {
void act_forward_float(Act act, const float* z, float* a, int64_t n);
void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n);
detail::RowKernels row_kernels();
}  // namespace avx2
namespace avx512 {
void act_forward_float(Act act, const float* z, float* a, int64_t n);
void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n);
detail::RowKernels row_kernels();
}  // namespace avx512
#endif

namespace {

struct KernelSet {
  const char* isa;
  void (*forward)(Act, const float*, float*, int64_t);
  void (*backward)(Act, const float*, const float*, float*, int64_t);
  void (*forward_grad)(Act, const float*, float*, float*, int64_t);
  detail::RowKernels rows;
};

// Every kernel set this CPU can run, fastest first.
std::vector<KernelSet> supported_kernel_sets() {
  std::vector<KernelSet> sets;
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("fma"))
    sets.push_back({"avx512", avx512::act_forward_float, avx512::act_backward_float,
                    avx512::act_forward_grad_float, avx512::row_kernels()});
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    sets.push_back({"avx2", avx2::act_forward_float, avx2::act_backward_float, avx2::act_forward_grad_float,
                    avx2::row_kernels()});
#endif
  sets.push_back({"generic", generic::act_forward_float, generic::act_backward_float,
                  generic::act_forward_grad_float, generic::row_kernels()});
  return sets;
}

const std::vector<KernelSet>& kernel_sets() {
  static const std::vector<KernelSet> sets = supported_kernel_sets();
  return sets;
}

std::atomic<const KernelSet*> current{nullptr};

const KernelSet& kernels() {
  const KernelSet* chosen = current.load(std::memory_order_acquire);
  return chosen ? *chosen : kernel_sets().front();
}

}  // namespace

void act_forward(Act act, const float* z, float* a, int64_t n) { kernels().forward(act, z, a, n); }

void act_backward(Act act, const float* z, const float* g, float* dz, int64_t n) {
  kernels().backward(act, z, g, dz, n);
}

void act_forward_grad(Act act, const float* z, float* a, float* d, int64_t n) {
  kernels().forward_grad(act, z, a, d, n);
}

void affine_rows(const float* x, const float* scale, const float* shift, float* out, int64_t n, int64_t w) {
  kernels().rows.f.affine(x, scale, shift, out, n, w);
}
void affine_rows(const double* x, const double* scale, const double* shift, double* out, int64_t n, int64_t w) {
  kernels().rows.d.affine(x, scale, shift, out, n, w);
}

void column_moments(const float* x, int64_t n, int64_t w, double* mean, double* m2) {
  kernels().rows.f.moments(x, n, w, mean, m2);
}
void column_moments(const double* x, int64_t n, int64_t w, double* mean, double* m2) {
  kernels().rows.d.moments(x, n, w, mean, m2);
}

void norm_backward_rows(const float* dx, int64_t ldx, const float* h, const float* mean, const float* rstd,
                        const float* gr, const float* g, int64_t ldg, float* out, int64_t n, int64_t w,
                        double* s1, double* s2) {
  kernels().rows.f.norm_backward(dx, ldx, h, mean, rstd, gr, g, ldg, out, n, w, s1, s2);
}
void norm_backward_rows(const double* dx, int64_t ldx, const double* h, const double* mean, const double* rstd,
                        const double* gr, const double* g, int64_t ldg, double* out, int64_t n, int64_t w,
                        double* s1, double* s2) {
  kernels().rows.d.norm_backward(dx, ldx, h, mean, rstd, gr, g, ldg, out, n, w, s1, s2);
}

void norm_input_grad_rows(const float* in, const float* h, const float* mean, const float* rstd,
                          const float* c1, const float* c2, float* out, int64_t n, int64_t w) {
  kernels().rows.f.input_grad(in, h, mean, rstd, c1, c2, out, n, w);
}
void norm_input_grad_rows(const double* in, const double* h, const double* mean, const double* rstd,
                          const double* c1, const double* c2, double* out, int64_t n, int64_t w) {
  kernels().rows.d.input_grad(in, h, mean, rstd, c1, c2, out, n, w);
}

void few_outputs_forward(const float* x, const float* weight, const float* bias, float* z, int64_t n, int64_t w,
                         int64_t o) {
  kernels().rows.f.out_forward(x, weight, bias, z, n, w, o);
}
void few_outputs_forward(const double* x, const double* weight, const double* bias, double* z, int64_t n,
                         int64_t w, int64_t o) {
  kernels().rows.d.out_forward(x, weight, bias, z, n, w, o);
}
void few_outputs_input_grad(const float* dz, const float* weight, float* dx, int64_t n, int64_t w, int64_t o) {
  kernels().rows.f.out_input_grad(dz, weight, dx, n, w, o);
}
void few_outputs_input_grad(const double* dz, const double* weight, double* dx, int64_t n, int64_t w, int64_t o) {
  kernels().rows.d.out_input_grad(dz, weight, dx, n, w, o);
}
void few_outputs_weight_grad(const float* dz, const float* x, float* dweight, float* dbias, int64_t n, int64_t w,
                             int64_t o) {
  kernels().rows.f.out_weight_grad(dz, x, dweight, dbias, n, w, o);
}
void few_outputs_weight_grad(const double* dz, const double* x, double* dweight, double* dbias, int64_t n,
                             int64_t w, int64_t o) {
  kernels().rows.d.out_weight_grad(dz, x, dweight, dbias, n, w, o);
}

void add_vectors(const float* a, const float* b, float* out, int64_t n) { kernels().rows.f.add(a, b, out, n); }
void add_vectors(const double* a, const double* b, double* out, int64_t n) { kernels().rows.d.add(a, b, out, n); }
void sum3_vectors(const float* a, const float* b, const float* c, float* out, int64_t n) {
  kernels().rows.f.sum3(a, b, c, out, n);
}
void sum3_vectors(const double* a, const double* b, const double* c, double* out, int64_t n) {
  kernels().rows.d.sum3(a, b, c, out, n);
}
void multiply_vectors(const float* a, const float* b, float* out, int64_t n) { kernels().rows.f.mul(a, b, out, n); }
void multiply_vectors(const double* a, const double* b, double* out, int64_t n) {
  kernels().rows.d.mul(a, b, out, n);
}
void add_column_sums(const float* x, int64_t n, int64_t w, int64_t ld, float* dst) {
  kernels().rows.f.colsum(x, n, w, ld, dst);
}
void add_column_sums(const double* x, int64_t n, int64_t w, int64_t ld, double* dst) {
  kernels().rows.d.colsum(x, n, w, ld, dst);
}
void add_column_sums(const float* x, int64_t n, int64_t w, int64_t ld, double* dst) {
  kernels().rows.f.colsum_wide(x, n, w, ld, dst);
}

const char* elementwise_isa() { return kernels().isa; }

std::vector<std::string> elementwise_isas() {
  std::vector<std::string> names;
  for (const KernelSet& set : kernel_sets()) names.emplace_back(set.isa);
  return names;
}

void set_elementwise_isa(const std::string& isa) {
  for (const KernelSet& set : kernel_sets())
    if (isa == set.isa) {
      current.store(&set, std::memory_order_release);
      return;
    }
  std::string names;
  for (const std::string& name : elementwise_isas()) names += (names.empty() ? "" : ", ") + name;
  throw std::invalid_argument("isa: expected one this CPU supports (" + names + "), got '" + isa + "'");
}

void act_forward(Act act, const double* z, double* a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) a[k] = act_value(act, z[k]);
}

void act_backward(Act act, const double* z, const double* g, double* dz, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dz[k] = g[k] * act_grad(act, z[k]);
}

void act_forward_grad(Act act, const double* z, double* a, double* d, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    a[k] = act_value(act, z[k]);
    d[k] = act_grad(act, z[k]);
  }
}

}  // namespace fastinr
