// fastinr._C: checks tensors, allocates outputs and calls the compute core (decoder_cpu, and the
// CUDA render when built with nvcc). The only file that knows about Python.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "block_cache.h"
#include "decoder_cpu.h"
#include "elementwise.h"
#include "gemm.h"
#include "gemm_bf16.h"

#ifdef FASTINR_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "decoder_cuda.h"
#endif

namespace fastinr {
namespace {

using torch::Tensor;

Act parse_act(const std::string& name, const char* argument) {
  static const std::vector<std::pair<std::string, Act>> names = {
      {"gelu", Act::gelu}, {"relu", Act::relu}, {"relu6", Act::relu6}, {"silu", Act::silu},
      {"tanh", Act::tanh}, {"sigmoid", Act::sigmoid}, {"none", Act::none}};
  for (const auto& [key, act] : names)
    if (key == name) return act;
  TORCH_CHECK_VALUE(false, argument, " must be one of gelu, relu, relu6, silu, tanh, sigmoid, none; got '",
                    name, "'");
}

Modulation parse_modulation(const std::string& name) {
  if (name == "none") return Modulation::none;
  if (name == "shift") return Modulation::shift;
  if (name == "film") return Modulation::film;
  TORCH_CHECK_VALUE(false, "modulation must be 'none', 'shift' or 'film'; got '", name, "'");
}

NormStats parse_norm_stats(const std::string& name) {
  if (name == "image") return NormStats::image;
  if (name == "batch") return NormStats::batch;
  if (name == "running") return NormStats::running;
  TORCH_CHECK_VALUE(false, "norm_stats must be 'image', 'batch' or 'running'; got '", name, "'");
}

// The Python-side description of the decoder, and the parameters in DecoderParams.flat() order.
struct Arguments {
  DecoderConfig cfg;
  Tensor codes, mods, offset_basis, offset_cells;   // undefined when not given
  std::vector<Tensor> params, running;  // running: mean_0, var_0, mean_1, var_1, ...
};

void check_tensor(const Tensor& t, const std::string& name, const Tensor& like, std::vector<int64_t> shape) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " is on ", t.device(), " but codes are on ", like.device());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but codes have ", like.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == c10::IntArrayRef(shape), name, " must have shape ", c10::IntArrayRef(shape),
                    ", got ", t.sizes());
}

