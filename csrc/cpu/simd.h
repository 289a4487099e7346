// Portable 64-byte SIMD vectors (GCC/Clang vector extensions) and a vector exp for x <= 0.
// The vectors lower to one zmm, two ymm or four xmm registers depending on the target clone, so one
// source serves the AVX-512, AVX2 and baseline builds of the kernels.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

// Functions marked PYTL_CPU_CLONES are compiled for AVX-512, AVX2 and the baseline; the loader picks the
// running CPU's version.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PYTL_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PYTL_CPU_CLONES
#endif

namespace pytl {

template <typename T>
struct Simd {
  static constexpr int W = 64 / static_cast<int>(sizeof(T));  // lanes: 16 floats or 8 doubles
  using I = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  typedef T V __attribute__((vector_size(64)));
  typedef I IV __attribute__((vector_size(64)));
  typedef double DV __attribute__((vector_size(8 * W)));  // the same lanes widened to double

  static inline V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static inline void store(T* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  static inline V splat(T a) { return V{} + a; }
  static inline IV iota() {
    IV v;
    for (int l = 0; l < W; ++l) v[l] = static_cast<I>(l);
    return v;
  }
  static inline DV widen(V v) { return __builtin_convertvector(v, DV); }
};

// 1/i!, folded at compile time.
template <typename T>
constexpr T inverse_factorial(int i) {
  T f = T(1);
  for (int k = 2; k <= i; ++k) f /= T(k);
  return f;
}

// exp(x) for x <= 0, lane-wise: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a Taylor
// polynomial (degree 7 in float, 13 in double: about 1 ulp), and 2^n built from exponent bits.
// Below the underflow threshold the result is exactly 0; NaN lanes stay NaN.
template <typename T>
__attribute__((always_inline)) inline typename Simd<T>::V exp_nonpositive(typename Simd<T>::V x) {
  using S = Simd<T>;
  using V = typename S::V;
  using IV = typename S::IV;
  constexpr bool kFloat = sizeof(T) == 4;
  constexpr T kLog2e = T(1.44269504088896340736);
  constexpr T kLn2Hi = kFloat ? T(0.693145751953125) : T(6.93147180369123816490e-01);
  constexpr T kLn2Lo = kFloat ? T(1.42860682030941723212e-6) : T(1.90821492927058770002e-10);
  constexpr T kRoundMagic = kFloat ? T(12582912.0) : T(6755399441055744.0);  // 1.5 * 2^(mantissa bits)
  constexpr T kMin = kFloat ? T(-87.0) : T(-708.0);
  constexpr int kDegree = kFloat ? 7 : 13;
  constexpr int kMantissa = kFloat ? 23 : 52;
  constexpr int kBias = kFloat ? 127 : 1023;

  const V lo = S::splat(kMin);
  const V xc = x < lo ? lo : x;  // NaN compares false and passes through
  const V n = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  const V r = (xc - n * kLn2Hi) - n * kLn2Lo;
  V p = S::splat(inverse_factorial<T>(kDegree));
  for (int i = kDegree - 1; i >= 0; --i) p = p * r + inverse_factorial<T>(i);
  const IV bits = (__builtin_convertvector(n, IV) + kBias) << kMantissa;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  const V result = p * scale;
  return x < lo ? S::splat(T(0)) : result;
}

}  // namespace pytl
