// Torch-free CPU kernels of the Quest and DoubleSparsity top-k maskers, plus the reference's
// pseudo-quantisation.
//
// Quest scores page t of a query row by the upper bound sum_c max(q_c lo_tc, q_c hi_tc) of q.k
// over the box [lo_t, hi_t] of the page's keys (per kv head), picks the best pages and selects
// their keys. DoubleSparsity scores keys on a per-head subset of "outlier" channels (optionally
// pseudo-quantised) and picks the top keys the previous mask does not hold. Both never pick a key
// that the attention mask forbids or that lies after the query's absolute position
// k_len - q_len + i, and merge their picks (p = 1) with the previous row (clamp-add union).
// Scores accumulate in float32; ties go to the lower page / key index.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "sah/attention_cpu.h"
#include "sah/attention_params.h"
#include "sah/mask_rows_cpu.h"

namespace sah {

// Quest page statistics of keys (batch, kv_heads, k_len, head_dim): page t holds keys
// [t * page_size, min((t + 1) * page_size, k_len)). page_min / page_max are float32
// (batch, kv_heads, page_cap, head_dim) contiguous; pages [first_page, num_pages()) are rewritten.
struct PageStatsParams {
  int64_t batch = 0, kv_heads = 0, k_len = 0, head_dim = 0, page_size = 1, page_cap = 0;
  int64_t first_page = 0;
  const void* k = nullptr;
  int64_t k_stride[4] = {0, 0, 0, 1};
  float* page_min = nullptr;
  float* page_max = nullptr;

  int64_t num_pages() const { return (k_len + page_size - 1) / page_size; }
  // Work items: one (batch, kv head, page) per page to rewrite.
  int64_t items() const {
    return batch * kv_heads * std::max<int64_t>(0, num_pages() - first_page);
  }
};

// Shapes: q (batch, heads, q_len, head_dim); page_min / page_max float32 (batch, kv_heads,
// page_cap, head_dim) contiguous (already pseudo-quantised when asked for); prev rows (batch,
// heads, q_len, prev_cap) and out rows (..., out_cap) contiguous; mask as in AttentionParams.
struct QuestParams {
  int64_t batch = 0, heads = 0, kv_heads = 1, q_len = 0, k_len = 0, head_dim = 0;
  int64_t page_size = 1, page_cap = 0, num_pages_to_pick = 0;
  const void* q = nullptr;
  int64_t q_stride[4] = {0, 0, 0, 1};
  const float* page_min = nullptr;
  const float* page_max = nullptr;
  const int32_t* prev_idx = nullptr;
  const float* prev_probs = nullptr;
  int64_t prev_cap = 0;
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::kNone;
  int64_t mask_stride[4] = {0, 0, 0, 1};
  int32_t* out_idx = nullptr;
  float* out_probs = nullptr;
  int64_t out_cap = 0;

  int64_t rows() const { return batch * heads * q_len; }
};

// Shapes: q (batch, heads, q_len, head_dim), k (batch, kv_heads, k_len, head_dim); channels int64
// (heads, >= num_channels): query head h scores on channels[h, :num_channels]; key_labels float32
// (batch, heads, k_len, num_channels) contiguous, filled by double_sparsity_key_labels; prev/out
// rows and mask as in QuestParams. Score = labels(q).labels(k) / score_divisor + mask.
struct DoubleSparsityParams {
  int64_t batch = 0, heads = 0, kv_heads = 1, q_len = 0, k_len = 0, head_dim = 0;
  int64_t num_channels = 0, size = 0;
  int label_bits = 16;  // < 16: pseudo-quantise the labels of each query and key
  float score_divisor = 1.0f;
  const void* q = nullptr;
  int64_t q_stride[4] = {0, 0, 0, 1};
  const void* k = nullptr;
  int64_t k_stride[4] = {0, 0, 0, 1};
  const int64_t* channels = nullptr;
  int64_t channel_stride[2] = {0, 1};
  float* key_labels = nullptr;
  const int32_t* prev_idx = nullptr;
  const float* prev_probs = nullptr;
  int64_t prev_cap = 0;
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::kNone;
  int64_t mask_stride[4] = {0, 0, 0, 1};
  int32_t* out_idx = nullptr;
  float* out_probs = nullptr;
  int64_t out_cap = 0;

