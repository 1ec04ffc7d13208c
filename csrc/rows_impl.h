// The row kernels of rows.h, included once per instruction set by elementwise_<isa>.cpp inside its
// namespace, next to elementwise_impl.h. Plain loops with the columns innermost, so the compiler
// vectorises them for the including file's ISA (__restrict__: no argument overlaps another); float
// and double (exact arithmetic either way).

namespace {

constexpr int64_t kAheadRows = 2;   // rows the passes over saved activations prefetch ahead

template <typename T>
void affine_rows_kernel(const T* __restrict__ x, const T* __restrict__ scale, const T* __restrict__ shift,
                        T* __restrict__ out, int64_t n, int64_t w) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < w; ++c) out[j * w + c] = x[j * w + c] * scale[c] + shift[c];
}

// Accumulated in double: a block input's variance can be tiny next to its mean (near-constant
// channels), and its rstd then amplifies every rounding error of the moments.
template <typename T>
void column_moments_kernel(const T* __restrict__ x, int64_t n, int64_t w, double* __restrict__ mean,
                           double* __restrict__ m2) {
  for (int64_t c = 0; c < w; ++c) mean[c] = 0.0, m2[c] = 0.0;
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < w; ++c) mean[c] += static_cast<double>(x[j * w + c]);
  for (int64_t c = 0; c < w; ++c) mean[c] /= static_cast<double>(n);
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < w; ++c) {
      const double d = static_cast<double>(x[j * w + c]) - mean[c];
      m2[c] += d * d;
    }
}

template <typename T>
void norm_backward_rows_kernel(const T* __restrict__ dx, int64_t ldx, const T* __restrict__ h,
                               const T* __restrict__ mean, const T* __restrict__ rstd, const T* __restrict__ gr,
                               const T* __restrict__ g, int64_t ldg, T* __restrict__ out, int64_t n, int64_t w,
                               double* __restrict__ s1, double* __restrict__ s2) {
  // The sums in double, like the moments: they meet rstd again in the input gradient.
  for (int64_t j = 0; j < n; ++j) {
    prefetch_bytes(h + (j + kAheadRows) * w, sizeof(T) * w);   // saved, from memory (prefetch.h)
    for (int64_t c = 0; c < w; ++c) {
      const T d = dx[j * ldx + c];
      const T xhat = (h[j * w + c] - mean[c]) * rstd[c];
      s1[c] += static_cast<double>(d);
      s2[c] += static_cast<double>(d * xhat);
      out[j * w + c] = g[j * ldg + c] + d * gr[c];
    }
  }
}

template <typename T>
void norm_input_grad_rows_kernel(const T* __restrict__ in, const T* __restrict__ h, const T* __restrict__ mean,
                                  const T* __restrict__ rstd, const T* __restrict__ c1, const T* __restrict__ c2,
                                  T* __restrict__ out, int64_t n, int64_t w) {
  for (int64_t j = 0; j < n; ++j) {
    prefetch_bytes(in + (j + kAheadRows) * w, sizeof(T) * w);   // both from memory (prefetch.h)
    prefetch_bytes(h + (j + kAheadRows) * w, sizeof(T) * w);
    for (int64_t c = 0; c < w; ++c)
      out[j * w + c] = in[j * w + c] - c1[c] - (h[j * w + c] - mean[c]) * rstd[c] * c2[c];
  }
}

// A dot product over the columns (omp simd: vectorised without -ffast-math, as a reduction).
template <typename T>
void few_outputs_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                                T* __restrict__ z, int64_t n, int64_t w, int64_t o) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t q = 0; q < o; ++q) {
      const T* xr = x + j * w;
      const T* wr = weight + q * w;
      T sum = T(0);
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < w; ++c) sum += xr[c] * wr[c];
      z[j * o + q] = bias[q] + sum;
    }
}

template <typename T>
void few_outputs_input_grad_kernel(const T* __restrict__ dz, const T* __restrict__ weight, T* __restrict__ dx,
                                   int64_t n, int64_t w, int64_t o) {
  for (int64_t j = 0; j < n; ++j) {
    T* row = dx + j * w;
    for (int64_t c = 0; c < w; ++c) row[c] = T(0);
    for (int64_t q = 0; q < o; ++q) {
      const T d = dz[j * o + q];
      for (int64_t c = 0; c < w; ++c) row[c] += d * weight[q * w + c];
    }
  }
}

// Four rows at a time: four multiply-adds per load and store of dW (it stays in L1).
template <typename T>
void few_outputs_weight_grad_kernel(const T* __restrict__ dz, const T* __restrict__ x, T* __restrict__ dweight,
                                    T* __restrict__ dbias, int64_t n, int64_t w, int64_t o) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    prefetch_bytes(x + (j + 4 * kAheadRows) * w, sizeof(T) * 4 * w);   // the output layer's x: saved (prefetch.h)
    const T* x0 = x + j * w;
    const T *x1 = x0 + w, *x2 = x1 + w, *x3 = x2 + w;
    for (int64_t q = 0; q < o; ++q) {
      const T d0 = dz[j * o + q], d1 = dz[(j + 1) * o + q], d2 = dz[(j + 2) * o + q], d3 = dz[(j + 3) * o + q];
      if (dbias) dbias[q] += ((d0 + d1) + d2) + d3;
      T* row = dweight + q * w;
      for (int64_t c = 0; c < w; ++c) row[c] += ((d0 * x0[c] + d1 * x1[c]) + d2 * x2[c]) + d3 * x3[c];
    }
  }
  for (; j < n; ++j)
    for (int64_t q = 0; q < o; ++q) {
      const T d = dz[j * o + q];
      if (dbias) dbias[q] += d;
      for (int64_t c = 0; c < w; ++c) dweight[q * w + c] += d * x[j * w + c];
    }
}

template <typename T>
void add_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = a[k] + b[k];
}

template <typename T>
void sum3_kernel(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c, T* __restrict__ out,
                 int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = a[k] + (b[k] + c[k]);
}

template <typename T>
void multiply_kernel(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t n) {
  for (int64_t k = 0; k < n; ++k) out[k] = a[k] * b[k];
}

template <typename T, typename Sum>
void column_sums_kernel(const T* __restrict__ x, int64_t n, int64_t w, int64_t ld, Sum* __restrict__ dst) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < w; ++c) dst[c] += static_cast<Sum>(x[j * ld + c]);
}

template <typename T>
constexpr detail::RowKernelsOf<T> kernels_of() {
  return {affine_rows_kernel<T>,          column_moments_kernel<T>,      norm_backward_rows_kernel<T>,
          norm_input_grad_rows_kernel<T>, few_outputs_forward_kernel<T>, few_outputs_input_grad_kernel<T>,
          few_outputs_weight_grad_kernel<T>, add_kernel<T>,                 sum3_kernel<T>,
          multiply_kernel<T>,             column_sums_kernel<T, T>,      column_sums_kernel<T, double>};
}

}  // namespace

// This instruction set's kernels; the one symbol it exports (elementwise.cpp picks the set).
detail::RowKernels row_kernels() { return {kernels_of<float>(), kernels_of<double>()}; }
