// Torch-free CUDA kernels of the sampling maskers (random sampling, adaptive sampling /
// vAttention, MagicPig LSH); sah/sampling_cpu.h holds the reference semantics, and the random
// numbers are the counter-based ones of sah/sampling_common.h, so for the same seed both backends
// pick the same keys.
//
// One block per output row (b, h, i). Its candidates are the keys j of an inclusive window
// [lo, hi] (j <= the query's position; adaptive: inside the sampling range) that the previous row
// does not hold and the attention mask allows. Every pass over the window walks it in chunks of
// kSampleThreads keys, one key per thread; the previous row's entries that fall in a chunk are
// scattered into a shared marker array first, so membership costs one shared load.
// - Selection of the n candidates of smallest priority (random sampling, the adaptive base and
//   budget samples): priorities are distinct 64-bit words (key_priority is a bijection of the key),
//   so an MSB-first radix select (12-bit digits, shared histogram, candidates and priorities
//   recomputed in each pass) finds the n-th smallest priority thr; the picks are the candidates
//   with priority <= thr. The digits are uniform, so two passes almost always suffice.
// - MagicPig: a first kernel writes the signatures of keys [num_cached, k_len) into the state
//   (one block per key); the row kernel computes the query's signature and picks the candidates
//   whose signature collides with it in some table.
// - Output: the previous entries below the window, the window's previous entries and picks in key
//   order (a block scan gives positions), the previous entries above it; tail -1 / 0. The picks
//   never repeat a previous key, so the union needs no clamp-add.
// No workspace, no host synchronisation. Kernels assume valid previous rows (strictly ascending
// indices in [0, k_len), then -1 padding) and never read or write out of bounds otherwise.
//
// Floating point mirrors the CPU code's operations in the same order with explicit roundings
// (no contraction into FMA, subnormals handled by bit tests where a comparison decides): MagicPig
// signatures and candidate tests are bit-exact except for subnormal intermediates (the build uses
// --use_fast_math, which flushes them); collision probabilities use CUDA's double acos / pow /
// log1p / expm1 (within an ulp or two of glibc's, so a float probability can differ by an ulp).
// Adaptive statistics use block reductions (a different summation order from the CPU loops), and
// the CPU's float q.k may be a SIMD reduction (here: sequential), so the budget
// B = trunc(clamp(x^2, 1, m)) can differ only when x^2 lies within a few float ulps of an integer.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "sah/attention_params.h"
#include "sah/sampling_common.h"
#include "sah/sampling_cpu.h"

