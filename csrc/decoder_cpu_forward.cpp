// Fused forward of the decoder on the CPU (see decoder_cpu.h for the math and the pass plan).
//
// OpenMP over row tiles with a static schedule, one pass per block with batch statistics; with
// per-image statistics and at least as many images as threads, over images instead, each taken
// through all its passes by one thread (runs_per_image). Block statistics are reduced per tile and
// merged in tile order (Chan et al.), so they do not depend on the thread count.
#include <omp.h>

#include "decoder_cpu.h"
#include "decoder_cpu_common.h"
#include "gemm.h"

namespace fastinr {

int64_t DecoderConfig::block_width(int64_t i) const {
  int64_t width = hidden;
  for (int64_t k = 0; k < i; ++k) width *= concat[k] ? 2 : 1;
  return width;
}

int64_t decoder_tile_rows() { return 128; }

namespace {

using namespace detail;

template <typename T>
class Forward {
 public:
  Forward(const DecoderConfig& cfg, const T* codes, const DecoderWeights<T>& wts, T* colors,
          const DecoderStats<T>& stats, DecoderSaved<T>* saved)
      : cfg_(cfg), wts_(wts), colors_(colors), stats_(stats), saved_(saved), tiles_(make_tiles(cfg)),
        nb_(cfg.num_blocks()), norms_(nb_), moments_(nb_) {
    const int64_t h = cfg.hidden, c = cfg.code_size, e = cfg.emb_size();
    code_proj_.resize(cfg.batch * h);
    for (int64_t b = 0; b < cfg.batch; ++b) std::memcpy(&code_proj_[b * h], wts.b_in, sizeof(T) * h);
    {
      SingleThreadedBlas same_rounding_at_any_thread_count;
      gemm(false, true, cfg.batch, h, c, T(1), codes, c, wts.w_in, c + e, T(1), code_proj_.data(), h);
    }
    hidden_.resize(nb_ + 1, nullptr);
    for (int64_t i = 0; i <= nb_; ++i) {
      if (saved_) {
        hidden_[i] = saved_->hidden[i];
      } else if (cfg.batch_stats() && i < nb_) {  // a later pass reads it back
        owned_.emplace_back(cfg.rows() * cfg.block_width(i));
        hidden_[i] = owned_.back().data();
      }
    }
    if (cfg.batch_norm && !cfg.batch_stats())
      for (int64_t i = 0; i < nb_; ++i) norms_[i] = running_norm(cfg, wts, i);
    // The embedding of pixel (x, y) is a column part plus a row part, so its projection is too.
    col_proj_ = axis_projection(cfg, wts, 0);
    row_proj_ = axis_projection(cfg, wts, 1);
    // Without a backward to follow, fixed BatchNorm constants fold into each block's first Linear.
    fold_norms_ = cfg.batch_norm && !cfg.batch_stats() && saved_ == nullptr;
    folded_.resize(nb_);
    const int64_t L = cfg.layers, rows = decoder_tile_rows();
    for (int64_t i = 0; i < nb_; ++i) {
      const int64_t w = cfg.block_width(i);
      for (int64_t l = 0; l < L; ++l) {
        const T* weight = wts.weight[i * L + l];
        if (l == 0 && fold_norms_) weight = fold_norm(i);
        layer_gemm_.emplace_back(weight, w, w, true, rows, cfg.bf16_matmul);
      }
    }
    if (cfg.out_channels > kFewOutputs) out_gemm_.emplace_back(wts.w_out, cfg.out_channels, cfg.out_width(), true, rows);
  }

