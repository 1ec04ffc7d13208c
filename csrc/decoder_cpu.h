// The decoder on the CPU: raw pointers and sizes only (no torch, no Python).
//
// For B codes (B, C) and an H x W image (P = H*W pixels, N = B*P rows r = b*P + p):
//   h0 = act(code_proj[b] + emb[p] W_pos^T)         code_proj = codes W_code^T + b_in
//   block i: x = BN_i(h) or LN_i(h); y = act(... act(x W_i1^T + b_i1) ...); h = h + y or h ⊕ y
//   colors[b, :, p] = act_out(h W_out^T + b_out)
// With modulation, every pre-activation z of h0 and of the block layers (m = 0 .. M-1 in that
// order, M = 1 + blocks * layers) becomes, per image, z + s (shift) or z * (1 + g) + s (film),
// g and s read from mods (B, M, k, hidden), k = 2 for film ([g | s]) and 1 for shift ([s]).
// An optional input offset is added to h0's pre-activation before modulation: pixel p of image b
// gets basis[p] cells[b], basis (P, K) fixed per pixel, cells (B, K, hidden) per image. That is a
// local latent grid: bilinear weights over the projected cells (plus K - g*g constant rows).
// Rows are processed in tiles inside one image; each tile runs the MLP with its activations in
// per-thread scratch. BatchNorm with batch statistics needs a block's statistics before any tile can
// normalise, so a pass over the tiles stops at such a block (stores h, accumulates statistics) and
// the next pass resumes there; eval mode and decoders without BatchNorm run in one streaming pass.
#pragma once
#include <cstdint>
#include <vector>

#include "elementwise.h"

namespace fastinr {

enum class NormStats { image, batch, running };
enum class Modulation { none, shift, film };

struct DecoderConfig {
  int64_t batch = 0, height = 0, width = 0, code_size = 0, hidden = 0, out_channels = 0;
  int64_t layers = 0;                 // per block
  std::vector<double> freqs;
  std::vector<bool> concat;           // per block
  bool batch_norm = false;
  bool layer_norm = false;            // per row over its features, instead of BatchNorm
  Act act = Act::gelu, act_out = Act::sigmoid;
  double eps = 1e-5;
  NormStats norm_stats = NormStats::image;
  Modulation modulation = Modulation::none;
  int64_t offset_rank = 0;            // K of the input offset, 0: none
  // The hidden layers' GEMMs (forward, input and weight gradients) with bf16 operands and float32
  // accumulation (float only; set only where bf16_gemm_supported()). Everything else stays float32.
  bool bf16_matmul = false;

  int64_t pixels() const { return height * width; }
  int64_t rows() const { return batch * pixels(); }
  int64_t emb_size() const { return (2 * static_cast<int64_t>(freqs.size()) + 1) * 2; }
  int64_t num_blocks() const { return static_cast<int64_t>(concat.size()); }
  int64_t block_width(int64_t i) const;   // input width of block i; i == num_blocks: out_width
  int64_t out_width() const { return block_width(num_blocks()); }
  bool batch_stats() const { return batch_norm && norm_stats != NormStats::running; }
  bool normalized() const { return batch_norm || layer_norm; }   // blocks have norm_weight, norm_bias
  int64_t groups() const { return norm_stats == NormStats::image ? batch : 1; }
  bool modulated() const { return modulation != Modulation::none; }
  int64_t modulated_layers() const { return 1 + num_blocks() * layers; }
  int64_t mod_width() const { return (modulation == Modulation::film ? 2 : 1) * hidden; }  // k * hidden
};

// Tensors in the seed's layout: nn.Linear weights are (out, in) row-major; weight[i*L + l].
template <typename T>
struct DecoderWeights {
  const T* w_in = nullptr;                  // (hidden, C + E)
  const T* b_in = nullptr;
  std::vector<const T*> norm_weight, norm_bias, running_mean, running_var;  // per block (w_i,)
  std::vector<const T*> weight, bias;
  const T* w_out = nullptr;                 // (out, out_width)
  const T* b_out = nullptr;
  const T* mods = nullptr;                  // (B, M, k, hidden) with modulation
  const T* offset_basis = nullptr;          // (P, K) with an input offset
  const T* offset_cells = nullptr;          // (B, K, hidden) with an input offset
};

// What the forward keeps for the backward (owned by the caller).
template <typename T>
struct DecoderSaved {
  T* z_in = nullptr;                 // (N, hidden) pre-activation of h0 (before modulation)
  std::vector<T*> hidden;            // num_blocks + 1: (N, w_i), the last (N, out_width)
  std::vector<T*> z;                 // [i*L + l] (N, w_i) pre-activations (before modulation)
  T* z_out = nullptr;                // (N, out)
  std::vector<double*> mean, rstd;   // per block (groups, w_i), only with batch statistics
};

// Per block (groups, w_i) statistics of the block input, variance unbiased; with batch statistics.
template <typename T>
struct DecoderStats {
  std::vector<T*> mean, var;
};

template <typename T>
struct DecoderGrads {
  T* codes = nullptr;
  T* w_in = nullptr;
  T* b_in = nullptr;
  std::vector<T*> norm_weight, norm_bias, weight, bias;
  T* w_out = nullptr;
  T* b_out = nullptr;
  T* mods = nullptr;                 // (B, M, k, hidden) with modulation
  T* offset_cells = nullptr;         // (B, K, hidden) with an input offset
};

// colors (B, out, H, W). `saved` may be null (no backward will follow).
template <typename T>
void decoder_forward_cpu(const DecoderConfig& cfg, const T* codes, const DecoderWeights<T>& weights,
                         T* colors, const DecoderStats<T>& stats, DecoderSaved<T>* saved);

// Every gradient for grad_colors (B, out, H, W); overwrites the buffers in `grads`.
template <typename T>
void decoder_backward_cpu(const DecoderConfig& cfg, const T* grad_colors, const T* codes,
                          const DecoderWeights<T>& weights, const DecoderSaved<T>& saved,
                          const DecoderGrads<T>& grads);

// Rows per tile (the tiles never cross an image boundary).
int64_t decoder_tile_rows();

}  // namespace fastinr
