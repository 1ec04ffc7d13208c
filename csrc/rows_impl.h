// The row kernels of rows.h, included once per instruction set by elementwise_<isa>.cpp inside its
// namespace, next to elementwise_impl.h. Plain loops with the columns innermost, so the compiler
// vectorises them for the including file's ISA (__restrict__: no argument overlaps another); float
// and double (exact arithmetic either way).

namespace {

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
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < w; ++c) {
      const T d = dx[j * ldx + c];
      const T xhat = (h[j * w + c] - mean[c]) * rstd[c];
      s1[c] += static_cast<double>(d);
      s2[c] += static_cast<double>(d * xhat);
      out[j * w + c] = g[j * ldg + c] + d * gr[c];
    }
}

template <typename T>
void norm_input_grad_rows_kernel(const T* __restrict__ in, const T* __restrict__ h, const T* __restrict__ mean,
                                  const T* __restrict__ rstd, const T* __restrict__ c1, const T* __restrict__ c2,
                                  T* __restrict__ out, int64_t n, int64_t w) {
  for (int64_t j = 0; j < n; ++j)
    for (int64_t c = 0; c < w; ++c)
      out[j * w + c] = in[j * w + c] - c1[c] - (h[j * w + c] - mean[c]) * rstd[c] * c2[c];
}

template <typename T>
constexpr detail::RowKernelsOf<T> kernels_of() {
  return {affine_rows_kernel<T>, column_moments_kernel<T>, norm_backward_rows_kernel<T>,
          norm_input_grad_rows_kernel<T>};
}

}  // namespace

// This instruction set's kernels; the one symbol it exports (elementwise.cpp picks the set).
detail::RowKernels row_kernels() { return {kernels_of<float>(), kernels_of<double>()}; }
