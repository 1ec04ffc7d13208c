// Pieces shared by the CPU forward and backward (internal to csrc/decoder_cpu_*.cpp): row tiles,
// the positional embedding of a tile, per-tile moments, per-thread scratch, BatchNorm constants,
// LayerNorm rows.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "decoder_cpu.h"
#include "rows.h"

namespace fastinr {
namespace detail {

struct Tile {
  int64_t image, p0, rows, r0;
};

inline std::vector<Tile> make_tiles(const DecoderConfig& cfg) {
  const int64_t step = decoder_tile_rows(), pixels = cfg.pixels();
  std::vector<Tile> tiles;
  for (int64_t b = 0; b < cfg.batch; ++b)
    for (int64_t p0 = 0; p0 < pixels; p0 += step)
      tiles.push_back({b, p0, std::min(step, pixels - p0), b * pixels + p0});
  return tiles;
}

inline int64_t tiles_per_image(const DecoderConfig& cfg) {
  return (cfg.pixels() + decoder_tile_rows() - 1) / decoder_tile_rows();
}

// With per-image statistics every image can run all its passes on its own: one thread takes an
// image through every block while its activations are still in cache, and no pass waits for the
// whole batch. Worth it when there are at least as many images as threads.
inline bool runs_per_image(const DecoderConfig& cfg, int threads) {
  return cfg.batch_stats() && cfg.norm_stats == NormStats::image && cfg.batch >= threads;
}

inline int64_t max_width(const DecoderConfig& cfg) {
  int64_t w = 0;
  for (int64_t i = 0; i <= cfg.num_blocks(); ++i) w = std::max(w, cfg.block_width(i));
  return w;
}

// torch.linspace(-1, 1, steps)[i] as torch computes it in dtype T (both halves symmetric).
template <typename T>
T linspace_value(int64_t i, int64_t steps) {
  if (steps == 1) return T(-1);
  const T step = T(2) / static_cast<T>(steps - 1);
  return i < steps / 2 ? T(-1) + step * static_cast<T>(i) : T(1) - step * static_cast<T>(steps - i - 1);
}

// Rows p0 .. p0+n of the positional embedding, in fastinr.embedding's order.
template <typename T>
void embedding_rows(const DecoderConfig& cfg, int64_t p0, int64_t n, T* out) {
  const int64_t e = cfg.emb_size(), nf = static_cast<int64_t>(cfg.freqs.size());
  for (int64_t j = 0; j < n; ++j) {
    const int64_t p = p0 + j;
    const T xy[2] = {linspace_value<T>(p % cfg.width, cfg.width), linspace_value<T>(p / cfg.width, cfg.height)};
    T* row = out + j * e;
    row[0] = xy[0];
    row[1] = xy[1];
    for (int64_t f = 0; f < nf; ++f) {
      for (int c = 0; c < 2; ++c) {
        const T arg = xy[c] * static_cast<T>(cfg.freqs[f]);
        row[2 + 2 * f + c] = static_cast<T>(std::sin(static_cast<double>(arg)));
        row[2 + 2 * nf + 2 * f + c] = static_cast<T>(std::cos(static_cast<double>(arg)));
      }
    }
  }
}

// Per-tile (count, mean, M2) of a block input (column_moments), merged in tile order into per-group
// statistics.
struct TileMoments {
  std::vector<double> mean, m2;
  void resize(size_t tiles, int64_t w) {
    mean.assign(tiles * w, 0.0);
    m2.assign(tiles * w, 0.0);
  }
};

// Group of a tile for the statistics: its image with per-image statistics, else the whole batch.
inline int64_t group_of(const DecoderConfig& cfg, const Tile& tile) {
  return cfg.norm_stats == NormStats::image ? tile.image : 0;
}

template <typename T>
struct Scratch {
  std::vector<T> h0, h1, la, lb, lc, dact, g0, g1, zm, out0, out1;
  std::vector<T> col0;               // per-column values of one block (norm constants)
  std::vector<double> sum0, sum1;    // and per-column sums
  explicit Scratch(const DecoderConfig& cfg) {
    const int64_t t = decoder_tile_rows(), w = max_width(cfg);
    col0.resize(w);
    sum0.resize(w);
    sum1.resize(w);
    for (auto* v : {&h0, &h1, &la, &lb, &lc, &dact, &g0, &g1}) v->resize(t * w);
    if (cfg.modulated()) zm.resize(t * w);
    out0.resize(t * cfg.out_channels);
    out1.resize(t * cfg.out_channels);
  }
};

// The modulation constants of image b at modulated layer m: film [g | s], shift [s].
template <typename T>
const T* mods_at(const DecoderConfig& cfg, const T* mods, int64_t b, int64_t m) {
  return mods + (b * cfg.modulated_layers() + m) * cfg.mod_width();
}

// out = z * (1 + g) + s (film) or z + s (shift), for n rows of width cfg.hidden.
template <typename T>
void modulate_rows(const DecoderConfig& cfg, const T* mod, const T* z, T* out, int64_t n) {
  const int64_t h = cfg.hidden;
  if (cfg.modulation == Modulation::film) {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < h; ++c) out[j * h + c] = z[j * h + c] * (T(1) + mod[c]) + mod[h + c];
  } else {
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < h; ++c) out[j * h + c] = z[j * h + c] + mod[c];
  }
}

