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
// local latent grid: bilinear weights over the projected cells (plus K - g*g constant rows). The
// basis may also be per image, (B, P, K): pixel p of image b then gets basis[b, p] cells[b]
// (per-image query points, fastinr/points.py).
// Rows are processed in tiles inside one image; each tile runs the MLP with its activations in
// per-thread scratch. BatchNorm with batch statistics needs a block's statistics before any tile can
// normalise, so a pass over the tiles stops at such a block (stores h, accumulates statistics) and
// the next pass resumes there; eval mode and decoders without BatchNorm run in one streaming pass.
// Statistics over a batch split across processes (SyncBatchNorm): the pass boundary is where the
// per-channel sums cross processes. The caller's sum_across is called at every BatchNorm with
// batch statistics: forward, the block's sums of x, then its sums of squares about the global mean
// (w values each, the Chan et al. merge of the processes' moments); backward, the sums of dy and of
// dy * xhat (2w values). The global rows are the caller's (they normalise the sums).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "elementwise.h"

namespace fastinr {

enum class NormStats { image, batch, running };
enum class Modulation { none, shift, film };

// The decoder (what a DecoderSpec holds, fixed per decoder) and the sizes and options of one call.
struct DecoderConfig {
  int64_t code_size = 0, hidden = 0, out_channels = 0;
  int64_t layers = 0;                 // per block
  std::vector<double> freqs;
  std::vector<bool> concat;           // per block
  bool batch_norm = false;
  bool layer_norm = false;            // per row over its features, instead of BatchNorm
  Act act = Act::gelu, act_out = Act::sigmoid;
  double eps = 1e-5;
  Modulation modulation = Modulation::none;
  // per call
  int64_t batch = 0, height = 0, width = 0;
  NormStats norm_stats = NormStats::image;
  int64_t offset_rank = 0;            // K of the input offset, 0: none
  bool offset_per_image = false;      // the offset's basis is (B, P, K) instead of (P, K)
  // The hidden layers' GEMMs (forward, input and weight gradients) with bf16 operands and float32
  // accumulation (float only; set only where bf16_gemm_supported()). Everything else stays float32.
  bool bf16_matmul = false;
  // With batch statistics across processes: sums `count` doubles in place over the processes, and
  // the rows of the global batch. Empty: one process, the batch is the whole batch.
  std::function<void(double* values, int64_t count)> sum_across;
  int64_t global_rows = 0;

