// Torch-free scalar types shared by the CPU kernels: 16-bit floats stored as raw bits.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace sah {

// bfloat16 stored as its 16 raw bits (layout-compatible with c10::BFloat16).
struct bf16_t {
  uint16_t bits;
};
// IEEE half stored as its 16 raw bits (layout-compatible with c10::Half).
struct f16_t {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline double to_float(double x) { return x; }

inline float to_float(bf16_t x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float to_float(f16_t x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  uint32_t exp = (x.bits >> 10) & 0x1fu;
  uint32_t man = x.bits & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while ((man & 0x400u) == 0) {
        man <<= 1;
        --exp;
      }
      man &= 0x3ffu;
      u = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

template <typename T>
inline T from_float(float x);
template <>
inline float from_float<float>(float x) {
  return x;
}
template <typename T>
inline T from_double(double x) {
  return from_float<T>(static_cast<float>(x));
}
template <>
inline double from_double<double>(double x) {
  return x;
}

template <>
inline bf16_t from_float<bf16_t>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16_t{static_cast<uint16_t>(u >> 16)};
}

template <>
inline f16_t from_float<f16_t>(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return f16_t{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (abs >= 0x477ff000u) return f16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // overflow -> inf
  if (abs < 0x38800000u) {  // subnormal or zero: scale by 2^24 (exact) and round half to even
    float mag;
    std::memcpy(&mag, &abs, sizeof(mag));
    const uint32_t res = static_cast<uint32_t>(std::nearbyint(mag * 16777216.0f));
    return f16_t{static_cast<uint16_t>(sign | res)};
  }
  uint32_t r = abs - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);  // round to nearest even
  return f16_t{static_cast<uint16_t>(sign | (r >> 13))};
}

// Accumulation type: double for double inputs, float otherwise.
template <typename T>
struct acc_type {
  using type = float;
};
template <>
struct acc_type<double> {
  using type = double;
};

}  // namespace sah