// The pre-activation z (n rows) of modulated layer m, modulated for image b into `scratch`; z
// itself without modulation. The saved pre-activations stay unmodulated for the backward.
template <typename T>
const T* modulated(const DecoderConfig& cfg, const T* mods, int64_t b, int64_t m, const T* z, int64_t n,
                   std::vector<T>& scratch) {
  if (!cfg.modulated()) return z;
  modulate_rows(cfg, mods_at(cfg, mods, b, m), z, scratch.data(), n);
  return scratch.data();
}

// Per-block normalisation as x * scale + shift, and the mean / rstd behind it, per group.
template <typename T>
struct BlockNorm {
  std::vector<double> mean, rstd;   // (groups, w)
  std::vector<T> mean_t, rstd_t;    // the same in T, for the row kernels
  std::vector<T> scale, shift;      // (groups, w)
  int64_t groups = 0;

  // Room for g_count groups of w channels (mean and rstd are filled by the caller).
  void resize(int64_t g_count, int64_t w) {
    groups = g_count;
    for (auto* v : {&mean, &rstd}) v->resize(groups * w);
    for (auto* v : {&scale, &shift, &mean_t, &rstd_t}) v->resize(groups * w);
  }

  // The T constants of group g from its mean and rstd.
  void set_group(int64_t g, int64_t w, const T* gamma, const T* beta) {
    for (int64_t c = 0; c < w; ++c) {
      const int64_t k = g * w + c;
      mean_t[k] = static_cast<T>(mean[k]);
      rstd_t[k] = static_cast<T>(rstd[k]);
      scale[k] = gamma[c] * rstd_t[k];
      shift[k] = beta[c] - mean_t[k] * scale[k];
    }
  }

  void set(int64_t g_count, int64_t w, const T* gamma, const T* beta) {
    resize(g_count, w);   // keeps mean and rstd
    for (int64_t g = 0; g < groups; ++g) set_group(g, w, gamma, beta);
  }

  // Offset of group g's constants (running statistics have one group for all).
  int64_t at(int64_t g, int64_t w) const { return (groups > 1 ? g : 0) * w; }
};

// LayerNorm of n rows of width w: each row normalised over its own features (statistics in double),
// then gamma, beta per feature. No state: the backward recomputes a row's mean and rstd.
template <typename T>
void row_stats(const T* row, int64_t w, double eps, double& mean, double& rstd) {
  double sum = 0.0, sq = 0.0;
  for (int64_t c = 0; c < w; ++c) sum += row[c];
  mean = sum / static_cast<double>(w);
  for (int64_t c = 0; c < w; ++c) {
    const double d = row[c] - mean;
    sq += d * d;
  }
  rstd = 1.0 / std::sqrt(sq / static_cast<double>(w) + eps);
}

template <typename T>
void layer_norm_rows(const T* x, int64_t n, int64_t w, const T* gamma, const T* beta, double eps, T* out) {
  for (int64_t j = 0; j < n; ++j) {
    const T* row = x + j * w;
    double mean, rstd;
    row_stats(row, w, eps, mean, rstd);
    for (int64_t c = 0; c < w; ++c)
      out[j * w + c] = static_cast<T>((row[c] - mean) * rstd) * gamma[c] + beta[c];
  }
}

// Through LayerNorm: out[j, :w] = direct[j, :w] + d LN / d x for the gradient dy (ld) of its output,
// xhat = (x - mean) * rstd: rstd * (dy gamma - mean(dy gamma) - xhat mean(dy gamma xhat)). Adds
// dy xhat and dy into dgamma, dbeta.
template <typename T>
void layer_norm_backward_rows(const T* dy, int64_t ld, const T* x, const T* gamma, double eps, const T* direct,
                              int64_t ld_direct, T* out, int64_t n, int64_t w, T* dgamma, T* dbeta,
                              std::vector<double>& xhat) {
  for (int64_t j = 0; j < n; ++j) {
    const T* row = x + j * w;
    const T* g = dy + j * ld;
    double mean, rstd, m1 = 0.0, m2 = 0.0;
    row_stats(row, w, eps, mean, rstd);
    for (int64_t c = 0; c < w; ++c) {
      xhat[c] = (row[c] - mean) * rstd;
      const double dxhat = static_cast<double>(g[c]) * gamma[c];
      m1 += dxhat;
      m2 += dxhat * xhat[c];
      dgamma[c] += static_cast<T>(g[c] * xhat[c]);
      dbeta[c] += g[c];
    }
    m1 /= static_cast<double>(w);
    m2 /= static_cast<double>(w);
    for (int64_t c = 0; c < w; ++c) {
      const double dxhat = static_cast<double>(g[c]) * gamma[c];
      out[j * w + c] = direct[j * ld_direct + c] + static_cast<T>(rstd * (dxhat - m1 - xhat[c] * m2));
    }
  }
}

template <typename T>
BlockNorm<T> running_norm(const DecoderConfig& cfg, const DecoderWeights<T>& wts, int64_t i) {
  const int64_t w = cfg.block_width(i);
  BlockNorm<T> norm;
  norm.mean.resize(w);
  norm.rstd.resize(w);
  for (int64_t c = 0; c < w; ++c) {
    norm.mean[c] = wts.running_mean[i][c];
    // rsqrt in the tensor's dtype, as the reference computes it
    norm.rstd[c] = static_cast<double>(T(1) / std::sqrt(wts.running_var[i][c] + static_cast<T>(cfg.eps)));
  }
  norm.set(1, w, wts.norm_weight[i], wts.norm_bias[i]);
  return norm;
}

}  // namespace detail
}  // namespace fastinr
