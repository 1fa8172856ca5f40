// Learned-score top-k row kernels of sah/learned_maskers_cpu.h (HashAttention, PQCache).
#include <gtest/gtest.h>

#include <vector>

#include "sah/learned_maskers_cpu.h"

namespace {

// One batch, one head, one query over k_len keys, empty previous mask, optional bool mask.
std::vector<int32_t> run(sah::LearnedTopKParams p, int64_t k_len, int64_t k,
                         const bool* mask = nullptr) {
  static const int32_t no_idx = -1;
  static const float no_prob = 0.0f;
  p.batch = 1, p.heads = 1, p.key_heads = 1, p.q_len = 1, p.k_len = k_len, p.size = k;
  p.prev_idx = &no_idx;
  p.prev_probs = &no_prob;
  p.prev_cap = 0;
  if (mask != nullptr) {
    p.mask = mask;
    p.mask_kind = sah::MaskKind::kBool;
    const int64_t ms[4] = {0, 0, 0, 1};
    std::copy(ms, ms + 4, p.mask_stride);
  }
  std::vector<int32_t> idx(k);
  std::vector<float> prob(k);
  p.out_idx = idx.data();
  p.out_probs = prob.data();
  p.out_cap = k;
  EXPECT_TRUE(sah::cpu::learned_topk_rows<float>(p, 0, 1));
  return idx;
}

// Hash parameters over one-word signatures of `bits` bits.
sah::LearnedTopKParams hash_params(const std::vector<int32_t>& q, const std::vector<int32_t>& k,
                                   int64_t bits) {
  sah::LearnedTopKParams p;
  p.bits = bits;
  p.words = 1;
  p.q_sig = q.data();
  p.k_sig = k.data();
  const int64_t ks[4] = {0, 0, 1, 1};
  std::copy(ks, ks + 4, p.k_sig_stride);
  return p;
}

TEST(LearnedMaskers, PackSignsCountsZeroAsPlusOne) {
  const float x[5] = {1.0f, 0.0f, -1.0f, -0.0f, 2.0f};
  int32_t word = 0;
  sah::cpu::pack_signs(x, 1, 5, &word);
  EXPECT_EQ(word, 0b11011);
  std::vector<float> y(40, -1.0f);
  y[33] = 3.0f;
  std::vector<int32_t> words(2);
  sah::cpu::pack_signs(y.data(), 1, 40, words.data());
  EXPECT_EQ(words[0], 0);
  EXPECT_EQ(words[1], 0b10);
  EXPECT_EQ(sah::signature_words(32), 1);
  EXPECT_EQ(sah::signature_words(33), 2);
}

TEST(LearnedMaskers, SignatureDotIsBitsMinusTwiceHamming) {
  const int32_t a = 0b1011, b = 0b0110;  // differ in 3 of 4 bits
  EXPECT_EQ(sah::cpu::signature_dot(&a, &b, 1, 1, 4), 4 - 2 * 3);
  EXPECT_EQ(sah::cpu::signature_dot(&a, &a, 1, 1, 4), 4);
  const int32_t padded = 0b1011 | 0x7ff0;  // bits past the 4th are padding: ignored
  EXPECT_EQ(sah::cpu::signature_dot(&a, &padded, 1, 1, 4), 4);
}

TEST(LearnedMaskers, HashHistogramSelectPrefersLowerIndexOnTies) {
  // Scores (4 bits): keys 0..5 -> 0, 4, 0, 4, -4, 0.
  const std::vector<int32_t> q = {0b1111};
  const std::vector<int32_t> k = {0b0011, 0b1111, 0b0101, 0b1111, 0b0000, 0b1100};
  EXPECT_EQ(run(hash_params(q, k, 4), 6, 3), (std::vector<int32_t>{0, 1, 3}));
  EXPECT_EQ(run(hash_params(q, k, 4), 6, 4), (std::vector<int32_t>{0, 1, 2, 3}));
  const bool mask[6] = {false, true, true, true, true, true};  // key 0 forbidden
  EXPECT_EQ(run(hash_params(q, k, 4), 6, 3, mask), (std::vector<int32_t>{1, 2, 3}));
}

TEST(LearnedMaskers, PqScoresSumTheLookupTable) {
  // head_dim 2 = 2 sub-spaces of 1 dim, 2 centroids each: centroids {-1, 2} and {3, -2}.
  const float query[2] = {1.0f, 2.0f};
  const float books[4] = {-1.0f, 2.0f, 3.0f, -2.0f};
  // Key codes (m0, m1) -> scores: (0,0) 5, (1,0) 8, (0,1) -5, (1,1) -2.
  const uint8_t codes[8] = {0, 0, 1, 0, 0, 1, 1, 1};
  sah::LearnedTopKParams p;
  p.head_dim = 2, p.subspaces = 2, p.centroids = 2, p.sub_dim = 1;
  p.q = query;
  p.codebooks = books;
  p.codes = codes;
  const int64_t cs[4] = {0, 0, 2, 1};
  std::copy(cs, cs + 4, p.code_stride);
  const int64_t qs[4] = {0, 0, 0, 1};
  std::copy(qs, qs + 4, p.q_stride);
  EXPECT_EQ(run(p, 4, 2), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(run(p, 4, 3), (std::vector<int32_t>{0, 1, 3}));
}

TEST(LearnedMaskers, PqEncodePicksNearestCentroidLowestOnTies) {
  const float keys[4] = {0.4f, 1.0f, 0.5f, -3.0f};                // 2 keys, 2 sub-spaces of 1 dim
  const float books[6] = {0.0f, 1.0f, 1.0f, -1.0f, 0.0f, -3.0f};  // 3 centroids per sub-space
  const int64_t stride[4] = {4, 4, 2, 1};
  uint8_t codes[4];
  sah::cpu::pq_encode_items(keys, stride, 1, 2, 2, books, 2, 3, codes, 0, 2);
  EXPECT_EQ(codes[0], 0);  // 0.4 -> 0.0
  EXPECT_EQ(codes[1], 1);  // 1.0 -> 0.0 (sub-space 1 centroids: -1, 0, -3)
  EXPECT_EQ(codes[2], 0);  // 0.5: tie between 0.0 and 1.0 -> lower index
  EXPECT_EQ(codes[3], 2);  // -3.0 -> -3.0
}

}  // namespace
