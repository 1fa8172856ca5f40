// Fixed masker row kernels of sah/maskers_cpu.h (sink, local, oracle top-k / top-p).
#include <gtest/gtest.h>

#include <vector>

#include "sah/maskers_cpu.h"

namespace {

struct Rows {
  std::vector<int32_t> idx;
  std::vector<float> prob;
};

// One batch, one head, q_len queries over k_len keys, empty previous mask, no attention mask.
Rows run(sah::MaskerKind kind, int64_t q_len, int64_t k_len, int64_t size,
         const std::vector<float>* q = nullptr, const std::vector<float>* k = nullptr,
         float top_p = 0.0f, const bool* mask = nullptr) {
  sah::MaskerParams p;
  p.kind = kind;
  p.batch = 1, p.heads = 1, p.kv_heads = 1, p.q_len = q_len, p.k_len = k_len, p.size = size;
  p.top_p = top_p;
  if (q != nullptr) {
    p.head_dim = static_cast<int64_t>(q->size()) / q_len;
    p.q = q->data();
    p.k = k->data();
    const int64_t qs[4] = {q_len * p.head_dim, q_len * p.head_dim, p.head_dim, 1};
    const int64_t ks[4] = {k_len * p.head_dim, k_len * p.head_dim, p.head_dim, 1};
    std::copy(qs, qs + 4, p.q_stride);
    std::copy(ks, ks + 4, p.k_stride);
  }
  if (mask != nullptr) {
    p.mask = mask;
    p.mask_kind = sah::MaskKind::kBool;
    const int64_t ms[4] = {0, 0, k_len, 1};
    std::copy(ms, ms + 4, p.mask_stride);
  }
  static const int32_t no_idx = -1;
  static const float no_prob = 0.0f;
  p.prev_idx = &no_idx;
  p.prev_probs = &no_prob;
  p.prev_cap = 0;
  p.out_cap = std::min(size, k_len);
  Rows out{std::vector<int32_t>(q_len * p.out_cap), std::vector<float>(q_len * p.out_cap)};
  p.out_idx = out.idx.data();
  p.out_probs = out.prob.data();
  EXPECT_TRUE(sah::cpu::masker_rows<float>(p, 0, p.rows()));
  return out;
}

TEST(MaskersCpu, LocalWindowEndsAtEachQueryPosition) {
  const Rows r = run(sah::MaskerKind::kLocal, 3, 8, 2);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{4, 5, 5, 6, 6, 7}));
}

TEST(MaskersCpu, SinkNeverPicksFutureKeys) {
  const Rows r = run(sah::MaskerKind::kSink, 3, 3, 3);  // positions 0, 1, 2
  EXPECT_EQ(r.idx, (std::vector<int32_t>{0, -1, -1, 0, 1, -1, 0, 1, 2}));
}

TEST(MaskersCpu, PaddingDoesNotEatIntoSinkOrWindow) {
  bool mask[10] = {false, false, true, true, true, true, true, true, true, true};
  EXPECT_EQ(run(sah::MaskerKind::kSink, 1, 10, 3, nullptr, nullptr, 0, mask).idx,
            (std::vector<int32_t>{2, 3, 4}));
  mask[8] = false;
  EXPECT_EQ(run(sah::MaskerKind::kLocal, 1, 10, 3, nullptr, nullptr, 0, mask).idx,
            (std::vector<int32_t>{6, 7, 9}));
}

TEST(MaskersCpu, TopKTakesBestScoresWithLowerIndexOnTies) {
  const std::vector<float> q = {1.0f};
  const std::vector<float> k = {0.5f, 2.0f, 1.0f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(run(sah::MaskerKind::kTopK, 1, 6, 2, &q, &k).idx, (std::vector<int32_t>{1, 3}));
}

TEST(MaskersCpu, TopPKeepsSmallestPrefixAboveThreshold) {
  const std::vector<float> q = {1.0f};
  // Masses proportional to 0.1, 0.3, 0.2, 0.4: top_p = 0.5 needs {0.4, 0.3} (share 0.7 > 0.5).
  const std::vector<float> k = {std::log(0.1f), std::log(0.3f), std::log(0.2f), std::log(0.4f)};
  const Rows r = run(sah::MaskerKind::kTopP, 1, 4, 4, &q, &k, 0.5f);
  EXPECT_EQ(r.idx, (std::vector<int32_t>{1, 3, -1, -1}));
}

}  // namespace