Arguments parse(const Tensor& codes, std::vector<Tensor> params, std::vector<Tensor> running, int64_t height,
                int64_t width, std::vector<double> freqs, std::vector<bool> concat, int64_t layers,
                bool batch_norm, bool layer_norm, const std::string& activation, const std::string& activation_out,
                double eps, const std::string& norm_stats, const std::string& modulation,
                const std::optional<Tensor>& mods, const std::optional<Tensor>& offset_basis,
                const std::optional<Tensor>& offset_cells, bool bf16_matmul) {
  Arguments args;
  DecoderConfig& cfg = args.cfg;
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes must have shape (B, C), got ", codes.sizes());
  TORCH_CHECK_TYPE(codes.scalar_type() == torch::kFloat32 || codes.scalar_type() == torch::kFloat64,
                   "codes must be float32 or float64, got ", codes.scalar_type());
  TORCH_CHECK_VALUE(codes.size(0) >= 1, "codes must have B >= 1, got ", codes.sizes());
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "shape must be (H, W) with two positive ints, got (", height,
                    ", ", width, ")");
  TORCH_CHECK_VALUE(layers >= 0, "layers_per_block must be >= 0, got ", layers);
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  if (bf16_matmul) {
    TORCH_CHECK_VALUE(bf16_gemm_supported(), "bf16_matmul=True needs a CPU with AVX512-BF16 and this one has none "
                      "(fastinr.native.bf16_matmul_supported() says so before a call)");
    TORCH_CHECK_TYPE(codes.scalar_type() == torch::kFloat32, "bf16_matmul=True takes float32 tensors (bf16 is "
                     "the GEMMs' operand precision), got codes of ", codes.scalar_type());
  }
  cfg.bf16_matmul = bf16_matmul;
  cfg.batch = codes.size(0);
  cfg.code_size = codes.size(1);
  cfg.height = height;
  cfg.width = width;
  cfg.freqs = std::move(freqs);
  cfg.concat = std::move(concat);
  cfg.layers = layers;
  TORCH_CHECK_VALUE(!(batch_norm && layer_norm), "batch_norm and layer_norm exclude each other");
  cfg.batch_norm = batch_norm;
  cfg.layer_norm = layer_norm;
  cfg.act = parse_act(activation, "activation");
  cfg.act_out = parse_act(activation_out, "activation_out");
  cfg.eps = eps;
  cfg.norm_stats = parse_norm_stats(norm_stats);
  cfg.modulation = parse_modulation(modulation);
  const int64_t nb = cfg.num_blocks(), n_norm = cfg.normalized() ? nb : 0;
  const size_t expected = 2 + 2 * n_norm + 2 * nb * layers + 2;
  TORCH_CHECK_VALUE(params.size() == expected, "params must hold ", expected,
                    " tensors (DecoderParams.flat() for this spec), got ", params.size());
  TORCH_CHECK_VALUE(params[1].dim() == 1 && params[1].size(0) >= 1, "params.b_in must have shape (hidden,), got ",
                    params[1].sizes());
  cfg.hidden = params[1].size(0);
  TORCH_CHECK_VALUE(params.back().dim() == 1 && params.back().size(0) >= 1,
                    "params.b_out must have shape (out_channels,), got ", params.back().sizes());
  cfg.out_channels = params.back().size(0);
  TORCH_CHECK_VALUE(cfg.rows() < (int64_t(1) << 40), "too many pixels: ", cfg.rows());
  size_t k = 0;
  auto take = [&](const std::string& name, std::vector<int64_t> shape) {
    check_tensor(params[k], "params." + name, codes, shape);
    args.params.push_back(params[k++].contiguous());
  };
  take("w_in", {cfg.hidden, cfg.code_size + cfg.emb_size()});
  take("b_in", {cfg.hidden});
  for (int64_t i = 0; i < n_norm; ++i) take("norm_weight[" + std::to_string(i) + "]", {cfg.block_width(i)});
  for (int64_t i = 0; i < n_norm; ++i) take("norm_bias[" + std::to_string(i) + "]", {cfg.block_width(i)});
  for (int64_t i = 0; i < nb; ++i) {
    const int64_t w = cfg.block_width(i);
    for (int64_t l = 0; l < layers; ++l)
      take("weights[" + std::to_string(i) + "][" + std::to_string(l) + "]", {w, w});
    for (int64_t l = 0; l < layers; ++l) take("biases[" + std::to_string(i) + "][" + std::to_string(l) + "]", {w});
  }
  take("w_out", {cfg.out_channels, cfg.out_width()});
  take("b_out", {cfg.out_channels});
  if (batch_norm && cfg.norm_stats == NormStats::running) {
    TORCH_CHECK_VALUE(running.size() == static_cast<size_t>(2 * nb), "running must hold (mean, var) for each of the ",
                      nb, " blocks with norm_stats='running', got ", running.size(), " tensors");
    for (int64_t i = 0; i < nb; ++i)
      for (int m = 0; m < 2; ++m) {
        const Tensor& t = running[2 * i + m];
        check_tensor(t, std::string("running[") + std::to_string(i) + "]." + (m ? "var" : "mean"), codes,
                     {cfg.block_width(i)});
        args.running.push_back(t.contiguous());
      }
  }
  if (batch_norm && cfg.norm_stats != NormStats::running && nb > 0) {
    const int64_t count = cfg.norm_stats == NormStats::image ? cfg.pixels() : cfg.rows();
    TORCH_CHECK_VALUE(count >= 2, "BatchNorm with ", norm_stats, " statistics needs more than one value per channel, got ",
                      cfg.batch, " image(s) of ", cfg.pixels(), " pixel(s); use a larger shape or eval mode");
  }
  if (cfg.modulated()) {
    for (bool c : cfg.concat) TORCH_CHECK_VALUE(!c, "modulation '", modulation, "' needs blocks of constant width (no concat)");
    TORCH_CHECK_VALUE(mods.has_value(), "mods must be given with modulation '", modulation, "'");
    check_tensor(*mods, "mods", codes,
                 {cfg.batch, cfg.modulated_layers(), cfg.mod_width() / cfg.hidden, cfg.hidden});
    args.mods = mods->contiguous();
  } else {
    TORCH_CHECK_VALUE(!mods.has_value(), "mods were given but modulation is 'none'");
  }
  TORCH_CHECK_VALUE(offset_basis.has_value() == offset_cells.has_value(),
                    "offset_basis and offset_cells come together (the input offset basis[p] cells[b])");
  if (offset_basis.has_value()) {
    TORCH_CHECK_VALUE(offset_basis->dim() == 3 && offset_basis->size(2) >= 1,
                      "offset_basis must have shape (H, W, K) with K >= 1, got ", offset_basis->sizes());
    cfg.offset_rank = offset_basis->size(2);
    check_tensor(*offset_basis, "offset_basis", codes, {height, width, cfg.offset_rank});
    check_tensor(*offset_cells, "offset_cells", codes, {cfg.batch, cfg.offset_rank, cfg.hidden});
    args.offset_basis = offset_basis->contiguous();
    args.offset_cells = offset_cells->contiguous();
  }
  args.codes = codes.contiguous();
  return args;
}

