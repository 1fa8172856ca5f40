// Torch-free CPU helpers for masks in row form: each row lists distinct key indices in
// ascending order, padded at the end with -1, and a probability per entry.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

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

// Row driver of the masker kernels: for each row of [begin, end) of a flattened (batch, heads,
// q_len) grid, `pick(b, h, i, prev_row, prev_len, &picks)` lists the row's picks (ascending;
// a pick the previous row holds becomes p = 1), and the union of the previous row with the picks
// (p = 1) is written to the output. Params provides q_len, heads, prev_idx/prev_probs/prev_cap and
// out_idx/out_probs/out_cap. Returns false if a row did not fit out_cap (only possible when a
// previous row is not strictly ascending).
template <typename Params, typename Pick>
bool pick_rows(const Params& p, int64_t begin, int64_t end, Pick&& pick) {
  std::vector<int32_t> picks;
  std::vector<float> ones;
  bool ok = true;
  for (int64_t row = begin; row < end; ++row) {
    const int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads, b = row / (p.q_len * p.heads);
    const int32_t* prev = p.prev_idx + row * p.prev_cap;
    picks.clear();
    pick(b, h, i, prev, row_length(prev, p.prev_cap), &picks);
    ones.assign(picks.size(), 1.0f);
    ok &= union_row(prev, p.prev_probs + row * p.prev_cap, p.prev_cap, picks.data(), ones.data(),
                    static_cast<int64_t>(picks.size()), p.out_idx + row * p.out_cap,
                    p.out_probs + row * p.out_cap, p.out_cap) >= 0;
  }
  return ok;
}

}  // namespace cpu
}  // namespace sah
