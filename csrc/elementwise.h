// Activations and their derivatives over contiguous runs of n values.
//
//   act_forward:  a[k]  = act(z[k])              (a may alias z)
//   act_backward: dz[k] = g[k] * act'(z[k])      (dz may alias g)
//
// float runs through a vectorisable kernel built three times (generic, AVX2+FMA, AVX-512) and the
// fastest build this CPU runs is chosen at run time; double uses the exact formulas of
// activations.h (libm).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "activations.h"

namespace fastinr {

void act_forward(Act act, const float* z, float* a, int64_t n);
void act_forward(Act act, const double* z, double* a, int64_t n);
void act_backward(Act act, const float* z, const float* g, float* dz, int64_t n);
void act_backward(Act act, const double* z, const double* g, double* dz, int64_t n);
//   act_forward_grad: a[k] = act(z[k]), d[k] = act'(z[k])
void act_forward_grad(Act act, const float* z, float* a, float* d, int64_t n);
void act_forward_grad(Act act, const double* z, double* a, double* d, int64_t n);

// The float kernel set in use ("avx512", "avx2" or "generic"), the sets this CPU can run (fastest
// first), and a switch between them for tests and benchmarks (not while a decode is running).
const char* elementwise_isa();
std::vector<std::string> elementwise_isas();
void set_elementwise_isa(const std::string& isa);

}  // namespace fastinr