template <typename T>
DecoderWeights<T> weights_of(const Arguments& args) {
  const DecoderConfig& cfg = args.cfg;
  DecoderWeights<T> w;
  auto ptr = [](const Tensor& t) { return t.data_ptr<T>(); };
  size_t k = 0;
  w.w_in = ptr(args.params[k++]);
  w.b_in = ptr(args.params[k++]);
  const int64_t nb = cfg.num_blocks(), n_norm = cfg.normalized() ? nb : 0;
  for (int64_t i = 0; i < n_norm; ++i) w.norm_weight.push_back(ptr(args.params[k++]));
  for (int64_t i = 0; i < n_norm; ++i) w.norm_bias.push_back(ptr(args.params[k++]));
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t l = 0; l < cfg.layers; ++l) w.weight.push_back(ptr(args.params[k++]));
    for (int64_t l = 0; l < cfg.layers; ++l) w.bias.push_back(ptr(args.params[k++]));
  }
  w.w_out = ptr(args.params[k++]);
  w.b_out = ptr(args.params[k++]);
  if (cfg.modulated()) w.mods = ptr(args.mods);
  if (cfg.offset_rank) {
    w.offset_basis = ptr(args.offset_basis);
    w.offset_cells = ptr(args.offset_cells);
  }
  for (size_t i = 0; i < args.running.size(); i += 2) {
    w.running_mean.push_back(ptr(args.running[i]));
    w.running_var.push_back(ptr(args.running[i + 1]));
  }
  return w;
}

// An uninitialised CPU tensor whose memory comes from (and returns to) the block cache.
Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t count = 1;
  for (int64_t s : sizes) count *= s;
  const size_t bytes = block_size(count * c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  void* block = take_block(bytes);
  return torch::from_blob(block, sizes, [bytes](void* p) { give_back_block(p, bytes); }, options);
}

// Saved tensors, in this order: z_in, hidden[0..nb], z[i*L+l], z_out, mean[i], rstd[i]; their memory is
// reused from step to step (block_cache.h).
std::vector<Tensor> allocate_saved(const DecoderConfig& cfg, const Tensor& like) {
  const int64_t n = cfg.rows(), nb = cfg.num_blocks();
  std::vector<Tensor> saved;
  saved.push_back(cached_empty({n, cfg.hidden}, like.options()));
  for (int64_t i = 0; i <= nb; ++i) saved.push_back(cached_empty({n, cfg.block_width(i)}, like.options()));
  for (int64_t i = 0; i < nb; ++i)
    for (int64_t l = 0; l < cfg.layers; ++l) saved.push_back(cached_empty({n, cfg.block_width(i)}, like.options()));
  saved.push_back(cached_empty({n, cfg.out_channels}, like.options()));
  if (cfg.batch_stats())
    for (int m = 0; m < 2; ++m)
      for (int64_t i = 0; i < nb; ++i)
        saved.push_back(cached_empty({cfg.groups(), cfg.block_width(i)}, like.options().dtype(torch::kFloat64)));
  return saved;
}

