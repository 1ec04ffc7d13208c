// One-pass eval render on CUDA (see decoder_cuda.h). Each thread block owns `tile` consecutive
// rows r = b*P + p (tiles may span images: without batch statistics every pixel is independent)
// and keeps three (tile, max width) activation buffers in dynamic shared memory.
#include "decoder_cuda.h"

#include <algorithm>

namespace fastinr {
namespace {

// torch.linspace(-1, 1, steps)[i] in dtype T.
template <typename T>
__device__ inline T linspace_value(int64_t i, int64_t steps) {
  if (steps == 1) return T(-1);
  const T step = T(2) / static_cast<T>(steps - 1);
  return i < steps / 2 ? T(-1) + step * static_cast<T>(i) : T(1) - step * static_cast<T>(steps - i - 1);
}

// out[p, j] = sum_k in[p, k] w_t[k, j] (+ bias[j]) for the tile; row stride `ld` in shared memory.
template <typename T>
__device__ inline void tile_linear(const T* in, int64_t k_size, const T* w_t, const T* bias, int64_t n_out,
                                   T* out, int tile, int64_t ld) {
  for (int64_t idx = threadIdx.x; idx < tile * n_out; idx += blockDim.x) {
    const int64_t p = idx / n_out, j = idx % n_out;
    T acc = bias ? bias[j] : T(0);
    const T* row = in + p * ld;
    for (int64_t k = 0; k < k_size; ++k) acc += row[k] * w_t[k * n_out + j];
    out[p * ld + j] = acc;
  }
}

template <typename T>
__global__ void render_kernel(const RenderArgs<T> a, int tile, int64_t ld) {
  extern __shared__ unsigned char smem_raw[];
  T* h = reinterpret_cast<T*>(smem_raw);
  T* x = h + tile * ld;
  T* y = x + tile * ld;
  T* emb = y + tile * ld;  // (tile, E)
  const int64_t pixels = a.height * a.width, rows = a.batch * pixels;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * tile;
  const int64_t e_size = a.emb_size;

  for (int64_t idx = threadIdx.x; idx < tile * e_size; idx += blockDim.x) {
    const int64_t p = idx / e_size, e = idx % e_size, r = r0 + p;
    T value = T(0);
    if (r < rows) {
      const int64_t pix = r % pixels;
      const T xy[2] = {linspace_value<T>(pix % a.width, a.width), linspace_value<T>(pix / a.width, a.height)};
      if (e < 2) {
        value = xy[e];
      } else {
        const int64_t k = e - 2, nf = a.num_freqs, f = (k % (2 * nf)) / 2, c = k % 2;
        const T arg = xy[c] * static_cast<T>(a.freqs[f]);
        value = k < 2 * nf ? sin(arg) : cos(arg);
      }
    }
    emb[idx] = value;
  }
  __syncthreads();
  const int64_t hid = a.hidden;
  for (int64_t idx = threadIdx.x; idx < tile * hid; idx += blockDim.x) {
    const int64_t p = idx / hid, j = idx % hid, r = r0 + p;
    const int64_t b = r < rows ? r / pixels : 0;
    T acc = a.code_proj[b * hid + j];
    for (int64_t e = 0; e < e_size; ++e) acc += emb[p * e_size + e] * a.w_pos_t[e * hid + j];
    h[p * ld + j] = act_value(a.act, acc);
  }
  __syncthreads();

  int64_t w = hid;
  for (int64_t i = 0; i < a.num_blocks; ++i) {
    for (int64_t idx = threadIdx.x; idx < tile * w; idx += blockDim.x) {
      const int64_t p = idx / w, j = idx % w;
      T v = h[p * ld + j];
      if (a.batch_norm) {
        const T scale = a.norm_weight[i][j] / sqrt(a.running_var[i][j] + static_cast<T>(a.eps));
        v = v * scale + (a.norm_bias[i][j] - a.running_mean[i][j] * scale);
      }
      x[p * ld + j] = v;
    }
    __syncthreads();
    T* in = x;
    T* out = y;
    for (int64_t l = 0; l < a.layers; ++l) {
      tile_linear(in, w, a.weight_t[i * a.layers + l], a.bias[i * a.layers + l], w, out, tile, ld);
      __syncthreads();
      for (int64_t idx = threadIdx.x; idx < tile * w; idx += blockDim.x) {
        const int64_t p = idx / w, j = idx % w;
        out[p * ld + j] = act_value(a.act, out[p * ld + j]);
      }
      __syncthreads();
      T* t = in;
      in = out;
      out = t;
    }
    const int64_t offset = a.concat[i] ? w : 0;
    for (int64_t idx = threadIdx.x; idx < tile * w; idx += blockDim.x) {
      const int64_t p = idx / w, j = idx % w;
      h[p * ld + offset + j] = (a.concat[i] ? T(0) : h[p * ld + j]) + in[p * ld + j];
    }
    __syncthreads();
    w = a.concat[i] ? 2 * w : w;
  }

  const int64_t o = a.out_channels;
  for (int64_t idx = threadIdx.x; idx < tile * o; idx += blockDim.x) {
    const int64_t p = idx / o, c = idx % o, r = r0 + p;
    if (r >= rows) continue;
    T acc = a.b_out[c];
    for (int64_t k = 0; k < w; ++k) acc += h[p * ld + k] * a.w_out_t[k * o + c];
    const int64_t b = r / pixels, pix = r % pixels;
    a.colors[(b * o + c) * pixels + pix] = act_value(a.act_out, acc);
  }
}

}  // namespace

template <typename T>
cudaError_t render_cuda(const RenderArgs<T>& args, cudaStream_t stream) {
  int64_t width = args.hidden;
  for (int64_t i = 0; i < args.num_blocks; ++i) width *= args.concat[i] ? 2 : 1;
  const int64_t ld = std::max(width, args.out_channels);
  int device = 0, optin = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  // the largest tile (pixels per thread block) whose buffers fit in shared memory
  int tile = 32;
  auto bytes = [&](int t) { return static_cast<size_t>(t) * (3 * ld + args.emb_size) * sizeof(T); };
  while (tile > 1 && bytes(tile) > static_cast<size_t>(optin)) tile /= 2;
  if (bytes(tile) > static_cast<size_t>(optin)) return cudaErrorInvalidConfiguration;
  cudaError_t err = cudaFuncSetAttribute(render_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(bytes(tile)));
  if (err != cudaSuccess) return err;
  const int64_t rows = args.batch * args.height * args.width;
  const int64_t grid = (rows + tile - 1) / tile;
  render_kernel<T><<<static_cast<unsigned>(grid), 256, bytes(tile), stream>>>(args, tile, ld);
  return cudaGetLastError();
}

template cudaError_t render_cuda<float>(const RenderArgs<float>&, cudaStream_t);
template cudaError_t render_cuda<double>(const RenderArgs<double>&, cudaStream_t);

}  // namespace fastinr
