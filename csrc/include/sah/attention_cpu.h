// Torch-free CPU kernels for sparse (row-form) and dense-probability attention, forward and
// backward. The caller splits the work into ranges and runs them in parallel.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "sah/attention_params.h"
#include "sah/types.h"

namespace sah {
namespace cpu {

// Additive mask value at (b, h, i, j); -inf when the key is forbidden. A stored value of -inf or
// of the dtype's lowest finite number (HF's convention) forbids the key; a bool mask allows True.
template <typename A>
inline A mask_value_at(const void* mask, MaskKind kind, const int64_t* stride, int64_t b, int64_t h,
                       int64_t i, int64_t j) {
  const A neg_inf = -std::numeric_limits<A>::infinity();
  if (kind == MaskKind::kNone) return A(0);
  const int64_t off = b * stride[0] + h * stride[1] + i * stride[2] + j * stride[3];
  switch (kind) {
    case MaskKind::kBool:
      return static_cast<const bool*>(mask)[off] ? A(0) : neg_inf;
    case MaskKind::kFloat32: {
      const float x = static_cast<const float*>(mask)[off];
      return x <= std::numeric_limits<float>::lowest() ? neg_inf : A(x);
    }
    case MaskKind::kFloat64: {
      const double x = static_cast<const double*>(mask)[off];
      return x <= std::numeric_limits<double>::lowest() ? neg_inf : A(x);
    }
    case MaskKind::kFloat16: {
      const f16_t x = static_cast<const f16_t*>(mask)[off];
      return (x.bits == 0xfbffu || x.bits == 0xfc00u) ? neg_inf : A(to_float(x));
    }
    case MaskKind::kBFloat16: {
      const bf16_t x = static_cast<const bf16_t*>(mask)[off];
      return (x.bits == 0xff7fu || x.bits == 0xff80u) ? neg_inf : A(to_float(x));
    }
    default:
      return A(0);
  }
}

template <typename A>
inline A mask_value(const AttentionParams& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  return mask_value_at<A>(p.mask, p.mask_kind, p.mask_stride, b, h, i, j);
}

// Key index and probability of entry t of a row; returns false when the entry is not used.
inline bool row_entry(const AttentionParams& p, int64_t b, int64_t h, int64_t i, int64_t t,
                      int64_t* j, float* prob) {
  const int64_t base = b * p.prob_stride[0] + h * p.prob_stride[1] + i * p.prob_stride[2];
  if (p.indices == nullptr) {
    *j = t;
  } else {
    const int64_t ibase = b * p.idx_stride[0] + h * p.idx_stride[1] + i * p.idx_stride[2];
    *j = p.indices[ibase + t * p.idx_stride[3]];
    if (*j < 0 || *j >= p.k_len) return false;
  }
  *prob = p.probs[base + t * p.prob_stride[3]];
  return *prob > 0.0f;
}

// Dot product of an accumulator-typed row with a row of T (SIMD reduction on contiguous rows).
template <typename T, typename A>
inline A dot_row(const A* x, const T* y, int64_t stride, int64_t n) {
  A s = 0;
  if (stride == 1) {
#pragma omp simd reduction(+ : s)
    for (int64_t c = 0; c < n; ++c) s += x[c] * A(to_float(y[c]));
  } else {
    for (int64_t c = 0; c < n; ++c) s += x[c] * A(to_float(y[c * stride]));
  }
  return s;
}

// acc += w * y for a row of T.
template <typename T, typename A>
inline void axpy_row(A w, const T* y, int64_t stride, int64_t n, A* acc) {
  if (stride == 1) {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) acc[c] += w * A(to_float(y[c]));
  } else {
    for (int64_t c = 0; c < n; ++c) acc[c] += w * A(to_float(y[c * stride]));
  }
}

// Weighted logit s_ij - log p_ij of a used entry; -inf when the mask forbids the key.
template <typename T, typename A>
inline A weighted_logit(const AttentionParams& p, const A* qf, int64_t b, int64_t h, int64_t i,
                        int64_t j, float prob) {
  const A mv = mask_value<A>(p, b, h, i, j);
  if (std::isinf(mv)) return mv;
  const T* krow = static_cast<const T*>(p.k) + b * p.k_stride[0] +
                  (h / p.group_size()) * p.k_stride[1] + j * p.k_stride[2];
  return dot_row(qf, krow, p.k_stride[3], p.head_dim) * A(p.scale) + mv - std::log(A(prob));
}

template <typename T, typename A>
inline void load_row(const T* src, int64_t stride, int64_t n, A* dst) {
  for (int64_t c = 0; c < n; ++c) dst[c] = A(to_float(src[c * stride]));
}

// Forward for rows [begin, end) of the flattened (batch, heads, q_len) grid.
template <typename T>
void attention_forward_rows(const AttentionParams& p, int64_t begin, int64_t end) {
  using A = typename acc_type<T>::type;
  const A neg_inf = -std::numeric_limits<A>::infinity();
  const int64_t d = p.head_dim;
  std::vector<A> qf(d), acc(d);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads, b = row / (p.q_len * p.heads);
    const int64_t kvh = h / p.group_size();
    load_row(static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2],
             p.q_stride[3], d, qf.data());
    std::fill(acc.begin(), acc.end(), A(0));
    A m = neg_inf, l = 0;
    for (int64_t t = 0; t < p.cap; ++t) {
      int64_t j;
      float prob;
      if (!row_entry(p, b, h, i, t, &j, &prob)) continue;
      const A s = weighted_logit<T, A>(p, qf.data(), b, h, i, j, prob);
      if (s == neg_inf) continue;
      if (s > m) {
        const A f = std::exp(m - s);
        for (int64_t c = 0; c < d; ++c) acc[c] *= f;
        l *= f;
        m = s;
      }
      const A w = std::exp(s - m);
      l += w;
      axpy_row(w,
               static_cast<const T*>(p.v) + b * p.v_stride[0] + kvh * p.v_stride[1] +
                   j * p.v_stride[2],
               p.v_stride[3], d, acc.data());
    }
    T* out = static_cast<T*>(p.out) + row * d;
    const bool empty = !(l > 0);
    for (int64_t c = 0; c < d; ++c) out[c] = from_double<T>(empty ? 0.0 : double(acc[c] / l));
    p.lse[row] = empty ? -std::numeric_limits<float>::infinity() : float(m + std::log(l));
  }
}