template <typename T>
DecoderSaved<T> saved_view(const DecoderConfig& cfg, const std::vector<Tensor>& saved) {
  const int64_t nb = cfg.num_blocks();
  const size_t expected = 1 + (nb + 1) + nb * cfg.layers + 1 + (cfg.batch_stats() ? 2 * nb : 0);
  TORCH_CHECK_VALUE(saved.size() == expected, "saved must hold the ", expected,
                    " tensors returned by forward(save=True), got ", saved.size());
  DecoderSaved<T> s;
  size_t k = 0;
  s.z_in = saved[k++].data_ptr<T>();
  for (int64_t i = 0; i <= nb; ++i) s.hidden.push_back(saved[k++].data_ptr<T>());
  for (int64_t i = 0; i < nb * cfg.layers; ++i) s.z.push_back(saved[k++].data_ptr<T>());
  s.z_out = saved[k++].data_ptr<T>();
  if (cfg.batch_stats()) {
    for (int64_t i = 0; i < nb; ++i) s.mean.push_back(saved[k++].data_ptr<double>());
    for (int64_t i = 0; i < nb; ++i) s.rstd.push_back(saved[k++].data_ptr<double>());
  }
  return s;
}

#ifdef FASTINR_WITH_CUDA
// The eval render on CUDA: code_proj and the transposed weights are prepared with torch ops here.
void render_on_cuda(const Arguments& args, Tensor& colors) {
  const DecoderConfig& cfg = args.cfg;
  const int64_t nb = cfg.num_blocks(), L = cfg.layers;
  TORCH_CHECK_VALUE(nb <= kRenderMaxBlocks && nb * L <= kRenderMaxLayers &&
                        static_cast<int64_t>(cfg.freqs.size()) <= kRenderMaxFreqs,
                    "the CUDA render supports up to ", kRenderMaxBlocks, " blocks, ", kRenderMaxLayers,
                    " linear layers in all and ", kRenderMaxFreqs, " frequencies");
  c10::cuda::CUDAGuard guard(args.codes.device());
  const Tensor& w_in = args.params[0];
  std::vector<Tensor> keep;  // owns the prepared tensors until the stream is done with them
  auto hold = [&](Tensor t) { keep.push_back(t.contiguous()); return keep.back(); };
  Tensor code_proj = hold(torch::addmm(args.params[1], args.codes, w_in.narrow(1, 0, cfg.code_size).t()));
  Tensor w_pos_t = hold(w_in.narrow(1, cfg.code_size, cfg.emb_size()).t());
  AT_DISPATCH_FLOATING_TYPES(args.codes.scalar_type(), "fastinr_render_cuda", [&] {
    RenderArgs<scalar_t> r{};
    r.batch = cfg.batch;
    r.height = cfg.height;
    r.width = cfg.width;
    r.hidden = cfg.hidden;
    r.out_channels = cfg.out_channels;
    r.emb_size = cfg.emb_size();
    r.layers = L;
    r.num_blocks = nb;
    r.num_freqs = static_cast<int>(cfg.freqs.size());
    for (size_t f = 0; f < cfg.freqs.size(); ++f) r.freqs[f] = cfg.freqs[f];
    for (int64_t i = 0; i < nb; ++i) r.concat[i] = cfg.concat[i];
    r.batch_norm = cfg.batch_norm;
    r.act = cfg.act;
    r.act_out = cfg.act_out;
    r.eps = cfg.eps;
    r.code_proj = code_proj.data_ptr<scalar_t>();
    r.w_pos_t = w_pos_t.data_ptr<scalar_t>();
    size_t k = 2;
    const int64_t n_norm = cfg.batch_norm ? nb : 0;
    for (int64_t i = 0; i < n_norm; ++i) r.norm_weight[i] = args.params[k++].data_ptr<scalar_t>();
    for (int64_t i = 0; i < n_norm; ++i) r.norm_bias[i] = args.params[k++].data_ptr<scalar_t>();
    for (int64_t i = 0; i < n_norm; ++i) {
      r.running_mean[i] = args.running[2 * i].data_ptr<scalar_t>();
      r.running_var[i] = args.running[2 * i + 1].data_ptr<scalar_t>();
    }
    for (int64_t i = 0; i < nb; ++i) {
      for (int64_t l = 0; l < L; ++l) r.weight_t[i * L + l] = hold(args.params[k++].t()).data_ptr<scalar_t>();
      for (int64_t l = 0; l < L; ++l) r.bias[i * L + l] = args.params[k++].data_ptr<scalar_t>();
    }
    r.w_out_t = hold(args.params[k++].t()).data_ptr<scalar_t>();
    r.b_out = args.params[k++].data_ptr<scalar_t>();
    r.colors = colors.data_ptr<scalar_t>();
    const cudaError_t err = render_cuda<scalar_t>(r, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "fastinr CUDA render failed: ", cudaGetErrorString(err));
  });
  // The caching allocator reuses `keep` only after work queued before its free has run on this stream.
}
#endif

