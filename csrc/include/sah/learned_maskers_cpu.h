// Torch-free CPU kernels of the learned-score top-k maskers: HashAttention (bit signatures) and
// PQCache (product quantisation). They are the reference semantics for a CUDA port.
//
// Common rules of a row (b, h, i), whose query sits at absolute position pos = k_len - q_len + i:
// candidates are the keys j <= pos that the attention mask allows and that the previous row does
// not hold; the k best candidates (higher score first, equal scores: lower key first) are merged
// with the previous row with p = 1 (union_row). A finite additive mask value is added to the
// score; a forbidden key (-inf or the dtype's lowest value) is never a candidate.
//
// HashAttention: a signature of `bits` sign bits is packed into ceil(bits / 32) int32 words, bit t
// being bit t % 32 of word t / 32 (1 for a value >= 0, so an exact zero counts as +1; padding bits
// are written as 0 and ignored when scoring). The score of a key is the dot product of the two
// +-1 vectors, bits - 2 popcount(q XOR k), an integer in [-bits, bits]; rows whose mask adds only
// zeros select through a histogram over these integers (no sort).
// PQCache: a key is M codes, code m naming the nearest of C centroids of its m-th sub-vector of
// sub_dim = head_dim / M dims. A query builds the lookup table LUT[m][c] = q_m . centroid[m][c]
// (float32) and scores key j with sum_m LUT[m][code_m(j)], summed in order m = 0 .. M-1.
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

// int32 words of a packed signature of `bits` bits.
inline int64_t signature_words(int64_t bits) { return (bits + 31) / 32; }

// Rows of a learned top-k masker. Shapes: prev rows (batch, heads, q_len, prev_cap) and out rows
// (..., out_cap) contiguous; mask as in AttentionParams. Strides in elements.
// Hash: query signatures (batch, heads, q_len, words), key signatures
// (batch, key_heads, k_len, words), query head h reading key head h / (heads / key_heads).
// PQ: queries (batch, heads, q_len, head_dim); codebooks float32 contiguous
// (batch, kv_heads, subspaces, centroids, sub_dim); codes uint8 (batch, kv_heads, k_len,
// subspaces), query head h reading kv head h / (heads / kv_heads).
struct LearnedTopKParams {
  int64_t batch = 0, heads = 0, key_heads = 1, q_len = 0, k_len = 0;
  const int32_t* prev_idx = nullptr;
  const float* prev_probs = nullptr;
  int64_t prev_cap = 0;
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::kNone;
  int64_t mask_stride[4] = {0, 0, 0, 1};
  int32_t* out_idx = nullptr;
  float* out_probs = nullptr;
  int64_t out_cap = 0;
  int64_t size = 0;  // k, the new keys per row
  // Hash only.
  int64_t bits = 0, words = 0;
  const int32_t* q_sig = nullptr;
  int64_t q_sig_stride[4] = {0, 0, 0, 1};
  const int32_t* k_sig = nullptr;
  int64_t k_sig_stride[4] = {0, 0, 0, 1};
  // PQ only.
  int64_t head_dim = 0, subspaces = 0, centroids = 0, sub_dim = 0;
  const void* q = nullptr;
  int64_t q_stride[4] = {0, 0, 0, 1};
  const float* codebooks = nullptr;
  const uint8_t* codes = nullptr;
  int64_t code_stride[4] = {0, 0, 0, 1};

  int64_t rows() const { return batch * heads * q_len; }
};

