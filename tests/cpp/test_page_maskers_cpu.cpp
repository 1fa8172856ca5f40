// Quest and DoubleSparsity row kernels of sah/page_maskers_cpu.h.
#include <gtest/gtest.h>

#include <vector>

#include "sah/page_maskers_cpu.h"

namespace {

struct Rows {
  std::vector<int32_t> idx;
  std::vector<float> prob;
};

// Row-major strides of a contiguous (a, b, c, d) tensor.
void strides4(int64_t b, int64_t c, int64_t d, int64_t* out) {
  out[0] = b * c * d;
  out[1] = c * d;
  out[2] = d;
  out[3] = 1;
}

// Page statistics of one batch and head of keys (k_len, dim), recomputed from `first_page`.
void page_stats(const std::vector<float>& keys, int64_t dim, int64_t page_size, int64_t first_page,
                std::vector<float>* lo, std::vector<float>* hi) {
  sah::PageStatsParams p;
  p.batch = 1, p.kv_heads = 1, p.head_dim = dim, p.page_size = page_size;
  p.k_len = static_cast<int64_t>(keys.size()) / dim;
  p.page_cap = static_cast<int64_t>(lo->size()) / dim;
  p.first_page = first_page;
  p.k = keys.data();
  strides4(1, p.k_len, dim, p.k_stride);
  p.page_min = lo->data();
  p.page_max = hi->data();
  sah::cpu::quest_page_stats<float>(p, 0, p.items());
}

// Quest over one batch and head: q (q_len, dim), page statistics of k_len keys, no previous mask.
Rows quest(const std::vector<float>& q, int64_t q_len, const std::vector<float>& lo,
           const std::vector<float>& hi, int64_t k_len, int64_t page_size, int64_t pages,
           const bool* mask = nullptr) {
  sah::QuestParams p;
  p.batch = 1, p.heads = 1, p.kv_heads = 1, p.q_len = q_len, p.k_len = k_len;
  p.head_dim = static_cast<int64_t>(q.size()) / q_len;
  p.page_size = page_size;
  p.page_cap = static_cast<int64_t>(lo.size()) / p.head_dim;
  p.num_pages_to_pick = pages;
  p.q = q.data();
  strides4(1, q_len, p.head_dim, p.q_stride);
  p.page_min = lo.data();
  p.page_max = hi.data();
  static const int32_t no_idx = -1;
  static const float no_prob = 0.0f;
  p.prev_idx = &no_idx, p.prev_probs = &no_prob, p.prev_cap = 0;
  if (mask != nullptr) {
    p.mask = mask;
    p.mask_kind = sah::MaskKind::kBool;
    const int64_t ms[4] = {0, 0, k_len, 1};
    std::copy(ms, ms + 4, p.mask_stride);
  }
  p.out_cap = std::min(pages * page_size, k_len);
  Rows out{std::vector<int32_t>(q_len * p.out_cap), std::vector<float>(q_len * p.out_cap)};
  p.out_idx = out.idx.data();
  p.out_probs = out.prob.data();
  EXPECT_TRUE(sah::cpu::quest_rows<float>(p, 0, p.rows()));
  return out;
}

TEST(PageMaskersCpu, PseudoQuantizeRoundsHalfToEvenBetweenMinAndMax) {
  std::vector<float> x = {0.0f, 1.0f, 2.0f};  // 1 bit: levels {0, 1}, step 2; 0.5 rounds to 0
  sah::cpu::pseudo_quantize_row(x.data(), 3, 1);
  EXPECT_EQ(x, (std::vector<float>{0.0f, 0.0f, 2.0f}));
  std::vector<float> y = {-1.0f, 0.0f, 1.0f, 2.0f};  // 2 bits over a range of 3: exact
  sah::cpu::pseudo_quantize_row(y.data(), 4, 2);
  EXPECT_EQ(y, (std::vector<float>{-1.0f, 0.0f, 1.0f, 2.0f}));
  std::vector<float> c = {2.5f, 2.5f};  // a constant row stays as it is
  sah::cpu::pseudo_quantize_row(c.data(), 2, 4);
  EXPECT_EQ(c, (std::vector<float>{2.5f, 2.5f}));
}

TEST(PageMaskersCpu, PageStatsCoverPartialLastPageAndUpdateIncrementally) {
  // 5 keys of dim 2, pages of 2: {0, 1}, {2, 3}, {4}.
  std::vector<float> keys = {1, 9, 3, 7, 5, 5, 0, 8, 4, 4};
  std::vector<float> lo(8, -100.0f), hi(8, 100.0f);  // capacity 4 pages
  page_stats(keys, 2, 2, 0, &lo, &hi);
  EXPECT_EQ(std::vector<float>(lo.begin(), lo.begin() + 6), (std::vector<float>{1, 7, 0, 5, 4, 4}));
  EXPECT_EQ(std::vector<float>(hi.begin(), hi.begin() + 6), (std::vector<float>{3, 9, 5, 8, 4, 4}));
  EXPECT_EQ(lo[6], -100.0f);  // beyond the last page: untouched
  // Append two keys; with 5 cached keys only pages 2 (partial) and 3 are recomputed.
  keys.insert(keys.end(), {6, -1, 2, 2});
  lo[0] = 42.0f;
  page_stats(keys, 2, 2, 5 / 2, &lo, &hi);
  EXPECT_EQ(lo[0], 42.0f);
  EXPECT_EQ(std::vector<float>(lo.begin() + 4, lo.end()), (std::vector<float>{4, -1, 2, 2}));
  EXPECT_EQ(std::vector<float>(hi.begin() + 4, hi.end()), (std::vector<float>{6, 4, 2, 2}));
}

TEST(PageMaskersCpu, QuestPicksBestPagesUpToTheQueryPosition) {
  // 8 keys of dim 1, pages of 2; key values grow, so for q > 0 the last pages score best.
  const std::vector<float> keys = {0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<float> lo(4), hi(4);
  page_stats(keys, 1, 2, 0, &lo, &hi);
  // Two queries at positions 6 and 7: row 0 sees pages 0..3 but only key 6 of page 3.
  const Rows r = quest({1.0f, 1.0f}, 2, lo, hi, 8, 2, 2);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{4, 5, 6, -1, 4, 5, 6, 7}));
  EXPECT_EQ(r.prob[3], 0.0f);
  // A negative query prefers small keys.
  EXPECT_EQ(quest({-1.0f}, 1, lo, hi, 8, 2, 1).idx, (std::vector<int32_t>{0, 1}));
}

