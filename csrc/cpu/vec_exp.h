// exp(x) for x <= 0 in float, written branch-free so that the compiler vectorises the loops
// that call it (std::exp does not vectorise without -ffast-math). Cody-Waite range reduction
// x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial: about 1 ulp on [-87, 0].
#pragma once
#include <cstdint>
#include <cstring>

namespace pytl {

__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;
  constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kMin = -87.0f;              // below this the result is (flushed to) zero
  const float xc = x < kMin ? kMin : x;       // NaN compares false and passes through
  const float n = (xc * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // 2^n by building the exponent bits; n is in [-126, 0] here, so the result is a normal float.
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float result = p * scale;
  return x < kMin ? 0.0f : result;
}

}  // namespace pytl
