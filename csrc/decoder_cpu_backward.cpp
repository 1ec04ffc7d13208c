// Fused backward of the decoder on the CPU: the forward's passes in reverse. With batch statistics
// a pass stops at each BatchNorm (its input gradient needs per-group sums of dx and dx * xhat) and
// the next pass finishes it (across processes: after summing those sums over the processes); with
// per-image statistics each image runs its passes on one thread, as in the forward
// (runs_per_image). Weight gradients are accumulated per thread, then summed.
#include <omp.h>

#include <algorithm>
#include <memory>

#include "block_cache.h"
#include "decoder_cpu.h"
#include "decoder_cpu_common.h"
#include "gemm.h"

namespace fastinr {
namespace {

using namespace detail;

// Offsets of every weight gradient in one flat per-thread accumulator.
struct GradLayout {
  std::vector<int64_t> weight, bias, gamma, beta;
  int64_t w_out = 0, b_out = 0, w_pos = 0, size = 0;
  explicit GradLayout(const DecoderConfig& cfg) {
    auto take = [this](int64_t n) { int64_t at = size; size += n; return at; };
    for (int64_t i = 0; i < cfg.num_blocks(); ++i) {
      const int64_t w = cfg.block_width(i);
      for (int64_t l = 0; l < cfg.layers; ++l) {
        weight.push_back(take(w * w));
        bias.push_back(take(w));
      }
      if (cfg.normalized()) {
        gamma.push_back(take(w));
        beta.push_back(take(w));
      }
    }
    w_out = take(cfg.out_channels * cfg.out_width());
    b_out = take(cfg.out_channels);
    w_pos = take(cfg.hidden * cfg.emb_size());   // transposed: (emb_size, hidden)
  }
};

template <typename T>
class Backward {
 public:
  Backward(const DecoderConfig& cfg, const T* grad_colors, const T* codes, const DecoderWeights<T>& wts,
           const DecoderSaved<T>& saved, const DecoderGrads<T>& grads)
      : cfg_(cfg), grad_colors_(grad_colors), codes_(codes), wts_(wts), saved_(saved), grads_(grads),
        tiles_(make_tiles(cfg)), nb_(cfg.num_blocks()), layout_(cfg), norms_(nb_), c1_(nb_), c2_(nb_),
        sums_(nb_), max_width_(max_width(cfg)) {
    for (int64_t i = 0; i < nb_ && cfg.batch_norm; ++i) {
      if (cfg.batch_stats()) {
        const int64_t w = cfg.block_width(i), count = cfg.groups() * w;
        norms_[i].mean.assign(saved.mean[i], saved.mean[i] + count);
        norms_[i].rstd.assign(saved.rstd[i], saved.rstd[i] + count);
        norms_[i].set(cfg.groups(), w, wts.norm_weight[i], wts.norm_bias[i]);
      } else {
        norms_[i] = running_norm(cfg, wts, i);
      }
    }
    if (cfg.batch_stats() && nb_ > 0) {
      const size_t bytes = sizeof(T) * static_cast<size_t>(cfg.rows() * max_width_);
      for (auto& block : carry_) block = std::make_unique<CachedBlock>(bytes);
    }
    // Every image has the same pixels: their embedding once, not one sin/cos per tile and pixel.
    embedding_.resize(cfg.pixels() * cfg.emb_size());
    embedding_rows(cfg, 0, cfg.pixels(), embedding_.data());
    dcode_tile_.assign(tiles_.size() * cfg.hidden, 0.0);
    if (cfg.modulated()) dmods_tile_.assign(tiles_.size() * cfg.modulated_layers() * cfg.mod_width(), 0.0);
    dcells_tile_.resize(tiles_.size() * cfg.offset_rank * cfg.hidden);
    const int64_t rows = decoder_tile_rows();
    for (int64_t i = 0; i < nb_; ++i)
      for (int64_t l = 0; l < cfg.layers; ++l) {
        const int64_t w = cfg.block_width(i);
        input_gemm_.emplace_back(wts.weight[i * cfg.layers + l], w, w, false, rows, cfg.bf16_matmul);
      }
    if (cfg.out_channels > kFewOutputs)
      out_input_gemm_.emplace_back(wts.w_out, cfg.out_channels, cfg.out_width(), false, rows);
  }

