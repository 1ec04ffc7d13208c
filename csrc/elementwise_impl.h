// The float activation kernels, included once per instruction set by elementwise_<isa>.cpp inside
// namespace FASTINR_ISA_NAMESPACE. Everything here has internal linkage and calls no inline library
// template, so code generated for AVX2 can never be picked by the linker for the generic build.
//
// exp: Cephes range reduction + degree-6 polynomial (about 1 ulp). GELU: its value through a
// rational erf (no exp), its derivative alone through Abramowitz-Stegun 7.1.26, the formula of
// PyTorch's vectorised float erf, whose exp is also the pdf's (gelu_value, gelu_grad); value and
// derivative together share the rational erf (forward_grad_kernel).
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

inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// erf(u) as a rational function, u P(u^2) / Q(u^2) for |u| <= 4 (beyond, erf is +-1 in float), the
// minimax form Eigen and XLA use for float erf: its error is about an ulp and close to zero on
// average, and it needs no exp and one division, 45% less work than 7.1.26 with its exp.
static inline float erf_rational(float u) {
  u = u > 4.0f ? 4.0f : (u < -4.0f ? -4.0f : u);
  float u2 = u * u;
  float p = -2.72614225801306e-10f;
  p = p * u2 + 2.77068142495902e-08f;
  p = p * u2 - 2.10102402082508e-06f;
  p = p * u2 - 5.69250639462346e-05f;
  p = p * u2 - 7.34990630326855e-04f;
  p = p * u2 - 2.95459980854025e-03f;
  p = p * u2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * u2 - 2.13374055278905e-04f;
  q = q * u2 - 1.68282697438203e-03f;
  q = q * u2 - 7.37332916720468e-03f;
  q = q * u2 - 1.42647390514189e-02f;
  return u * p / q;
}

// GELU's value (x / 2) (1 + erf(x / sqrt 2)).
static inline float gelu_value(float x) { return 0.5f * x * (1.0f + erf_rational(x * kSqrtHalf)); }

// GELU's derivative Phi(x) + x pdf(x), pdf(x) = exp(-x^2 / 2) / sqrt(2 pi), with Phi by 7.1.26
// (as torch's vectorised erf), whose exp is the pdf's.
static inline float gelu_grad(float x) {
  float u = (x < 0.0f ? -x : x) * kSqrtHalf;
  float e = exp_approx(-u * u);
  float t = 1.0f / (1.0f + 0.3275911f * u);
  float r = 1.061405429f;
  r = r * t - 1.453152027f;
  r = r * t + 1.421413741f;
  r = r * t - 0.284496736f;
  r = r * t + 0.254829592f;
  float erf_abs = 1.0f - r * t * e;
  return 0.5f * (1.0f + (x < 0.0f ? -erf_abs : erf_abs)) + x * kInvSqrt2Pi * e;
}

void forward_kernel(Act act, const float* z, float* a, int64_t n) {
  switch (act) {
    case Act::gelu:
      for (int64_t k = 0; k < n; ++k) a[k] = gelu_value(z[k]);
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

// The derivative conventions match PyTorch's: relu' = (z > 0), relu6' = (0 < z < 6).
void backward_kernel(Act act, const float* z, const float* g, float* dz, int64_t n) {
  switch (act) {
    case Act::gelu:
      for (int64_t k = 0; k < n; ++k) dz[k] = g[k] * gelu_grad(z[k]);
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
      for (int64_t k = 0; k < n; ++k) {   // the value exactly as forward_kernel makes it
        const float x = z[k], e = erf_rational(x * kSqrtHalf);
        a[k] = 0.5f * x * (1.0f + e);   // gelu_value(x)
        // the derivative from the same erf, not gelu_grad's 7.1.26: a division and seven operations
        // fewer where both are wanted
        d[k] = 0.5f * (1.0f + e) + x * kInvSqrt2Pi * exp_approx(-0.5f * x * x);
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

// z is often a saved pre-activation coming back from memory (prefetch.h).
void act_forward_grad_float(Act act, const float* z, float* a, float* d, int64_t n) {
  prefetched_chunks(n, z, [&](int64_t k0, int64_t k1) { forward_grad_kernel(act, z + k0, a + k0, d + k0, k1 - k0); });
}

void act_forward_float(Act act, const float* z, float* a, int64_t n) {
  prefetched_chunks(n, z, [&](int64_t k0, int64_t k1) { forward_kernel(act, z + k0, a + k0, k1 - k0); });
}

void act_backward_float(Act act, const float* z, const float* g, float* dz, int64_t n) {
  prefetched_chunks(n, z, [&](int64_t k0, int64_t k1) { backward_kernel(act, z + k0, g + k0, dz + k0, k1 - k0); });
}