TEST(PageMaskersCpu, QuestSkipsPagesWithoutAllowedKeysAndBreaksTiesLow) {
  const std::vector<float> keys = {5, 5, 5, 5, 5, 5};
  std::vector<float> lo(3), hi(3);
  page_stats(keys, 1, 2, 0, &lo, &hi);
  // All pages tie: the lower pages win.
  EXPECT_EQ(quest({1.0f}, 1, lo, hi, 6, 2, 2).idx, (std::vector<int32_t>{0, 1, 2, 3}));
  // Page 0 is padding, key 3 is forbidden: pages 1 and 2, allowed keys only.
  const bool mask[6] = {false, false, true, false, true, true};
  EXPECT_EQ(quest({1.0f}, 1, lo, hi, 6, 2, 2, mask).idx, (std::vector<int32_t>{2, 4, 5, -1}));
}

TEST(PageMaskersCpu, DoubleSparsityScoresOnChannelSubsetAndSkipsPreviousKeys) {
  // One query over 5 keys of dim 2; channel 1 ranks keys 3 > 1 > 4 > 0 > 2 (channel 0: 2 first).
  const std::vector<float> q = {1.0f, 1.0f};
  const std::vector<float> k = {4, 1, 3, 4, 5, 0, 2, 9, 1, 2};
  const std::vector<int64_t> channels = {1, 0};
  std::vector<float> labels(5);
  sah::DoubleSparsityParams p;
  p.batch = 1, p.heads = 1, p.kv_heads = 1, p.q_len = 1, p.k_len = 5, p.head_dim = 2;
  p.num_channels = 1, p.size = 2, p.score_divisor = 1.0f;
  p.q = q.data();
  strides4(1, 1, 2, p.q_stride);
  p.k = k.data();
  strides4(1, 5, 2, p.k_stride);
  p.channels = channels.data();
  p.channel_stride[0] = 2, p.channel_stride[1] = 1;
  p.key_labels = labels.data();
  sah::cpu::double_sparsity_key_labels<float>(p, 0, p.label_rows());
  EXPECT_EQ(labels, (std::vector<float>{1, 4, 0, 9, 2}));
  const std::vector<int32_t> prev = {3, -1};
  const std::vector<float> prev_p = {0.5f, 0.0f};
  p.prev_idx = prev.data(), p.prev_probs = prev_p.data(), p.prev_cap = 2;
  Rows out{std::vector<int32_t>(4), std::vector<float>(4)};
  p.out_idx = out.idx.data(), p.out_probs = out.prob.data(), p.out_cap = 4;
  ASSERT_TRUE(sah::cpu::double_sparsity_rows<float>(p, 0, 1));
  EXPECT_EQ(out.idx, (std::vector<int32_t>{1, 3, 4, -1}));  // key 3 kept at its probability
  EXPECT_EQ(out.prob, (std::vector<float>{1.0f, 0.5f, 1.0f, 0.0f}));
}

}  // namespace