  int64_t pixels() const { return height * width; }
  int64_t rows() const { return batch * pixels(); }
  int64_t emb_size() const { return (2 * static_cast<int64_t>(freqs.size()) + 1) * 2; }
  int64_t num_blocks() const { return static_cast<int64_t>(concat.size()); }
  int64_t block_width(int64_t i) const;   // input width of block i; i == num_blocks: out_width
  int64_t out_width() const { return block_width(num_blocks()); }
  bool batch_stats() const { return batch_norm && norm_stats != NormStats::running; }
  bool normalized() const { return batch_norm || layer_norm; }   // blocks have norm_weight, norm_bias
  int64_t groups() const { return norm_stats == NormStats::image ? batch : 1; }
  bool synced() const { return batch_stats() && norm_stats == NormStats::batch && sum_across != nullptr; }
  bool modulated() const { return modulation != Modulation::none; }
  int64_t modulated_layers() const { return 1 + num_blocks() * layers; }
  // Index of basis row p of image `image` (its first of K values).
  int64_t offset_basis_index(int64_t image, int64_t p) const {
    return ((offset_per_image ? image * pixels() : 0) + p) * offset_rank;
  }
  int64_t mod_width() const { return (modulation == Modulation::film ? 2 : 1) * hidden; }  // k * hidden
};

// DecoderParams.flat(), the Python side's one list of parameter tensors, by name. The seed's layout:
// nn.Linear weights are (out, in) row-major; weight[i*L + l] is layer l of block i.
template <typename P>
struct FlatParams {
  P w_in{};                                 // (hidden, C + E)
  P b_in{};                                 // (hidden,)
  std::vector<P> norm_weight, norm_bias;    // per block (w_i,), empty without a norm
  std::vector<P> weight, bias;              // [i*L + l] (w_i, w_i), (w_i,)
  P w_out{};                                // (out, out_width)
  P b_out{};                                // (out,)
};

// Tensor `index` of the flat list: its field as DecoderParams names it (with its block and layer,
// -1 where the field has none) and its shape ((rows,) when cols == 0).
struct ParamSlot {
  int64_t index;
  const char* field;
  int64_t block, layer;
  int64_t rows, cols;
};

// The one definition of the flat order in C++: calls visit(member, slot) for every member of `named`
// in DecoderParams.flat() order (w_in, b_in, norm weights, norm biases, then per block its layers'
// weights and biases, w_out, b_out), after sizing its vectors for `cfg`.
template <typename P, typename Visit>
void for_each_flat(const DecoderConfig& cfg, FlatParams<P>& named, Visit&& visit) {
  const int64_t nb = cfg.num_blocks(), L = cfg.layers, n_norm = cfg.normalized() ? nb : 0;
  named.norm_weight.resize(n_norm);
  named.norm_bias.resize(n_norm);
  named.weight.resize(nb * L);
  named.bias.resize(nb * L);
  int64_t k = 0;
  visit(named.w_in, ParamSlot{k++, "w_in", -1, -1, cfg.hidden, cfg.code_size + cfg.emb_size()});
  visit(named.b_in, ParamSlot{k++, "b_in", -1, -1, cfg.hidden, 0});
  for (int64_t i = 0; i < n_norm; ++i)
    visit(named.norm_weight[i], ParamSlot{k++, "norm_weight", i, -1, cfg.block_width(i), 0});
  for (int64_t i = 0; i < n_norm; ++i)
    visit(named.norm_bias[i], ParamSlot{k++, "norm_bias", i, -1, cfg.block_width(i), 0});
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t w = cfg.block_width(i);
    for (int64_t l = 0; l < L; ++l) visit(named.weight[i * L + l], ParamSlot{k++, "weights", i, l, w, w});
    for (int64_t l = 0; l < L; ++l) visit(named.bias[i * L + l], ParamSlot{k++, "biases", i, l, w, 0});
  }
  visit(named.w_out, ParamSlot{k++, "w_out", -1, -1, cfg.out_channels, cfg.out_width()});
  visit(named.b_out, ParamSlot{k++, "b_out", -1, -1, cfg.out_channels, 0});
}

template <typename T>
struct DecoderWeights : FlatParams<const T*> {
  std::vector<const T*> running_mean, running_var;  // per block (w_i,) with running statistics
  const T* mods = nullptr;                  // (B, M, k, hidden) with modulation
  const T* offset_basis = nullptr;          // (P, K) or (B, P, K) with an input offset
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

// The saved tensors in the one order the caller keeps them: visit(member, width, statistic) for
// each member of `saved` (after sizing its vectors for `cfg`); a row tensor (N, width) of T, or
// with statistic == true a (groups, width) tensor of double.
template <typename T, typename Visit>
void for_each_saved(const DecoderConfig& cfg, DecoderSaved<T>& saved, Visit&& visit) {
  const int64_t nb = cfg.num_blocks(), L = cfg.layers, n_stats = cfg.batch_stats() ? nb : 0;
  saved.hidden.resize(nb + 1);
  saved.z.resize(nb * L);
  saved.mean.resize(n_stats);
  saved.rstd.resize(n_stats);
  visit(saved.z_in, cfg.hidden, false);
  for (int64_t i = 0; i <= nb; ++i) visit(saved.hidden[i], cfg.block_width(i), false);
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t l = 0; l < L; ++l) visit(saved.z[i * L + l], cfg.block_width(i), false);
  visit(saved.z_out, cfg.out_channels, false);
  for (int64_t i = 0; i < n_stats; ++i) visit(saved.mean[i], cfg.block_width(i), true);
  for (int64_t i = 0; i < n_stats; ++i) visit(saved.rstd[i], cfg.block_width(i), true);
}

// Per block (groups, w_i) statistics of the block input, variance unbiased; with batch statistics.
template <typename T>
struct DecoderStats {
  std::vector<T*> mean, var;
};

// Every gradient: the parameters' in the members of FlatParams, and those of the inputs.
template <typename T>
struct DecoderGrads : FlatParams<T*> {
  T* codes = nullptr;
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
