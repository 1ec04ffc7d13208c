// Row-major GEMM on raw pointers: C (m x n) = alpha * op(A) op(B) + beta * C, op(X) = X or X^T.
// A is (m x k) or, transposed, stored (k x m); B is (k x n) or stored (n x k); ld* are row strides.
#pragma once
#include <cstdint>
#include <memory>

#include "gemm_bf16.h"

namespace fastinr {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

// C (n x cols) = X (n x inner) op(W) + beta * C for one weight matrix W and many row tiles X:
// op(W) = W^T (layer forward, W stored out x in) or W (input gradient). Where the BLAS offers
// sgemm_pack / sgemm_compute (MKL), W is packed once into the BLAS's internal layout and every
// tile skips re-packing it; otherwise (OpenBLAS, double) each call is a plain gemm. With `bf16`
// (float only, on CPUs where bf16_gemm_supported()) W is rounded to bf16 and packed once for the
// bf16 kernel instead, and every tile is rounded to bf16 on its way in (gemm_bf16.h).
template <typename T>
class TileGemm {
 public:
  TileGemm(const T* w, int64_t out, int64_t in, bool transpose_w, int64_t max_rows, bool bf16 = false);
  void operator()(const T* x, int64_t n, T beta, T* c) const;
  // C = X' op(W) + bias (a row of C's width, added to every row): in the bf16 kernel's epilogue, else
  // the rows filled with the bias first. X' = X * scale + shift per column of X when scale and shift
  // are given (a BatchNorm's affine map): applied as X is rounded to bf16, else in a pass of its own.
  void with_bias(const T* x, int64_t n, const T* bias, T* c, const T* scale = nullptr,
                 const T* shift = nullptr) const;
  bool packed() const { return packed_ != nullptr; }

 private:
  const T* w_;
  int64_t out_, in_;
  bool transpose_w_;
  // MKL asks for a fixed ~8 MB per matrix but writes only what the matrix needs: left
  // uninitialised, the untouched pages never become resident.
  std::shared_ptr<float[]> packed_;
  std::shared_ptr<Bf16PackedB> bf16_;
};

// C (m x n) += A^T B' for one row tile (a weight gradient): bf16 operands with `bf16` (float, where
// bf16_gemm_supported()), else the BLAS in T. A is (k x m), B (k x n), row-major; B' = B * scale + shift
// per column when scale and shift are given, applied as B is rounded to bf16, else in a pass of its own.
void accumulate_tn(bool bf16, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc, const float* scale = nullptr, const float* shift = nullptr);
void accumulate_tn(bool bf16, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                   int64_t ldb, double* c, int64_t ldc, const double* scale = nullptr,
                   const double* shift = nullptr);

// Whether this process's BLAS offers packed weights (reported by the extension for benchmarks).
bool blas_packs_weights();

// While in scope, the BLAS runs on the calling thread alone (MKL; a no-op for other BLAS). Outside
// the decoder's OpenMP region MKL would otherwise pick its kernel by the thread count, and a
// product (and the statistics after it) would round differently with 1 and with 2 threads.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace fastinr