// Backward for kv groups [begin, end) of the flattened (batch, kv_heads) grid. Each group owns
// its rows of dq and its rows of the dk/dv accumulators (type acc_type<T>), so groups may run in
// parallel. dq is written in T; dk/dv are accumulated and must start at zero.
template <typename T>
void attention_backward_groups(const AttentionParams& p, int64_t begin, int64_t end) {
  using A = typename acc_type<T>::type;
  const A neg_inf = -std::numeric_limits<A>::infinity();
  const int64_t d = p.head_dim, g = p.group_size();
  std::vector<A> qf(d), dof(d), dqf(d);
  A* dk = static_cast<A*>(p.dk);
  A* dv = static_cast<A*>(p.dv);
  for (int64_t grp = begin; grp < end; ++grp) {
    const int64_t b = grp / p.kv_heads, kvh = grp % p.kv_heads;
    for (int64_t h = kvh * g; h < (kvh + 1) * g; ++h) {
      for (int64_t i = 0; i < p.q_len; ++i) {
        const int64_t row = (b * p.heads + h) * p.q_len + i;
        T* dq = static_cast<T*>(p.dq) + row * d;
        std::fill(dqf.begin(), dqf.end(), A(0));
        const A lse = p.lse[row];
        if (lse != neg_inf) {
          load_row(static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] +
                       i * p.q_stride[2],
                   p.q_stride[3], d, qf.data());
          load_row(static_cast<const T*>(p.dout) + row * d, 1, d, dof.data());
          const T* out = static_cast<const T*>(p.out) + row * d;
          A delta = 0;
          for (int64_t c = 0; c < d; ++c) delta += dof[c] * A(to_float(out[c]));
          if (p.dlse != nullptr) delta -= A(p.dlse[row]);
          for (int64_t t = 0; t < p.cap; ++t) {
            int64_t j;
            float prob;
            if (!row_entry(p, b, h, i, t, &j, &prob)) continue;
            const A s = weighted_logit<T, A>(p, qf.data(), b, h, i, j, prob);
            if (s == neg_inf) continue;
            const A pw = std::exp(s - lse);
            const T* krow = static_cast<const T*>(p.k) + b * p.k_stride[0] +
                            kvh * p.k_stride[1] + j * p.k_stride[2];
            const T* vrow = static_cast<const T*>(p.v) + b * p.v_stride[0] +
                            kvh * p.v_stride[1] + j * p.v_stride[2];
            const A dp = dot_row(dof.data(), vrow, p.v_stride[3], d);
            const A ds = pw * (dp - delta) * A(p.scale);
            A* dkrow = dk + ((b * p.kv_heads + kvh) * p.k_len + j) * d;
            A* dvrow = dv + ((b * p.kv_heads + kvh) * p.k_len + j) * d;
            for (int64_t c = 0; c < d; ++c) {
              dqf[c] += ds * A(to_float(krow[c * p.k_stride[3]]));
              dkrow[c] += ds * qf[c];
              dvrow[c] += pw * dof[c];
            }
          }
        }
        for (int64_t c = 0; c < d; ++c) dq[c] = from_double<T>(double(dqf[c]));
      }
    }
  }
}

}  // namespace cpu
}  // namespace sah
