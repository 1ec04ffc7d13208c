// The decoder's activations on the C++ side: their codes and names (the same table as
// fastinr/activations.py; tests/test_activations.py checks that the two agree) and one scalar
// formula per activation, for float or double, on the host and (compiled by nvcc) on the device.
//
//   act_value(act, z)   act(z)
//   act_grad(act, z)    d act / d z at the pre-activation z; torch's conventions at the kinks:
//                       relu' = [z > 0], relu6' = [0 < z < 6]
//
// Every C++ path reads these: the double CPU path (exact, libm), the CUDA render, and the float
// CPU kernels (elementwise_impl.h), which have vectorised loops for some codes and fall back to
// act_value / act_grad for any other. A new activation is its Act value (the code of
// fastinr/activations.py), its row of kActivationNames and its case in act_value and act_grad.
//
// The formulas have internal linkage (static): elementwise_<isa>.cpp compile them for their own
// instruction set, and an inline function with external linkage could let the linker hand the
// AVX2 copy to every caller.
#pragma once
#include <math.h>

#include <cstring>
#include <string>

#ifdef __CUDACC__
#define FASTINR_HOST_DEVICE __host__ __device__
#else
#define FASTINR_HOST_DEVICE
#endif

namespace fastinr {

enum class Act : int { gelu = 0, relu = 1, relu6 = 2, silu = 3, tanh = 4, sigmoid = 5, none = 6 };

struct ActivationName {
  const char* name;
  Act act;
};

inline constexpr ActivationName kActivationNames[] = {
    {"gelu", Act::gelu}, {"relu", Act::relu},       {"relu6", Act::relu6}, {"silu", Act::silu},
    {"tanh", Act::tanh}, {"sigmoid", Act::sigmoid}, {"none", Act::none}};

// The activation called `name` (a canonical name of fastinr.activations); false if none is.
static inline bool find_activation(const std::string& name, Act* act) {
  for (const ActivationName& entry : kActivationNames)
    if (std::strcmp(entry.name, name.c_str()) == 0) {
      *act = entry.act;
      return true;
    }
  return false;
}

// "gelu, relu, ...": the names for error messages.
static inline std::string activation_names() {
  std::string names;
  for (const ActivationName& entry : kActivationNames) names += (names.empty() ? "" : ", ") + std::string(entry.name);
  return names;
}

namespace activation_math {
// The C library's functions by type: no inline C++ overloads (see the linkage note above), and
// the same names exist as device functions under nvcc.
static inline FASTINR_HOST_DEVICE float exp_(float x) { return expf(x); }
static inline FASTINR_HOST_DEVICE double exp_(double x) { return exp(x); }
static inline FASTINR_HOST_DEVICE float erf_(float x) { return erff(x); }
static inline FASTINR_HOST_DEVICE double erf_(double x) { return erf(x); }
static inline FASTINR_HOST_DEVICE float tanh_(float x) { return tanhf(x); }
static inline FASTINR_HOST_DEVICE double tanh_(double x) { return tanh(x); }

template <typename T>
static inline FASTINR_HOST_DEVICE T sigmoid(T x) {
  return T(1) / (T(1) + exp_(-x));
}

constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
}  // namespace activation_math

template <typename T>
static inline FASTINR_HOST_DEVICE T act_value(Act act, T z) {
  using namespace activation_math;
  switch (act) {
    case Act::gelu: return T(0.5) * z * (T(1) + erf_(z * T(kSqrtHalf)));
    case Act::relu: return z < T(0) ? T(0) : z;
    case Act::relu6: return z < T(0) ? T(0) : (z > T(6) ? T(6) : z);
    case Act::silu: return z * sigmoid(z);
    case Act::tanh: return tanh_(z);
    case Act::sigmoid: return sigmoid(z);
    case Act::none: return z;
  }
  return z;
}

template <typename T>
static inline FASTINR_HOST_DEVICE T act_grad(Act act, T z) {
  using namespace activation_math;
  switch (act) {
    case Act::gelu:
      return T(0.5) * (T(1) + erf_(z * T(kSqrtHalf))) + z * T(kInvSqrt2Pi) * exp_(T(-0.5) * z * z);
    case Act::relu: return z > T(0) ? T(1) : T(0);
    case Act::relu6: return (z > T(0) && z < T(6)) ? T(1) : T(0);
    case Act::silu: {
      const T s = sigmoid(z);
      return s * (T(1) + z * (T(1) - s));
    }
    case Act::tanh: {
      const T t = tanh_(z);
      return T(1) - t * t;
    }
    case Act::sigmoid: {
      const T s = sigmoid(z);
      return s * (T(1) - s);
    }
    case Act::none: return T(1);
  }
  return T(1);
}

}  // namespace fastinr