namespace cpu {

// Packs the signs of x[0..bits) (stride in elements) into words (1 for x >= 0; NaN gives 0).
template <typename T>
inline void pack_signs(const T* x, int64_t stride, int64_t bits, int32_t* words) {
  for (int64_t w = 0; w < signature_words(bits); ++w) {
    uint32_t word = 0;
    const int64_t end = std::min<int64_t>(32, bits - 32 * w);
    for (int64_t t = 0; t < end; ++t) {
      if (to_float(x[(32 * w + t) * stride]) >= 0) word |= 1u << t;
    }
    words[w] = static_cast<int32_t>(word);
  }
}

// Dot product of two packed +-1 signatures of `bits` bits (words with stride 1 / `b_stride`);
// padding bits past `bits` are ignored.
inline int32_t signature_dot(const int32_t* a, const int32_t* b, int64_t b_stride, int64_t words,
                             int64_t bits) {
  int32_t differ = 0;
  for (int64_t w = 0; w < words; ++w) {
    uint32_t diff = static_cast<uint32_t>(a[w] ^ b[w * b_stride]);
    if (w == words - 1 && bits % 32 != 0) diff &= (1u << (bits % 32)) - 1u;
    differ += __builtin_popcount(diff);
  }
  return static_cast<int32_t>(bits) - 2 * differ;
}

// Index (lowest on ties) of the centroid nearest (squared L2) to x among `count` centroids of
// `dim` floats stored one after another.
inline int64_t nearest_centroid(const float* x, const float* centroids, int64_t count,
                                int64_t dim) {
  int64_t best = 0;
  float best_d = std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < count; ++c) {
    const float* y = centroids + c * dim;
    float d = 0.0f;
    for (int64_t t = 0; t < dim; ++t) d += (x[t] - y[t]) * (x[t] - y[t]);
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

// PQ codes of keys (batch, kv_heads, n, head_dim) (strides in elements) for the flattened
// (batch, kv_head, key) items [begin, end); codes (batch, kv_heads, n, subspaces) contiguous.
template <typename T>
void pq_encode_items(const T* keys, const int64_t* k_stride, int64_t kv_heads, int64_t n,
                     int64_t head_dim, const float* codebooks, int64_t subspaces, int64_t centroids,
                     uint8_t* codes, int64_t begin, int64_t end) {
  const int64_t sub_dim = head_dim / subspaces;
  std::vector<float> x(head_dim);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t j = item % n, bh = item / n, kvh = bh % kv_heads, b = bh / kv_heads;
    load_row(keys + b * k_stride[0] + kvh * k_stride[1] + j * k_stride[2], k_stride[3], head_dim,
             x.data());
    const float* book = codebooks + bh * subspaces * centroids * sub_dim;
    for (int64_t m = 0; m < subspaces; ++m) {
      codes[item * subspaces + m] = static_cast<uint8_t>(nearest_centroid(
          x.data() + m * sub_dim, book + m * centroids * sub_dim, centroids, sub_dim));
    }
  }
}

// Scores the candidates of one row and keeps the best `size` of them (work buffers are reused
// across rows). T is the query element type (PQ only).
template <typename T>
class LearnedRowPicker {
 public:
  explicit LearnedRowPicker(const LearnedTopKParams& p) : p_(p) {
    if (p.q != nullptr) {
      qf_.resize(p.head_dim);
      lut_.resize(p.subspaces * p.centroids);
    } else {
      qw_.resize(p.words);
      hist_.resize(2 * p.bits + 1);
    }
  }

  void pick(int64_t b, int64_t h, int64_t i, const int32_t* prev, int64_t prev_len,
            std::vector<int32_t>* picks) {
    picks->clear();
    cand_.clear();
    score_.clear();
    const int64_t last = std::min(p_.k_len - p_.q_len + i, p_.k_len - 1);
    const int64_t kh = h / (p_.heads / p_.key_heads);
    if (p_.q != nullptr) {
      build_lut(b, kh, h, i);
    } else {
      load_query_signature(b, h, i);
    }
    bool integral = p_.q == nullptr;  // hash scores stay integers while the mask adds zeros
    int64_t t = 0;                    // walks the (ascending) previous row to skip active keys
    for (int64_t j = 0; j <= last; ++j) {
      while (t < prev_len && prev[t] < j) ++t;
      if (t < prev_len && prev[t] == j) continue;
      const float mv = mask_value_at<float>(p_.mask, p_.mask_kind, p_.mask_stride, b, h, i, j);
      if (std::isinf(mv)) continue;
      integral = integral && mv == 0.0f;
      cand_.push_back(static_cast<int32_t>(j));
      score_.push_back((p_.q != nullptr ? pq_score(b, kh, j) : hash_score(b, kh, j)) + mv);
    }
    const int64_t n = static_cast<int64_t>(cand_.size());
    const int64_t take = std::min(p_.size, n);
    if (take == n) {
      picks->assign(cand_.begin(), cand_.end());
    } else if (integral) {
      histogram_select(take, picks);
    } else {
      sort_select(take, picks);
    }
  }

 private:
  void load_query_signature(int64_t b, int64_t h, int64_t i) {
    const int64_t* qs = p_.q_sig_stride;
    const int32_t* qrow = p_.q_sig + b * qs[0] + h * qs[1] + i * qs[2];
    for (int64_t w = 0; w < p_.words; ++w) qw_[w] = qrow[w * qs[3]];
  }