  void run() {
    const int threads = omp_get_max_threads();
    acc_.assign(static_cast<size_t>(threads) * layout_.size, T(0));
    if (cfg_.batch_stats()) {
      for (int64_t i = 0; i < nb_; ++i) {
        const int64_t w = cfg_.block_width(i);
        sums_[i].resize(tiles_.size(), w);
        c1_[i].resize(cfg_.groups() * w);
        c2_[i].resize(cfg_.groups() * w);
      }
    }
    const int64_t count = static_cast<int64_t>(tiles_.size());
    if (runs_per_image(cfg_, threads)) {
      const int64_t per_image = tiles_per_image(cfg_);
#pragma omp parallel
      {
        Scratch<T> scratch(cfg_);
        T* acc = &acc_[static_cast<size_t>(omp_get_thread_num()) * layout_.size];
#pragma omp for schedule(static)
        for (int64_t b = 0; b < cfg_.batch; ++b) {
          const int64_t t0 = b * per_image, t1 = t0 + per_image;
          int carry_in = 0;
          for (int64_t start = nb_;; --start) {
            for (int64_t t = t0; t < t1; ++t) run_tile(t, start, carry_in, scratch, acc);
            if (start == 0) break;
            finish_sums(start - 1, t0, t1);
            carry_in = 1 - carry_in;
          }
        }
      }
    } else {
      int carry_in = 0;   // which carry buffer the next pass reads; it writes the other
      for (int64_t start = nb_;; --start) {
        pass(start, carry_in);
        // a pass started at `start` ends at block start-1 when that block has batch statistics
        if (!cfg_.batch_stats() || start == 0) break;
        finish_sums(start - 1, 0, count);
        carry_in = 1 - carry_in;
      }
    }
    reduce(threads);
  }

 private:
  void pass(int64_t start, int carry_in) {
    const int64_t count = static_cast<int64_t>(tiles_.size());
#pragma omp parallel
    {
      Scratch<T> scratch(cfg_);
      T* acc = &acc_[static_cast<size_t>(omp_get_thread_num()) * layout_.size];
#pragma omp for schedule(static)
      for (int64_t t = 0; t < count; ++t) run_tile(t, start, carry_in, scratch, acc);
    }
  }

  // A tile's rows of a carry buffer start at r0 * max_width whatever the block's width, so images
  // at different blocks (per-image schedule) never share memory.
  T* carry(int which) { return carry_[which]->data<T>(); }

  // Sums of dx0 and dx0 * xhat per group (the groups of tiles t0 .. t1) -> the constants of block
  // i's BatchNorm input gradient: dh = carry - c1 - xhat * c2, carry = direct + rstd * gamma * dx0.
  void finish_sums(int64_t i, int64_t t0, int64_t t1) {
    const int64_t w = cfg_.block_width(i);
    const int64_t g0 = group_of(cfg_, tiles_[t0]), g1 = group_of(cfg_, tiles_[t1 - 1]) + 1;
    std::vector<double> s1((g1 - g0) * w, 0.0), s2((g1 - g0) * w, 0.0), count(g1 - g0, 0.0);
    const TileMoments& sums = sums_[i];
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k = group_of(cfg_, tiles_[t]) - g0;
      count[k] += static_cast<double>(tiles_[t].rows);
      for (int64_t c = 0; c < w; ++c) {
        s1[k * w + c] += sums.mean[t * w + c];
        s2[k * w + c] += sums.m2[t * w + c];
      }
    }
    if (cfg_.synced()) {   // one group: the sums of dx0 and dx0 * xhat over every process
      std::vector<double> both(s1);
      both.insert(both.end(), s2.begin(), s2.end());
      cfg_.sum_across(both.data(), 2 * w);
      std::copy(both.begin(), both.begin() + w, s1.begin());
      std::copy(both.begin() + w, both.end(), s2.begin());
      count[0] = static_cast<double>(cfg_.global_rows);
    }
    const T* gamma = wts_.norm_weight[i];
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t k = g - g0;
      for (int64_t c = 0; c < w; ++c) {
        const double f = norms_[i].rstd[g * w + c] * gamma[c] / count[k];
        c1_[i][g * w + c] = static_cast<T>(f * s1[k * w + c]);
        c2_[i][g * w + c] = static_cast<T>(f * s2[k * w + c]);
      }
    }
  }

