// Row kernels of the per-block normalisation on row-major (n, w) tiles: the passes besides the
// GEMMs and activations that per-image and per-batch statistics add. float and double both run
// through kernels built per instruction set and picked at run time, like the activations
// (elementwise.h; set_elementwise_isa switches both).
//
//   affine_rows:          out[j, c] = x[j, c] * scale[c] + shift[c]
//   column_moments:       mean[c] and m2[c] = sum_j (x[j, c] - mean[c])^2 of the n rows
//                         (two passes in double over one tile; tiles are merged by the caller)
//   norm_backward_rows:   xhat = (h - mean) * rstd; s1[c] += dx; s2[c] += dx * xhat (sums in double);
//                         out[j, c] = g[j, c] + dx * gr[c]           (dx, g with leading dims ldx, ldg)
//   norm_input_grad_rows: out[j, c] = in[j, c] - c1[c] - (h[j, c] - mean[c]) * rstd[c] * c2[c]
//
// No output may overlap an input (the kernels are compiled with __restrict__).
#pragma once
#include <cstdint>

namespace fastinr {

void affine_rows(const float* x, const float* scale, const float* shift, float* out, int64_t n, int64_t w);
void affine_rows(const double* x, const double* scale, const double* shift, double* out, int64_t n, int64_t w);

void column_moments(const float* x, int64_t n, int64_t w, double* mean, double* m2);
void column_moments(const double* x, int64_t n, int64_t w, double* mean, double* m2);

void norm_backward_rows(const float* dx, int64_t ldx, const float* h, const float* mean, const float* rstd,
                        const float* gr, const float* g, int64_t ldg, float* out, int64_t n, int64_t w,
                        double* s1, double* s2);
void norm_backward_rows(const double* dx, int64_t ldx, const double* h, const double* mean, const double* rstd,
                        const double* gr, const double* g, int64_t ldg, double* out, int64_t n, int64_t w,
                        double* s1, double* s2);

void norm_input_grad_rows(const float* in, const float* h, const float* mean, const float* rstd,
                          const float* c1, const float* c2, float* out, int64_t n, int64_t w);
void norm_input_grad_rows(const double* in, const double* h, const double* mean, const double* rstd,
                          const double* c1, const double* c2, double* out, int64_t n, int64_t w);

namespace detail {

// One instruction set's kernels (rows_impl.h), as elementwise.cpp dispatches them.
template <typename T>
struct RowKernelsOf {
  void (*affine)(const T*, const T*, const T*, T*, int64_t, int64_t);
  void (*moments)(const T*, int64_t, int64_t, double*, double*);
  void (*norm_backward)(const T*, int64_t, const T*, const T*, const T*, const T*, const T*, int64_t, T*,
                        int64_t, int64_t, double*, double*);
  void (*input_grad)(const T*, const T*, const T*, const T*, const T*, const T*, T*, int64_t, int64_t);
};

struct RowKernels {
  RowKernelsOf<float> f;
  RowKernelsOf<double> d;
};

}  // namespace detail
}  // namespace fastinr