namespace sah {
namespace cuda {
namespace sampling_detail {

constexpr int kSampleThreads = 512;  // threads of a row block (keys per window chunk)
constexpr int kDigitBits = 12;       // radix digit of the priority select
constexpr int kBins = 1 << kDigitBits;
constexpr int kSigThreads = 128;  // threads of a key-signature block
// Bytes of dynamic shared memory (head_dim floats + signature words) a row or signature block
// may use: with the row blocks' static ~21 KB it stays under the default 48 KB.
constexpr int kMaxDynamicShared = 24 * 1024;

// ---- Exact scalar helpers ------------------------------------------------------------------

// True when x > 0 (subnormals included, whatever the flush-to-zero mode).
__device__ __forceinline__ bool positive(float x) {
  const int bits = __float_as_int(x);
  return bits > 0 && bits <= 0x7f800000;
}

__device__ __forceinline__ bool is_inf(float x) {
  return (__float_as_uint(x) & 0x7fffffffu) == 0x7f800000u;
}

// double(x), exact for subnormal x even when conversions flush them.
__device__ __forceinline__ double f2d(float x) {
  const uint32_t u = __float_as_uint(x);
  if ((u & 0x7f800000u) == 0u && (u & 0x007fffffu) != 0u) {
    const double mag = static_cast<double>(u & 0x007fffffu) * 0x1p-149;
    return (u >> 31) ? -mag : mag;
  }
  return static_cast<double>(x);
}

// float(x) rounded to nearest even, exact for subnormal results even when conversions flush them.
__device__ __forceinline__ float d2f(double x) {
  const double a = fabs(x);
  if (a > 0.0 && a < 0x1p-126) {
    const uint32_t mag = static_cast<uint32_t>(rint(a * 0x1p149));  // <= 2^23
    return __uint_as_float(x < 0.0 ? (mag | 0x80000000u) : mag);
  }
  return __double2float_rn(x);
}

// min(1, max(0, p)) with std::min / std::max semantics (NaN -> 0), as union_row.
__device__ __forceinline__ float clamp_prob(float p) {
  if (!positive(p)) return 0.0f;
  return __float_as_int(p) < 0x3f800000 ? p : 1.0f;
}

// The CPU's to_float: double stays double, 16-bit types widen to float.
__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ double widen(double x) { return x; }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }

__device__ __forceinline__ float narrow(float x) { return x; }
__device__ __forceinline__ float narrow(double x) { return d2f(x); }

// float(to_float(x) - mu), as magicpig_centered_key.
__device__ __forceinline__ float centred(float x, float mu) { return __fsub_rn(x, mu); }
__device__ __forceinline__ float centred(double x, float mu) { return d2f(__dsub_rn(x, f2d(mu))); }

template <typename T>
__device__ __forceinline__ T imin(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
__device__ __forceinline__ T imax(T a, T b) {
  return a < b ? b : a;
}

// All bits below bit n (n in [0, 64]).
__device__ __forceinline__ uint64_t low_bits(int n) {
  return n >= 64 ? ~0ull : ((1ull << n) - 1ull);
}

// Additive mask value at (b, h, i, j), as mask_value_at<float> in attention_cpu.h.
__device__ __forceinline__ float mask_value(const SamplingParams& p, int64_t b, int64_t h,
                                            int64_t i, int64_t j) {
  const float inf = __int_as_float(0x7f800000);
  const int64_t off =
      b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
  switch (p.mask_kind) {
    case MaskKind::kBool:
      return static_cast<const unsigned char*>(p.mask)[off] != 0 ? 0.0f : -inf;
    case MaskKind::kFloat32: {
      const float x = static_cast<const float*>(p.mask)[off];
      return x <= -FLT_MAX ? -inf : x;
    }
    case MaskKind::kFloat64: {
      const double x = static_cast<const double*>(p.mask)[off];
      return x <= -DBL_MAX ? -inf : d2f(x);
    }
    case MaskKind::kFloat16: {
      const unsigned short u = static_cast<const unsigned short*>(p.mask)[off];
      return (u == 0xfbffu || u == 0xfc00u) ? -inf : __half2float(__ushort_as_half(u));
    }
    case MaskKind::kBFloat16: {
      const unsigned short u = static_cast<const unsigned short*>(p.mask)[off];
      return (u == 0xff7fu || u == 0xff80u) ? -inf : __uint_as_float(uint32_t(u) << 16);
    }
    default:
      return 0.0f;
  }
}

// First position in [0, n) whose value is >= key (a ascending on [0, n)).
__device__ __forceinline__ int lower_bound(const int32_t* a, int n, int64_t key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// ---- Row blocks ----------------------------------------------------------------------------

using BlockScan = cub::BlockScan<int, kSampleThreads>;
using BlockReduce = cub::BlockReduce<double, kSampleThreads>;

// Shared state of a row block.
struct RowShared {
  union {
    typename BlockScan::TempStorage scan;
    typename BlockReduce::TempStorage reduce;
  } tmp;
  int mark[kSampleThreads];  // previous-row position of each key of the chunk, -1 if none
  int len, bin, below, count;
  double value;
};

// One row: its previous entries and its window of candidate keys.
struct RowSpan {
  int64_t b, h, i, pos;
  const int32_t* prev;
  const float* prev_p;
  int prev_len;
  int lo, hi;      // inclusive candidate window; empty when hi < lo
  int x_lo, x_hi;  // previous entries [x_lo, x_hi) have keys in the window
};

// Sets up row `row` with candidate window [lo, hi] clipped to [0, min(pos, k_len - 1)]. Every
// thread must call; all get the same span.
inline __device__ RowSpan make_span(const SamplingParams& p, int64_t row, int64_t lo, int64_t hi,
                                    RowShared& s) {
  RowSpan r;
  r.i = row % p.q_len;
  r.h = (row / p.q_len) % p.heads;
  r.b = row / (p.q_len * p.heads);
  r.pos = p.k_len - p.q_len + r.i;
  r.prev = p.prev_idx + row * p.prev_cap;
  r.prev_p = p.prev_probs + row * p.prev_cap;
  // Valid length: the first negative index (cap if none).
  const int cap = static_cast<int>(p.prev_cap);
  if (threadIdx.x == 0) s.len = cap;
  __syncthreads();
  for (int t = threadIdx.x; t < cap; t += kSampleThreads) {
    if (r.prev[t] < 0) atomicMin(&s.len, t);
  }
  __syncthreads();
  r.prev_len = s.len;
  __syncthreads();
  lo = imax<int64_t>(lo, 0);
  hi = imin(hi, imin(r.pos, p.k_len - 1));
  if (hi < lo) {
    r.lo = 0;
    r.hi = -1;
    r.x_lo = r.x_hi = r.prev_len;
  } else {
    r.lo = static_cast<int>(lo);
    r.hi = static_cast<int>(hi);
    r.x_lo = lower_bound(r.prev, r.prev_len, lo);
    r.x_hi = imax(r.x_lo, lower_bound(r.prev, r.prev_len, hi + 1));
  }
  return r;
}

// The same row without candidates: the output is the previous row.
__device__ __forceinline__ RowSpan without_window(RowSpan r) {
  r.lo = 0;
  r.hi = -1;
  r.x_lo = r.x_hi = r.prev_len;
  return r;
}

// Calls f(j, valid, mark) once per thread per chunk of the window (block-uniform trip count, so
// f may use block collectives): key j, whether j lies in the window, and the previous-row
// position of j (-1 if the previous row does not hold it). A chunk holds at most kSampleThreads
// previous entries (strictly ascending), the next ones: thread t looks at entry x + t, and
// __syncthreads_count advances x past those below the chunk's end. Shared writes of f are
// visible to all threads when it returns.
template <typename F>
__device__ void sweep_window(const RowSpan& r, RowShared& s, F f) {
  s.mark[threadIdx.x] = -1;
  __syncthreads();
  int x = r.x_lo;  // first previous entry not below the chunk
  for (int64_t base = r.lo; base <= r.hi; base += kSampleThreads) {
    const int t = x + static_cast<int>(threadIdx.x);
    bool below_end = false;
    if (t < r.x_hi) {
      const int64_t off = static_cast<int64_t>(r.prev[t]) - base;
      below_end = off < kSampleThreads;
      if (below_end && off >= 0) s.mark[off] = t;
    }
    x += __syncthreads_count(below_end);
    const int mark = s.mark[threadIdx.x];
    s.mark[threadIdx.x] = -1;  // ready for the next chunk (read by its owner only until then)
    const int64_t j = base + threadIdx.x;
    f(static_cast<int>(j), j <= r.hi, mark);
    __syncthreads();
  }
}

// Whether the attention mask forbids key j of the row.
__device__ __forceinline__ bool forbidden(const SamplingParams& p, const RowSpan& r, int j) {
  return p.mask_kind != MaskKind::kNone && is_inf(mask_value(p, r.b, r.h, r.i, j));
}

// Whether key j (from sweep_window) is a candidate.
__device__ __forceinline__ bool is_candidate(const SamplingParams& p, const RowSpan& r, int j,
                                             bool valid, int mark) {
  return valid && mark < 0 && !forbidden(p, r, j);
}

// Sum of x over the block, returned to every thread.
__device__ __forceinline__ int block_sum_int(int x, RowShared& s) {
  int before, total;
  BlockScan(s.tmp.scan).ExclusiveSum(x, before, total);
  __syncthreads();
  return total;
}

struct DoubleSum {
  __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};
struct DoubleMax {  // std::max semantics
  __device__ __forceinline__ double operator()(double a, double b) const { return a < b ? b : a; }
};

// Reduction of x over the block, returned to every thread (deterministic order).
template <typename Op>
__device__ __forceinline__ double block_reduce(double x, Op op, RowShared& s) {
  const double r = BlockReduce(s.tmp.reduce).Reduce(x, op);
  if (threadIdx.x == 0) s.value = r;
  __syncthreads();
  const double out = s.value;
  __syncthreads();
  return out;
}

// Histogram of digit [shift, shift + width) of the priorities (under row key rk) of the
// candidates whose priority bits above the digit equal `prefix`; returns their number.
inline __device__ int histogram_pass(const SamplingParams& p, const RowSpan& r, RowShared& s,
                                     uint64_t rk, int shift, int width, uint64_t prefix,
                                     int* hist) {
  const int nbins = 1 << width;
  for (int b = threadIdx.x; b < nbins; b += kSampleThreads) hist[b] = 0;
  __syncthreads();
  const uint64_t hi_mask = ~low_bits(shift + width);
  const uint32_t digit_mask = static_cast<uint32_t>(nbins - 1);
  int count = 0;
  sweep_window(r, s, [&](int j, bool valid, int mark) {
    if (!is_candidate(p, r, j, valid, mark)) return;
    const uint64_t pr = key_priority(rk, j);
    if ((pr & hi_mask) != prefix) return;
    atomicAdd(&hist[static_cast<uint32_t>(pr >> shift) & digit_mask], 1);
    ++count;
  });
  return block_sum_int(count, s);
}

// The bin b of hist[0, nbins) with below(b) < need <= below(b) + hist[b] (below: the sum of the
// lower bins), with *below and *count = hist[b]; -1 if need exceeds the total. Every thread must
// call; hist is left intact.
inline __device__ int choose_bin(const int* hist, int nbins, int need, RowShared& s, int* below,
                                 int* count) {
  const int per = (nbins + kSampleThreads - 1) / kSampleThreads;
  const int first = imin(static_cast<int>(threadIdx.x) * per, nbins);
  const int last = imin(first + per, nbins);
  int local = 0;
  for (int b = first; b < last; ++b) local += hist[b];
  if (threadIdx.x == 0) s.bin = -1;
  __syncthreads();
  int before, total;
  BlockScan(s.tmp.scan).ExclusiveSum(local, before, total);
  if (before < need && need <= before + local) {
    int run = before;
    for (int b = first; b < last; ++b) {
      if (run + hist[b] >= need) {
        s.bin = b;
        s.below = run;
        s.count = hist[b];
        break;
      }
      run += hist[b];
    }
  }
  __syncthreads();
  const int bin = s.bin;
  *below = s.below;
  *count = s.count;
  __syncthreads();
  return bin;
}

// The priority of the n-th smallest candidate (1 <= n <= number of candidates) under row key
// rk; hist must hold the first pass (histogram_pass with shift 64 - kDigitBits, prefix 0).
// Candidates with priority <= the result are exactly the n smallest (priorities are distinct).
inline __device__ uint64_t select_threshold(const SamplingParams& p, const RowSpan& r, RowShared& s,
                                            int* hist, uint64_t rk, int n) {
  uint64_t prefix = 0;
  int shift = 64 - kDigitBits, width = kDigitBits, need = n;
  while (true) {
    int below, count;
    const int bin = choose_bin(hist, 1 << width, need, s, &below, &count);
    if (bin < 0) return prefix | low_bits(shift + width);  // unreachable for valid inputs
    prefix |= static_cast<uint64_t>(bin) << shift;
    need -= below;
    if (count <= need || shift == 0) return prefix | low_bits(shift);
    const int next = imax(shift - kDigitBits, 0);
    width = shift - next;
    shift = next;
    histogram_pass(p, r, s, rk, shift, width, prefix, hist);
  }
}

// Writes the output row: previous entries below the window, the window's previous entries and
// picks in key order, previous entries above it, then -1 / 0. pick(j, &prob) decides a
// candidate j. Every thread must call.
template <typename Pick>
__device__ void emit_row(const SamplingParams& p, int64_t row, const RowSpan& r, RowShared& s,
                         Pick pick) {
  const int64_t cap = p.out_cap;
  int32_t* out = p.out_idx + row * cap;
  float* pout = p.out_probs + row * cap;
  for (int t = threadIdx.x; t < r.x_lo && t < cap; t += kSampleThreads) {
    out[t] = r.prev[t];
    pout[t] = clamp_prob(r.prev_p[t]);
  }
  int64_t done = r.x_lo;
  sweep_window(r, s, [&](int j, bool valid, int mark) {
    bool take = false;
    float prob = 0.0f;
    if (valid) {
      if (mark >= 0) {
        take = true;
        prob = r.prev_p[mark];
      } else if (!forbidden(p, r, j)) {
        take = pick(j, &prob);
      }
    }
    int before, total;
    BlockScan(s.tmp.scan).ExclusiveSum(take ? 1 : 0, before, total);
    const int64_t at = done + before;
    if (take && at < cap) {
      out[at] = j;
      pout[at] = clamp_prob(prob);
    }
    done += total;
  });
  for (int t = r.x_hi + threadIdx.x; t < r.prev_len; t += kSampleThreads) {
    const int64_t at = done + (t - r.x_hi);
    if (at < cap) {
      out[at] = r.prev[t];
      pout[at] = clamp_prob(r.prev_p[t]);
    }
  }
  for (int64_t t = done + (r.prev_len - r.x_hi) + threadIdx.x; t < cap; t += kSampleThreads) {
    out[t] = -1;
    pout[t] = 0.0f;
  }
}

// Writes the previous row as the output row (no picks).
__device__ __forceinline__ void emit_previous(const SamplingParams& p, int64_t row,
                                              const RowSpan& r, RowShared& s) {
  emit_row(p, row, without_window(r), s, [](int, float*) { return false; });
}

// ---- Random sampling -----------------------------------------------------------------------

// One block per row: the min(num_samples, m) candidates of smallest priority, p = n / m.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    random_kernel(const __grid_constant__ SamplingParams p) {
  static_assert(kThreads == kSampleThreads, "row blocks have kSampleThreads threads");
  __shared__ RowShared s;
  __shared__ int hist[kBins];
  const int64_t row = blockIdx.x;
  const RowSpan r = make_span(p, row, 0, p.k_len - 1, s);
  const uint64_t rk =
      row_key(stream_key(p.seed, p.layer, RandomStream::kRandomSampling), r.b, r.h, r.pos);
  const int m = histogram_pass(p, r, s, rk, 64 - kDigitBits, kDigitBits, 0, hist);
  const int n = static_cast<int>(imin<int64_t>(p.num_samples, m));
  if (n <= 0) {
    emit_previous(p, row, r, s);
    return;
  }
  const uint64_t thr = n >= m ? ~0ull : select_threshold(p, r, s, hist, rk, n);
  const float prob = d2f(__ddiv_rn(static_cast<double>(n), static_cast<double>(m)));
  emit_row(p, row, r, s, [&](int j, float* pr) {
    *pr = prob;
    return key_priority(rk, j) <= thr;
  });
}

// ---- Adaptive sampling ---------------------------------------------------------------------

// s_j = scale * q.k_j + A_ij (-inf when the mask forbids j or j is out of range), q in shared.
template <typename T>
__device__ __forceinline__ double adaptive_logit(const SamplingParams& p, const RowSpan& r,
                                                 const T* kbase, const float* s_q, int64_t j) {
  const double neg_inf = __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
  if (j < 0 || j >= p.k_len) return neg_inf;
  const float mv = p.mask_kind == MaskKind::kNone ? 0.0f : mask_value(p, r.b, r.h, r.i, j);
  if (is_inf(mv)) return neg_inf;
  const T* krow = kbase + j * p.k_stride[2];
  float dot = 0.0f;
  for (int64_t c = 0; c < p.head_dim; ++c) {
    dot = __fadd_rn(dot, __fmul_rn(s_q[c], narrow(widen(krow[c * p.k_stride[3]]))));
  }
  return __dadd_rn(__dmul_rn(f2d(dot), f2d(p.scale)), f2d(mv));
}

// One block per row (dynamic shared memory: head_dim floats). Base sample of nb candidates ->
// budget B (as SampleRowPicker::adaptive) -> B candidates of smallest budget priority, p = B / m.
template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
    adaptive_kernel(const __grid_constant__ SamplingParams p) {
  extern __shared__ float s_q[];
  __shared__ RowShared s;
  __shared__ int hist[kBins];
  const int64_t row = blockIdx.x;
  const RowSpan r = make_span(p, row, p.range_begin, p.range_end - 1, s);
  const uint64_t base_rk =
      row_key(stream_key(p.seed, p.layer, RandomStream::kAdaptiveBase), r.b, r.h, r.pos);
  const uint64_t budget_rk =
      row_key(stream_key(p.seed, p.layer, RandomStream::kAdaptiveBudget), r.b, r.h, r.pos);
  const int m = histogram_pass(p, r, s, base_rk, 64 - kDigitBits, kDigitBits, 0, hist);
  if (m == 0) {
    emit_previous(p, row, r, s);
    return;
  }
  const int nb = static_cast<int>(imin<int64_t>(p.num_samples, m));
  int budget = m;
  if (nb < m) {
    const uint64_t base_thr = select_threshold(p, r, s, hist, base_rk, nb);
    const int64_t group = p.heads / p.kv_heads;
    const T* qrow = static_cast<const T*>(p.q) + r.b * p.q_stride[0] + r.h * p.q_stride[1] +
                    r.i * p.q_stride[2];
    const T* kbase =
        static_cast<const T*>(p.k) + r.b * p.k_stride[0] + (r.h / group) * p.k_stride[1];
    for (int64_t c = threadIdx.x; c < p.head_dim; c += kSampleThreads) {
      s_q[c] = narrow(widen(qrow[c * p.q_stride[3]]));
    }
    __syncthreads();
    auto is_base = [&](int j, bool valid, int mark) {
      return is_candidate(p, r, j, valid, mark) && key_priority(base_rk, j) <= base_thr;
    };
    // c = the largest logit over the previous entries and the base sample.
    double mx = __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
    for (int t = threadIdx.x; t < r.prev_len; t += kSampleThreads) {
      mx = DoubleMax()(mx, adaptive_logit<T>(p, r, kbase, s_q, r.prev[t]));
    }
    sweep_window(r, s, [&](int j, bool valid, int mark) {
      if (is_base(j, valid, mark)) mx = DoubleMax()(mx, adaptive_logit<T>(p, r, kbase, s_q, j));
    });
    const double c = block_reduce(mx, DoubleMax(), s);
    // Static denominator of the previous entries and the base sample's sum.
    double static_den = 0.0, base_sum = 0.0;
    for (int t = threadIdx.x; t < r.prev_len; t += kSampleThreads) {
      const float pp = r.prev_p[t];
      if (!positive(pp)) continue;
      const double e = exp(__dsub_rn(adaptive_logit<T>(p, r, kbase, s_q, r.prev[t]), c));
      static_den = __dadd_rn(static_den, __ddiv_rn(e, f2d(pp)));
    }
    sweep_window(r, s, [&](int j, bool valid, int mark) {
      if (!is_base(j, valid, mark)) return;
      base_sum = __dadd_rn(base_sum, exp(__dsub_rn(adaptive_logit<T>(p, r, kbase, s_q, j), c)));
    });
    static_den = block_reduce(static_den, DoubleSum(), s);
    base_sum = block_reduce(base_sum, DoubleSum(), s);
    const double mean = __ddiv_rn(base_sum, static_cast<double>(nb));
    double var = 0.0;
    sweep_window(r, s, [&](int j, bool valid, int mark) {
      if (!is_base(j, valid, mark)) return;
      const double d = __dsub_rn(exp(__dsub_rn(adaptive_logit<T>(p, r, kbase, s_q, j), c)), mean);
      var = __dadd_rn(var, __dmul_rn(d, d));
    });
    var = block_reduce(var, DoubleSum(), s);
    const double sigma =
        DoubleMax()(sqrt(__ddiv_rn(var, static_cast<double>(nb - 1))), 1e-8);  // unbiased
    const double den =
        __dadd_rn(static_den,
                  __dmul_rn(__ddiv_rn(static_cast<double>(m), static_cast<double>(nb)), base_sum));
    const double x = __ddiv_rn(__dmul_rn(__dmul_rn(p.delta_ppf, sigma), static_cast<double>(m)),
                               DoubleMax()(__dmul_rn(p.epsilon, den), 1e-8));
    const double x2 = DoubleMax()(__dmul_rn(x, x), 1.0);
    const double b2 = static_cast<double>(m) < x2 ? static_cast<double>(m) : x2;  // std::min
    const long long trunc = __double2ll_rz(b2);  // NaN -> below nb on both backends
    budget = trunc < nb ? nb : static_cast<int>(trunc);
  }
  uint64_t thr = ~0ull;
  if (budget < m) {
    histogram_pass(p, r, s, budget_rk, 64 - kDigitBits, kDigitBits, 0, hist);
    thr = select_threshold(p, r, s, hist, budget_rk, budget);
  }
  const float prob = d2f(__ddiv_rn(static_cast<double>(budget), static_cast<double>(m)));
  emit_row(p, row, r, s, [&](int j, float* pr) {
    *pr = prob;
    return key_priority(budget_rk, j) <= thr;
  });
}

// ---- MagicPig ------------------------------------------------------------------------------

// ORs bit (l, c) of column col = l * K + c into a shared signature row.
__device__ __forceinline__ void set_signature_bit(const LshLayout& lay, int64_t col, int* words) {
  const int64_t bit = (col / lay.bits) * lay.slot + col % lay.bits;
  atomicOr(&words[bit / 32], static_cast<int>(1u << (bit % 32)));
}

// Signature bits of the staged vector x (head_dim floats) with augmentation `aug` into zeroed
// shared words, as cpu::lsh_signature (each column's sum in the same order). Block-strided.
template <int kThreads>
__device__ __forceinline__ void signature_bits(const SamplingParams& p, const float* x, float aug,
                                               int* words) {
  const int64_t d = p.head_dim, cols = p.lsh.tables * p.lsh.bits;
  for (int64_t col = threadIdx.x; col < cols; col += kThreads) {
    const float* w = p.projections + col;
    float acc = 0.0f;
    for (int64_t r = 0; r < d; ++r) acc = __fadd_rn(acc, __fmul_rn(w[r * cols], x[r]));
    acc = __fadd_rn(acc, __fmul_rn(w[d * cols], aug));
    if (positive(acc)) set_signature_bit(p.lsh, col, words);
  }
}

// One block per (batch, kv head, new key) item, grid-strided: the signature of key j in
// [num_cached, k_len) of kv head (b, kvh), written to its row of p.signatures. Dynamic shared
// memory: head_dim floats + words ints.
template <typename T>
__global__ void __launch_bounds__(kSigThreads)
    signature_kernel(const __grid_constant__ SamplingParams p, int64_t items) {
  extern __shared__ float s_x[];
  int* s_words = reinterpret_cast<int*>(s_x + p.head_dim);
  __shared__ float s_aug;
  const int64_t fresh = p.k_len - p.num_cached, d = p.head_dim, words = p.lsh.words;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int64_t j = p.num_cached + item % fresh, bh = item / fresh;
    const int64_t b = bh / p.kv_heads, kvh = bh % p.kv_heads;
    const T* krow =
        static_cast<const T*>(p.k) + b * p.k_stride[0] + kvh * p.k_stride[1] + j * p.k_stride[2];
    const float* mu = p.key_mean + bh * d;
    for (int64_t c = threadIdx.x; c < d; c += kSigThreads) {
      s_x[c] = centred(widen(krow[c * p.k_stride[3]]), mu[c]);
    }
    for (int64_t w = threadIdx.x; w < words; w += kSigThreads) s_words[w] = 0;
    __syncthreads();
    if (threadIdx.x == 0) {
      float n2 = 0.0f;
      for (int64_t c = 0; c < d; ++c) n2 = __fadd_rn(n2, __fmul_rn(s_x[c], s_x[c]));
      const float norm = __fsqrt_rn(n2), bound = p.key_norm_bound[bh];
      const float v = __fsub_rn(__fmul_rn(bound, bound), __fmul_rn(norm, norm));
      s_aug = __fsqrt_rn(positive(v) ? v : 0.0f);  // std::max(0.0f, v)
    }
    __syncthreads();
    signature_bits<kSigThreads>(p, s_x, s_aug, s_words);
    __syncthreads();
    int32_t* out = p.signatures + (bh * p.sig_cap + j) * words;
    for (int64_t w = threadIdx.x; w < words; w += kSigThreads) out[w] = s_words[w];
    __syncthreads();
  }
}

// One block per row (dynamic shared memory: head_dim floats + words ints): the candidates whose
// signature collides with the centred query's in some table, with their collision probability.
template <typename T>
__global__ void __launch_bounds__(kSampleThreads)
    magicpig_kernel(const __grid_constant__ SamplingParams p) {
  extern __shared__ float s_q[];
  int* s_sig = reinterpret_cast<int*>(s_q + p.head_dim);
  __shared__ RowShared s;
  __shared__ double s_qnorm;
  const int64_t row = blockIdx.x;
  const RowSpan r = make_span(p, row, 0, p.k_len - 1, s);
  if (r.hi < r.lo) {
    emit_previous(p, row, r, s);
    return;
  }
  const int64_t d = p.head_dim, words = p.lsh.words;
  const int64_t kvh = r.h / (p.heads / p.kv_heads), bh = r.b * p.kv_heads + kvh;
  const T* qrow =
      static_cast<const T*>(p.q) + r.b * p.q_stride[0] + r.h * p.q_stride[1] + r.i * p.q_stride[2];
  const float* mu = p.key_mean + bh * d;
  for (int64_t c = threadIdx.x; c < d; c += kSampleThreads) {
    s_q[c] = __fsub_rn(narrow(widen(qrow[c * p.q_stride[3]])), mu[c]);
  }
  for (int64_t w = threadIdx.x; w < words; w += kSampleThreads) s_sig[w] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    float qn2 = 0.0f;
    for (int64_t c = 0; c < d; ++c) qn2 = __fadd_rn(qn2, __fmul_rn(s_q[c], s_q[c]));
    s_qnorm = sqrt(f2d(qn2));
  }
  signature_bits<kSampleThreads>(p, s_q, 0.0f, s_sig);
  __syncthreads();
  const double qnorm = s_qnorm, bound = f2d(p.key_norm_bound[bh]);
  const int32_t* ksig = p.signatures + bh * p.sig_cap * words;
  const T* kbase = static_cast<const T*>(p.k) + r.b * p.k_stride[0] + kvh * p.k_stride[1];
  emit_row(p, row, r, s, [&](int j, float* pr) {
    if (!lsh_any_match(p.lsh, s_sig, ksig + static_cast<int64_t>(j) * words)) return false;
    const T* krow = kbase + static_cast<int64_t>(j) * p.k_stride[2];
    float n2 = 0.0f;
    double dot = 0.0;
    for (int64_t c = 0; c < d; ++c) {
      const float x = centred(widen(krow[c * p.k_stride[3]]), mu[c]);
      n2 = __fadd_rn(n2, __fmul_rn(x, x));
      dot = __dadd_rn(dot, __dmul_rn(f2d(s_q[c]), f2d(x)));
    }
    const double knorm = f2d(__fsqrt_rn(n2));
    const double denom = __dmul_rn(qnorm, DoubleMax()(bound, knorm));
    const double prob = lsh_collision_probability(denom > 0.0 ? __ddiv_rn(dot, denom) : 0.0,
                                                  p.lsh.bits, p.lsh.tables);
    *pr = d2f(prob);
    return positive(*pr);
  });
}

inline Status launch_status() {
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kLaunchFailed;
}

// Sizes the row kernels index with 32-bit integers, and the common shape rules.
inline bool rows_fit(const SamplingParams& p) {
  return p.batch >= 0 && p.heads >= 0 && p.q_len >= 0 && p.k_len >= 0 && p.rows() <= INT_MAX &&
         p.k_len <= INT_MAX - 2 * kSampleThreads && p.prev_cap >= 0 &&
         p.prev_cap <= INT_MAX - kSampleThreads && p.out_cap >= 0 && p.out_cap <= INT_MAX;
}

// Shapes of the calls that read q and k.
inline bool qk_fit(const SamplingParams& p) {
  return p.kv_heads > 0 && p.heads % p.kv_heads == 0 && p.head_dim >= 0;
}

}  // namespace sampling_detail

