// The float activation kernels, included once per instruction set by elementwise_<isa>.cpp inside
// namespace FASTINR_ISA_NAMESPACE. Everything here has internal linkage and calls no inline library
// template, so code generated for AVX2 can never be picked by the linker for the generic build.
//
// exp: Cephes range reduction + degree-6 polynomial (about 1 ulp). erf: Abramowitz-Stegun 7.1.26,
// the same formula (and the same ~1.5e-7 absolute error) as PyTorch's vectorised float erf.
// No early exits or library calls in the loops, so the compiler vectorises them. A code without a
// loop of its own here (a new activation) runs the scalar formulas of activations.h: correct on
// every instruction set, just not vectorised until it gets a loop here.

namespace {

inline float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

inline float exp_approx(float x) {
  x = clampf(x, -87.0f, 88.0f);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  float y = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}

// |erf(x)| = 1 - poly(t) * t * exp(-x^2), t = 1 / (1 + p |x|) (Abramowitz & Stegun 7.1.26, as
// torch's vectorised erf): returns poly(t) * t, so callers can share the exp.
inline float erf_tail(float ax) {
  float t = 1.0f / (1.0f + 0.3275911f * ax);
  float r = 1.061405429f;
  r = r * t - 1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t - 0.284496736f;
  r = r * t + 0.254829592f;
  return r * t;
}

inline float erf_approx(float x) {
  float ax = x < 0.0f ? -x : x;
  float e = 1.0f - erf_tail(ax) * exp_approx(-ax * ax);
  return x < 0.0f ? -e : e;
}

inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

void forward_kernel(Act act, const float* z, float* a, int64_t n) {
  switch (act) {
    case Act::gelu:
      for (int64_t k = 0; k < n; ++k) a[k] = 0.5f * z[k] * (1.0f + erf_approx(z[k] * kSqrtHalf));
      break;
    case Act::relu:
      for (int64_t k = 0; k < n; ++k) a[k] = z[k] < 0.0f ? 0.0f : z[k];
      break;
    case Act::relu6:
      for (int64_t k = 0; k < n; ++k) a[k] = z[k] < 0.0f ? 0.0f : (z[k] > 6.0f ? 6.0f : z[k]);
      break;
    case Act::silu:
      for (int64_t k = 0; k < n; ++k) a[k] = z[k] * sigmoid_approx(z[k]);
      break;
    case Act::tanh:
      for (int64_t k = 0; k < n; ++k) a[k] = 2.0f * sigmoid_approx(2.0f * z[k]) - 1.0f;
      break;
    case Act::sigmoid:
      for (int64_t k = 0; k < n; ++k) a[k] = sigmoid_approx(z[k]);
      break;
    case Act::none:
      if (a != z) for (int64_t k = 0; k < n; ++k) a[k] = z[k];
      break;
    default:
      for (int64_t k = 0; k < n; ++k) a[k] = act_value(act, z[k]);
      break;
  }
}

// GELU's Phi(x) and exp(-x^2 / 2), sharing one exp: erf_approx(x / sqrt 2) inlined, whose exp is
// also the normal pdf's (times 1/sqrt(2 pi)).
static inline void gelu_cdf_and_exp(float x, float& cdf, float& e) {
  float ax = (x < 0.0f ? -x : x) * kSqrtHalf;
  e = exp_approx(-ax * ax);
  float erf_abs = 1.0f - erf_tail(ax) * e;
  cdf = 0.5f * (1.0f + (x < 0.0f ? -erf_abs : erf_abs));
}

// The derivative conventions match PyTorch's: relu' = (z > 0), relu6' = (0 < z < 6).
void backward_kernel(Act act, const float* z, const float* g, float* dz, int64_t n) {
  switch (act) {
    case Act::gelu:
      for (int64_t k = 0; k < n; ++k) {
        float x = z[k], cdf, e;
        gelu_cdf_and_exp(x, cdf, e);
        dz[k] = g[k] * (cdf + x * kInvSqrt2Pi * e);
      }
      break;
    case Act::relu:
      for (int64_t k = 0; k < n; ++k) dz[k] = z[k] > 0.0f ? g[k] : 0.0f;
      break;
    case Act::relu6:
      for (int64_t k = 0; k < n; ++k) dz[k] = (z[k] > 0.0f && z[k] < 6.0f) ? g[k] : 0.0f;
      break;
    case Act::silu:
      for (int64_t k = 0; k < n; ++k) {
        float s = sigmoid_approx(z[k]);
        dz[k] = g[k] * s * (1.0f + z[k] * (1.0f - s));
      }
      break;
    case Act::tanh:
      for (int64_t k = 0; k < n; ++k) {
        float t = 2.0f * sigmoid_approx(2.0f * z[k]) - 1.0f;
        dz[k] = g[k] * (1.0f - t * t);
      }
      break;
    case Act::sigmoid:
      for (int64_t k = 0; k < n; ++k) {
        float s = sigmoid_approx(z[k]);
        dz[k] = g[k] * s * (1.0f - s);
      }
      break;
    case Act::none:
      if (dz != g) for (int64_t k = 0; k < n; ++k) dz[k] = g[k];
      break;
    default:
      for (int64_t k = 0; k < n; ++k) dz[k] = g[k] * act_grad(act, z[k]);
      break;
  }
}

// a = act(z) and d = act'(z) in one sweep (the backward needs both of a hidden layer's output).
void forward_grad_kernel(Act act, const float* z, float* a, float* d, int64_t n) {
  switch (act) {
    case Act::gelu:
      for (int64_t k = 0; k < n; ++k) {
        float x = z[k], cdf, e;
        gelu_cdf_and_exp(x, cdf, e);
        a[k] = x * cdf;
        d[k] = cdf + x * kInvSqrt2Pi * e;
      }
      break;
    case Act::silu:
      for (int64_t k = 0; k < n; ++k) {
        float s = sigmoid_approx(z[k]);
        a[k] = z[k] * s;
        d[k] = s * (1.0f + z[k] * (1.0f - s));
      }
      break;
    case Act::tanh:
      for (int64_t k = 0; k < n; ++k) {
        float t = 2.0f * sigmoid_approx(2.0f * z[k]) - 1.0f;
        a[k] = t;
        d[k] = 1.0f - t * t;
      }
      break;
    case Act::sigmoid:
      for (int64_t k = 0; k < n; ++k) {
        float s = sigmoid_approx(z[k]);
        a[k] = s;
        d[k] = s * (1.0f - s);
      }
      break;
    default:
      forward_kernel(act, z, a, n);
      for (int64_t k = 0; k < n; ++k) d[k] = 1.0f;
      backward_kernel(act, z, d, d, n);
      break;
  }
}

}  // namespace

void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n) {
  forward_grad_kernel(act, z, a, d, n);
}

void act_forward_float(Act act, const float* z, float* a, int64_t n) { forward_kernel(act, z, a, n); }

void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n) {
  backward_kernel(act, z, g, dz, n);
}
