// Row-major GEMM on raw pointers: C (m x n) = alpha * op(A) op(B) + beta * C, op(X) = X or X^T.
// A is (m x k) or, transposed, stored (k x m); B is (k x n) or stored (n x k); ld* are row strides.
#pragma once
#include <cstdint>

namespace fastinr {

void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc);

}  // namespace fastinr