  int64_t rows() const { return batch * heads * q_len; }
  int64_t label_rows() const { return batch * heads * k_len; }
};

namespace cpu {

// The reference's pseudo_quantize of one row of n values, in place: with lo/hi the row's min/max,
// r = hi - lo (1 when 0) and s = (1 / r) * (2^bits - 1), x := clamp(round_half_even((x - lo) s),
// 0, 2^bits - 1) / s + lo. The float operations are the ones torch runs (its `int / tensor` is
// `reciprocal(tensor) * int`), so float32 results are bit-identical.
inline void pseudo_quantize_row(float* x, int64_t n, int bits) {
  if (n <= 0) return;
  const float levels = static_cast<float>((int64_t{1} << bits) - 1);
  float lo = x[0], hi = x[0];
  for (int64_t c = 1; c < n; ++c) {
    lo = std::min(lo, x[c]);
    hi = std::max(hi, x[c]);
  }
  float range = hi - lo;
  if (range == 0.0f) range = 1.0f;
  const float s = (1.0f / range) * levels;
  for (int64_t c = 0; c < n; ++c) {
    const float level = std::min(levels, std::max(0.0f, std::nearbyint((x[c] - lo) * s)));
    x[c] = level / s + lo;
  }
}

// Orders the first `take` entries of `order` (positions into `score`) by score, higher first;
// equal scores keep the lower position first (candidates are listed in ascending index order).
inline void order_top(const std::vector<float>& score, int64_t take, std::vector<int64_t>* order) {
  order->resize(score.size());
  std::iota(order->begin(), order->end(), 0);
  auto better = [&](int64_t a, int64_t c) {
    return score[a] > score[c] || (score[a] == score[c] && a < c);
  };
  std::partial_sort(order->begin(), order->begin() + take, order->end(), better);
}

// Rewrites the min/max of work items [begin, end) (see PageStatsParams::items).
template <typename T>
void quest_page_stats(const PageStatsParams& p, int64_t begin, int64_t end) {
  const int64_t pages = p.num_pages() - p.first_page, d = p.head_dim;
  for (int64_t item = begin; item < end; ++item) {
    const int64_t t = p.first_page + item % pages, bh = item / pages;
    const int64_t b = bh / p.kv_heads, h = bh % p.kv_heads;
    float* lo = p.page_min + (bh * p.page_cap + t) * d;
    float* hi = p.page_max + (bh * p.page_cap + t) * d;
    const T* kbase = static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[1];
    const int64_t first = t * p.page_size, last = std::min(first + p.page_size, p.k_len);
    for (int64_t j = first; j < last; ++j) {
      const T* krow = kbase + j * p.k_stride[2];
      for (int64_t c = 0; c < d; ++c) {
        const float x = static_cast<float>(to_float(krow[c * p.k_stride[3]]));
        lo[c] = j == first ? x : std::min(lo[c], x);
        hi[c] = j == first ? x : std::max(hi[c], x);
      }
    }
  }
}

// Picks, for rows [begin, end), the keys of the best num_pages_to_pick pages that hold a key the
// query may see, and writes the union with the previous rows; returns false if a row did not fit
// out_cap (only possible when a previous row is not strictly ascending).
template <typename T>
bool quest_rows(const QuestParams& p, int64_t begin, int64_t end) {
  const int64_t d = p.head_dim, ps = p.page_size;
  std::vector<float> qf(d), score;
  std::vector<int64_t> pages, order;
  return pick_rows(p, begin, end, [&](int64_t b, int64_t h, int64_t i, const int32_t* prev,
                                      int64_t prev_len, std::vector<int32_t>* out) {
    std::vector<int32_t>& picks = *out;
    auto allowed = [&](int64_t j) {
      return !std::isinf(mask_value_at<float>(p.mask, p.mask_kind, p.mask_stride, b, h, i, j));
    };
    const int64_t last = std::min(p.k_len - p.q_len + i, p.k_len - 1);  // last key it may see
    picks.clear();
    if (last >= 0 && p.num_pages_to_pick > 0) {
      load_row(
          static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2],
          p.q_stride[3], d, qf.data());
      const int64_t slab = (b * p.kv_heads + h / (p.heads / p.kv_heads)) * p.page_cap;
      pages.clear();
      score.clear();
      for (int64_t t = 0; t * ps <= last; ++t) {
        const int64_t stop = std::min((t + 1) * ps, last + 1);
        bool valid = p.mask_kind == MaskKind::kNone;
        for (int64_t j = t * ps; !valid && j < stop; ++j) valid = allowed(j);
        if (!valid) continue;
        const float* lo = p.page_min + (slab + t) * d;
        const float* hi = p.page_max + (slab + t) * d;
        float u = 0.0f;
        for (int64_t c = 0; c < d; ++c) u += std::max(qf[c] * lo[c], qf[c] * hi[c]);
        pages.push_back(t);
        score.push_back(u);
      }
      const int64_t take = std::min<int64_t>(p.num_pages_to_pick, pages.size());
      order_top(score, take, &order);
      std::sort(order.begin(), order.begin() + take);  // ascending pages give ascending keys
      for (int64_t r = 0; r < take; ++r) {
        const int64_t t = pages[order[r]], stop = std::min((t + 1) * ps, last + 1);
        for (int64_t j = t * ps; j < stop; ++j) {
          if (allowed(j)) picks.push_back(static_cast<int32_t>(j));
        }
      }
    }
  });
}

// Gathers the channels of query head h from row x (element stride `stride`) into `labels`, then
// pseudo-quantises them when label_bits < 16.
template <typename T>
inline void double_sparsity_labels(const DoubleSparsityParams& p, int64_t h, const T* x,
                                   int64_t stride, float* labels) {
  const int64_t* ch = p.channels + h * p.channel_stride[0];
  for (int64_t c = 0; c < p.num_channels; ++c) {
    labels[c] = static_cast<float>(to_float(x[ch[c * p.channel_stride[1]] * stride]));
  }
  if (p.label_bits < 16) pseudo_quantize_row(labels, p.num_channels, p.label_bits);
}

// Fills key_labels for items [begin, end) of the flattened (batch, heads, k_len) grid.
template <typename T>
void double_sparsity_key_labels(const DoubleSparsityParams& p, int64_t begin, int64_t end) {
  for (int64_t item = begin; item < end; ++item) {
    const int64_t j = item % p.k_len, h = (item / p.k_len) % p.heads,
                  b = item / (p.k_len * p.heads);
    const T* krow = static_cast<const T*>(p.k) + b * p.k_stride[0] +
                    (h / (p.heads / p.kv_heads)) * p.k_stride[1] + j * p.k_stride[2];
    double_sparsity_labels(p, h, krow, p.k_stride[3], p.key_labels + item * p.num_channels);
  }
}

// Picks, for rows [begin, end), the `size` best-scoring keys the query may see that the previous
// row does not hold, and writes the union with the previous rows; returns false as quest_rows.
template <typename T>
bool double_sparsity_rows(const DoubleSparsityParams& p, int64_t begin, int64_t end) {
  const int64_t r = p.num_channels;
  std::vector<float> ql(r), score;
  std::vector<int32_t> cand;
  std::vector<int64_t> order;
  return pick_rows(p, begin, end, [&](int64_t b, int64_t h, int64_t i, const int32_t* prev,
                                      int64_t prev_len, std::vector<int32_t>* out) {
    std::vector<int32_t>& picks = *out;
    const int64_t last = std::min(p.k_len - p.q_len + i, p.k_len - 1);
    picks.clear();
    if (last >= 0 && p.size > 0) {
      double_sparsity_labels(
          p, h,
          static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2],
          p.q_stride[3], ql.data());
      const float* klabels = p.key_labels + (b * p.heads + h) * p.k_len * r;
      cand.clear();
      score.clear();
      int64_t t = 0;  // walks the (ascending) previous row to skip active keys
      for (int64_t j = 0; j <= last; ++j) {
        while (t < prev_len && prev[t] < j) ++t;
        if (t < prev_len && prev[t] == j) continue;
        const float mv = mask_value_at<float>(p.mask, p.mask_kind, p.mask_stride, b, h, i, j);
        if (std::isinf(mv)) continue;
        const float* kl = klabels + j * r;
        float dot = 0.0f;
        for (int64_t c = 0; c < r; ++c) dot += ql[c] * kl[c];
        cand.push_back(static_cast<int32_t>(j));
        score.push_back(dot / p.score_divisor + mv);
      }
      const int64_t take = std::min<int64_t>(p.size, cand.size());
      order_top(score, take, &order);
      for (int64_t x = 0; x < take; ++x) picks.push_back(cand[order[x]]);
      std::sort(picks.begin(), picks.end());
    }
  });
}

}  // namespace cpu
}  // namespace sah