std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> forward(
    const Tensor& codes, std::vector<Tensor> params, std::vector<Tensor> running, int64_t height, int64_t width,
    std::vector<double> freqs, std::vector<bool> concat, int64_t layers, bool batch_norm,
    const std::string& activation, const std::string& activation_out, double eps, const std::string& norm_stats,
    bool save, const std::string& modulation, const std::optional<Tensor>& mods,
    const std::optional<Tensor>& offset_basis, const std::optional<Tensor>& offset_cells, bool layer_norm,
    bool bf16_matmul) {
  Arguments args = parse(codes, std::move(params), std::move(running), height, width, std::move(freqs),
                         std::move(concat), layers, batch_norm, layer_norm, activation, activation_out, eps,
                         norm_stats, modulation, mods, offset_basis, offset_cells, bf16_matmul);
  const DecoderConfig& cfg = args.cfg;
#ifdef FASTINR_WITH_CUDA
  if (codes.is_cuda()) {
    TORCH_CHECK_VALUE(!save && !cfg.batch_stats() && !cfg.modulated() && !cfg.offset_rank && !cfg.layer_norm,
                      "the CUDA path of the native backend only renders (no gradients, BatchNorm with running "
                      "statistics or none, no LayerNorm, no modulation, no input offset)");
    Tensor colors = torch::empty({cfg.batch, cfg.out_channels, height, width}, codes.options());
    render_on_cuda(args, colors);
    return {colors, {}, {}, {}};
  }
#endif
  TORCH_CHECK_VALUE(codes.device().is_cpu(), "codes must be a CPU tensor for this build of fastinr._C, got ",
                    codes.device());
  Tensor colors = torch::empty({cfg.batch, cfg.out_channels, height, width}, codes.options());
  std::vector<Tensor> means, vars, saved;
  if (cfg.batch_stats()) {
    for (int64_t i = 0; i < cfg.num_blocks(); ++i) {
      std::vector<int64_t> shape = {cfg.groups(), cfg.block_width(i)};
      means.push_back(torch::empty(shape, codes.options()));
      vars.push_back(torch::empty(shape, codes.options()));
    }
  }
  if (save) saved = allocate_saved(cfg, codes);
  AT_DISPATCH_FLOATING_TYPES(codes.scalar_type(), "fastinr_forward", [&] {
    DecoderWeights<scalar_t> w = weights_of<scalar_t>(args);
    DecoderStats<scalar_t> stats;
    for (size_t i = 0; i < means.size(); ++i) {
      stats.mean.push_back(means[i].data_ptr<scalar_t>());
      stats.var.push_back(vars[i].data_ptr<scalar_t>());
    }
    DecoderSaved<scalar_t> s;
    if (save) s = saved_view<scalar_t>(cfg, saved);
    pybind11::gil_scoped_release no_gil;
    decoder_forward_cpu<scalar_t>(cfg, args.codes.data_ptr<scalar_t>(), w, colors.data_ptr<scalar_t>(), stats,
                                  save ? &s : nullptr);
  });
  return {colors, means, vars, saved};
}

