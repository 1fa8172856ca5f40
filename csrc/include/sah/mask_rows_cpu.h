// Torch-free CPU helpers for masks in row form: each row lists distinct key indices in
// ascending order, padded at the end with -1, and a probability per entry.
#pragma once
#include <algorithm>
#include <cstdint>

namespace sah {
namespace cpu {

// Number of leading non-padding entries of a row.
inline int64_t row_length(const int32_t* idx, int64_t cap) {
  int64_t n = 0;
  while (n < cap && idx[n] >= 0) ++n;
  return n;
}

// Union of two rows with clamp-add probabilities min(1, pa + pb). Writes `out_cap` entries (the
// tail padded with -1 / 0) and returns the number of real entries, or -1 if they do not fit or
// an input row is not strictly ascending.
inline int64_t union_row(const int32_t* ia, const float* pa, int64_t ca, const int32_t* ib,
                         const float* pb, int64_t cb, int32_t* io, float* po, int64_t out_cap) {
  const int64_t na = row_length(ia, ca), nb = row_length(ib, cb);
  int64_t x = 0, y = 0, n = 0;
  while (x < na || y < nb) {
    int32_t j;
    float p;
    if (y >= nb || (x < na && ia[x] < ib[y])) {
      j = ia[x];
      p = pa[x++];
    } else if (x >= na || ib[y] < ia[x]) {
      j = ib[y];
      p = pb[y++];
    } else {
      j = ia[x];
      p = pa[x++] + pb[y++];
    }
    if (n >= out_cap || (n > 0 && j <= io[n - 1])) return -1;  // overflow or unsorted input
    io[n] = j;
    po[n] = std::min(1.0f, std::max(0.0f, p));
    ++n;
  }
  for (int64_t t = n; t < out_cap; ++t) {
    io[t] = -1;
    po[t] = 0.0f;
  }
  return n;
}

// Writes a row's probabilities into a dense row of n zeros-initialised floats.
inline void row_to_dense(const int32_t* idx, const float* prob, int64_t cap, float* dense,
                         int64_t n) {
  for (int64_t t = 0; t < cap; ++t) {
    const int32_t j = idx[t];
    if (j >= 0 && j < n) dense[j] = prob[t];
  }
}

// Lists the non-zero entries of a dense row (length n) into a row of capacity cap; returns the
// number of entries, or -1 if they do not fit.
inline int64_t dense_to_row(const float* dense, int64_t n, int32_t* idx, float* prob, int64_t cap) {
  int64_t m = 0;
  for (int64_t j = 0; j < n; ++j) {
    if (dense[j] != 0.0f) {
      if (m >= cap) return -1;
      idx[m] = static_cast<int32_t>(j);
      prob[m] = dense[j];
      ++m;
    }
  }
  for (int64_t t = m; t < cap; ++t) {
    idx[t] = -1;
    prob[t] = 0.0f;
  }
  return m;
}

// Number of entries of a row that take part in attention (index >= 0 and probability > 0).
inline int32_t row_count(const int32_t* idx, const float* prob, int64_t cap) {
  int32_t c = 0;
  for (int64_t t = 0; t < cap; ++t) c += (idx[t] >= 0 && prob[t] > 0.0f) ? 1 : 0;
  return c;
}

}  // namespace cpu
}  // namespace sah
