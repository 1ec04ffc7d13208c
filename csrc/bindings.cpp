// fastinr._C: checks tensors, allocates outputs and calls the compute core (decoder_cpu, and the
// CUDA render when built with nvcc). The only file that knows about Python.
#include <torch/extension.h>

#include <algorithm>
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

// An activation name to its code (the table of activations.h), or an error naming the argument.
Act parse_act(const std::string& name, const char* argument) {
  Act act;
  TORCH_CHECK_VALUE(find_activation(name, &act), argument, " must be one of ", activation_names(), "; got '", name,
                    "'");
  return act;
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

// One decoder's DecoderSpec, checked once (Python keeps one plan per spec): the config every call of
// that decoder starts from, and the name and shape of each tensor of DecoderParams.flat().
class DecoderPlan {
 public:
  struct Param {
    std::string name;
    std::vector<int64_t> shape;
  };

  DecoderPlan(int64_t code_size, int64_t out_channels, int64_t hidden, std::vector<bool> concat,
              int64_t layers_per_block, std::vector<double> freqs, bool batch_norm, const std::string& activation,
              const std::string& activation_out, double eps, const std::string& modulation, bool layer_norm) {
    TORCH_CHECK_VALUE(code_size >= 0, "code_size must be >= 0, got ", code_size);
    TORCH_CHECK_VALUE(out_channels >= 1, "out_channels must be >= 1, got ", out_channels);
    TORCH_CHECK_VALUE(hidden >= 1, "hidden must be >= 1, got ", hidden);
    TORCH_CHECK_VALUE(layers_per_block >= 0, "layers_per_block must be >= 0, got ", layers_per_block);
    TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
    TORCH_CHECK_VALUE(!(batch_norm && layer_norm), "batch_norm and layer_norm exclude each other");
    cfg_.code_size = code_size;
    cfg_.out_channels = out_channels;
    cfg_.hidden = hidden;
    cfg_.concat = std::move(concat);
    cfg_.layers = layers_per_block;
    cfg_.freqs = std::move(freqs);
    cfg_.batch_norm = batch_norm;
    cfg_.layer_norm = layer_norm;
    cfg_.act = parse_act(activation, "activation");
    cfg_.act_out = parse_act(activation_out, "activation_out");
    cfg_.eps = eps;
    cfg_.modulation = parse_modulation(modulation);
    if (cfg_.modulated())
      for (bool c : cfg_.concat)
        TORCH_CHECK_VALUE(!c, "modulation '", modulation, "' needs blocks of constant width (no concat)");
    FlatParams<char> names;
    for_each_flat(cfg_, names, [&](char&, const ParamSlot& s) {
      std::string name = std::string("params.") + s.field;
      if (s.block >= 0) name += "[" + std::to_string(s.block) + "]";
      if (s.layer >= 0) name += "[" + std::to_string(s.layer) + "]";
      params_.push_back({name, s.cols ? std::vector<int64_t>{s.rows, s.cols} : std::vector<int64_t>{s.rows}});
    });
  }

  // The config of one call: the spec's, with the call's sizes and options.
  DecoderConfig config(int64_t batch, int64_t height, int64_t width, NormStats norm_stats, int64_t offset_rank,
                       bool bf16_matmul) const {
    DecoderConfig cfg = cfg_;
    cfg.batch = batch;
    cfg.height = height;
    cfg.width = width;
    cfg.norm_stats = norm_stats;
    cfg.offset_rank = offset_rank;
    cfg.bf16_matmul = bf16_matmul;
    return cfg;
  }

  const std::vector<Param>& params() const { return params_; }

  // The saved tensors of forward(save=True), in order: (width, statistic) each; a row tensor
  // (B*H*W, width) in the codes' dtype, or a statistic (groups, width) in float64, groups = B with
  // per-image statistics, else 1.
  std::vector<std::pair<int64_t, bool>> saved_layout(const std::string& norm_stats) const {
    std::vector<std::pair<int64_t, bool>> layout;
    DecoderSaved<float> slots;
    for_each_saved(config(0, 0, 0, parse_norm_stats(norm_stats), 0, false), slots,
                   [&](auto&, int64_t width, bool statistic) { layout.emplace_back(width, statistic); });
    return layout;
  }

  // Widths of the (groups, width) statistics forward returns per block (none without batch statistics).
  std::vector<int64_t> stats_widths(const std::string& norm_stats) const {
    const DecoderConfig cfg = config(0, 0, 0, parse_norm_stats(norm_stats), 0, false);
    std::vector<int64_t> widths;
    if (cfg.batch_stats())
      for (int64_t i = 0; i < cfg.num_blocks(); ++i) widths.push_back(cfg.block_width(i));
    return widths;
  }

 private:
  DecoderConfig cfg_;
  std::vector<Param> params_;
};

// One call's config and its tensors, checked and contiguous; params in DecoderParams.flat() order.
struct Call {
  DecoderConfig cfg;
  Tensor codes, mods, offset_basis, offset_cells;   // undefined when not given
  std::vector<Tensor> params, running;  // running: mean_0, var_0, mean_1, var_1, ...
};

void check_tensor(const Tensor& t, const std::string& name, const Tensor& like, c10::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " is on ", t.device(), " but codes are on ", like.device());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but codes have ", like.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

// The checks memory safety needs, on the call's tensors (the spec was checked by the plan).
Call prepare(const DecoderPlan& plan, const Tensor& codes, const std::vector<Tensor>& params,
             const std::vector<Tensor>& running, const std::optional<Tensor>& mods,
             const std::optional<Tensor>& offset_basis, const std::optional<Tensor>& offset_cells, int64_t height,
             int64_t width, const std::string& norm_stats, bool bf16_matmul) {
  TORCH_CHECK_VALUE(codes.dim() == 2, "codes must have shape (B, C), got ", codes.sizes());
  TORCH_CHECK_TYPE(codes.scalar_type() == torch::kFloat32 || codes.scalar_type() == torch::kFloat64,
                   "codes must be float32 or float64, got ", codes.scalar_type());
  TORCH_CHECK_VALUE(codes.size(0) >= 1, "codes must have B >= 1, got ", codes.sizes());
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "shape must be (H, W) with two positive ints, got (", height,
                    ", ", width, ")");
  if (bf16_matmul) {
    TORCH_CHECK_VALUE(bf16_gemm_supported(), "bf16_matmul=True needs a CPU with AVX512-BF16 and this one has none "
                      "(fastinr.backends.native_backend.bf16_matmul_supported() says so before a call)");
    TORCH_CHECK_TYPE(codes.scalar_type() == torch::kFloat32, "bf16_matmul=True takes float32 tensors (bf16 is "
                     "the GEMMs' operand precision), got codes of ", codes.scalar_type());
  }
  TORCH_CHECK_VALUE(offset_basis.has_value() == offset_cells.has_value(),
                    "offset_basis and offset_cells come together (the input offset basis[p] cells[b])");
  int64_t offset_rank = 0;
  const bool offset_per_image = offset_basis.has_value() && offset_basis->dim() == 4;
  if (offset_basis.has_value()) {
    TORCH_CHECK_VALUE((offset_basis->dim() == 3 || offset_basis->dim() == 4) && offset_basis->size(-1) >= 1,
                      "offset_basis must have shape (H, W, K) (shared) or (B, H, W, K) (per image) with K >= 1, got ",
                      offset_basis->sizes());
    offset_rank = offset_basis->size(-1);
  }
  Call call;
  DecoderConfig& cfg = call.cfg;
  cfg = plan.config(codes.size(0), height, width, parse_norm_stats(norm_stats), offset_rank, bf16_matmul);
  cfg.offset_per_image = offset_per_image;
  TORCH_CHECK_VALUE(codes.size(1) == cfg.code_size, "codes must have ", cfg.code_size,
                    " channels (the spec's code_size), got ", codes.sizes());
  TORCH_CHECK_VALUE(cfg.rows() < (int64_t(1) << 40), "too many pixels: ", cfg.rows());
  TORCH_CHECK_VALUE(params.size() == plan.params().size(), "params must hold ", plan.params().size(),
                    " tensors (DecoderParams.flat() for this spec), got ", params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    check_tensor(params[k], plan.params()[k].name, codes, plan.params()[k].shape);
    call.params.push_back(params[k].contiguous());
  }
  const int64_t nb = cfg.num_blocks();
  if (cfg.batch_norm && cfg.norm_stats == NormStats::running) {
    TORCH_CHECK_VALUE(running.size() == static_cast<size_t>(2 * nb), "running must hold (mean, var) for each of the ",
                      nb, " blocks with norm_stats='running', got ", running.size(), " tensors");
    for (int64_t i = 0; i < nb; ++i)
      for (int m = 0; m < 2; ++m) {
        const Tensor& t = running[2 * i + m];
        check_tensor(t, std::string("running[") + std::to_string(i) + "]." + (m ? "var" : "mean"), codes,
                     {cfg.block_width(i)});
        call.running.push_back(t.contiguous());
      }
  }
  if (cfg.batch_stats() && nb > 0) {
    const int64_t count = cfg.norm_stats == NormStats::image ? cfg.pixels() : cfg.rows();
    TORCH_CHECK_VALUE(count >= 2, "BatchNorm with ", norm_stats, " statistics needs more than one value per channel, got ",
                      cfg.batch, " image(s) of ", cfg.pixels(), " pixel(s); use a larger shape or eval mode");
  }
  if (cfg.modulated()) {
    TORCH_CHECK_VALUE(mods.has_value(), "mods must be given with a modulated spec");
    check_tensor(*mods, "mods", codes, {cfg.batch, cfg.modulated_layers(), cfg.mod_width() / cfg.hidden, cfg.hidden});
    call.mods = mods->contiguous();
  } else {
    TORCH_CHECK_VALUE(!mods.has_value(), "mods were given but modulation is 'none'");
  }
  if (offset_rank) {
    if (offset_per_image)
      check_tensor(*offset_basis, "offset_basis", codes, {cfg.batch, height, width, offset_rank});
    else
      check_tensor(*offset_basis, "offset_basis", codes, {height, width, offset_rank});
    check_tensor(*offset_cells, "offset_cells", codes, {cfg.batch, offset_rank, cfg.hidden});
    call.offset_basis = offset_basis->contiguous();
    call.offset_cells = offset_cells->contiguous();
  }
  call.codes = codes.contiguous();
  return call;
}

