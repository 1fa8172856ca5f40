// Torch-free CPU kernels of the sampling maskers (random sampling, adaptive sampling /
// vAttention, MagicPig LSH). They are the reference semantics for the CUDA port.
//
// Common rules of a row (b, h, i), whose query sits at absolute position pos = k_len - q_len + i:
// - Candidates are the keys j <= pos that the attention mask allows and that the previous row
//   does not hold. Previous entries are kept as they are, so the union is disjoint and every
//   recorded probability is the key's true inclusion probability.
// - New picks are merged with the previous row (union_row).
// Random sampling: the n candidates of smallest priority (sampling_common.h); p = n / m for m
//   candidates (n capped at m).
// Adaptive sampling: candidates are restricted to [range_begin, range_end). A base sample of nb
//   candidates estimates the spread sigma of e_j = exp(s_j - c) (s_j = scale q.k_j + A_ij, c the
//   largest s over the keys this row reads) and, with the previous row, the denominator
//   D = sum_prev e_j / p_j + (m / nb) sum_base e_j. The budget is
//   B = trunc(clamp((z sigma m / max(eps D, 1e-8))^2, 1, m)), raised to at least nb; an
//   independent sample of B candidates is recorded with p = B / m. The base sample is not part of
//   the output.
// MagicPig: a candidate is picked when its LSH signature collides with the query's in at least
//   one table, with p = 1 - (1 - (1 - theta/pi)^K)^L (picks whose p rounds to 0 are skipped).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "sah/attention_cpu.h"
#include "sah/attention_params.h"
#include "sah/mask_rows_cpu.h"
#include "sah/sampling_common.h"

namespace sah {

enum class SamplingKind : int32_t { kRandom = 0, kAdaptive = 1, kMagicPig = 2 };

// Shapes: q (batch, heads, q_len, head_dim), k (batch, kv_heads, k_len, head_dim) (adaptive and
// MagicPig only); prev rows (batch, heads, q_len, prev_cap) and out rows (..., out_cap)
// contiguous; mask as in AttentionParams. Strides in elements.
// MagicPig state (all contiguous float32 / int32): projections (head_dim + 1, L * K), bit c of
// table l in column l * K + c; key_mean (batch, kv_heads, head_dim); key_norm_bound
// (batch, kv_heads); signatures (batch, kv_heads, sig_cap, words), rows [0, num_cached) valid.
struct SamplingParams {
  SamplingKind kind = SamplingKind::kRandom;
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
  int64_t seed = 0, layer = 0;
  // Random: samples per row. Adaptive: base samples per row (>= 2).
  int64_t num_samples = 0;
  // Adaptive only.
  int64_t range_begin = 0, range_end = 0;
  float scale = 1.0f;
  double epsilon = 0.1, delta_ppf = 1.0;
  // MagicPig only.
  LshLayout lsh;
  const float* projections = nullptr;
  const float* key_mean = nullptr;
  const float* key_norm_bound = nullptr;
  int32_t* signatures = nullptr;
  int64_t sig_cap = 0, num_cached = 0;