  void run_tile(int64_t t, int64_t start, int carry_in, Scratch<T>& s, T* acc) {
    const Tile& tile = tiles_[t];
    const int64_t n = tile.rows, r0 = tile.r0, L = cfg_.layers, g = group_of(cfg_, tile);
    T* G = s.g0.data();
    int64_t i;
    if (start == nb_) {
      const int64_t o = cfg_.out_channels, wo = cfg_.out_width(), pixels = cfg_.pixels();
      T* dz = s.out0.data();
      for (int64_t c = 0; c < o; ++c) {
        const T* src = grad_colors_ + (tile.image * o + c) * pixels + tile.p0;
        for (int64_t j = 0; j < n; ++j) dz[j * o + c] = src[j];
      }
      act_backward(cfg_.act_out, saved_.z_out + r0 * o, dz, dz, n * o);
      const T* h = saved_.hidden[nb_] + r0 * wo;
      if (o <= kFewOutputs) {
        few_outputs_weight_grad(dz, h, acc + layout_.w_out, acc + layout_.b_out, n, wo, o);
        few_outputs_input_grad(dz, wts_.w_out, G, n, wo, o);
      } else {
        gemm(true, false, o, wo, n, T(1), dz, o, h, wo, T(1), acc + layout_.w_out, wo);
        add_column_sums(dz, n, o, o, acc + layout_.b_out);
        out_input_gemm_[0](dz, n, T(0), G);
      }
      i = nb_ - 1;
    } else {
      const int64_t w = cfg_.block_width(start);
      const T* in = carry(carry_in) + r0 * max_width_;
      const BlockNorm<T>& norm = norms_[start];
      norm_input_grad_rows(in, saved_.hidden[start] + r0 * w, &norm.mean_t[g * w], &norm.rstd_t[g * w],
                           &c1_[start][g * w], &c2_[start][g * w], G, n, w);
      i = start - 1;
    }
    for (; i >= 0; --i) {
      const int64_t w = cfg_.block_width(i), wn = cfg_.block_width(i + 1);
      const T* h = saved_.hidden[i] + r0 * w;
      const T* dA = cfg_.concat[i] ? G + w : G;   // gradient of the block output y
      int64_t ld = wn;
      bool have_dact = false;  // s.dact holds act'(z_l), computed with layer l+1's input
      for (int64_t l = L - 1; l >= 0; --l) {
        T* dz = s.la.data();
        const T* z_pre = saved_.z[i * L + l] + r0 * w;
        if (have_dact) {
          multiply_vectors(dA, s.dact.data(), dz, n * w);
        } else {
          const T* z = modulated(cfg_, wts_.mods, tile.image, 1 + i * L + l, z_pre, n, s.zm);
          if (ld == w) {
            act_backward(cfg_.act, z, dA, dz, n * w);
          } else {
            for (int64_t j = 0; j < n; ++j) act_backward(cfg_.act, z + j * w, dA + j * ld, dz + j * w, w);
          }
        }
        modulation_backward(t, tile, 1 + i * L + l, z_pre, dz, n);
        const T* x;
        const T *scale = nullptr, *shift = nullptr;   // the BatchNorm mapping x, fused into the GEMM
        if (l > 0) {
          const T* z_prev = saved_.z[i * L + l - 1] + r0 * w;
          act_forward_grad(cfg_.act, modulated(cfg_, wts_.mods, tile.image, i * L + l, z_prev, n, s.zm),
                           s.lb.data(), s.dact.data(), n * w);
          have_dact = true;
          x = s.lb.data();
        } else if (cfg_.batch_norm) {
          const int64_t k = norms_[i].at(g, w);
          scale = &norms_[i].scale[k];
          shift = &norms_[i].shift[k];
          x = h;
        } else if (cfg_.layer_norm) {
          layer_norm_rows(h, n, w, wts_.norm_weight[i], wts_.norm_bias[i], cfg_.eps, s.lb.data());
          x = s.lb.data();
        } else {
          x = h;
        }
        accumulate_tn(cfg_.bf16_matmul, w, w, n, dz, w, x, w, acc + layout_.weight[i * L + l], w, scale, shift);
        add_column_sums(dz, n, w, w, acc + layout_.bias[i * L + l]);
        input_gemm_[i * L + l](dz, n, T(0), s.lc.data());
        dA = s.lc.data();
        ld = w;
      }
      // dA (ld) is now the gradient of the normalised input x0; G[:, :w] (ld wn) the direct path.
      T* next = G == s.g0.data() ? s.g1.data() : s.g0.data();
      if (!cfg_.normalized()) {
        for (int64_t j = 0; j < n; ++j)
          for (int64_t c = 0; c < w; ++c) next[j * w + c] = G[j * wn + c] + dA[j * ld + c];
      } else if (cfg_.layer_norm) {
        layer_norm_backward_rows(dA, ld, h, wts_.norm_weight[i], cfg_.eps, G, wn, next, n, w,
                                 acc + layout_.gamma[i], acc + layout_.beta[i], s.sum0);
      } else {
        const BlockNorm<T>& norm = norms_[i];
        const int64_t k = norm.at(g, w);
        const T* gamma = wts_.norm_weight[i];
        T* gr = s.col0.data();
        double *sum_dx = s.sum0.data(), *sum_dx_xhat = s.sum1.data();
        for (int64_t c = 0; c < w; ++c) gr[c] = gamma[c] * norm.rstd_t[k + c], sum_dx[c] = sum_dx_xhat[c] = 0.0;
        const bool batch = cfg_.batch_stats();
        T* out = batch ? carry(1 - carry_in) + r0 * max_width_ : next;
        norm_backward_rows(dA, ld, h, &norm.mean_t[k], &norm.rstd_t[k], gr, G, wn, out, n, w, sum_dx, sum_dx_xhat);
        T* dgamma = acc + layout_.gamma[i];
        T* dbeta = acc + layout_.beta[i];
        for (int64_t c = 0; c < w; ++c) {
          dgamma[c] += static_cast<T>(sum_dx_xhat[c]);
          dbeta[c] += static_cast<T>(sum_dx[c]);
        }
        if (batch) {
          std::copy(sum_dx, sum_dx + w, &sums_[i].mean[t * w]);
          std::copy(sum_dx_xhat, sum_dx_xhat + w, &sums_[i].m2[t * w]);
          return;
        }
      }
      G = next;
    }
    // Input layer: h0 = act(code_proj[b] + emb W_pos^T).
    const int64_t h = cfg_.hidden, e = cfg_.emb_size();
    T* dz = s.la.data();
    const T* z_in = saved_.z_in + r0 * h;
    act_backward(cfg_.act, modulated(cfg_, wts_.mods, tile.image, 0, z_in, n, s.zm), G, dz, n * h);
    modulation_backward(t, tile, 0, z_in, dz, n);
    if (const int64_t K = cfg_.offset_rank; K > 0)   // this tile's basis^T dz, summed per image in reduce
      gemm(true, false, K, h, n, T(1), wts_.offset_basis + cfg_.offset_basis_index(tile.image, tile.p0), K, dz, h,
           T(0), &dcells_tile_[t * K * h], h);
    add_column_sums(dz, n, h, h, &dcode_tile_[t * h]);
    // W_pos's gradient, transposed (e x h, summed transposed back in reduce): the embedding has few
    // columns, so the kernel of the few-output Linear takes it, the columns of dz innermost.
    few_outputs_weight_grad(&embedding_[tile.p0 * e], dz, acc + layout_.w_pos, static_cast<T*>(nullptr), n, h, e);
  }


