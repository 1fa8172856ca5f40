// Torch-free CPU kernels of the fixed maskers (sink, local window, oracle top-k, oracle top-p).
// Each row's new picks are merged with the previous mask's row (clamp-add union, p = 1 for a
// pick). A key is never picked when the attention mask forbids it or when it lies after the
// query's absolute position k_len - q_len + i (causal decoders). Sink and local count only the
// keys the query may see, so padding (left, or between a context and a question) does not eat
// into the sink or the window: a padded batch row selects what the unpadded sequence would.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "sah/attention_cpu.h"
#include "sah/attention_params.h"
#include "sah/mask_rows_cpu.h"

namespace sah {

enum class MaskerKind : int32_t { kSink = 0, kLocal = 1, kTopK = 2, kTopP = 3 };

// Shapes: q (batch, heads, q_len, head_dim), k (batch, kv_heads, k_len, head_dim) (scoring
// maskers only); prev rows (batch, heads, q_len, prev_cap) and out rows (..., out_cap)
// contiguous; mask as in AttentionParams. Strides in elements.
struct MaskerParams {
  MaskerKind kind = MaskerKind::kSink;
  int64_t batch = 0, heads = 0, kv_heads = 1, q_len = 0, k_len = 0, head_dim = 0;
  const void* q = nullptr;
  int64_t q_stride[4] = {0, 0, 0, 1};
  const void* k = nullptr;
  int64_t k_stride[4] = {0, 0, 0, 1};
  const int32_t* prev_idx = nullptr;
  const float* prev_probs = nullptr;
  int64_t prev_cap = 0;
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::kNone;
  int64_t mask_stride[4] = {0, 0, 0, 1};
  int32_t* out_idx = nullptr;
  float* out_probs = nullptr;
  int64_t out_cap = 0;
  int64_t size = 0;     // sink size, window size or top-k budget
  float top_p = 0.0f;   // top-p only
  float scale = 1.0f;   // top-p only (top-k ranks raw q.k)

  int64_t rows() const { return batch * heads * q_len; }
};

namespace cpu {

// Builds the sorted picks of one row into `picks` (work buffers are reused across rows).
template <typename T>
class RowPicker {
 public:
  explicit RowPicker(const MaskerParams& p) : p_(p), qf_(p.head_dim) {}

  void pick(int64_t b, int64_t h, int64_t i, const int32_t* prev, int64_t prev_len,
            std::vector<int32_t>* picks) {
    picks->clear();
    const int64_t pos = p_.k_len - p_.q_len + i;
    const int64_t last = std::min(pos, p_.k_len - 1);  // last key this query may see
    if (last < 0) return;
    switch (p_.kind) {
      case MaskerKind::kSink:  // the first `size` keys this query may see
        for (int64_t j = 0; j <= last && static_cast<int64_t>(picks->size()) < p_.size; ++j) {
          push_if_allowed(b, h, i, j, picks);
        }
        return;
      case MaskerKind::kLocal:  // the last `size` keys this query may see, up to itself
        for (int64_t j = last; j >= 0 && static_cast<int64_t>(picks->size()) < p_.size; --j) {
          push_if_allowed(b, h, i, j, picks);
        }
        std::reverse(picks->begin(), picks->end());
        return;
      case MaskerKind::kTopK:
      case MaskerKind::kTopP:
        scored_picks(b, h, i, last, prev, prev_len, picks);
        return;
    }
  }

 private:
  void push_if_allowed(int64_t b, int64_t h, int64_t i, int64_t j, std::vector<int32_t>* picks) {
    if (!std::isinf(mask(b, h, i, j))) picks->push_back(static_cast<int32_t>(j));
  }

  float mask(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return mask_value_at<float>(p_.mask, p_.mask_kind, p_.mask_stride, b, h, i, j);
  }

  void scored_picks(int64_t b, int64_t h, int64_t i, int64_t last, const int32_t* prev,
                    int64_t prev_len, std::vector<int32_t>* picks) {
    const T* qrow = static_cast<const T*>(p_.q) + b * p_.q_stride[0] + h * p_.q_stride[1] +
                    i * p_.q_stride[2];
    load_row(qrow, p_.q_stride[3], p_.head_dim, qf_.data());
    const int64_t kvh = h / (p_.heads / p_.kv_heads);
    const T* kbase = static_cast<const T*>(p_.k) + b * p_.k_stride[0] + kvh * p_.k_stride[1];
    cand_.clear();
    score_.clear();
    int64_t t = 0;  // walks the (ascending) previous row to skip active keys
    for (int64_t j = 0; j <= last; ++j) {
      while (t < prev_len && prev[t] < j) ++t;
      if (t < prev_len && prev[t] == j) continue;
      const float mv = mask(b, h, i, j);
      if (std::isinf(mv)) continue;
      const float dot = dot_row(qf_.data(), kbase + j * p_.k_stride[2], p_.k_stride[3], p_.head_dim);
      cand_.push_back(static_cast<int32_t>(j));
      score_.push_back(p_.kind == MaskerKind::kTopK ? dot + mv : p_.scale * dot + mv);
    }
    const int64_t n = static_cast<int64_t>(cand_.size());
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    // Higher score first; equal scores: lower key index first (deterministic ties).
    auto better = [&](int64_t a, int64_t c) {
      return score_[a] > score_[c] || (score_[a] == score_[c] && a < c);
    };
    int64_t take = 0;
    if (p_.kind == MaskerKind::kTopK) {
      take = std::min(p_.size, n);
      std::partial_sort(order_.begin(), order_.begin() + take, order_.end(), better);
    } else if (n > 0) {
      std::sort(order_.begin(), order_.end(), better);
      // Residual mass: E_j = exp(x_j - max); keep the smallest prefix whose share strictly
      // exceeds top_p, plus every key tied with its last element.
      const float mx = score_[order_[0]];
      double total = 0;
      for (int64_t r = 0; r < n; ++r) total += std::exp(double(score_[order_[r]] - mx));
      double cum = 0;
      int64_t r = 0;
      for (; r < n; ++r) {
        cum += std::exp(double(score_[order_[r]] - mx));
        if (cum / total > double(p_.top_p)) break;
      }
      const float tau = score_[order_[std::min(r, n - 1)]];
      while (take < n && score_[order_[take]] >= tau) ++take;
    }
    for (int64_t r = 0; r < take; ++r) picks->push_back(cand_[order_[r]]);
    std::sort(picks->begin(), picks->end());
  }

  const MaskerParams& p_;
  std::vector<float> qf_, score_;
  std::vector<int32_t> cand_;
  std::vector<int64_t> order_;
};

// Runs the masker for rows [begin, end); returns false if a row did not fit out_cap (only
// possible when the previous row is not strictly ascending).
template <typename T>
bool masker_rows(const MaskerParams& p, int64_t begin, int64_t end) {
  RowPicker<T> picker(p);
  return pick_rows(p, begin, end,
                   [&](int64_t b, int64_t h, int64_t i, const int32_t* prev, int64_t prev_len,
                       std::vector<int32_t>* picks) { picker.pick(b, h, i, prev, prev_len, picks); });
}

}  // namespace cpu
}  // namespace sah
