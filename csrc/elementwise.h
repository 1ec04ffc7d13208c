// Activations and their derivatives over contiguous runs of n values.
//
//   act_forward:  a[k]  = act(z[k])              (a may alias z)
//   act_backward: dz[k] = g[k] * act'(z[k])      (dz may alias g)
//
// float runs through a vectorisable kernel built twice, generically and for AVX2+FMA, and the
// AVX2 build is chosen at run time only on a CPU that has it; double uses libm (exact reference).
#pragma once
#include <cstdint>

namespace fastinr {

enum class Act : int { gelu = 0, relu, relu6, silu, tanh, sigmoid, none };

void act_forward(Act act, const float* z, float* a, int64_t n);
void act_forward(Act act, const double* z, double* a, int64_t n);
void act_backward(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_backward(Act act, const double* z, const double* g, double* dz, int64_t n);
//   act_forward_grad: a[k] = act(z[k]), d[k] = act'(z[k])
void act_forward_grad(Act act, const float* z, float* a, float* d, int64_t n);
void act_forward_grad(Act act, const double* z, double* a, double* d, int64_t n);

// Which float kernel the dispatcher picked ("avx2" or "generic"), for reports.
const char* elementwise_isa();

}  // namespace fastinr
