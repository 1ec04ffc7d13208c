// The one-pass eval render on CUDA: raw device pointers, sizes and a stream (no torch, no Python).
//
// colors[b, :, p] = act_out(MLP(h0)) with h0 = act(code_proj[b] + emb[p] W_pos^T), BatchNorm from
// running statistics (or none). A thread block takes a tile of pixels and runs the whole MLP with
// the tile's activations in shared memory; weights are read transposed (in, out) so that threads
// computing consecutive output features read consecutive addresses.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "activations.h"

namespace fastinr {

constexpr int kRenderMaxBlocks = 16;
constexpr int kRenderMaxLayers = 32;   // blocks x layers_per_block
constexpr int kRenderMaxFreqs = 16;

template <typename T>
struct RenderArgs {
  int64_t batch, height, width, hidden, out_channels, emb_size, layers, num_blocks;
  int num_freqs;
  double freqs[kRenderMaxFreqs];
  bool concat[kRenderMaxBlocks];
  bool batch_norm;
  Act act, act_out;
  double eps;
  const T* code_proj;                            // (B, hidden): codes W_code^T + b_in
  const T* w_pos_t;                              // (E, hidden)
  const T* norm_weight[kRenderMaxBlocks];
  const T* norm_bias[kRenderMaxBlocks];
  const T* running_mean[kRenderMaxBlocks];
  const T* running_var[kRenderMaxBlocks];
  const T* weight_t[kRenderMaxLayers];           // [i*L + l] (w_i, w_i) transposed: (in, out)
  const T* bias[kRenderMaxLayers];
  const T* w_out_t;                              // (out_width, out)
  const T* b_out;
  T* colors;                                     // (B, out, H, W)
};

// Launches the render on `stream`; returns the CUDA error of the launch.
template <typename T>
cudaError_t render_cuda(const RenderArgs<T>& args, cudaStream_t stream);

}  // namespace fastinr