  void run() {
    if (cfg_.batch_stats()) {
      for (int64_t i = 0; i < nb_; ++i) {
        moments_[i].resize(tiles_.size(), cfg_.block_width(i));
        norms_[i].resize(cfg_.groups(), cfg_.block_width(i));
      }
    }
    const int64_t count = static_cast<int64_t>(tiles_.size());
    if (runs_per_image(cfg_, omp_get_max_threads())) {
      const int64_t per_image = tiles_per_image(cfg_);
#pragma omp parallel
      {
        Scratch<T> scratch(cfg_);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < cfg_.batch; ++b) {
          const int64_t t0 = b * per_image, t1 = t0 + per_image;
          for (int64_t t = t0; t < t1; ++t) run_tile(t, -1, scratch);
          for (int64_t s = 0; s < nb_; ++s) {
            finish_stats(s, t0, t1);
            for (int64_t t = t0; t < t1; ++t) run_tile(t, s, scratch);
          }
        }
      }
      return;
    }
    pass(-1);
    if (!cfg_.batch_stats()) return;
    for (int64_t s = 0; s < nb_; ++s) {
      finish_stats(s, 0, count);
      pass(s);
    }
  }

 private:
  void pass(int64_t start) {
    const int64_t count = static_cast<int64_t>(tiles_.size());
#pragma omp parallel
    {
      Scratch<T> scratch(cfg_);
#pragma omp for schedule(static)
      for (int64_t t = 0; t < count; ++t) run_tile(t, start, scratch);
    }
  }

