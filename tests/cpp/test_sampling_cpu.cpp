// Counter-based random numbers, LSH layout and the random-sampling row kernel of
// sah/sampling_common.h and sah/sampling_cpu.h. The pinned words keep a CUDA port (and the Python
// reference of tests/python/test_sampling_maskers.py) on the same stream.
#include <gtest/gtest.h>

#include <vector>

#include "sah/sampling_cpu.h"

namespace {

TEST(SamplingRng, PinnedWords) {
  EXPECT_EQ(sah::mix64(1), 0x5692161d100b05e5ULL);
  EXPECT_EQ(sah::counter_hash(0, 0), 0x48218226ff3cd4bfULL);
  const uint64_t stream = sah::stream_key(42, 3, sah::RandomStream::kRandomSampling);
  EXPECT_EQ(stream, 0xe8bb25659dc3cadcULL);
  EXPECT_EQ(sah::row_key(stream, 1, 2, 7), 0xdc11db8bf896f9d2ULL);
}

TEST(SamplingRng, UniformIsOpen) {
  EXPECT_GT(sah::uniform_open01(0), 0.0);
  EXPECT_LT(sah::uniform_open01(~0ULL), 1.0);
}

TEST(LshLayout, SlotsAndWords) {
  struct Case {
    int64_t l, k, slot, words;
  };
  for (const Case& c : {Case{6, 3, 4, 1}, Case{4, 8, 8, 1}, Case{3, 32, 32, 3}, Case{2, 40, 64, 4},
                        Case{75, 8, 8, 19}, Case{5, 1, 1, 1}}) {
    const sah::LshLayout lay = sah::lsh_layout(c.l, c.k);
    EXPECT_EQ(lay.slot, c.slot) << c.l << "x" << c.k;
    EXPECT_EQ(lay.words, c.words) << c.l << "x" << c.k;
  }
}

TEST(LshLayout, TablesMatchOnlyOnTheirOwnBits) {
  const sah::LshLayout lay = sah::lsh_layout(3, 5);  // slot 8: tables at bits 0, 8, 16
  std::vector<int32_t> a(lay.words, 0), b(lay.words, 0);
  sah::lsh_set_bit(lay, 1, 4, a.data());  // table 1 differs
  EXPECT_TRUE(sah::lsh_table_match(lay, 0, a.data(), b.data()));
  EXPECT_FALSE(sah::lsh_table_match(lay, 1, a.data(), b.data()));
  EXPECT_TRUE(sah::lsh_table_match(lay, 2, a.data(), b.data()));
  EXPECT_TRUE(sah::lsh_any_match(lay, a.data(), b.data()));
  sah::lsh_set_bit(lay, 0, 0, b.data());
  sah::lsh_set_bit(lay, 2, 4, b.data());
  EXPECT_FALSE(sah::lsh_any_match(lay, a.data(), b.data()));
}

TEST(LshProbability, Endpoints) {
  EXPECT_EQ(sah::lsh_collision_probability(1.0, 8, 75), 1.0);
  EXPECT_EQ(sah::lsh_collision_probability(-1.0, 8, 75), 0.0);
  EXPECT_NEAR(sah::lsh_collision_probability(0.0, 1, 1), 0.5, 1e-15);
}

// Random sampling of one decode row over 10 keys: key 0 held by the previous row, key 9
// forbidden by the mask; 3 of the 8 candidates, each with p = 3/8.
TEST(RandomSamplingRows, DrawsWithoutReplacementAmongCandidates) {
  const std::vector<int32_t> prev_idx = {0};
  const std::vector<float> prev_probs = {1.0f};
  std::vector<uint8_t> allowed(10, 1);
  allowed[9] = 0;
  std::vector<int32_t> out_idx(4);
  std::vector<float> out_probs(4);
  sah::SamplingParams p;
  p.kind = sah::SamplingKind::kRandom;
  p.batch = p.heads = p.q_len = 1;
  p.k_len = 10;
  p.prev_idx = prev_idx.data();
  p.prev_probs = prev_probs.data();
  p.prev_cap = 1;
  p.mask = allowed.data();
  p.mask_kind = sah::MaskKind::kBool;
  p.out_idx = out_idx.data();
  p.out_probs = out_probs.data();
  p.out_cap = 4;
  p.num_samples = 3;
  p.seed = 7;
  ASSERT_TRUE(sah::cpu::sampling_rows<float>(p, 0, 1));
  EXPECT_EQ(out_idx, (std::vector<int32_t>{0, 2, 4, 8}));  // as the Python reference draws
  EXPECT_EQ(out_probs, (std::vector<float>{1.0f, 0.375f, 0.375f, 0.375f}));
}

}  // namespace