  int64_t rows() const { return batch * heads * q_len; }
  int64_t group_size() const { return heads / kv_heads; }
};

namespace cpu {

// Entries [begin, end) of the Gaussian LSH projections of (seed, layer), a row-major matrix
// whose flat entry t is normal number t of the kLshProjections stream.
inline void fill_lsh_projections(float* out, int64_t seed, int64_t layer, int64_t begin,
                                 int64_t end) {
  const uint64_t stream = stream_key(seed, layer, RandomStream::kLshProjections);
  for (int64_t t = begin; t < end; ++t) out[t] = float(counter_normal(stream, uint64_t(t)));
}

// Signature of one vector x (head_dim) with augmentation coordinate `aug`: bit c of table l is
// [sum_r W[r, l K + c] x_r + W[head_dim, l K + c] aug > 0]. `acc` is scratch of L * K floats.
inline void lsh_signature(const SamplingParams& p, const float* x, float aug, float* acc,
                          int32_t* out) {
  const int64_t d = p.head_dim, cols = p.lsh.tables * p.lsh.bits;
  std::fill(acc, acc + cols, 0.0f);
  for (int64_t r = 0; r < d; ++r) {
    const float* w = p.projections + r * cols;
    const float xr = x[r];
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) acc[c] += w[c] * xr;
  }
  const float* w_aug = p.projections + d * cols;
  for (int64_t c = 0; c < cols; ++c) acc[c] += w_aug[c] * aug;
  std::fill(out, out + p.lsh.words, 0);
  for (int64_t l = 0; l < p.lsh.tables; ++l) {
    for (int64_t c = 0; c < p.lsh.bits; ++c) {
      if (acc[l * p.lsh.bits + c] > 0.0f) lsh_set_bit(p.lsh, l, c, out);
    }
  }
}

// MagicPig key transform (documented in the Python masker): x = k - mu, augmentation
// sqrt(max(0, N^2 - |x|^2)) with N the layer's norm bound; the 1/max(N, |x|) scale of the
// transform is dropped because it does not change signs. Returns |x|.
template <typename T>
float magicpig_centered_key(const SamplingParams& p, int64_t b, int64_t kvh, int64_t j, float* x) {
  const T* krow =
      static_cast<const T*>(p.k) + b * p.k_stride[0] + kvh * p.k_stride[1] + j * p.k_stride[2];
  const float* mu = p.key_mean + (b * p.kv_heads + kvh) * p.head_dim;
  float n2 = 0.0f;
  for (int64_t c = 0; c < p.head_dim; ++c) {
    x[c] = to_float(krow[c * p.k_stride[3]]) - mu[c];
    n2 += x[c] * x[c];
  }
  return std::sqrt(n2);
}

// Computes the signatures of keys [num_cached, k_len) for flattened (batch, kv_heads, new key)
// items [begin, end).
template <typename T>
void magicpig_key_signatures(const SamplingParams& p, int64_t begin, int64_t end) {
  const int64_t fresh = p.k_len - p.num_cached;
  std::vector<float> x(p.head_dim), acc(p.lsh.tables * p.lsh.bits);
  for (int64_t item = begin; item < end; ++item) {
    const int64_t j = p.num_cached + item % fresh, bh = item / fresh;
    const int64_t b = bh / p.kv_heads, kvh = bh % p.kv_heads;
    const float norm = magicpig_centered_key<T>(p, b, kvh, j, x.data());
    const float bound = p.key_norm_bound[bh];
    const float aug = std::sqrt(std::max(0.0f, bound * bound - norm * norm));
    lsh_signature(p, x.data(), aug, acc.data(), p.signatures + (bh * p.sig_cap + j) * p.lsh.words);
  }
}

// Picks the new keys of one row (ascending) and their probabilities.
template <typename T>
class SampleRowPicker {
 public:
  explicit SampleRowPicker(const SamplingParams& p)
      : p_(p),
        qf_(p.head_dim),
        kf_(p.head_dim),
        acc_(p.lsh.tables * p.lsh.bits),
        qsig_(p.lsh.words) {}

  void pick(int64_t b, int64_t h, int64_t i, const int32_t* prev, const float* prev_p,
            int64_t prev_len, std::vector<int32_t>* picks, std::vector<float>* probs) {
    picks->clear();
    probs->clear();
    const int64_t pos = p_.k_len - p_.q_len + i;
    int64_t lo = 0, hi = std::min(pos, p_.k_len - 1);  // inclusive candidate range
    if (p_.kind == SamplingKind::kAdaptive) {
      lo = std::max<int64_t>(lo, p_.range_begin);
      hi = std::min(hi, p_.range_end - 1);
    }
    collect_candidates(b, h, i, lo, hi, prev, prev_len);
    const int64_t m = static_cast<int64_t>(cand_.size());
    if (m == 0) return;
    switch (p_.kind) {
      case SamplingKind::kRandom: {
        const int64_t n = std::min(p_.num_samples, m);
        bottom_n(row_key(stream_key(p_.seed, p_.layer, RandomStream::kRandomSampling), b, h, pos),
                 n, picks);
        probs->assign(picks->size(), float(double(n) / double(m)));
        return;
      }
      case SamplingKind::kAdaptive:
        adaptive(b, h, i, pos, prev, prev_p, prev_len, picks, probs);
        return;
      case SamplingKind::kMagicPig:
        magicpig(b, h, i, picks, probs);
        return;
    }
  }