std::vector<Tensor> backward(const Tensor& grad_colors, const Tensor& codes, std::vector<Tensor> params,
                             std::vector<Tensor> running, const std::vector<Tensor>& saved, int64_t height,
                             int64_t width, std::vector<double> freqs, std::vector<bool> concat, int64_t layers,
                             bool batch_norm, const std::string& activation, const std::string& activation_out,
                             double eps, const std::string& norm_stats, const std::string& modulation,
                             const std::optional<Tensor>& mods, const std::optional<Tensor>& offset_basis,
                             const std::optional<Tensor>& offset_cells, bool layer_norm, bool bf16_matmul) {
  Arguments args = parse(codes, std::move(params), std::move(running), height, width, std::move(freqs),
                         std::move(concat), layers, batch_norm, layer_norm, activation, activation_out, eps,
                         norm_stats, modulation, mods, offset_basis, offset_cells, bf16_matmul);
  const DecoderConfig& cfg = args.cfg;
  TORCH_CHECK_VALUE(codes.device().is_cpu(), "backward runs on the CPU only, got codes on ", codes.device());
  check_tensor(grad_colors, "grad_colors", codes, {cfg.batch, cfg.out_channels, height, width});
  Tensor grad = grad_colors.contiguous();
  std::vector<Tensor> grads;
  grads.push_back(torch::empty_like(args.codes));
  for (const Tensor& p : args.params) grads.push_back(torch::empty_like(p));
  if (cfg.modulated()) grads.push_back(torch::empty_like(args.mods));
  if (cfg.offset_rank) grads.push_back(torch::empty_like(args.offset_cells));
  AT_DISPATCH_FLOATING_TYPES(codes.scalar_type(), "fastinr_backward", [&] {
    DecoderWeights<scalar_t> w = weights_of<scalar_t>(args);
    DecoderSaved<scalar_t> s = saved_view<scalar_t>(cfg, saved);
    DecoderGrads<scalar_t> g;
    size_t k = 0;
    auto ptr = [&]() { return grads[k++].data_ptr<scalar_t>(); };
    g.codes = ptr();
    g.w_in = ptr();
    g.b_in = ptr();
    const int64_t nb = cfg.num_blocks(), n_norm = cfg.normalized() ? nb : 0;
    for (int64_t i = 0; i < n_norm; ++i) g.norm_weight.push_back(ptr());
    for (int64_t i = 0; i < n_norm; ++i) g.norm_bias.push_back(ptr());
    for (int64_t i = 0; i < nb; ++i) {
      for (int64_t l = 0; l < cfg.layers; ++l) g.weight.push_back(ptr());
      for (int64_t l = 0; l < cfg.layers; ++l) g.bias.push_back(ptr());
    }
    g.w_out = ptr();
    g.b_out = ptr();
    if (cfg.modulated()) g.mods = ptr();
    if (cfg.offset_rank) g.offset_cells = ptr();
    pybind11::gil_scoped_release no_gil;
    decoder_backward_cpu<scalar_t>(cfg, grad.data_ptr<scalar_t>(), args.codes.data_ptr<scalar_t>(), w, s, g);
  });
  return grads;
}

