// Row-major GEMMs with bfloat16 operands and float32 accumulation and results, for the decoder's
// hidden layers under bfloat16 autocast: float inputs are rounded to bf16 (nearest even) on the way
// in, products are summed in float32 and C stays float32. The kernel uses AVX512-BF16 (vdpbf16ps)
// and is only called after a run-time CPU check (bf16_gemm_supported); elsewhere the decoder keeps
// its float32 GEMMs.
//
// B operands are packed in the kernel's layout: K in pairs, N in blocks of 32 columns,
// packed[((nb * K2 + k2) * 32 + c) * 2 + (k & 1)] = B[k][nb * 32 + c], K2 = ceil(K / 2), zero padded.
#pragma once
#include <cstdint>
#include <memory>

namespace fastinr {

// The CPU runs the bf16 kernel (x86-64 with AVX512F/BW/VL and AVX512-BF16).
bool bf16_gemm_supported();

// What multiplies the bf16 operands: our AVX512-BF16 kernel, or oneDNN's brgemm microkernel as torch
// bundles it, which runs the AMX tiles on CPUs that have them (several times our kernel there; on a CPU
// with AVX512-BF16 alone it runs the same instruction and matches our kernel's speed and bits). Both take
// the same packed operands; the default is oneDNN where the CPU has AMX-BF16 and torch's build offers the
// microkernel, else ours (gemm_bf16_onednn.cpp).
enum class Bf16Kernel { avx512, onednn };
bool onednn_bf16_available();       // torch's build has the microkernel and it multiplies right here
Bf16Kernel bf16_kernel();
void set_bf16_kernel(Bf16Kernel kernel);   // between calls; onednn throws where it is not available

// B (k x n) packed once, from row-major float W: B = W^T when W is stored (n x k) (transpose_w), else
// B = W stored (k x n).
class Bf16PackedB {
 public:
  Bf16PackedB(const float* w, int64_t k, int64_t n, bool transpose_w);
  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  const uint16_t* data() const { return packed_.get(); }

 private:
  int64_t k_, n_;
  std::shared_ptr<uint16_t[]> packed_;
};

// An optional per-column affine map x -> x * scale + shift of an operand, applied as it is rounded to
// bf16: a BatchNorm in front of a Linear costs no pass of its own (both null: none).
struct ColumnAffine {
  const float* scale = nullptr;
  const float* shift = nullptr;
  explicit operator bool() const { return scale != nullptr; }
};

// C (m x b.n, row stride ldc) = bf16(affine(X)) B (+ C when accumulate) (+ bias, a row of b.n, when
// given); X (m x b.k) float, row stride ldx.
void bf16_gemm(const float* x, int64_t ldx, int64_t m, const Bf16PackedB& b, bool accumulate, float* c,
               int64_t ldc, const float* bias = nullptr, ColumnAffine affine = {});

// C (m x n) += bf16(A)^T bf16(affine(B)) for A (k x m) and B (k x n) row-major float: a weight
// gradient summed over k rows.
void bf16_gemm_tn_accumulate(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                             int64_t ldb, float* c, int64_t ldc, ColumnAffine b_affine = {});

namespace detail {
// The AVX512-BF16 kernel (gemm_bf16_avx512.cpp): C (m x n) = A B (+ C) (+ bias), A in bf16 with the pair
// (A[r][2k], A[r][2k+1]) at a + r * a_row + k * a_pair, B packed as above.
void bf16_kernel_avx512(const uint16_t* a, int64_t a_row, int64_t a_pair, int64_t m, const uint16_t* b, int64_t k2,
                        int64_t n, bool accumulate, const float* bias, float* c, int64_t ldc);
// n rows of float (stride ldx, k values), mapped by `affine` (over the k columns) when given, to bf16 rows
// of 2 ceil(k / 2) values (zero padded).
void bf16_rows_avx512(const float* x, int64_t ldx, int64_t n, int64_t k, uint16_t* out, ColumnAffine affine);
// X (k x n) float, row stride ldx, to bf16 pairs of rows in column blocks of `block` (a multiple of 16):
// out[((c / block) * K2 + k2) * 2 * block + (c % block) * 2 + (kk & 1)] = X[kk][c], K2 = ceil(k / 2); odd
// k reads a zero row, columns past n in a 16-column chunk are written as zeros (padding no chunk reaches
// is left as it was: the kernel never stores those columns). With block 32 this is
// the packed B layout; with one block of width >= n, A^T with its pairs along X's rows. X's values are
// mapped by `affine` (over its n columns) when given; the padding stays zero.
void bf16_pairs_avx512(const float* x, int64_t ldx, int64_t k, int64_t n, int64_t block, uint16_t* out,
                       ColumnAffine affine);
// X^T as bf16 rows: out[c * 2 K2 + kk] = X[kk][c] for X (k x n) float, row stride ldx, K2 = ceil(k / 2)
// (zero for kk >= k): a weight gradient's A^T in the row layout oneDNN's brgemm reads.
void bf16_transposed_avx512(const float* x, int64_t ldx, int64_t k, int64_t n, uint16_t* out);

// One column block of the packed B (width <= 32, pairs at b[(k2 * 32 + c) * 2 + (k & 1)]) through oneDNN's
// brgemm: C (m x width) = A B (+ C when accumulate) (+ bias), A in bf16 rows (m x 2 k2, row stride a_row).
// False where the microkernel cannot run now (torch.backends.mkldnn disabled, or it refused): C is then as
// it was, or, given a bias and no accumulation, to be overwritten by the caller.
bool onednn_bf16_block(const uint16_t* a, int64_t a_row, int64_t m, const uint16_t* b, int64_t k2, int64_t width,
                       bool accumulate, const float* bias, float* c, int64_t ldc);
// Hands the AMX tile state back after a product's blocks (a no-op without AMX).
void onednn_bf16_release();
}  // namespace detail

}  // namespace fastinr