  float hash_score(int64_t b, int64_t kh, int64_t j) const {
    const int64_t* ks = p_.k_sig_stride;
    const int32_t* krow = p_.k_sig + b * ks[0] + kh * ks[1] + j * ks[2];
    return static_cast<float>(signature_dot(qw_.data(), krow, ks[3], p_.words, p_.bits));
  }

  // LUT[m][c] = q_m . centroid[m][c] for the row's query and kv head.
  void build_lut(int64_t b, int64_t kvh, int64_t h, int64_t i) {
    const T* qrow =
        static_cast<const T*>(p_.q) + b * p_.q_stride[0] + h * p_.q_stride[1] + i * p_.q_stride[2];
    load_row(qrow, p_.q_stride[3], p_.head_dim, qf_.data());
    const float* book =
        p_.codebooks + (b * p_.key_heads + kvh) * p_.subspaces * p_.centroids * p_.sub_dim;
    for (int64_t m = 0; m < p_.subspaces; ++m) {
      for (int64_t c = 0; c < p_.centroids; ++c) {
        const float* y = book + (m * p_.centroids + c) * p_.sub_dim;
        const float* x = qf_.data() + m * p_.sub_dim;
        // Plain ascending-order sum (no SIMD reassociation): the CUDA kernel sums in the same
        // order, so both devices build bit-identical tables and pick the same keys.
        float acc = 0.0f;
        for (int64_t e = 0; e < p_.sub_dim; ++e) acc += x[e] * y[e];
        lut_[m * p_.centroids + c] = acc;
      }
    }
  }

  float pq_score(int64_t b, int64_t kvh, int64_t j) const {
    const int64_t* cs = p_.code_stride;
    const uint8_t* code = p_.codes + b * cs[0] + kvh * cs[1] + j * cs[2];
    float s = 0.0f;
    for (int64_t m = 0; m < p_.subspaces; ++m) s += lut_[m * p_.centroids + code[m * cs[3]]];
    return s;
  }

  // Integer scores in [-bits, bits]: count them, find the threshold score T of the take-th best,
  // then keep every key above T and the lowest-index keys at T.
  void histogram_select(int64_t take, std::vector<int32_t>* picks) {
    std::fill(hist_.begin(), hist_.end(), 0);
    for (float s : score_) ++hist_[static_cast<int64_t>(s) + p_.bits];
    int64_t above = 0, threshold = 0;
    for (int64_t v = 2 * p_.bits; v >= 0; --v) {
      if (above + hist_[v] >= take) {
        threshold = v - p_.bits;
        break;
      }
      above += hist_[v];
    }
    int64_t at_threshold = take - above;
    for (size_t r = 0; r < cand_.size(); ++r) {
      const int64_t s = static_cast<int64_t>(score_[r]);
      if (s > threshold || (s == threshold && at_threshold-- > 0)) picks->push_back(cand_[r]);
    }
  }

  void sort_select(int64_t take, std::vector<int32_t>* picks) {
    order_.resize(cand_.size());
    std::iota(order_.begin(), order_.end(), 0);
    auto better = [&](int64_t a, int64_t c) {
      return score_[a] > score_[c] || (score_[a] == score_[c] && a < c);
    };
    std::partial_sort(order_.begin(), order_.begin() + take, order_.end(), better);
    for (int64_t r = 0; r < take; ++r) picks->push_back(cand_[order_[r]]);
    std::sort(picks->begin(), picks->end());
  }

  const LearnedTopKParams& p_;
  std::vector<float> qf_, lut_, score_;
  std::vector<int32_t> cand_, qw_;
  std::vector<int64_t> hist_, order_;
};

// Runs the masker for rows [begin, end); returns false if a row did not fit out_cap (only
// possible when the previous row is not strictly ascending).
template <typename T>
bool learned_topk_rows(const LearnedTopKParams& p, int64_t begin, int64_t end) {
  LearnedRowPicker<T> picker(p);
  return pick_rows(p, begin, end,
                   [&](int64_t b, int64_t h, int64_t i, const int32_t* prev, int64_t prev_len,
                       std::vector<int32_t>* picks) { picker.pick(b, h, i, prev, prev_len, picks); });
}

}  // namespace cpu
}  // namespace sah