// y = bf16(x) bf16(w)^T in float32 for x (m, k) and w (n, k): the decoder's bf16 GEMM on its own, over
// row tiles on OpenMP threads as the decoder runs it (for tests and benchmarks).
Tensor bf16_linear(const Tensor& x, const Tensor& w) {
  TORCH_CHECK_VALUE(bf16_gemm_supported(), "bf16_linear needs a CPU with AVX512-BF16");
  TORCH_CHECK_VALUE(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
                    "bf16_linear takes x (m, k) and w (n, k), got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32 && x.device().is_cpu() &&
                       w.device().is_cpu(), "bf16_linear takes float32 CPU tensors");
  const Tensor xc = x.contiguous(), wc = w.contiguous();
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0), tile = decoder_tile_rows();
  Tensor y = torch::empty({m, n}, x.options());
  const float* xp = xc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  pybind11::gil_scoped_release no_gil;
  const Bf16PackedB packed(wc.data_ptr<float>(), k, n, true);
#pragma omp parallel for schedule(static)
  for (int64_t r0 = 0; r0 < m; r0 += tile)
    bf16_gemm(xp + r0 * k, k, std::min(tile, m - r0), packed, false, yp + r0 * n, n);
  return y;
}

bool built_with_cuda() {
#ifdef FASTINR_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace fastinr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastinr native decoder: fused CPU forward/backward (and a CUDA render when built with nvcc)";
  m.def("forward", &fastinr::forward, "colors, stats means, stats vars, saved tensors", py::arg("codes"),
        py::arg("params"), py::arg("running"), py::arg("height"), py::arg("width"), py::arg("freqs"),
        py::arg("concat"), py::arg("layers"), py::arg("batch_norm"), py::arg("activation"),
        py::arg("activation_out"), py::arg("eps"), py::arg("norm_stats"), py::arg("save"),
        py::arg("modulation") = "none", py::arg("mods") = py::none(), py::arg("offset_basis") = py::none(),
        py::arg("offset_cells") = py::none(), py::arg("layer_norm") = false, py::arg("bf16_matmul") = false);
  m.def("backward", &fastinr::backward,
        "gradients of codes, of every params tensor, of mods (when modulated) and of offset_cells (when given)",
        py::arg("grad_colors"), py::arg("codes"), py::arg("params"), py::arg("running"), py::arg("saved"),
        py::arg("height"), py::arg("width"), py::arg("freqs"), py::arg("concat"), py::arg("layers"),
        py::arg("batch_norm"), py::arg("activation"), py::arg("activation_out"), py::arg("eps"),
        py::arg("norm_stats"), py::arg("modulation") = "none", py::arg("mods") = py::none(),
        py::arg("offset_basis") = py::none(), py::arg("offset_cells") = py::none(), py::arg("layer_norm") = false,
        py::arg("bf16_matmul") = false);
  m.def("built_with_cuda", &fastinr::built_with_cuda);
  m.def("elementwise_isa", &fastinr::elementwise_isa, "float activation kernels in use: avx512, avx2 or generic");
  m.def("elementwise_isas", &fastinr::elementwise_isas, "float activation kernel sets this CPU runs, fastest first");
  m.def("set_elementwise_isa", &fastinr::set_elementwise_isa, "use one of elementwise_isas()", py::arg("isa"));
  m.def("bf16_gemm_supported", &fastinr::bf16_gemm_supported,
        "whether this CPU runs the bf16 GEMM kernel (AVX512-BF16): bf16_matmul=True is then allowed");
  m.def("bf16_linear", &fastinr::bf16_linear, "bf16(x) bf16(w)^T in float32 with the decoder's bf16 GEMM",
        py::arg("x"), py::arg("w"));
  m.def("tile_rows", &fastinr::decoder_tile_rows);
  m.def("cached_block_bytes", &fastinr::cached_block_bytes, "bytes of freed saved-activation blocks kept for reuse");
  m.def("empty_block_cache", &fastinr::empty_block_cache, "return the cached saved-activation blocks to the system");
  m.def("blas_packs_weights", &fastinr::blas_packs_weights,
        "whether the BLAS offers sgemm_pack (MKL): float weights are then packed once per call");
}
