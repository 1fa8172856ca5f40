// Row-form mask helpers of sah/mask_rows_cpu.h.
#include <gtest/gtest.h>

#include <vector>

#include "sah/mask_rows_cpu.h"

namespace {

TEST(MaskRows, UnionClampsAddedProbabilitiesAndPads) {
  const std::vector<int32_t> ia = {1, 4, 7, -1};
  const std::vector<float> pa = {0.5f, 1.0f, 0.25f, 0.0f};
  const std::vector<int32_t> ib = {0, 4, 7};
  const std::vector<float> pb = {0.5f, 0.5f, 0.5f};
  std::vector<int32_t> io(6);
  std::vector<float> po(6);
  const int64_t n = sah::cpu::union_row(ia.data(), pa.data(), 4, ib.data(), pb.data(), 3,
                                        io.data(), po.data(), 6);
  EXPECT_EQ(n, 4);
  EXPECT_EQ(io, (std::vector<int32_t>{0, 1, 4, 7, -1, -1}));
  EXPECT_EQ(po, (std::vector<float>{0.5f, 0.5f, 1.0f, 0.75f, 0.0f, 0.0f}));
}

TEST(MaskRows, UnionReportsOverflowAndUnsortedRows) {
  const std::vector<int32_t> a = {0, 1}, b = {2, 3}, unsorted = {3, 1};
  const std::vector<float> p = {1.0f, 1.0f};
  std::vector<int32_t> io(4);
  std::vector<float> po(4);
  EXPECT_EQ(sah::cpu::union_row(a.data(), p.data(), 2, b.data(), p.data(), 2, io.data(),
                                po.data(), 3),
            -1);
  EXPECT_EQ(sah::cpu::union_row(unsorted.data(), p.data(), 2, a.data(), p.data(), 2, io.data(),
                                po.data(), 4),
            -1);
}

TEST(MaskRows, DenseRoundTripAndCounts) {
  const std::vector<float> dense = {0.0f, 0.5f, 0.0f, 1.0f, 0.25f};
  std::vector<int32_t> idx(5);
  std::vector<float> prob(5);
  EXPECT_EQ(sah::cpu::dense_to_row(dense.data(), 5, idx.data(), prob.data(), 5), 3);
  EXPECT_EQ(idx, (std::vector<int32_t>{1, 3, 4, -1, -1}));
  EXPECT_EQ(sah::cpu::row_count(idx.data(), prob.data(), 5), 3);
  std::vector<float> back(5, 0.0f);
  sah::cpu::row_to_dense(idx.data(), prob.data(), 5, back.data(), 5);
  EXPECT_EQ(back, dense);
  EXPECT_EQ(sah::cpu::dense_to_row(dense.data(), 5, idx.data(), prob.data(), 2), -1);
}

}  // namespace