 private:
  float mask(int64_t b, int64_t h, int64_t i, int64_t j) const {
    return mask_value_at<float>(p_.mask, p_.mask_kind, p_.mask_stride, b, h, i, j);
  }

  void collect_candidates(int64_t b, int64_t h, int64_t i, int64_t lo, int64_t hi,
                          const int32_t* prev, int64_t prev_len) {
    cand_.clear();
    int64_t t = 0;  // walks the (ascending) previous row to skip held keys
    for (int64_t j = std::max<int64_t>(lo, 0); j <= hi; ++j) {
      while (t < prev_len && prev[t] < j) ++t;
      if (t < prev_len && prev[t] == j) continue;
      if (std::isinf(mask(b, h, i, j))) continue;
      cand_.push_back(static_cast<int32_t>(j));
    }
  }

  // The n candidates of smallest priority under `row`, in ascending key order.
  void bottom_n(uint64_t row, int64_t n, std::vector<int32_t>* out) {
    out->clear();
    const int64_t m = static_cast<int64_t>(cand_.size());
    if (n >= m) {
      out->assign(cand_.begin(), cand_.end());
      return;
    }
    if (n <= 0) return;
    prio_.resize(m);
    for (int64_t t = 0; t < m; ++t) prio_[t] = {key_priority(row, cand_[t]), cand_[t]};
    std::nth_element(prio_.begin(), prio_.begin() + (n - 1), prio_.end());
    for (int64_t t = 0; t < n; ++t) out->push_back(prio_[t].second);
    std::sort(out->begin(), out->end());
  }

  const T* key_row(int64_t b, int64_t h, int64_t j) const {
    return static_cast<const T*>(p_.k) + b * p_.k_stride[0] +
           (h / p_.group_size()) * p_.k_stride[1] + j * p_.k_stride[2];
  }

  void load_query(int64_t b, int64_t h, int64_t i) {
    load_row(
        static_cast<const T*>(p_.q) + b * p_.q_stride[0] + h * p_.q_stride[1] + i * p_.q_stride[2],
        p_.q_stride[3], p_.head_dim, qf_.data());
  }

  // s_j = scale * q.k_j + A_ij (-inf when the mask forbids the key).
  double logit(int64_t b, int64_t h, int64_t i, int64_t j) {
    const float mv = mask(b, h, i, j);
    if (std::isinf(mv)) return -std::numeric_limits<double>::infinity();
    const float dot = dot_row<T, float>(qf_.data(), key_row(b, h, j), p_.k_stride[3], p_.head_dim);
    return double(dot) * double(p_.scale) + double(mv);
  }

  void adaptive(int64_t b, int64_t h, int64_t i, int64_t pos, const int32_t* prev,
                const float* prev_p, int64_t prev_len, std::vector<int32_t>* picks,
                std::vector<float>* probs) {
    const int64_t m = static_cast<int64_t>(cand_.size());
    const int64_t nb = std::min(p_.num_samples, m);
    int64_t budget = m;
    if (nb < m) {
      bottom_n(row_key(stream_key(p_.seed, p_.layer, RandomStream::kAdaptiveBase), b, h, pos), nb,
               &base_);
      load_query(b, h, i);
      e_.clear();
      for (int64_t t = 0; t < prev_len; ++t) e_.push_back(logit(b, h, i, prev[t]));
      for (int32_t j : base_) e_.push_back(logit(b, h, i, j));
      const double c = *std::max_element(e_.begin(), e_.end());
      for (double& x : e_) x = std::exp(x - c);
      double static_den = 0.0;
      for (int64_t t = 0; t < prev_len; ++t) {
        if (prev_p[t] > 0.0f) static_den += e_[t] / double(prev_p[t]);
      }
      const double* e_base = e_.data() + prev_len;
      double base_sum = 0.0;
      for (int64_t t = 0; t < nb; ++t) base_sum += e_base[t];
      const double mean = base_sum / double(nb);
      double var = 0.0;
      for (int64_t t = 0; t < nb; ++t) var += (e_base[t] - mean) * (e_base[t] - mean);
      const double sigma = std::max(std::sqrt(var / double(nb - 1)), 1e-8);  // unbiased std
      const double den = static_den + double(m) / double(nb) * base_sum;
      const double x = p_.delta_ppf * sigma * double(m) / std::max(p_.epsilon * den, 1e-8);
      const double b2 = std::min(std::max(x * x, 1.0), double(m));
      budget = std::max(static_cast<int64_t>(b2), nb);
    }
    bottom_n(row_key(stream_key(p_.seed, p_.layer, RandomStream::kAdaptiveBudget), b, h, pos),
             budget, picks);
    probs->assign(picks->size(), float(double(budget) / double(m)));
  }

