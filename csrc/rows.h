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
// the plain vector passes between them (compiled per instruction set too; in the decoder's own
// files they would only get the baseline's 128-bit SSE):
//   add_vectors:        out[k] = a[k] + b[k]          sum3_vectors: out[k] = a[k] + (b[k] + c[k])
//   multiply_vectors:   out[k] = a[k] * b[k]
//   add_column_sums:    dst[c] += sum_j x[j, c]  (row stride ld; in T, or in double for the wide form)
//
// and the decoder's output Linear, which has only a few outputs (o <= kFewOutputs, e.g. 3 colors):
// the BLAS's packed GEMMs spend most of their time on packing and edges there (9% of a bf16
// training step), plain loops over the w columns do not.
//   few_outputs_forward:     z[j, q] = b[q] + sum_c x[j, c] W[q, c]          (W: o x w)
//   few_outputs_input_grad:  dx[j, c] = sum_q dz[j, q] W[q, c]
//   few_outputs_weight_grad: dW[q, c] += sum_j dz[j, q] x[j, c];  db[q] += sum_j dz[j, q] (db may be null)
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

void add_vectors(const float* a, const float* b, float* out, int64_t n);
void add_vectors(const double* a, const double* b, double* out, int64_t n);
void sum3_vectors(const float* a, const float* b, const float* c, float* out, int64_t n);
void sum3_vectors(const double* a, const double* b, const double* c, double* out, int64_t n);
void multiply_vectors(const float* a, const float* b, float* out, int64_t n);
void multiply_vectors(const double* a, const double* b, double* out, int64_t n);
void add_column_sums(const float* x, int64_t n, int64_t w, int64_t ld, float* dst);
void add_column_sums(const double* x, int64_t n, int64_t w, int64_t ld, double* dst);
void add_column_sums(const float* x, int64_t n, int64_t w, int64_t ld, double* dst);

constexpr int64_t kFewOutputs = 8;

void few_outputs_forward(const float* x, const float* weight, const float* bias, float* z, int64_t n, int64_t w,
                         int64_t o);
void few_outputs_forward(const double* x, const double* weight, const double* bias, double* z, int64_t n,
                         int64_t w, int64_t o);
void few_outputs_input_grad(const float* dz, const float* weight, float* dx, int64_t n, int64_t w, int64_t o);
void few_outputs_input_grad(const double* dz, const double* weight, double* dx, int64_t n, int64_t w, int64_t o);
void few_outputs_weight_grad(const float* dz, const float* x, float* dweight, float* dbias, int64_t n, int64_t w,
                             int64_t o);
void few_outputs_weight_grad(const double* dz, const double* x, double* dweight, double* dbias, int64_t n,
                             int64_t w, int64_t o);

namespace detail {

// One instruction set's kernels (rows_impl.h), as elementwise.cpp dispatches them.
template <typename T>
struct RowKernelsOf {
  void (*affine)(const T*, const T*, const T*, T*, int64_t, int64_t);
  void (*moments)(const T*, int64_t, int64_t, double*, double*);
  void (*norm_backward)(const T*, int64_t, const T*, const T*, const T*, const T*, const T*, int64_t, T*,
                        int64_t, int64_t, double*, double*);
  void (*input_grad)(const T*, const T*, const T*, const T*, const T*, const T*, T*, int64_t, int64_t);
  void (*out_forward)(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t);
  void (*out_input_grad)(const T*, const T*, T*, int64_t, int64_t, int64_t);
  void (*out_weight_grad)(const T*, const T*, T*, T*, int64_t, int64_t, int64_t);
  void (*add)(const T*, const T*, T*, int64_t);
  void (*sum3)(const T*, const T*, const T*, T*, int64_t);
  void (*mul)(const T*, const T*, T*, int64_t);
  void (*colsum)(const T*, int64_t, int64_t, int64_t, T*);
  void (*colsum_wide)(const T*, int64_t, int64_t, int64_t, double*);
};

struct RowKernels {
  RowKernelsOf<float> f;
  RowKernelsOf<double> d;
};

}  // namespace detail
}  // namespace fastinr
