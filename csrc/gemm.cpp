// GEMM through the BLAS that torch's CPU library carries (MKL or OpenBLAS, both export the
// Fortran symbols). The decoder calls it on row tiles from inside its own OpenMP region, where
// the BLAS runs single-threaded, so each thread multiplies its tile while it is in cache.
#include "gemm.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "rows.h"

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc);
}

namespace fastinr {
namespace {

// Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: swap the operands, keep flags.
template <typename T, typename F>
void gemm_rowmajor(F blas, bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                   const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // BLAS would still scale C; do it here so k == 0 is well defined everywhere
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int im = static_cast<int>(n), in = static_cast<int>(m), ik = static_cast<int>(k);
  // BLAS requires ld >= max(1, rows of the stored column-major matrix).
  const int ilda = static_cast<int>(std::max<int64_t>(ldb, trans_b ? k : n));
  const int ildb = static_cast<int>(std::max<int64_t>(lda, trans_a ? m : k));
  const int ildc = static_cast<int>(std::max<int64_t>(ldc, n));
  blas(&ta, &tb, &im, &in, &ik, &alpha, b, &ilda, a, &ildb, &beta, c, &ildc);
}

// MKL's packed-matrix API (LP64 Fortran symbols), looked up at run time: absent from OpenBLAS.
using PackGetSize = size_t (*)(const char* identifier, const int* m, const int* n, const int* k);
using Pack = void (*)(const char* identifier, const char* trans, const int* m, const int* n, const int* k,
                      const float* alpha, const float* src, const int* ld, float* dest);
using Compute = void (*)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* a, const int* lda, const float* b, const int* ldb, const float* beta,
                         float* c, const int* ldc);

struct PackApi {
  PackGetSize get_size = nullptr;
  Pack pack = nullptr;
  Compute compute = nullptr;
  bool available() const { return get_size && pack && compute; }
};

const PackApi& pack_api() {
  static const PackApi api = [] {
    PackApi found;
    found.get_size = reinterpret_cast<PackGetSize>(dlsym(RTLD_DEFAULT, "sgemm_pack_get_size_"));
    found.pack = reinterpret_cast<Pack>(dlsym(RTLD_DEFAULT, "sgemm_pack_"));
    found.compute = reinterpret_cast<Compute>(dlsym(RTLD_DEFAULT, "sgemm_compute_"));
    return found;
  }();
  return api;
}

// X (n x w, row stride ld) * scale + shift per column, in this thread's buffer (valid until its next call):
// the affine pass that the bf16 GEMMs fuse into their rounding, for the GEMMs that read X as it is.
template <typename T>
const T* mapped_rows(const T* x, int64_t n, int64_t w, const T* scale, const T* shift, int64_t ld = -1) {
  thread_local std::vector<T> buffer;
  buffer.resize(static_cast<size_t>(n * w));
  if (ld < 0 || ld == w) {
    affine_rows(x, scale, shift, buffer.data(), n, w);
  } else {
    for (int64_t j = 0; j < n; ++j) affine_rows(x + j * ld, scale, shift, buffer.data() + j * w, 1, w);
  }
  return buffer.data();
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  gemm_rowmajor(sgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  gemm_rowmajor(dgemm_, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool blas_packs_weights() { return pack_api().available(); }

namespace {
using SetLocalThreads = int (*)(int);  // MKL's C entry point (by value; the lower-case one is Fortran's)

SetLocalThreads set_local_threads() {
  static const auto fn = reinterpret_cast<SetLocalThreads>(dlsym(RTLD_DEFAULT, "MKL_Set_Num_Threads_Local"));
  return fn;
}
}  // namespace

SingleThreadedBlas::SingleThreadedBlas() {
  if (set_local_threads()) previous_ = set_local_threads()(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (set_local_threads()) set_local_threads()(previous_);  // 0 restores the global setting
}

// In column-major terms the tile product is C^T (cols x n) = op'(W) X^T with W the BLAS's "A":
// W stored (out x in) row-major is column-major (in x out), so op'(W) is 'T' for X W^T, 'N' for X W.
template <typename T>
TileGemm<T>::TileGemm(const T* w, int64_t out, int64_t in, bool transpose_w, int64_t max_rows, bool bf16)
    : w_(w), out_(out), in_(in), transpose_w_(transpose_w) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16 && bf16_gemm_supported() && out > 0 && in > 0) {
      bf16_ = std::make_shared<Bf16PackedB>(w, transpose_w ? in : out, transpose_w ? out : in, transpose_w);
      return;
    }
    if (!pack_api().available() || out <= 0 || in <= 0 || max_rows <= 0) return;
    const int m = static_cast<int>(transpose_w ? out : in), k = static_cast<int>(transpose_w ? in : out);
    const int n = static_cast<int>(max_rows), ld = static_cast<int>(in);
    const char trans = transpose_w ? 'T' : 'N';
    const float one = 1.0f;
    const size_t floats = (pack_api().get_size("A", &m, &n, &k) + sizeof(float) - 1) / sizeof(float);
    packed_.reset(new float[floats]);
    pack_api().pack("A", &trans, &m, &n, &k, &one, w, &ld, packed_.get());
  }
}

template <typename T>
void TileGemm<T>::operator()(const T* x, int64_t n, T beta, T* c) const {
  const int64_t inner = transpose_w_ ? in_ : out_, cols = transpose_w_ ? out_ : in_;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_) {   // the decoder calls with beta 0 (overwrite) or 1 (add to the bias rows)
      bf16_gemm(x, inner, n, *bf16_, beta != 0.0f, c, cols);
      return;
    }
    if (packed_ && n > 0) {
      const int m = static_cast<int>(cols), rows = static_cast<int>(n), k = static_cast<int>(inner);
      pack_api().compute("P", "N", &m, &rows, &k, packed_.get(), &m, x, &k, &beta, c, &m);
      return;
    }
  }
  gemm(false, transpose_w_, n, cols, inner, T(1), x, inner, w_, in_, beta, c, cols);
}

template <typename T>
void TileGemm<T>::with_bias(const T* x, int64_t n, const T* bias, T* c, const T* scale, const T* shift) const {
  const int64_t inner = transpose_w_ ? in_ : out_, cols = transpose_w_ ? out_ : in_;
  if constexpr (std::is_same_v<T, float>) {
    if (bf16_) {
      bf16_gemm(x, inner, n, *bf16_, false, c, cols, bias, ColumnAffine{scale, shift});
      return;
    }
  }
  if (scale) x = mapped_rows(x, n, inner, scale, shift);
  for (int64_t j = 0; j < n; ++j) std::memcpy(c + j * cols, bias, sizeof(T) * cols);
  (*this)(x, n, T(1), c);
}

void accumulate_tn(bool bf16, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc, const float* scale, const float* shift) {
  if (bf16 && bf16_gemm_supported()) {
    bf16_gemm_tn_accumulate(m, n, k, a, lda, b, ldb, c, ldc, ColumnAffine{scale, shift});
    return;
  }
  if (scale) b = mapped_rows(b, k, n, scale, shift, ldb), ldb = n;
  gemm(true, false, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
}

void accumulate_tn(bool, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                   int64_t ldb, double* c, int64_t ldc, const double* scale, const double* shift) {
  if (scale) b = mapped_rows(b, k, n, scale, shift, ldb), ldb = n;
  gemm(true, false, m, n, k, 1.0, a, lda, b, ldb, 1.0, c, ldc);
}

template class TileGemm<float>;
template class TileGemm<double>;

}  // namespace fastinr