// A reducer (a Python callable summing a float64 tensor in place over the processes) as the core's
// sum_across, for statistics over a batch split across processes. The core runs without the GIL
// and calls it from this thread at each BatchNorm; it takes the GIL to call back. The callable is
// the caller's argument, alive for the whole call.
void attach_reducer(DecoderConfig& cfg, const pybind11::object& reducer, int64_t global_rows) {
  if (reducer.is_none()) return;
  TORCH_CHECK_VALUE(cfg.norm_stats == NormStats::batch, "a reducer shares statistics over the batch across "
                    "processes; it needs norm_stats='batch'");
  TORCH_CHECK_VALUE(global_rows >= cfg.rows(), "global_rows must count the rows of every process, at least this "
                    "one's ", cfg.rows(), ", got ", global_rows);
  const pybind11::handle fn = reducer;
  cfg.sum_across = [fn](double* values, int64_t count) {
    pybind11::gil_scoped_acquire gil;
    fn(torch::from_blob(values, {count}, torch::kFloat64));
  };
  cfg.global_rows = global_rows;
}

// The call's tensors as the core's named pointers.
template <typename T>
DecoderWeights<T> weights_of(const Call& call) {
  DecoderWeights<T> w;
  for_each_flat(call.cfg, w, [&](const T*& member, const ParamSlot& s) {
    member = call.params[s.index].data_ptr<T>();
  });
  if (call.cfg.modulated()) w.mods = call.mods.data_ptr<T>();
  if (call.cfg.offset_rank) {
    w.offset_basis = call.offset_basis.data_ptr<T>();
    w.offset_cells = call.offset_cells.data_ptr<T>();
  }
  for (size_t i = 0; i < call.running.size(); i += 2) {
    w.running_mean.push_back(call.running[i].data_ptr<T>());
    w.running_var.push_back(call.running[i + 1].data_ptr<T>());
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

// The saved tensors (for_each_saved's order); their memory is reused from step to step (block_cache.h).
std::vector<Tensor> allocate_saved(const DecoderConfig& cfg, const Tensor& like) {
  std::vector<Tensor> saved;
  DecoderSaved<float> slots;
  for_each_saved(cfg, slots, [&](auto&, int64_t width, bool statistic) {
    saved.push_back(statistic ? cached_empty({cfg.groups(), width}, like.options().dtype(torch::kFloat64))
                              : cached_empty({cfg.rows(), width}, like.options()));
  });
  return saved;
}

template <typename T>
DecoderSaved<T> saved_view(const DecoderConfig& cfg, const std::vector<Tensor>& saved, const Tensor& like) {
  DecoderSaved<T> s;
  size_t k = 0;
  for_each_saved(cfg, s, [&](auto& member, int64_t width, bool statistic) {
    using Element = std::remove_pointer_t<std::remove_reference_t<decltype(member)>>;
    TORCH_CHECK_VALUE(k < saved.size(), "saved holds ", saved.size(),
                      " tensors, fewer than forward(save=True) returns");
    const Tensor& t = saved[k++];
    const c10::ScalarType dtype = statistic ? torch::kFloat64 : like.scalar_type();
    const std::vector<int64_t> shape = {statistic ? cfg.groups() : cfg.rows(), width};
    TORCH_CHECK_VALUE(t.device() == like.device() && t.scalar_type() == dtype && t.sizes() == c10::IntArrayRef(shape) &&
                          t.is_contiguous(),
                      "saved[", k - 1, "] must be a contiguous ", dtype, " tensor of shape ", c10::IntArrayRef(shape),
                      " on ", like.device(), " as forward(save=True) returned it, got ", t.scalar_type(), " ",
                      t.sizes(), " on ", t.device());
    member = t.data_ptr<Element>();
  });
  TORCH_CHECK_VALUE(k == saved.size(), "saved must hold the ", k, " tensors returned by forward(save=True), got ",
                    saved.size());
  return s;
}

#ifdef FASTINR_WITH_CUDA
// The eval render on CUDA: code_proj and the transposed weights are prepared with torch ops here.
void render_on_cuda(const Call& call, Tensor& colors) {
  const DecoderConfig& cfg = call.cfg;
  const int64_t nb = cfg.num_blocks(), L = cfg.layers;
  TORCH_CHECK_VALUE(nb <= kRenderMaxBlocks && nb * L <= kRenderMaxLayers &&
                        static_cast<int64_t>(cfg.freqs.size()) <= kRenderMaxFreqs,
                    "the CUDA render supports up to ", kRenderMaxBlocks, " blocks, ", kRenderMaxLayers,
                    " linear layers in all and ", kRenderMaxFreqs, " frequencies");
  c10::cuda::CUDAGuard guard(call.codes.device());
  FlatParams<Tensor> p;
  for_each_flat(cfg, p, [&](Tensor& member, const ParamSlot& s) { member = call.params[s.index]; });
  std::vector<Tensor> keep;  // owns the prepared tensors until the stream is done with them
  auto hold = [&](Tensor t) { keep.push_back(t.contiguous()); return keep.back(); };
  Tensor code_proj = hold(torch::addmm(p.b_in, call.codes, p.w_in.narrow(1, 0, cfg.code_size).t()));
  Tensor w_pos_t = hold(p.w_in.narrow(1, cfg.code_size, cfg.emb_size()).t());
  AT_DISPATCH_FLOATING_TYPES(call.codes.scalar_type(), "fastinr_render_cuda", [&] {
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
    for (size_t i = 0; i < p.norm_weight.size(); ++i) {
      r.norm_weight[i] = p.norm_weight[i].data_ptr<scalar_t>();
      r.norm_bias[i] = p.norm_bias[i].data_ptr<scalar_t>();
      r.running_mean[i] = call.running[2 * i].data_ptr<scalar_t>();
      r.running_var[i] = call.running[2 * i + 1].data_ptr<scalar_t>();
    }
    for (int64_t j = 0; j < nb * L; ++j) {
      r.weight_t[j] = hold(p.weight[j].t()).data_ptr<scalar_t>();
      r.bias[j] = p.bias[j].data_ptr<scalar_t>();
    }
    r.w_out_t = hold(p.w_out.t()).data_ptr<scalar_t>();
    r.b_out = p.b_out.data_ptr<scalar_t>();
    r.colors = colors.data_ptr<scalar_t>();
    const cudaError_t err = render_cuda<scalar_t>(r, c10::cuda::getCurrentCUDAStream().stream());
    TORCH_CHECK(err == cudaSuccess, "fastinr CUDA render failed: ", cudaGetErrorString(err));
  });
  // The caching allocator reuses `keep` only after work queued before its free has run on this stream.
}
#endif

// colors (B, out, H, W), the per-block statistics means and vars ((groups, w_i) each, with batch
// statistics) and, with save, the saved tensors backward takes (DecoderPlan.saved_layout).
std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>> forward(
    const DecoderPlan& plan, const Tensor& codes, const std::vector<Tensor>& params,
    const std::vector<Tensor>& running, const std::optional<Tensor>& mods, const std::optional<Tensor>& offset_basis,
    const std::optional<Tensor>& offset_cells, int64_t height, int64_t width, const std::string& norm_stats,
    bool save, bool bf16_matmul, const pybind11::object& reducer, int64_t global_rows) {
  Call call =
      prepare(plan, codes, params, running, mods, offset_basis, offset_cells, height, width, norm_stats, bf16_matmul);
  attach_reducer(call.cfg, reducer, global_rows);
  const DecoderConfig& cfg = call.cfg;
#ifdef FASTINR_WITH_CUDA
  if (codes.is_cuda()) {
    TORCH_CHECK_VALUE(!save && !cfg.batch_stats() && !cfg.modulated() && !cfg.offset_rank && !cfg.layer_norm,
                      "the CUDA path of the native backend only renders (no gradients, BatchNorm with running "
                      "statistics or none, no LayerNorm, no modulation, no input offset)");
    Tensor colors = torch::empty({cfg.batch, cfg.out_channels, height, width}, codes.options());
    render_on_cuda(call, colors);
    return {colors, {}, {}, {}};
  }
#endif
  TORCH_CHECK_VALUE(codes.device().is_cpu(), "codes must be a CPU tensor for this build of fastinr._C, got ",
                    codes.device());
  Tensor colors = torch::empty({cfg.batch, cfg.out_channels, height, width}, codes.options());
  std::vector<Tensor> means, vars, saved;
  for (int64_t width : plan.stats_widths(norm_stats)) {
    means.push_back(torch::empty({cfg.groups(), width}, codes.options()));
    vars.push_back(torch::empty({cfg.groups(), width}, codes.options()));
  }
  if (save) saved = allocate_saved(cfg, codes);
  AT_DISPATCH_FLOATING_TYPES(codes.scalar_type(), "fastinr_forward", [&] {
    DecoderWeights<scalar_t> w = weights_of<scalar_t>(call);
    DecoderStats<scalar_t> stats;
    for (size_t i = 0; i < means.size(); ++i) {
      stats.mean.push_back(means[i].data_ptr<scalar_t>());
      stats.var.push_back(vars[i].data_ptr<scalar_t>());
    }
    DecoderSaved<scalar_t> s;
    if (save) s = saved_view<scalar_t>(cfg, saved, codes);
    pybind11::gil_scoped_release no_gil;
    decoder_forward_cpu<scalar_t>(cfg, call.codes.data_ptr<scalar_t>(), w, colors.data_ptr<scalar_t>(), stats,
                                  save ? &s : nullptr);
  });
  return {colors, means, vars, saved};
}

// The gradients of every params tensor (DecoderParams.flat() order), then of codes, then of mods (when
// modulated) and of offset_cells (with an input offset).
std::vector<Tensor> backward(const DecoderPlan& plan, const Tensor& grad_colors, const Tensor& codes,
                             const std::vector<Tensor>& params, const std::vector<Tensor>& running,
                             const std::vector<Tensor>& saved, const std::optional<Tensor>& mods,
                             const std::optional<Tensor>& offset_basis, const std::optional<Tensor>& offset_cells,
                             int64_t height, int64_t width, const std::string& norm_stats, bool bf16_matmul,
                             const pybind11::object& reducer, int64_t global_rows) {
  Call call =
      prepare(plan, codes, params, running, mods, offset_basis, offset_cells, height, width, norm_stats, bf16_matmul);
  attach_reducer(call.cfg, reducer, global_rows);
  const DecoderConfig& cfg = call.cfg;
  TORCH_CHECK_VALUE(codes.device().is_cpu(), "backward runs on the CPU only, got codes on ", codes.device());
  check_tensor(grad_colors, "grad_colors", codes, {cfg.batch, cfg.out_channels, height, width});
  const Tensor grad = grad_colors.contiguous();
  std::vector<Tensor> grads;
  for (const Tensor& p : call.params) grads.push_back(torch::empty_like(p));
  grads.push_back(torch::empty_like(call.codes));
  if (cfg.modulated()) grads.push_back(torch::empty_like(call.mods));
  if (cfg.offset_rank) grads.push_back(torch::empty_like(call.offset_cells));
  AT_DISPATCH_FLOATING_TYPES(codes.scalar_type(), "fastinr_backward", [&] {
    const DecoderWeights<scalar_t> w = weights_of<scalar_t>(call);
    const DecoderSaved<scalar_t> s = saved_view<scalar_t>(cfg, saved, codes);
    DecoderGrads<scalar_t> g;
    for_each_flat(cfg, g, [&](scalar_t*& member, const ParamSlot& slot) {
      member = grads[slot.index].data_ptr<scalar_t>();
    });
    size_t k = call.params.size();
    g.codes = grads[k++].data_ptr<scalar_t>();
    if (cfg.modulated()) g.mods = grads[k++].data_ptr<scalar_t>();
    if (cfg.offset_rank) g.offset_cells = grads[k++].data_ptr<scalar_t>();
    pybind11::gil_scoped_release no_gil;
    decoder_backward_cpu<scalar_t>(cfg, grad.data_ptr<scalar_t>(), call.codes.data_ptr<scalar_t>(), w, s, g);
  });
  return grads;
}

// The bf16 GEMM entry points' operands: the CPU has the kernel, two float32 CPU matrices whose dimensions
// a_dim and b_dim agree (`layout` names them in the error).
void check_bf16_operands(const char* fn, const char* layout, const Tensor& a, int64_t a_dim, const Tensor& b,
                         int64_t b_dim) {
  TORCH_CHECK_VALUE(bf16_gemm_supported(), fn, " needs a CPU with AVX512-BF16");
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(a_dim) == b.size(b_dim), fn, " takes ", layout, ", got ",
                    a.sizes(), " and ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == torch::kFloat32 && b.scalar_type() == torch::kFloat32 && a.device().is_cpu() &&
                       b.device().is_cpu(), fn, " takes float32 CPU tensors");
}

// y = bf16(x) bf16(w)^T in float32 for x (m, k) and w (n, k): the decoder's bf16 GEMM on its own, over
// row tiles on OpenMP threads as the decoder runs it (for tests and benchmarks).
Tensor bf16_linear(const Tensor& x, const Tensor& w) {
  check_bf16_operands("bf16_linear", "x (m, k) and w (n, k)", x, 1, w, 1);
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

// bf16(a)^T bf16(b) in float32 for a (k, m) and b (k, n): the decoder's weight-gradient GEMM on its own,
// summed over row tiles of k as the decoder sums them (for tests and benchmarks).
Tensor bf16_weight_grad(const Tensor& a, const Tensor& b) {
  check_bf16_operands("bf16_weight_grad", "a (k, m) and b (k, n)", a, 0, b, 0);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  const int64_t k = a.size(0), m = a.size(1), n = b.size(1), tile = decoder_tile_rows();
  Tensor c = torch::zeros({m, n}, a.options());
  pybind11::gil_scoped_release no_gil;
  for (int64_t r0 = 0; r0 < k; r0 += tile)
    bf16_gemm_tn_accumulate(m, n, std::min(tile, k - r0), ac.data_ptr<float>() + r0 * m, m,
                            bc.data_ptr<float>() + r0 * n, n, c.data_ptr<float>(), n);
  return c;
}

std::string bf16_gemm_kernel() { return fastinr::bf16_kernel() == Bf16Kernel::onednn ? "onednn" : "avx512"; }

std::vector<std::string> bf16_gemm_kernels() {
  std::vector<std::string> kernels;
  if (bf16_gemm_supported()) kernels.push_back("avx512");
  if (onednn_bf16_available()) kernels.push_back("onednn");
  return kernels;
}

void set_bf16_gemm_kernel(const std::string& name) {
  const std::vector<std::string> kernels = bf16_gemm_kernels();
  std::string listed;
  for (const std::string& kernel : kernels) listed += (listed.empty() ? "'" : ", '") + kernel + "'";
  TORCH_CHECK_VALUE(std::find(kernels.begin(), kernels.end(), name) != kernels.end(), "set_bf16_gemm_kernel: '", name,
                    "' is not one of this machine's bf16 GEMM kernels [", listed, "]");
  set_bf16_kernel(name == "onednn" ? Bf16Kernel::onednn : Bf16Kernel::avx512);
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
  py::class_<fastinr::DecoderPlan>(m, "DecoderPlan",
                                   "a DecoderSpec checked once: what every forward and backward of the decoder shares")
      .def(py::init<int64_t, int64_t, int64_t, std::vector<bool>, int64_t, std::vector<double>, bool,
                    const std::string&, const std::string&, double, const std::string&, bool>(),
           py::arg("code_size"), py::arg("out_channels"), py::arg("hidden"), py::arg("concat"),
           py::arg("layers_per_block"), py::arg("freqs"), py::arg("batch_norm"), py::arg("activation"),
           py::arg("activation_out"), py::arg("eps") = 1e-5, py::arg("modulation") = "none",
           py::arg("layer_norm") = false)
      .def_property_readonly("num_params", [](const fastinr::DecoderPlan& p) { return p.params().size(); },
                             "the length of DecoderParams.flat()")
      .def("saved_layout", &fastinr::DecoderPlan::saved_layout,
           "(width, statistic) of each saved tensor: (B*H*W, width) rows in the codes' dtype, or "
           "(groups, width) float64 statistics (groups = B with per-image statistics, else 1)",
           py::arg("norm_stats"))
      .def("stats_widths", &fastinr::DecoderPlan::stats_widths,
           "widths of the (groups, width) block statistics forward returns", py::arg("norm_stats"));
  m.def("forward", &fastinr::forward,
        "colors, stats means, stats vars, saved tensors; with a reducer (a callable summing a float64 tensor in "
        "place over the processes) and global_rows, statistics over a batch split across processes",
        py::arg("plan"),
        py::arg("codes"), py::arg("params"), py::arg("running"), py::arg("mods"), py::arg("offset_basis"),
        py::arg("offset_cells"), py::arg("height"), py::arg("width"), py::arg("norm_stats"), py::arg("save"),
        py::arg("bf16_matmul") = false, py::arg("reducer") = py::none(), py::arg("global_rows") = 0);
  m.def("backward", &fastinr::backward,
        "gradients of every params tensor (flat order), of codes, of mods (when modulated) and of offset_cells "
        "(when given)",
        py::arg("plan"), py::arg("grad_colors"), py::arg("codes"), py::arg("params"), py::arg("running"),
        py::arg("saved"), py::arg("mods"), py::arg("offset_basis"), py::arg("offset_cells"), py::arg("height"),
        py::arg("width"), py::arg("norm_stats"), py::arg("bf16_matmul") = false, py::arg("reducer") = py::none(),
        py::arg("global_rows") = 0);
  m.def("built_with_cuda", &fastinr::built_with_cuda);
  m.def("activation_codes", [] {
    std::vector<std::pair<std::string, int>> codes;
    for (const fastinr::ActivationName& entry : fastinr::kActivationNames)
      codes.emplace_back(entry.name, static_cast<int>(entry.act));
    return codes;
  }, "(name, code) of every activation of csrc/activations.h: must equal fastinr.activations' table");
  m.def("elementwise_isa", &fastinr::elementwise_isa, "float activation kernels in use: avx512, avx2 or generic");
  m.def("elementwise_isas", &fastinr::elementwise_isas, "float activation kernel sets this CPU runs, fastest first");
  m.def("set_elementwise_isa", &fastinr::set_elementwise_isa, "use one of elementwise_isas()", py::arg("isa"));
  m.def("bf16_gemm_supported", &fastinr::bf16_gemm_supported,
        "whether this CPU runs the bf16 GEMM kernel (AVX512-BF16): bf16_matmul=True is then allowed");
  m.def("bf16_linear", &fastinr::bf16_linear, "bf16(x) bf16(w)^T in float32 with the decoder's bf16 GEMM",
        py::arg("x"), py::arg("w"));
  m.def("bf16_weight_grad", &fastinr::bf16_weight_grad,
        "bf16(a)^T bf16(b) in float32 with the decoder's weight-gradient GEMM", py::arg("a"), py::arg("b"));
  m.def("bf16_gemm_kernel", &fastinr::bf16_gemm_kernel, "what multiplies the bf16 GEMMs: avx512 (ours) or onednn");
  m.def("bf16_gemm_kernels", &fastinr::bf16_gemm_kernels, "the bf16 GEMM kernels this machine runs");
  m.def("set_bf16_gemm_kernel", &fastinr::set_bf16_gemm_kernel, "use one of bf16_gemm_kernels()", py::arg("name"));
  m.def("tile_rows", &fastinr::decoder_tile_rows);
  m.def("cached_block_bytes", &fastinr::cached_block_bytes, "bytes of freed saved-activation blocks kept for reuse");
  m.def("empty_block_cache", &fastinr::empty_block_cache, "return the cached saved-activation blocks to the system");
  m.def("blas_packs_weights", &fastinr::blas_packs_weights,
        "whether the BLAS offers sgemm_pack (MKL): float weights are then packed once per call");
}
