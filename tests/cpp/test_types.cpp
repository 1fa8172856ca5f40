// 16-bit float conversions of sah/types.h against exactly representable values.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "sah/types.h"

namespace {

TEST(Bf16, RoundTripsExactValuesAndRoundsToNearestEven) {
  for (float x : {0.0f, 1.0f, -2.5f, 3.140625f, 65536.0f, -1e-3f * 0.0f}) {
    EXPECT_EQ(sah::to_float(sah::from_float<sah::bf16_t>(x)), x);
  }
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
  EXPECT_EQ(sah::to_float(sah::from_float<sah::bf16_t>(1.0f + std::ldexp(1.0f, -8))), 1.0f);
  EXPECT_EQ(sah::to_float(sah::from_float<sah::bf16_t>(1.0f + 3 * std::ldexp(1.0f, -8))),
            1.0f + std::ldexp(1.0f, -6));
  EXPECT_TRUE(std::isnan(sah::to_float(sah::from_float<sah::bf16_t>(std::nanf("")))));
}

TEST(F16, RoundTripsNormalsSubnormalsAndSpecials) {
  for (float x : {0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f,
                  -3.0517578125e-05f}) {
    EXPECT_EQ(sah::to_float(sah::from_float<sah::f16_t>(x)), x) << x;
  }
  EXPECT_EQ(sah::from_float<sah::f16_t>(1.0f).bits, 0x3c00);
  EXPECT_EQ(sah::from_float<sah::f16_t>(-65504.0f).bits, 0xfbff);
  EXPECT_TRUE(std::isinf(sah::to_float(sah::from_float<sah::f16_t>(1e6f))));
  EXPECT_EQ(sah::from_float<sah::f16_t>(1e-9f).bits, 0);  // underflows to zero
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even gives 1.
  EXPECT_EQ(sah::to_float(sah::from_float<sah::f16_t>(1.0f + std::ldexp(1.0f, -11))), 1.0f);
}

TEST(F16, AllBitPatternsRoundTrip) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const sah::f16_t h{static_cast<uint16_t>(b)};
    const float f = sah::to_float(h);
    if (std::isnan(f)) continue;
    EXPECT_EQ(sah::from_float<sah::f16_t>(f).bits, b) << std::hex << b;
  }
}

}  // namespace