  void magicpig(int64_t b, int64_t h, int64_t i, std::vector<int32_t>* picks,
                std::vector<float>* probs) {
    const int64_t kvh = h / p_.group_size(), bh = b * p_.kv_heads + kvh;
    load_query(b, h, i);
    const float* mu = p_.key_mean + bh * p_.head_dim;
    float qn2 = 0.0f;
    for (int64_t c = 0; c < p_.head_dim; ++c) {
      qf_[c] -= mu[c];
      qn2 += qf_[c] * qf_[c];
    }
    lsh_signature(p_, qf_.data(), 0.0f, acc_.data(), qsig_.data());
    const double qnorm = std::sqrt(double(qn2)), bound = p_.key_norm_bound[bh];
    const int32_t* ksig = p_.signatures + bh * p_.sig_cap * p_.lsh.words;
    for (int32_t j : cand_) {
      if (!lsh_any_match(p_.lsh, qsig_.data(), ksig + int64_t(j) * p_.lsh.words)) continue;
      const double knorm = magicpig_centered_key<T>(p_, b, kvh, j, kf_.data());
      double dot = 0.0;
      for (int64_t c = 0; c < p_.head_dim; ++c) dot += double(qf_[c]) * double(kf_[c]);
      const double denom = qnorm * std::max(bound, knorm);
      const double prob =
          lsh_collision_probability(denom > 0.0 ? dot / denom : 0.0, p_.lsh.bits, p_.lsh.tables);
      if (float(prob) > 0.0f) {
        picks->push_back(j);
        probs->push_back(float(prob));
      }
    }
  }

  const SamplingParams& p_;
  std::vector<float> qf_, kf_, acc_;
  std::vector<int32_t> qsig_, cand_, base_;
  std::vector<double> e_;  // adaptive: logits, then exp(logit - c), of prev + base keys
  std::vector<std::pair<uint64_t, int32_t>> prio_;
};

// Runs a sampling masker for rows [begin, end); returns false if a row did not fit out_cap (only
// possible when the previous row is not strictly ascending). MagicPig key signatures must be
// up to date (magicpig_key_signatures) before this runs.
template <typename T>
bool sampling_rows(const SamplingParams& p, int64_t begin, int64_t end) {
  SampleRowPicker<T> picker(p);
  std::vector<int32_t> picks;
  std::vector<float> probs;
  bool ok = true;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads, b = row / (p.q_len * p.heads);
    const int32_t* prev = p.prev_idx + row * p.prev_cap;
    const float* prev_p = p.prev_probs + row * p.prev_cap;
    picker.pick(b, h, i, prev, prev_p, row_length(prev, p.prev_cap), &picks, &probs);
    ok &= union_row(prev, prev_p, p.prev_cap, picks.data(), probs.data(),
                    static_cast<int64_t>(picks.size()), p.out_idx + row * p.out_cap,
                    p.out_probs + row * p.out_cap, p.out_cap) >= 0;
  }
  return ok;
}

}  // namespace cpu
}  // namespace sah