  // dz holds the gradient of the modulated pre-activation of layer m: sum it (and dz * z for film)
  // into tile t's gradient of the modulation, then turn it into the gradient of z (times 1 + g).
  void modulation_backward(int64_t t, const Tile& tile, int64_t m, const T* z, T* dz, int64_t n) {
    if (!cfg_.modulated()) return;
    const int64_t h = cfg_.hidden, k = cfg_.mod_width();
    double* dmod = &dmods_tile_[(t * cfg_.modulated_layers() + m) * k];
    const bool film = cfg_.modulation == Modulation::film;
    double* ds = film ? dmod + h : dmod;
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < h; ++c) ds[c] += dz[j * h + c];
    if (!film) return;
    const T* g = mods_at(cfg_, wts_.mods, tile.image, m);
    for (int64_t j = 0; j < n; ++j)
      for (int64_t c = 0; c < h; ++c) {
        dmod[c] += static_cast<double>(dz[j * h + c]) * z[j * h + c];
        dz[j * h + c] *= T(1) + g[c];
      }
  }

  void reduce(int threads) {
    auto total = [&](int64_t at) {   // one accumulator value summed over the threads
      T sum = T(0);
      for (int k = 0; k < threads; ++k) sum += acc_[static_cast<size_t>(k) * layout_.size + at];
      return sum;
    };
    auto sum_into = [&](int64_t offset, T* dst, int64_t rows, int64_t cols, int64_t ld) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) dst[r * ld + c] = total(offset + r * cols + c);
    };
    const int64_t L = cfg_.layers;
    for (int64_t i = 0; i < nb_; ++i) {
      const int64_t w = cfg_.block_width(i);
      for (int64_t l = 0; l < L; ++l) {
        sum_into(layout_.weight[i * L + l], grads_.weight[i * L + l], w, w, w);
        sum_into(layout_.bias[i * L + l], grads_.bias[i * L + l], 1, w, w);
      }
      if (cfg_.normalized()) {
        sum_into(layout_.gamma[i], grads_.norm_weight[i], 1, w, w);
        sum_into(layout_.beta[i], grads_.norm_bias[i], 1, w, w);
      }
    }
    const int64_t o = cfg_.out_channels, wo = cfg_.out_width(), h = cfg_.hidden, c = cfg_.code_size,
                  e = cfg_.emb_size();
    sum_into(layout_.w_out, grads_.w_out, o, wo, wo);
    sum_into(layout_.b_out, grads_.b_out, 1, o, o);
    for (int64_t r = 0; r < h; ++r)   // W_pos's gradient was accumulated transposed (e x h)
      for (int64_t k = 0; k < e; ++k) grads_.w_in[r * (c + e) + c + k] = total(layout_.w_pos + k * h + r);
    // d code_proj per image -> codes, W_code and b_in.
    std::vector<T> dcode(cfg_.batch * h);
    std::vector<double> db(h, 0.0);
    std::vector<double> per_image(cfg_.batch * h, 0.0);
    for (size_t t = 0; t < tiles_.size(); ++t)
      for (int64_t k = 0; k < h; ++k) per_image[tiles_[t].image * h + k] += dcode_tile_[t * h + k];
    for (int64_t b = 0; b < cfg_.batch; ++b)
      for (int64_t k = 0; k < h; ++k) {
        dcode[b * h + k] = static_cast<T>(per_image[b * h + k]);
        db[k] += per_image[b * h + k];
      }
    for (int64_t k = 0; k < h; ++k) grads_.b_in[k] = static_cast<T>(db[k]);
    if (cfg_.modulated()) {  // per image, summed over its tiles in tile order
      const int64_t per_image = cfg_.modulated_layers() * cfg_.mod_width();
      std::vector<double> dmods(cfg_.batch * per_image, 0.0);
      for (size_t t = 0; t < tiles_.size(); ++t)
        for (int64_t k = 0; k < per_image; ++k)
          dmods[tiles_[t].image * per_image + k] += dmods_tile_[t * per_image + k];
      for (int64_t k = 0; k < cfg_.batch * per_image; ++k) grads_.mods[k] = static_cast<T>(dmods[k]);
    }
    if (const int64_t cells = cfg_.offset_rank * h; cells > 0) {  // per image, summed over its tiles in tile order
      std::vector<double> dcells(cfg_.batch * cells, 0.0);
      for (size_t t = 0; t < tiles_.size(); ++t)
        for (int64_t k = 0; k < cells; ++k) dcells[tiles_[t].image * cells + k] += dcells_tile_[t * cells + k];
      for (int64_t k = 0; k < cfg_.batch * cells; ++k) grads_.offset_cells[k] = static_cast<T>(dcells[k]);
    }
    gemm(false, false, cfg_.batch, c, h, T(1), dcode.data(), h, wts_.w_in, c + e, T(0), grads_.codes, c);
    gemm(true, false, h, c, cfg_.batch, T(1), dcode.data(), h, codes_, c, T(0), grads_.w_in, c + e);
  }

  const DecoderConfig& cfg_;
  const T* grad_colors_;
  const T* codes_;
  const DecoderWeights<T>& wts_;
  const DecoderSaved<T>& saved_;
  const DecoderGrads<T>& grads_;
  std::vector<Tile> tiles_;
  int64_t nb_;
  GradLayout layout_;
  std::vector<BlockNorm<T>> norms_;
  std::unique_ptr<CachedBlock> carry_[2];   // with batch statistics: (rows, max width) each
  std::vector<T> acc_, embedding_;
  std::vector<std::vector<T>> c1_, c2_;   // per block, (groups, w)
  std::vector<TileMoments> sums_;         // per block, per tile: sum of dx0 ("mean") and of dx0 * xhat ("m2")
  int64_t max_width_;
  std::vector<double> dcode_tile_;
  std::vector<double> dmods_tile_;   // (tiles, M, k, hidden) with modulation
  std::vector<T> dcells_tile_;       // (tiles, K, hidden) with an input offset
  std::vector<TileGemm<T>> input_gemm_, out_input_gemm_;   // dz W for each Linear's input gradient
};

}  // namespace

template <typename T>
void decoder_backward_cpu(const DecoderConfig& cfg, const T* grad_colors, const T* codes,
                          const DecoderWeights<T>& weights, const DecoderSaved<T>& saved,
                          const DecoderGrads<T>& grads) {
  Backward<T>(cfg, grad_colors, codes, weights, saved, grads).run();
}

template void decoder_backward_cpu<float>(const DecoderConfig&, const float*, const float*,
                                          const DecoderWeights<float>&, const DecoderSaved<float>&,
                                          const DecoderGrads<float>&);
template void decoder_backward_cpu<double>(const DecoderConfig&, const double*, const double*,
                                           const DecoderWeights<double>&, const DecoderSaved<double>&,
                                           const DecoderGrads<double>&);

}  // namespace fastinr