// Random sampling masker (p.kind == kRandom) into p.out_idx / p.out_probs (rows, p.out_cap).
inline Status random_sampling_mask(const SamplingParams& p, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.kind != SamplingKind::kRandom || !rows_fit(p) || p.num_samples < 0) {
    return Status::kBadArgument;
  }
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  random_kernel<kSampleThreads><<<static_cast<unsigned>(p.rows()), kSampleThreads, 0, stream>>>(p);
  return launch_status();
}

// Adaptive sampling masker (p.kind == kAdaptive) over q/k elements of type T (float, double,
// __half, __nv_bfloat16).
template <typename T>
Status adaptive_sampling_mask(const SamplingParams& p, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.kind != SamplingKind::kAdaptive || !rows_fit(p) || !qk_fit(p) || p.num_samples < 2) {
    return Status::kBadArgument;
  }
  const size_t smem = static_cast<size_t>(p.head_dim) * sizeof(float);
  if (smem > kMaxDynamicShared) return Status::kBadArgument;
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  adaptive_kernel<T><<<static_cast<unsigned>(p.rows()), kSampleThreads, smem, stream>>>(p);
  return launch_status();
}

// MagicPig masker (p.kind == kMagicPig) over q/k elements of type T: writes the signatures of
// keys [num_cached, k_len) into p.signatures, then the rows.
template <typename T>
Status magicpig_mask(const SamplingParams& p, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.kind != SamplingKind::kMagicPig || !rows_fit(p) || !qk_fit(p) || p.lsh.tables < 1 ||
      p.lsh.bits < 1 || p.num_cached < 0 || p.num_cached > p.k_len || p.sig_cap < p.k_len) {
    return Status::kBadArgument;
  }
  const size_t smem = static_cast<size_t>(p.head_dim + p.lsh.words) * sizeof(float);
  if (smem > kMaxDynamicShared) return Status::kBadArgument;
  const int64_t items = (p.k_len - p.num_cached) * p.batch * p.kv_heads;
  if (items > 0) {
    const int64_t blocks = items < (1 << 20) ? items : (1 << 20);
    signature_kernel<T><<<static_cast<unsigned>(blocks), kSigThreads, smem, stream>>>(p, items);
    const Status st = launch_status();
    if (st != Status::kOk) return st;
  }
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  magicpig_kernel<T><<<static_cast<unsigned>(p.rows()), kSampleThreads, smem, stream>>>(p);
  return launch_status();
}

}  // namespace cuda
}  // namespace sah