  // Block i's statistics of the groups of tiles t0 .. t1 (whole groups), merged in tile order.
  void finish_stats(int64_t i, int64_t t0, int64_t t1) {
    const int64_t w = cfg_.block_width(i);
    const int64_t g0 = group_of(cfg_, tiles_[t0]), g1 = group_of(cfg_, tiles_[t1 - 1]) + 1;
    BlockNorm<T>& norm = norms_[i];
    const TileMoments& moments = moments_[i];
    std::vector<double> m2((g1 - g0) * w, 0.0), count(g1 - g0, 0.0);
    std::fill(norm.mean.data() + g0 * w, norm.mean.data() + g1 * w, 0.0);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t g = group_of(cfg_, tiles_[t]), k = g - g0;
      const double nb = static_cast<double>(tiles_[t].rows), na = count[k], n = na + nb;
      for (int64_t c = 0; c < w; ++c) {
        double& mean = norm.mean[g * w + c];
        const double delta = moments.mean[t * w + c] - mean;
        mean += delta * nb / n;
        m2[k * w + c] += moments.m2[t * w + c] + delta * delta * na * nb / n;
      }
      count[k] = n;
    }
    if (cfg_.synced()) merge_across(w, norm.mean.data(), m2.data(), count[0]);
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t k = g - g0;
      for (int64_t c = 0; c < w; ++c) {
        const double n = count[k], var = m2[k * w + c] / n;
        norm.rstd[g * w + c] = 1.0 / std::sqrt(var + cfg_.eps);
        stats_.mean[i][g * w + c] = static_cast<T>(norm.mean[g * w + c]);
        stats_.var[i][g * w + c] = static_cast<T>(m2[k * w + c] / std::max(n - 1.0, 1.0));
      }
      norm.set_group(g, w, wts_.norm_weight[i], wts_.norm_bias[i]);
    }
    if (saved_) {
      std::copy(norm.mean.data() + g0 * w, norm.mean.data() + g1 * w, saved_->mean[i] + g0 * w);
      std::copy(norm.rstd.data() + g0 * w, norm.rstd.data() + g1 * w, saved_->rstd[i] + g0 * w);
    }
  }

  // One group's (mean, M2) over `rows` rows of this process -> those of the global batch: the sums of
  // x give the global mean, then M2 + rows (mean - global mean)^2 summed gives the global M2.
  void merge_across(int64_t w, double* mean, double* m2, double& rows) const {
    std::vector<double> sums(mean, mean + w);
    for (double& v : sums) v *= rows;
    cfg_.sum_across(sums.data(), w);
    const double total = static_cast<double>(cfg_.global_rows);
    for (int64_t c = 0; c < w; ++c) {
      const double global = sums[c] / total, delta = mean[c] - global;
      m2[c] += rows * delta * delta;
      mean[c] = global;
    }
    cfg_.sum_across(m2, w);
    rows = total;
  }

  void run_tile(int64_t t, int64_t start, Scratch<T>& s) {
    const Tile& tile = tiles_[t];
    const int64_t n = tile.rows, r0 = tile.r0, L = cfg_.layers;
    T* cur;
    int64_t i;
    if (start < 0) {
      const int64_t h = cfg_.hidden;
      T* z = saved_ ? saved_->z_in + r0 * h : s.la.data();
      const T* code = &code_proj_[tile.image * h];
      for (int64_t j = 0; j < n; ++j) {
        const int64_t p = tile.p0 + j;
        const T* col = &col_proj_[(p % cfg_.width) * h];
        const T* row = &row_proj_[(p / cfg_.width) * h];
        T* dst = z + j * h;
        sum3_vectors(code, col, row, dst, h);
      }
      if (const int64_t K = cfg_.offset_rank; K > 0)   // z += basis[(b,) p0 .. p0+n) cells[b]
        gemm(false, false, n, h, K, T(1), wts_.offset_basis + cfg_.offset_basis_index(tile.image, tile.p0), K,
             wts_.offset_cells + tile.image * K * h, h, T(1), z, h);
      cur = hidden_[0] ? hidden_[0] + r0 * h : s.h0.data();
      act_forward(cfg_.act, modulated(cfg_, wts_.mods, tile.image, 0, z, n, s.zm), cur, n * h);
      i = 0;
      if (nb_ > 0 && cfg_.batch_stats()) {
        column_moments(cur, n, h, &moments_[0].mean[t * h], &moments_[0].m2[t * h]);
        return;
      }
    } else {
      i = start;
      cur = hidden_[i] + r0 * cfg_.block_width(i);
    }
    for (;; ++i) {
      if (i == nb_) {
        output(tile, cur, s);
        return;
      }
      const int64_t w = cfg_.block_width(i), wn = cfg_.block_width(i + 1);
      const T* x = cur;
      const T *scale = nullptr, *shift = nullptr;   // the first Linear's input BatchNorm, when it maps it
      if (cfg_.batch_norm && L > 0 && !fold_norms_) {
        const int64_t k = norms_[i].at(group_of(cfg_, tile), w);
        scale = &norms_[i].scale[k];
        shift = &norms_[i].shift[k];
      } else if (cfg_.batch_norm && L == 0) {
        const int64_t k = norms_[i].at(group_of(cfg_, tile), w);
        affine_rows(cur, &norms_[i].scale[k], &norms_[i].shift[k], s.la.data(), n, w);
        x = s.la.data();
      } else if (cfg_.layer_norm) {
        layer_norm_rows(cur, n, w, wts_.norm_weight[i], wts_.norm_bias[i], cfg_.eps, s.la.data());
        x = s.la.data();
      }
      for (int64_t l = 0; l < L; ++l) {
        T* other = x == s.la.data() ? s.lb.data() : s.la.data();
        T* z = saved_ ? saved_->z[i * L + l] + r0 * w : other;
        const T* bias = l == 0 && fold_norms_ ? folded_[i].bias.data() : wts_.bias[i * L + l];
        layer_gemm_[i * L + l].with_bias(x, n, bias, z, l == 0 ? scale : nullptr, l == 0 ? shift : nullptr);
        const T* za = modulated(cfg_, wts_.mods, tile.image, 1 + i * L + l, z, n, s.zm);
        act_forward(cfg_.act, za, other, n * w);
        x = other;
      }
      T* next = hidden_[i + 1] ? hidden_[i + 1] + r0 * wn : (cur == s.h0.data() ? s.h1.data() : s.h0.data());
      if (cfg_.concat[i]) {
        for (int64_t j = 0; j < n; ++j) {
          std::memcpy(next + j * wn, cur + j * w, sizeof(T) * w);
          std::memcpy(next + j * wn + w, x + j * w, sizeof(T) * w);
        }
      } else {
        add_vectors(cur, x, next, n * w);
      }
      cur = next;
      if (i + 1 < nb_ && cfg_.batch_stats()) {
        column_moments(cur, n, wn, &moments_[i + 1].mean[t * wn], &moments_[i + 1].m2[t * wn]);
        return;
      }
    }
  }

  void output(const Tile& tile, const T* h, Scratch<T>& s) {
    const int64_t n = tile.rows, o = cfg_.out_channels, pixels = cfg_.pixels();
    T* z = saved_ ? saved_->z_out + tile.r0 * o : s.out0.data();
    if (o <= kFewOutputs)
      few_outputs_forward(h, wts_.w_out, wts_.b_out, z, n, cfg_.out_width(), o);
    else
      out_gemm_[0].with_bias(h, n, wts_.b_out, z);
    T* a = s.out1.data();
    act_forward(cfg_.act_out, z, a, n * o);
    for (int64_t c = 0; c < o; ++c) {
      T* dst = colors_ + (tile.image * o + c) * pixels + tile.p0;
      for (int64_t j = 0; j < n; ++j) dst[j] = a[j * o + c];
    }
  }

  // (axis length, hidden): the embedding of each column (axis 0) or row (axis 1) with the other
  // axis's features zeroed, times W_pos^T.
  static std::vector<T> axis_projection(const DecoderConfig& cfg, const DecoderWeights<T>& wts, int axis) {
    const int64_t n = axis == 0 ? cfg.width : cfg.height, e = cfg.emb_size(), h = cfg.hidden;
    std::vector<T> emb(n * e), proj(n * h);
    for (int64_t i = 0; i < n; ++i) {
      T* row = &emb[i * e];
      embedding_rows(cfg, axis == 0 ? i : i * cfg.width, 1, row);
      for (int64_t k = 0; k < e; ++k)
        if ((k < 2 ? k : (k - 2) % 2) != axis) row[k] = T(0);
    }
    SingleThreadedBlas same_rounding_at_any_thread_count;
    gemm(false, true, n, h, e, T(1), emb.data(), e, wts.w_in + cfg.code_size, cfg.code_size + e, T(0),
         proj.data(), h);
    return proj;
  }

  // W diag(scale) and b + W shift for block i's first Linear, from its fixed BatchNorm constants.
  const T* fold_norm(int64_t i) {
    const int64_t w = cfg_.block_width(i);
    const T* weight = wts_.weight[i * cfg_.layers];
    const T* bias = wts_.bias[i * cfg_.layers];
    const BlockNorm<T>& norm = norms_[i];
    Folded& f = folded_[i];
    f.weight.resize(w * w);
    f.bias.resize(w);
    for (int64_t r = 0; r < w; ++r) {
      T shifted = bias[r];
      for (int64_t c = 0; c < w; ++c) {
        f.weight[r * w + c] = weight[r * w + c] * norm.scale[c];
        shifted += weight[r * w + c] * norm.shift[c];
      }
      f.bias[r] = shifted;
    }
    return f.weight.data();
  }

  struct Folded {
    std::vector<T> weight, bias;
  };

  const DecoderConfig& cfg_;
  const DecoderWeights<T>& wts_;
  T* colors_;
  const DecoderStats<T>& stats_;
  DecoderSaved<T>* saved_;
  std::vector<Tile> tiles_;
  int64_t nb_;
  std::vector<BlockNorm<T>> norms_;
  std::vector<T> code_proj_;
  std::vector<T*> hidden_;
  std::vector<std::vector<T>> owned_;
  std::vector<TileMoments> moments_;   // per block: each tile's moments of the block's input
  std::vector<T> col_proj_, row_proj_;
  bool fold_norms_ = false;
  std::vector<Folded> folded_;
  std::vector<TileGemm<T>> layer_gemm_, out_gemm_;
};

}  // namespace

template <typename T>
void decoder_forward_cpu(const DecoderConfig& cfg, const T* codes, const DecoderWeights<T>& weights,
                         T* colors, const DecoderStats<T>& stats, DecoderSaved<T>* saved) {
  Forward<T>(cfg, codes, weights, colors, stats, saved).run();
}

template void decoder_forward_cpu<float>(const DecoderConfig&, const float*, const DecoderWeights<float>&,
                                         float*, const DecoderStats<float>&, DecoderSaved<float>*);
template void decoder_forward_cpu<double>(const DecoderConfig&, const double*, const DecoderWeights<double>&,
                                          double*, const DecoderStats<double>&, DecoderSaved<double>*);

}  // namespace fastinr
