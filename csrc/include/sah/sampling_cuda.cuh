// Torch-free CUDA kernels of the sampling maskers (random sampling, adaptive sampling /
// vAttention, MagicPig LSH); sah/sampling_cpu.h holds the reference semantics, and the random
// numbers are the counter-based ones of sah/sampling_common.h, so for the same seed both backends
// pick the same keys.
//
// A row (b, h, i) has as candidates the keys j of an inclusive window [lo, hi] (j <= the query's
// position; adaptive: inside the sampling range) that the previous row does not hold and the
// attention mask allows. Its output is the previous row merged with the picks in key order, then
// -1 / 0. The picks never repeat a previous key, so the union needs no clamp-add.
//
// Random and adaptive sampling: one thread-block cluster per row (row_cluster_blocks: up to
// kMaxCluster blocks when rows are few, else one block per row). Block `rank` owns the rank-th
// slice ("part") of the window and walks it in chunks of kSampleThreads keys, one key per thread;
// the previous entries of a chunk are scattered into a shared marker array first, so membership
// costs one shared load.
// - Selection of the n candidates of smallest priority (random sampling, the adaptive base and
//   budget samples): priorities are distinct 64-bit words (key_priority is a bijection of the key),
//   so an MSB-first radix select (kDigitBits-bit digits; the blocks' shared histograms summed over
//   the cluster through distributed shared memory) finds the n-th smallest priority thr; the picks
//   are the candidates with priority <= thr. The digits are uniform, so two passes almost always
//   suffice. Each block also counts its own picks, which places its output.
// - Adaptive statistics: each block lists its base keys (in key order) in the workspace, then
//   computes the logits of those and of its share of the previous entries once (lane groups, one
//   key row each, 16-byte loads when rows are contiguous) into the workspace; the max, the sums and
//   the variance are block reductions folded over the cluster in rank order.
// - Output: each block writes its part's previous entries and picks (block scans give positions
//   after the entries of the keys below its part), block 0 the previous entries below the window,
//   the last block those above it, every block a stripe of the tail.
// MagicPig: (1) one block per new key writes its signature into the state; (2) one block per row
// writes the centred query, its signature and norm, and the previous row's entry count below each
// key chunk into the workspace; (3) one block per (query-head set of a kv head, chunk of
// kLshThreads keys) reads each key signature once for up to kGroupRows query heads, tests the
// tables with word-parallel zero-field tests, computes the collision probabilities of the
// colliding candidates (one lane group per key row), and writes its entries at the offset a
// decoupled look-back over the row's earlier chunks returns: blocks take their chunks in order from
// a ticket counter, so they only wait on running blocks; (4) a tail kernel pads the rows.
// No host synchronisation and no allocation: the glue passes a workspace of
// adaptive_workspace_bytes / magicpig_workspace_bytes bytes. Every sum has a fixed order, so the
// results are deterministic. Kernels assume valid previous rows (strictly ascending indices in
// [0, k_len), then -1 padding) and never read or write out of bounds otherwise.
//
// Floating point mirrors the CPU code's operations with explicit roundings (no contraction into
// FMA, subnormals handled by bit tests where a comparison decides): MagicPig signatures and
// candidate tests are bit-exact except for subnormal intermediates (the build uses
// --use_fast_math, which flushes them). Sums that the CPU computes sequentially are computed here
// in a different (fixed) order: q.k (float), MagicPig's |x|^2 (float) and q.x (double, exact
// products), and the adaptive statistics. Collision probabilities use CUDA's double acos / pow /
// log1p / expm1 (within an ulp or two of glibc's, so a float probability can differ by an ulp or
// two); the adaptive budget B = trunc(clamp(x^2, 1, m)) can differ only when x^2 lies within a few
// float ulps of an integer.
#pragma once
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstdint>
#include <cstring>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "sah/attention_params.h"
#include "sah/cluster_launch.cuh"
#include "sah/sampling_common.h"
#include "sah/sampling_cpu.h"

namespace sah {
namespace cuda {
namespace sampling_detail {

namespace cg = cooperative_groups;

constexpr int kSampleThreads = 512;  // threads of a row block (keys per window chunk)
constexpr int kMaxCluster = 8;       // blocks per row cluster (the portable maximum)
constexpr int kDigitBits = 11;       // radix digit of the priority select
constexpr int kBins = 1 << kDigitBits;
constexpr int kGatherUnroll = 4;  // key rows in flight per lane group in the logit gather
constexpr int kSigThreads = 128;  // threads of a key-signature block
constexpr int kLshThreads = 256;  // keys of a MagicPig chunk, one per thread
constexpr int kLshWords = kLshThreads / 32;
constexpr int kGroupRows = 4;  // query heads of one kv head per MagicPig chunk block
static_assert(kLshThreads <= 256, "MagicPig (row, key) pairs pack the key in 8 bits");
// Bytes of dynamic shared memory (head_dim floats / doubles, signature words) a block may use:
// with the blocks' static shared memory it stays under the default 48 KB.
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

__device__ __forceinline__ double neg_inf() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
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
__host__ __device__ __forceinline__ T imin(T a, T b) {
  return b < a ? b : a;
}
template <typename T>
__host__ __device__ __forceinline__ T imax(T a, T b) {
  return a < b ? b : a;
}

// All bits below bit n (n in [0, 64]).
__device__ __forceinline__ uint64_t low_bits(int n) {
  return n >= 64 ? ~0ull : ((1ull << n) - 1ull);
}

// key_priority(rk, j) = word_priority(rk, key_word(j)): the key's half is shared by all streams.
__device__ __forceinline__ uint64_t key_word(int64_t j) {
  return mix64(static_cast<uint64_t>(j) + kGoldenGamma);
}
__device__ __forceinline__ uint64_t word_priority(uint64_t rk, uint64_t word) {
  return mix64(rk ^ word);
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

// Whether the attention mask forbids key j of row (b, h, i).
__device__ __forceinline__ bool forbidden(const SamplingParams& p, int64_t b, int64_t h, int64_t i,
                                          int64_t j) {
  return p.mask_kind != MaskKind::kNone && is_inf(mask_value(p, b, h, i, j));
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

struct DoubleSum {
  __device__ __forceinline__ double operator()(double a, double b) const { return a + b; }
};
struct DoubleMax {  // std::max semantics
  __device__ __forceinline__ double operator()(double a, double b) const { return a < b ? b : a; }
};

// ---- Key rows: lane-group reads --------------------------------------------------------------

// How lane groups read the key rows of one (batch, kv head): `lanes` lanes per row (a power of
// two <= 32); lane s of a group loads vectors s, s + lanes, ... of `per` elements each: 16-byte
// loads when the rows are contiguous and 16-byte aligned, else single elements (per = 1).
template <typename T>
struct KeyRows {
  static constexpr int kVec = 16 / sizeof(T);
  const T* base;
  int64_t row_stride, col_stride;
  int per, nvec, lanes;

  // Elements [v * per, (v + 1) * per) of row j into x[0, per).
  __device__ __forceinline__ void load(int64_t j, int v, T (&x)[kVec]) const {
    const T* row = base + j * row_stride;
    if (per == kVec) {
      const uint4 u = __ldg(reinterpret_cast<const uint4*>(row) + v);
      memcpy(x, &u, sizeof(u));
    } else {
      x[0] = row[v * col_stride];
    }
  }
  // Where element c of a head_dim vector is staged in shared memory: element e of vector v at
  // e * nvec + v, so that the lanes of a group read consecutive words.
  __device__ __forceinline__ int staged(int64_t c) const {
    return static_cast<int>((c % per) * nvec + c / per);
  }
};

template <typename T>
__device__ KeyRows<T> key_rows(const SamplingParams& p, int64_t b, int64_t kvh) {
  constexpr int v = KeyRows<T>::kVec;
  KeyRows<T> kr;
  kr.base = static_cast<const T*>(p.k) + b * p.k_stride[0] + kvh * p.k_stride[1];
  kr.row_stride = p.k_stride[2];
  kr.col_stride = p.k_stride[3];
  const bool vec = p.k_stride[3] == 1 && p.head_dim % v == 0 && p.k_stride[0] % v == 0 &&
                   p.k_stride[1] % v == 0 && p.k_stride[2] % v == 0 &&
                   reinterpret_cast<uintptr_t>(p.k) % 16 == 0;
  kr.per = vec ? v : 1;
  kr.nvec = static_cast<int>(p.head_dim / kr.per);
  kr.lanes = 1;
  while (kr.lanes < 32 && kr.lanes < kr.nvec) kr.lanes *= 2;
  return kr;
}

// ---- Row blocks (random and adaptive sampling) -------------------------------------------------

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
  alignas(16) unsigned char slot[16];                 // this block's value in a cluster fold
  alignas(16) unsigned char values[kMaxCluster][16];  // the blocks' values, in rank order
};

// One row: its previous entries and a window of candidate keys (the row's, or a block's part).
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

// Part `rank` of `size` equal slices of the row's window (x_lo: the previous entries below it).
__device__ __forceinline__ RowSpan part_of(const RowSpan& r, int rank, int size) {
  RowSpan q = r;
  if (r.hi < r.lo) return q;
  const int64_t per = (static_cast<int64_t>(r.hi) - r.lo + size) / size;
  const int64_t lo = r.lo + rank * per, hi = imin<int64_t>(r.hi, lo + per - 1);
  if (hi < lo) {
    q.lo = 0;
    q.hi = -1;
    q.x_lo = q.x_hi = r.x_hi;
    return q;
  }
  const int n = r.x_hi - r.x_lo;
  q.lo = static_cast<int>(lo);
  q.hi = static_cast<int>(hi);
  q.x_lo = r.x_lo + lower_bound(r.prev + r.x_lo, n, lo);
  q.x_hi = imax(q.x_lo, r.x_lo + lower_bound(r.prev + r.x_lo, n, hi + 1));
  return q;
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

// Whether key j (from sweep_window) is a candidate.
__device__ __forceinline__ bool is_candidate(const SamplingParams& p, const RowSpan& r, int j,
                                             bool valid, int mark) {
  return valid && mark < 0 && !forbidden(p, r.b, r.h, r.i, j);
}

// Sum of x over the block, returned to every thread.
__device__ __forceinline__ int block_sum_int(int x, RowShared& s) {
  int before, total;
  BlockScan(s.tmp.scan).ExclusiveSum(x, before, total);
  __syncthreads();
  return total;
}

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

// ---- Cluster folds ---------------------------------------------------------------------------

// acc = f(acc, v_c, c) over the blocks c of the row's cluster in rank order from acc = init
// (deterministic), returned to every thread. Every thread of every block must call.
template <typename V, typename F>
__device__ V cluster_fold(V v, V init, F f, RowShared& s) {
  static_assert(sizeof(V) <= sizeof(s.slot), "cluster fold value too large");
  cg::cluster_group cluster = cg::this_cluster();
  const unsigned size = cluster.num_blocks();
  V* slot = reinterpret_cast<V*>(s.slot);
  if (threadIdx.x == 0) *slot = v;
  cluster.sync();
  if (threadIdx.x < size) {
    *reinterpret_cast<V*>(s.values[threadIdx.x]) = *cluster.map_shared_rank(slot, threadIdx.x);
  }
  cluster.sync();  // values are complete, and no block overwrites its slot while another reads it
  V acc = init;
  for (unsigned c = 0; c < size; ++c) acc = f(acc, *reinterpret_cast<const V*>(s.values[c]), c);
  return acc;
}

__device__ __forceinline__ int cluster_sum(int v, RowShared& s) {
  auto add = [](int a, int x, unsigned) { return a + x; };
  return cluster_fold(v, 0, add, s);
}

// (sum of v over the lower ranks, sum over the cluster).
__device__ __forceinline__ int2 cluster_offsets(int v, RowShared& s) {
  const unsigned rank = cg::this_cluster().block_rank();
  return cluster_fold(
      make_int2(v, 0), make_int2(0, 0),
      [rank](int2 a, int2 x, unsigned c) {
        return make_int2(a.x + (c < rank ? x.x : 0), a.y + x.x);
      },
      s);
}

// Block reduction of x, then the fold of the blocks' results over the cluster.
template <typename Op>
__device__ __forceinline__ double cluster_reduce(double x, double init, Op op, RowShared& s) {
  return cluster_fold(
      block_reduce(x, op, s), init, [op](double a, double v, unsigned) { return op(a, v); }, s);
}

// sum[b] = the cluster's sum of the blocks' hist[b] for b < nbins. Every thread of every block
// must call; hist may be rewritten when it returns.
__device__ inline void cluster_histogram(int* hist, int* sum, int nbins) {
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // every block's histogram is complete
  const unsigned size = cluster.num_blocks();
  for (int b = threadIdx.x; b < nbins; b += kSampleThreads) {
    int v[kMaxCluster];
#pragma unroll
    for (unsigned c = 0; c < kMaxCluster; ++c) {
      v[c] = c < size ? cluster.map_shared_rank(hist, c)[b] : 0;
    }
    int total = 0;
#pragma unroll
    for (int c = 0; c < kMaxCluster; ++c) total += v[c];
    sum[b] = total;
  }
  cluster.sync();  // no block clears its histogram while another still reads it
}

// ---- Priority select --------------------------------------------------------------------------

// Histogram of digit [shift, shift + width) of the priorities (under row key rk) of the part's
// candidates whose priority bits above the digit equal `prefix`; returns their number.
inline __device__ int histogram_pass(const SamplingParams& p, const RowSpan& part, RowShared& s,
                                     uint64_t rk, int shift, int width, uint64_t prefix,
                                     int* hist) {
  const int nbins = 1 << width;
  for (int b = threadIdx.x; b < nbins; b += kSampleThreads) hist[b] = 0;
  __syncthreads();
  const uint64_t hi_mask = ~low_bits(shift + width);
  const uint32_t digit_mask = static_cast<uint32_t>(nbins - 1);
  int count = 0;
  sweep_window(part, s, [&](int j, bool valid, int mark) {
    if (!is_candidate(p, part, j, valid, mark)) return;
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

// Sum of hist[0, end) over the block.
__device__ __forceinline__ int count_below(const int* hist, int end, RowShared& s) {
  int local = 0;
  for (int b = threadIdx.x; b < end; b += kSampleThreads) local += hist[b];
  return block_sum_int(local, s);
}

// The n-th smallest priority of the row's candidates and how many of them lie in this block's part.
struct Threshold {
  uint64_t thr;
  int mine;
};

// The priority of the n-th smallest candidate of the row (1 <= n <= number of candidates) under
// row key rk; hist must hold this block's first pass (histogram_pass with shift
// 64 - kDigitBits, prefix 0). Candidates with priority <= thr are exactly the n smallest
// (priorities are distinct). Every thread of every block of the cluster must call.
inline __device__ Threshold select_threshold(const SamplingParams& p, const RowSpan& part,
                                             RowShared& s, int* hist, int* sum, uint64_t rk,
                                             int n) {
  uint64_t prefix = 0;
  int shift = 64 - kDigitBits, width = kDigitBits, need = n, mine = 0;
  while (true) {
    const int nbins = 1 << width;
    cluster_histogram(hist, sum, nbins);
    int below, count;
    const int bin = choose_bin(sum, nbins, need, s, &below, &count);
    if (bin < 0) {  // unreachable for valid inputs: take the whole prefix
      return {prefix | low_bits(shift + width), mine + count_below(hist, nbins, s)};
    }
    mine += count_below(hist, bin, s);
    prefix |= static_cast<uint64_t>(bin) << shift;
    need -= below;
    if (count <= need || shift == 0) {
      mine += hist[bin];
      __syncthreads();  // hist is read before a later pass clears it
      return {prefix | low_bits(shift), mine};
    }
    const int next = imax(shift - kDigitBits, 0);
    width = shift - next;
    shift = next;
    histogram_pass(p, part, s, rk, shift, width, prefix, hist);
  }
}

// ---- Output ------------------------------------------------------------------------------------

// A row's new picks: the candidates with priority (under rk) <= thr, each with probability prob;
// `before` / `total`: picks in the lower-ranked blocks' parts / in the row.
struct Picks {
  bool any = false;
  uint64_t rk = 0, thr = 0;
  float prob = 0.0f;
  int before = 0, total = 0;
};

// This block's share of the output row: its part's previous entries and picks in key order (after
// the previous entries below the part and the lower ranks' picks); block 0 the previous entries
// below the window, the last block those above it; every block a stripe of the -1 / 0 tail.
inline __device__ void emit_part(const SamplingParams& p, int64_t row, const RowSpan& r,
                                 const RowSpan& part, RowShared& s, const Picks& picks, int rank,
                                 int size) {
  const int64_t cap = p.out_cap;
  int32_t* out = p.out_idx + row * cap;
  float* pout = p.out_probs + row * cap;
  if (rank == 0) {
    for (int t = threadIdx.x; t < r.x_lo && t < cap; t += kSampleThreads) {
      out[t] = r.prev[t];
      pout[t] = clamp_prob(r.prev_p[t]);
    }
  }
  int64_t done = static_cast<int64_t>(part.x_lo) + picks.before;
  sweep_window(part, s, [&](int j, bool valid, int mark) {
    bool take = false;
    float prob = 0.0f;
    if (valid) {
      if (mark >= 0) {
        take = true;
        prob = r.prev_p[mark];
      } else if (picks.any && !forbidden(p, r.b, r.h, r.i, j)) {
        take = picks.thr == ~0ull || key_priority(picks.rk, j) <= picks.thr;
        prob = picks.prob;
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
  if (rank == size - 1) {
    for (int t = r.x_hi + threadIdx.x; t < r.prev_len; t += kSampleThreads) {
      const int64_t at = static_cast<int64_t>(t) + picks.total;
      if (at < cap) {
        out[at] = r.prev[t];
        pout[at] = clamp_prob(r.prev_p[t]);
      }
    }
  }
  const int64_t stride = static_cast<int64_t>(size) * kSampleThreads;
  for (int64_t t = static_cast<int64_t>(r.prev_len) + picks.total +
                   static_cast<int64_t>(rank) * kSampleThreads + threadIdx.x;
       t < cap; t += stride) {
    out[t] = -1;
    pout[t] = 0.0f;
  }
}

// Sets picks' offsets from this block's count `mine`.
__device__ __forceinline__ void place_picks(Picks* picks, int mine, RowShared& s) {
  const int2 at = cluster_offsets(mine, s);
  picks->before = at.x;
  picks->total = at.y;
}

// ---- Random sampling -----------------------------------------------------------------------

// The min(num_samples, m) candidates of smallest priority, p = n / m. hist: the first pass of rk.
inline __device__ Picks random_picks(const SamplingParams& p, const RowSpan& part, RowShared& s,
                                     int* hist, int* sum, uint64_t rk, int m, int m_mine) {
  Picks out;
  const int n = static_cast<int>(imin<int64_t>(p.num_samples, m));
  if (n <= 0) return out;
  out.any = true;
  out.rk = rk;
  out.thr = ~0ull;
  out.prob = d2f(__ddiv_rn(static_cast<double>(n), static_cast<double>(m)));
  int mine = m_mine;
  if (n < m) {
    const Threshold t = select_threshold(p, part, s, hist, sum, rk, n);
    out.thr = t.thr;
    mine = t.mine;
  }
  place_picks(&out, mine, s);
  return out;
}

// ---- Adaptive sampling ---------------------------------------------------------------------

// Per-row scratch of the adaptive kernel: the logits of the previous entries (slots [0, prev_cap))
// and of the base sample (slots prev_cap + its position), and the base keys.
struct AdaptiveScratch {
  double* logits;  // rows x pitch
  int32_t* base;   // rows x base_cap
  int64_t pitch, base_cap;
};

// Lists this block's base keys (candidates with priority <= thr under base_rk) in key order at
// list[0, cap), and histograms the first digit of every candidate's priority under budget_rk.
inline __device__ void list_base_keys(const SamplingParams& p, const RowSpan& part, RowShared& s,
                                      int* hist, uint64_t base_rk, uint64_t thr, uint64_t budget_rk,
                                      int32_t* list, int cap) {
  for (int b = threadIdx.x; b < kBins; b += kSampleThreads) hist[b] = 0;
  int done = 0;
  sweep_window(part, s, [&](int j, bool valid, int mark) {
    bool base = false;
    if (is_candidate(p, part, j, valid, mark)) {
      const uint64_t w = key_word(j);
      base = word_priority(base_rk, w) <= thr;
      atomicAdd(&hist[word_priority(budget_rk, w) >> (64 - kDigitBits)], 1);
    }
    int before, total;
    BlockScan(s.tmp.scan).ExclusiveSum(base ? 1 : 0, before, total);
    if (base && done + before < cap) list[done + before] = j;
    done += total;
  });
}

// Logits s_j = scale * q.k_j + A_ij of the n keys key(t), t < n (-inf when j is out of range or
// the mask forbids it), passed to out(t, s_j) by one lane of the group that computed it. Lane
// groups of kr.lanes lanes, kGatherUnroll rows in flight each; s_q: the query (float, staged).
template <typename T, typename Key, typename Out>
__device__ void gather_logits(const SamplingParams& p, const RowSpan& r, const KeyRows<T>& kr,
                              const float* s_q, int n, Key key, Out out) {
  constexpr int U = kGatherUnroll, V = KeyRows<T>::kVec;
  const int sub = threadIdx.x & (kr.lanes - 1);
  const int group = threadIdx.x / kr.lanes, groups = kSampleThreads / kr.lanes;
  for (int base = 0; base < n; base += groups * U) {  // block-uniform trip count
    int64_t j[U];
    float mv[U];
    bool live[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int t = base + group * U + u;
      j[u] = t < n ? key(t) : -1;
      mv[u] = 0.0f;
      live[u] = j[u] >= 0 && j[u] < p.k_len;
      if (live[u] && p.mask_kind != MaskKind::kNone) mv[u] = mask_value(p, r.b, r.h, r.i, j[u]);
      live[u] = live[u] && !is_inf(mv[u]);
    }
    float acc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) acc[u] = 0.0f;
    for (int v0 = 0; v0 < kr.nvec; v0 += kr.lanes) {
      const int v = v0 + sub;
      T x[U][V];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (live[u] && v < kr.nvec) kr.load(j[u], v, x[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (!live[u] || v >= kr.nvec) continue;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          if (e < kr.per) acc[u] = fmaf(s_q[e * kr.nvec + v], narrow(widen(x[u][e])), acc[u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      for (int o = kr.lanes / 2; o > 0; o >>= 1) acc[u] += __shfl_xor_sync(0xffffffffu, acc[u], o);
      const int t = base + group * U + u;
      if (sub == 0 && t < n) {
        out(t, live[u] ? __dadd_rn(__dmul_rn(f2d(acc[u]), f2d(p.scale)), f2d(mv[u])) : neg_inf());
      }
    }
  }
}

// The budget B of one row (as SampleRowPicker::adaptive) from its nb base keys, of which this
// block lists `count` at list[first, first + count), and its previous entries (this block: its
// rank-th share). m > nb: the number of candidates.
template <typename T>
__device__ int adaptive_budget(const SamplingParams& p, const RowSpan& r, RowShared& s,
                               const KeyRows<T>& kr, const float* s_q, double* logits,
                               const int32_t* list, int first, int count, int m, int nb) {
  cg::cluster_group cluster = cg::this_cluster();
  const int64_t rank = cluster.block_rank(), size = cluster.num_blocks();
  const int t0 = static_cast<int>(r.prev_len * rank / size);
  const int t1 = static_cast<int>(r.prev_len * (rank + 1) / size);
  const int np = t1 - t0;
  double* base_logits = logits + p.prev_cap + first;
  double mx = neg_inf();
  gather_logits<T>(
      p, r, kr, s_q, np + count,
      [&](int t) -> int64_t { return t < np ? r.prev[t0 + t] : list[first + t - np]; },
      [&](int t, double v) {
        (t < np ? logits[t0 + t] : base_logits[t - np]) = v;
        mx = DoubleMax()(mx, v);
      });
  __syncthreads();  // the logits are visible to the whole block
  // c = the largest logit over the previous entries and the base sample.
  const double c = cluster_reduce(mx, neg_inf(), DoubleMax(), s);
  // Static denominator of the previous entries and the base sample's sum.
  double static_den = 0.0, base_sum = 0.0;
  for (int t = t0 + threadIdx.x; t < t1; t += kSampleThreads) {
    const float pp = r.prev_p[t];
    if (!positive(pp)) continue;
    const double e = exp(__dsub_rn(logits[t], c));
    static_den = __dadd_rn(static_den, __ddiv_rn(e, f2d(pp)));
  }
  for (int k = threadIdx.x; k < count; k += kSampleThreads) {
    base_sum = __dadd_rn(base_sum, exp(__dsub_rn(base_logits[k], c)));
  }
  static_den = cluster_reduce(static_den, 0.0, DoubleSum(), s);
  base_sum = cluster_reduce(base_sum, 0.0, DoubleSum(), s);
  const double mean = __ddiv_rn(base_sum, static_cast<double>(nb));
  double var = 0.0;
  for (int k = threadIdx.x; k < count; k += kSampleThreads) {
    const double d = __dsub_rn(exp(__dsub_rn(base_logits[k], c)), mean);
    var = __dadd_rn(var, __dmul_rn(d, d));
  }
  var = cluster_reduce(var, 0.0, DoubleSum(), s);
  const double sigma =
      DoubleMax()(sqrt(__ddiv_rn(var, static_cast<double>(nb - 1))), 1e-8);  // unbiased
  const double den = __dadd_rn(
      static_den, __dmul_rn(__ddiv_rn(static_cast<double>(m), static_cast<double>(nb)), base_sum));
  const double x = __ddiv_rn(__dmul_rn(__dmul_rn(p.delta_ppf, sigma), static_cast<double>(m)),
                             DoubleMax()(__dmul_rn(p.epsilon, den), 1e-8));
  const double x2 = DoubleMax()(__dmul_rn(x, x), 1.0);
  const double b2 = static_cast<double>(m) < x2 ? static_cast<double>(m) : x2;  // std::min
  const long long trunc = __double2ll_rz(b2);  // NaN -> below nb on both backends
  return trunc < nb ? nb : static_cast<int>(trunc);
}

// Base sample of nb candidates -> budget B -> the B candidates of smallest budget priority,
// p = B / m. hist: the first pass of base_rk.
template <typename T>
__device__ Picks adaptive_picks(const SamplingParams& p, int64_t row, const RowSpan& r,
                                const RowSpan& part, RowShared& s, int* hist, int* sum,
                                const float* s_q, const KeyRows<T>& kr, AdaptiveScratch ws,
                                uint64_t base_rk, int m, int m_mine) {
  Picks out;
  if (m == 0) return out;
  const uint64_t budget_rk =
      row_key(stream_key(p.seed, p.layer, RandomStream::kAdaptiveBudget), r.b, r.h, r.pos);
  const int nb = static_cast<int>(imin<int64_t>(p.num_samples, m));
  int budget = m, mine = m_mine;
  uint64_t thr = ~0ull;
  if (nb < m) {
    const Threshold base = select_threshold(p, part, s, hist, sum, base_rk, nb);
    const int first = cluster_offsets(base.mine, s).x;
    int32_t* list = ws.base + row * ws.base_cap;
    list_base_keys(p, part, s, hist, base_rk, base.thr, budget_rk, list + first, nb - first);
    budget = adaptive_budget<T>(p, r, s, kr, s_q, ws.logits + row * ws.pitch, list, first,
                                base.mine, m, nb);
    if (budget < m) {
      const Threshold t = select_threshold(p, part, s, hist, sum, budget_rk, budget);
      thr = t.thr;
      mine = t.mine;
    }
  }
  out.any = true;
  out.rk = budget_rk;
  out.thr = thr;
  out.prob = d2f(__ddiv_rn(static_cast<double>(budget), static_cast<double>(m)));
  place_picks(&out, mine, s);
  return out;
}

// ---- Row kernel ----------------------------------------------------------------------------

// One cluster per row (grid: rows x cluster size); random sampling (kAdaptive false, T unused) or
// adaptive sampling over q/k elements of type T (dynamic shared memory: head_dim floats).
template <typename T, bool kAdaptive>
__global__ void __launch_bounds__(kSampleThreads, 2)
    rows_kernel(const __grid_constant__ SamplingParams p, AdaptiveScratch ws) {
  extern __shared__ float s_q[];
  __shared__ RowShared s;
  __shared__ int hist[kBins];  // this block's histogram (read by the whole cluster)
  __shared__ int sum[kBins];   // the cluster's histogram
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int size = static_cast<int>(cluster.num_blocks());
  const int64_t row = blockIdx.x / size;
  const RowSpan r = kAdaptive ? make_span(p, row, p.range_begin, p.range_end - 1, s)
                              : make_span(p, row, 0, p.k_len - 1, s);
  const RowSpan part = part_of(r, rank, size);
  const uint64_t rk =
      row_key(stream_key(p.seed, p.layer,
                         kAdaptive ? RandomStream::kAdaptiveBase : RandomStream::kRandomSampling),
              r.b, r.h, r.pos);
  const int m_mine = histogram_pass(p, part, s, rk, 64 - kDigitBits, kDigitBits, 0, hist);
  const int m = cluster_sum(m_mine, s);
  Picks picks;
  if constexpr (kAdaptive) {
    const KeyRows<T> kr = key_rows<T>(p, r.b, r.h / (p.heads / p.kv_heads));
    const T* qrow = static_cast<const T*>(p.q) + r.b * p.q_stride[0] + r.h * p.q_stride[1] +
                    r.i * p.q_stride[2];
    for (int64_t c = threadIdx.x; c < p.head_dim; c += kSampleThreads) {
      s_q[kr.staged(c)] = narrow(widen(qrow[c * p.q_stride[3]]));
    }
    __syncthreads();
    picks = adaptive_picks<T>(p, row, r, part, s, hist, sum, s_q, kr, ws, rk, m, m_mine);
  } else {
    picks = random_picks(p, part, s, hist, sum, rk, m, m_mine);
  }
  emit_part(p, row, r, part, s, picks, rank, size);
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

// Per-call scratch of the MagicPig row kernels (carved by lsh_scratch).
struct LshScratch {
  unsigned long long* status;  // rows x chunks: look-back words of the chunks
  unsigned long long* ticket;  // next (head set, chunk) item to take
  double* qnorm;               // rows: |q - mu|
  float* q;                    // rows x head_dim: the centred queries
  int32_t* qsig;               // rows x words: their signatures
  int32_t* bounds;             // rows x (chunks + 1): previous entries below each chunk's first
                               // key; [chunks]: the previous row's length
};

__host__ __device__ inline int64_t lsh_chunks(const SamplingParams& p) {
  return (p.k_len + kLshThreads - 1) / kLshThreads;
}

// Lays LshScratch out over ws (null: sizes only); returns the bytes it spans.
inline size_t lsh_scratch(const SamplingParams& p, void* ws, LshScratch* out) {
  const size_t rows = static_cast<size_t>(p.rows()), chunks = static_cast<size_t>(lsh_chunks(p));
  unsigned char* base = static_cast<unsigned char*>(ws);
  size_t at = 0;
  auto take = [&](size_t bytes) -> void* {
    void* ptr = base != nullptr ? base + at : nullptr;
    at += (bytes + 15) / 16 * 16;
    return ptr;
  };
  out->status = static_cast<unsigned long long*>(take(rows * chunks * 8));
  out->ticket = static_cast<unsigned long long*>(take(8));
  out->qnorm = static_cast<double*>(take(rows * 8));
  out->q = static_cast<float*>(take(rows * static_cast<size_t>(p.head_dim) * 4));
  out->qsig = static_cast<int32_t*>(take(rows * static_cast<size_t>(p.lsh.words) * 4));
  out->bounds = static_cast<int32_t*>(take(rows * (chunks + 1) * 4));
  return at;
}

// One block per row (dynamic shared memory: head_dim floats + words ints): the row's centred
// query, its norm and signature, the previous row's entry counts below each chunk, zeroed
// look-back words; block 0 also zeroes the ticket.
template <typename T>
__global__ void __launch_bounds__(kLshThreads)
    magicpig_prep_kernel(const __grid_constant__ SamplingParams p, LshScratch ws, int chunks) {
  extern __shared__ float s_x[];
  int* s_words = reinterpret_cast<int*>(s_x + p.head_dim);
  __shared__ int s_len;
  const int64_t row = blockIdx.x;
  const int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads, b = row / (p.q_len * p.heads);
  const int64_t bh = b * p.kv_heads + h / (p.heads / p.kv_heads);
  const int64_t d = p.head_dim, words = p.lsh.words;
  // Previous row: its length, and for chunk c the first entry with key >= c * kLshThreads.
  const int32_t* prev = p.prev_idx + row * p.prev_cap;
  const int cap = static_cast<int>(p.prev_cap);
  if (threadIdx.x == 0) s_len = cap;
  __syncthreads();
  for (int t = threadIdx.x; t < cap; t += kLshThreads) {
    if (prev[t] < 0) atomicMin(&s_len, t);
  }
  __syncthreads();
  const int len = s_len;
  int32_t* bounds = ws.bounds + row * (chunks + 1);
  for (int c = threadIdx.x; c <= chunks; c += kLshThreads) bounds[c] = len;
  __syncthreads();
  auto chunk_of = [chunks](int32_t key) { return imin(key / kLshThreads, chunks); };
  for (int t = threadIdx.x; t < len; t += kLshThreads) {
    const int from = t == 0 ? 0 : chunk_of(prev[t - 1]) + 1;
    const int to = imin(chunk_of(prev[t]), chunks - 1);
    for (int c = from; c <= to; ++c) bounds[c] = t;
  }
  // Centred query, its norm and signature.
  const T* qrow =
      static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
  const float* mu = p.key_mean + bh * d;
  for (int64_t c = threadIdx.x; c < d; c += kLshThreads) {
    const float x = __fsub_rn(narrow(widen(qrow[c * p.q_stride[3]])), mu[c]);
    s_x[c] = x;
    ws.q[row * d + c] = x;
  }
  for (int64_t w = threadIdx.x; w < words; w += kLshThreads) s_words[w] = 0;
  __syncthreads();
  if (threadIdx.x == 0) {
    float qn2 = 0.0f;
    for (int64_t c = 0; c < d; ++c) qn2 = __fadd_rn(qn2, __fmul_rn(s_x[c], s_x[c]));
    ws.qnorm[row] = sqrt(f2d(qn2));
    if (row == 0) *ws.ticket = 0ull;
  }
  signature_bits<kLshThreads>(p, s_x, 0.0f, s_words);
  __syncthreads();
  for (int64_t w = threadIdx.x; w < words; w += kLshThreads) ws.qsig[row * words + w] = s_words[w];
  for (int c = threadIdx.x; c < chunks; c += kLshThreads) ws.status[row * chunks + c] = 0ull;
}

// Word-parallel form of lsh_any_match. With slot <= 32 a word holds whole tables, and a table
// collides when its field of a ^ b is zero: ((v - low) & ~v & high) != 0 tests whether some field
// of v is zero (low / high: the fields' lowest / highest bits); the last word's padding bits are
// set (`poison`) so that padding never reads as a table. Wider slots span whole words.
struct LshTest {
  int words, slot;
  uint32_t low, high, poison;
};

__device__ __forceinline__ LshTest lsh_test(const LshLayout& lay) {
  LshTest t;
  t.words = static_cast<int>(lay.words);
  t.slot = static_cast<int>(lay.slot);
  const uint32_t field = lay.slot >= 32 ? ~0u : (1u << lay.slot) - 1u;
  t.low = 0xffffffffu / field;
  t.high = lay.slot >= 32 ? 0x80000000u : t.low << (lay.slot - 1);
  const int64_t valid = lay.tables * lay.slot - 32 * (lay.words - 1);  // bits of the last word
  t.poison = valid >= 32 ? 0u : ~((1u << valid) - 1u);
  return t;
}

// Bit g (g < nrows) set when key signature k collides with query signature q + g * words.
__device__ __forceinline__ unsigned lsh_hits(const LshTest& t, const int32_t* k, const int32_t* q,
                                             int nrows) {
  unsigned hit = 0u;
  const unsigned all = (1u << nrows) - 1u;
  if (t.slot <= 32) {
    for (int w = 0; w < t.words && hit != all; ++w) {
      const uint32_t kw = static_cast<uint32_t>(__ldg(k + w)) | (w == t.words - 1 ? t.poison : 0u);
#pragma unroll
      for (int g = 0; g < kGroupRows; ++g) {
        if (g >= nrows) break;
        const uint32_t v = kw ^ static_cast<uint32_t>(q[g * t.words + w]);
        if (((v - t.low) & ~v & t.high) != 0u) hit |= 1u << g;
      }
    }
    return hit;
  }
  const int span = t.slot / 32;
  for (int w0 = 0; w0 < t.words && hit != all; w0 += span) {
    uint32_t diff[kGroupRows] = {};
    for (int w = w0; w < w0 + span; ++w) {
      const uint32_t kw = static_cast<uint32_t>(__ldg(k + w));
#pragma unroll
      for (int g = 0; g < kGroupRows; ++g) {
        if (g < nrows) diff[g] |= kw ^ static_cast<uint32_t>(q[g * t.words + w]);
      }
    }
#pragma unroll
    for (int g = 0; g < kGroupRows; ++g) {
      if (g < nrows && diff[g] == 0u) hit |= 1u << g;
    }
  }
  return hit;
}

// For the keys j = k0 + keys[e], e < n: n2[j - k0] = |x|^2 (float) and dot[g][j - k0] = q_g . x
// (double, exact products) for the rows g of want[j - k0], x = k_j - mu the centred key (as
// magicpig_centered_key); s_qd: the rows' centred queries (doubles, KeyRows::staged, rows of
// head_dim). Lane groups of kr.lanes lanes, two key rows in flight each.
template <typename T>
__device__ void lsh_dots(const KeyRows<T>& kr, const float* mu, const double* s_qd, int64_t d,
                         int64_t k0, const short* keys, int n, const unsigned char* want,
                         double (*dot)[kLshThreads], float* n2) {
  constexpr int U = 2, V = KeyRows<T>::kVec;
  const int sub = threadIdx.x & (kr.lanes - 1);
  const int group = threadIdx.x / kr.lanes, groups = kLshThreads / kr.lanes;
  for (int base = 0; base < n; base += groups * U) {  // block-uniform trip count
    int off[U];
    unsigned rows[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int e = base + group * U + u;
      off[u] = e < n ? keys[e] : -1;
      rows[u] = off[u] >= 0 ? want[off[u]] : 0u;
    }
    const unsigned any = __reduce_or_sync(0xffffffffu, rows[0] | rows[1]);  // rows the warp needs
    double acc[U][kGroupRows];
    float sq[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      sq[u] = 0.0f;
#pragma unroll
      for (int g = 0; g < kGroupRows; ++g) acc[u][g] = 0.0;
    }
    for (int v0 = 0; v0 < kr.nvec; v0 += kr.lanes) {
      const int v = v0 + sub;
      T x[U][V];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (off[u] >= 0 && v < kr.nvec) kr.load(k0 + off[u], v, x[u]);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (off[u] < 0 || v >= kr.nvec) continue;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          if (e >= kr.per) break;
          const float xc = centred(widen(x[u][e]), __ldg(mu + v * kr.per + e));
          sq[u] = __fadd_rn(sq[u], __fmul_rn(xc, xc));
          const double xd = f2d(xc);
#pragma unroll
          for (int g = 0; g < kGroupRows; ++g) {
            if ((any >> g) & 1u) acc[u][g] = fma(s_qd[g * d + e * kr.nvec + v], xd, acc[u][g]);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      for (int o = kr.lanes / 2; o > 0; o >>= 1) sq[u] += __shfl_xor_sync(0xffffffffu, sq[u], o);
#pragma unroll
      for (int g = 0; g < kGroupRows; ++g) {
        if (((any >> g) & 1u) == 0u) continue;
        for (int o = kr.lanes / 2; o > 0; o >>= 1) {
          acc[u][g] += __shfl_xor_sync(0xffffffffu, acc[u][g], o);
        }
      }
      if (sub == 0 && off[u] >= 0) {
        n2[off[u]] = sq[u];
#pragma unroll
        for (int g = 0; g < kGroupRows; ++g) {
          if ((rows[u] >> g) & 1u) dot[g][off[u]] = acc[u][g];
        }
      }
    }
  }
}

// Look-back words: flag (aggregate: this chunk's count; inclusive: the count of the row's chunks
// up to this one) in the top bits, count below; 0 = not yet published.
constexpr unsigned long long kAggregate = 1ull << 62, kInclusive = 1ull << 63;
constexpr unsigned long long kCountMask = kAggregate - 1ull;

// Publishes `count`, the entries of chunk `chunk` of a row, and returns the entries of the row's
// earlier chunks: it adds their counts backwards until one has published its inclusive count.
// Their blocks took their tickets first, so they are running or done.
__device__ inline long long lookback(unsigned long long* status, int chunk, long long count) {
  volatile unsigned long long* st = status;
  if (chunk == 0) {
    st[0] = kInclusive | static_cast<unsigned long long>(count);
    return 0;
  }
  st[chunk] = kAggregate | static_cast<unsigned long long>(count);
  long long before = 0;
  for (int c = chunk - 1; c >= 0; --c) {
    unsigned long long w;
    while ((w = st[c]) == 0ull) __nanosleep(32);
    before += static_cast<long long>(w & kCountMask);
    if ((w & kInclusive) != 0ull) break;
  }
  st[chunk] = kInclusive | static_cast<unsigned long long>(before + count);
  return before;
}

// MagicPig rows: blocks take items (query-head set of `set_rows` heads of one kv head and query
// i, chunk of kLshThreads keys) in order from the ticket. Per item: candidates whose signature
// collides with some row's query, their collision probabilities, and the chunk's output entries
// (previous entries and picks in key order) at the look-back offset. Dynamic shared memory:
// set_rows x head_dim doubles (centred queries) + set_rows x words ints (their signatures).
template <typename T>
__global__ void __launch_bounds__(kLshThreads, 3)
    magicpig_rows_kernel(const __grid_constant__ SamplingParams p, LshScratch ws, int chunks,
                         int set_rows, int64_t items) {
  extern __shared__ double s_qd[];
  __shared__ double s_dot[kGroupRows][kLshThreads];
  __shared__ float s_prob[kGroupRows][kLshThreads];
  __shared__ float s_n2[kLshThreads];
  __shared__ uint32_t s_held[kGroupRows][kLshWords];  // keys of the chunk in the previous row
  __shared__ uint32_t s_pick[kGroupRows][kLshWords];  // picks of the chunk
  __shared__ unsigned char s_want[kLshThreads];       // rows needing key j's probability
  __shared__ short s_keys[kLshThreads];               // keys with some wanted row
  __shared__ unsigned short s_pairs[kGroupRows * kLshThreads];  // (row, key) probabilities to do
  __shared__ int s_nkeys, s_npairs;
  __shared__ int s_x0[kGroupRows], s_x1[kGroupRows];  // previous entries of the chunk
  __shared__ long long s_at[kGroupRows];              // the chunk's first output position
  __shared__ unsigned long long s_item;
  const int64_t d = p.head_dim, words = p.lsh.words, cap = p.out_cap;
  int32_t* s_sig = reinterpret_cast<int32_t*>(s_qd + set_rows * d);
  const int64_t group = p.heads / p.kv_heads, sets_per_kv = (group + set_rows - 1) / set_rows;
  const LshTest lt = lsh_test(p.lsh);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  while (true) {
    if (tid == 0) s_item = atomicAdd(ws.ticket, 1ull);
    __syncthreads();
    const unsigned long long item = s_item;
    if (item >= static_cast<unsigned long long>(items)) break;
    const int chunk = static_cast<int>(item % chunks);
    int64_t set = static_cast<int64_t>(item / chunks);
    const int64_t sub = set % sets_per_kv;
    set /= sets_per_kv;
    const int64_t i = set % p.q_len;
    set /= p.q_len;
    const int64_t kvh = set % p.kv_heads, b = set / p.kv_heads, bh = b * p.kv_heads + kvh;
    const int64_t h0 = kvh * group + sub * set_rows;
    const int nrows = static_cast<int>(imin<int64_t>(set_rows, group - sub * set_rows));
    auto row_of = [&](int g) { return (b * p.heads + h0 + g) * p.q_len + i; };
    const int64_t hi = imin(p.k_len - p.q_len + i, p.k_len - 1);  // last key the query sees
    const int64_t k0 = static_cast<int64_t>(chunk) * kLshThreads;
    const int64_t k1 = imin<int64_t>(k0 + kLshThreads, p.k_len);
    const KeyRows<T> kr = key_rows<T>(p, b, kvh);

    // Stage the rows' queries and signatures, and mark their previous entries in the chunk.
    for (int64_t e = tid; e < nrows * d; e += kLshThreads) {
      const int g = static_cast<int>(e / d);
      const int64_t c = e % d;
      s_qd[g * d + kr.staged(c)] = f2d(ws.q[row_of(g) * d + c]);
    }
    for (int64_t e = tid; e < nrows * words; e += kLshThreads) {
      const int g = static_cast<int>(e / words);
      s_sig[e] = ws.qsig[row_of(g) * words + e % words];
    }
    if (tid < nrows) {
      const int32_t* bounds = ws.bounds + row_of(tid) * (chunks + 1);
      const int len = bounds[chunks];
      const int x0 = imin(imax(bounds[chunk], 0), len);
      s_x0[tid] = x0;
      s_x1[tid] = imin(imax(bounds[chunk + 1], x0), len);
    }
    if (tid < kGroupRows * kLshWords) {
      s_held[tid / kLshWords][tid % kLshWords] = 0u;
      s_pick[tid / kLshWords][tid % kLshWords] = 0u;
    }
    if (tid == 0) {
      s_nkeys = 0;
      s_npairs = 0;
    }
    __syncthreads();
    for (int g = 0; g < nrows; ++g) {
      const int32_t* prev = p.prev_idx + row_of(g) * p.prev_cap;
      for (int t = s_x0[g] + tid; t < s_x1[g]; t += kLshThreads) {
        const int64_t off = static_cast<int64_t>(prev[t]) - k0;
        if (off >= 0 && off < k1 - k0) atomicOr(&s_held[g][off / 32], 1u << (off % 32));
      }
    }
    __syncthreads();

    // Candidates colliding with some row's query.
    const int64_t j = k0 + tid;
    unsigned want = 0u;
    if (j < k1 && j <= hi) {
      unsigned cand = 0u;
      for (int g = 0; g < nrows; ++g) {
        if (((s_held[g][tid / 32] >> (tid % 32)) & 1u) == 0u && !forbidden(p, b, h0 + g, i, j)) {
          cand |= 1u << g;
        }
      }
      if (cand != 0u) {
        want = cand & lsh_hits(lt, p.signatures + (bh * p.sig_cap + j) * words, s_sig, nrows);
      }
    }
    s_want[tid] = static_cast<unsigned char>(want);
    if (want != 0u) {
      s_keys[atomicAdd(&s_nkeys, 1)] = static_cast<short>(tid);
      int at = atomicAdd(&s_npairs, __popc(want));
      for (int g = 0; g < nrows; ++g) {
        if ((want >> g) & 1u) s_pairs[at++] = static_cast<unsigned short>((g << 8) | tid);
      }
    }
    __syncthreads();
    lsh_dots<T>(kr, p.key_mean + bh * d, s_qd, d, k0, s_keys, s_nkeys, s_want, s_dot, s_n2);
    __syncthreads();

    // Collision probabilities; picks are those that do not round to 0.
    const double bound = f2d(p.key_norm_bound[bh]);
    for (int e = tid; e < s_npairs; e += kLshThreads) {
      const int g = s_pairs[e] >> 8, off = s_pairs[e] & 255;
      const double knorm = f2d(__fsqrt_rn(s_n2[off]));
      const double denom = __dmul_rn(ws.qnorm[row_of(g)], DoubleMax()(bound, knorm));
      const double prob = lsh_collision_probability(
          denom > 0.0 ? __ddiv_rn(s_dot[g][off], denom) : 0.0, p.lsh.bits, p.lsh.tables);
      const float pf = d2f(prob);
      s_prob[g][off] = pf;
      if (positive(pf)) atomicOr(&s_pick[g][off / 32], 1u << (off % 32));
    }
    __syncthreads();

    // Output offsets: row g's count, published by warp g's first lane.
    if (warp < nrows && lane == 0) {
      long long n = s_x1[warp] - s_x0[warp];
      for (int w = 0; w < kLshWords; ++w) n += __popc(s_pick[warp][w]);
      s_at[warp] = lookback(ws.status + row_of(warp) * chunks, chunk, n);
    }
    __syncthreads();

    // Entries: taken keys in order, then (invalid previous rows only) the previous entries of the
    // chunk's range whose keys are not keys of the chunk.
    const int w_own = tid / 32;
    const uint32_t bit = 1u << (tid % 32), lower = bit - 1u;
    for (int g = 0; g < nrows; ++g) {
      const int64_t row = row_of(g);
      const int32_t* prev = p.prev_idx + row * p.prev_cap;
      const float* prev_p = p.prev_probs + row * p.prev_cap;
      int32_t* out = p.out_idx + row * cap;
      float* pout = p.out_probs + row * cap;
      int taken_before = 0, held_before = 0, taken_all = 0, held_all = 0;
#pragma unroll
      for (int w = 0; w < kLshWords; ++w) {
        const uint32_t hw = s_held[g][w], tw = hw | s_pick[g][w];
        if (w < w_own) {
          taken_before += __popc(tw);
          held_before += __popc(hw);
        }
        taken_all += __popc(tw);
        held_all += __popc(hw);
      }
      const uint32_t hw = s_held[g][w_own], tw = hw | s_pick[g][w_own];
      if (tw & bit) {
        const int64_t at = s_at[g] + taken_before + __popc(tw & lower);
        const float prob =
            (hw & bit) ? prev_p[s_x0[g] + held_before + __popc(hw & lower)] : s_prob[g][tid];
        if (at < cap) {
          out[at] = static_cast<int32_t>(j);
          pout[at] = clamp_prob(prob);
        }
      }
      for (int t = s_x0[g] + held_all + tid; t < s_x1[g]; t += kLshThreads) {
        const int64_t at = s_at[g] + taken_all + (t - s_x0[g] - held_all);
        if (at < cap) {
          out[at] = prev[t];
          pout[at] = clamp_prob(prev_p[t]);
        }
      }
    }
    __syncthreads();  // shared state is reused by the next item
  }
}

// Pads each row after its entries (the inclusive count of its last chunk) with -1 / 0.
static __global__ void __launch_bounds__(kLshThreads)
    magicpig_tail_kernel(const __grid_constant__ SamplingParams p, LshScratch ws, int chunks) {
  const int64_t cap = p.out_cap, rows = p.batch * p.heads * p.q_len;
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t end = static_cast<int64_t>(ws.status[row * chunks + chunks - 1] & kCountMask);
    for (int64_t t = end + static_cast<int64_t>(blockIdx.x) * kLshThreads + threadIdx.x; t < cap;
         t += static_cast<int64_t>(gridDim.x) * kLshThreads) {
      p.out_idx[row * cap + t] = -1;
      p.out_probs[row * cap + t] = 0.0f;
    }
  }
}

// ---- Launch helpers --------------------------------------------------------------------------

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

// Blocks per row cluster: one block per row already fills the GPU for many rows; otherwise up to
// kMaxCluster blocks, each owning at least 4096 keys of a window of `window` keys.
inline int row_cluster_blocks(int64_t rows, int64_t window) {
  int c = 1;
  while (c < kMaxCluster && rows * c * 2 <= 256 && window / (2 * c) >= 4096) c *= 2;
  return c;
}

template <typename T, bool kAdaptive>
Status launch_rows(const SamplingParams& p, AdaptiveScratch ws, size_t smem, int64_t window,
                   cudaStream_t stream) {
  const int cluster = row_cluster_blocks(p.rows(), window);
  const ClusterLaunch launch(static_cast<unsigned>(p.rows() * cluster), kSampleThreads, cluster,
                             smem, stream);
  if (cudaLaunchKernelEx(&launch.config, rows_kernel<T, kAdaptive>, p, ws) != cudaSuccess) {
    (void)cudaGetLastError();
    return Status::kLaunchFailed;
  }
  return launch_status();
}

// Base keys a row of the adaptive kernel can list: min(num_samples, sampling range in [0, k_len)).
inline int64_t adaptive_base_cap(const SamplingParams& p) {
  const int64_t window = imin(p.range_end, p.k_len) - imax<int64_t>(p.range_begin, 0);
  return imax<int64_t>(0, imin(p.num_samples, window));
}

// Dynamic shared memory of one query head of a MagicPig chunk block: its centred query (doubles)
// and signature.
inline int64_t lsh_row_bytes(const SamplingParams& p) {
  return p.head_dim * static_cast<int64_t>(sizeof(double)) +
         p.lsh.words * static_cast<int64_t>(sizeof(int32_t));
}

// Query heads per MagicPig chunk block: a kv head's group, at most kGroupRows and what the
// dynamic shared memory holds (at least 1).
inline int64_t lsh_set_rows(const SamplingParams& p) {
  const int64_t rows =
      imin(imin<int64_t>(p.heads / p.kv_heads, kGroupRows), kMaxDynamicShared / lsh_row_bytes(p));
  return imax<int64_t>(rows, 1);
}

}  // namespace sampling_detail

// Workspace bytes of adaptive_sampling_mask (from shapes and the sampling range only).
inline size_t adaptive_workspace_bytes(const SamplingParams& p) {
  using namespace sampling_detail;
  const int64_t base_cap = adaptive_base_cap(p);
  const size_t rows = static_cast<size_t>(imax<int64_t>(p.rows(), 0));
  const size_t logits = rows * static_cast<size_t>(p.prev_cap + base_cap) * sizeof(double);
  return logits + rows * static_cast<size_t>(base_cap) * sizeof(int32_t);
}

// Workspace bytes of magicpig_mask (from shapes and the LSH layout only).
inline size_t magicpig_workspace_bytes(const SamplingParams& p) {
  sampling_detail::LshScratch unused;
  return sampling_detail::lsh_scratch(p, nullptr, &unused);
}

// Random sampling masker (p.kind == kRandom) into p.out_idx / p.out_probs (rows, p.out_cap).
inline Status random_sampling_mask(const SamplingParams& p, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.kind != SamplingKind::kRandom || !rows_fit(p) || p.num_samples < 0) {
    return Status::kBadArgument;
  }
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  return launch_rows<float, false>(p, AdaptiveScratch{}, 0, p.k_len, stream);
}

// Adaptive sampling masker (p.kind == kAdaptive) over q/k elements of type T (float, double,
// __half, __nv_bfloat16); workspace: adaptive_workspace_bytes(p) bytes, 16-byte aligned.
template <typename T>
Status adaptive_sampling_mask(const SamplingParams& p, void* workspace, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.kind != SamplingKind::kAdaptive || !rows_fit(p) || !qk_fit(p) || p.num_samples < 2) {
    return Status::kBadArgument;
  }
  const size_t smem = static_cast<size_t>(p.head_dim) * sizeof(float);
  if (smem > kMaxDynamicShared) return Status::kBadArgument;
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  const size_t bytes = adaptive_workspace_bytes(p);
  if (bytes > 0 && (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0)) {
    return Status::kBadArgument;
  }
  AdaptiveScratch ws;
  ws.base_cap = adaptive_base_cap(p);
  ws.pitch = p.prev_cap + ws.base_cap;
  ws.logits = static_cast<double*>(workspace);
  ws.base = reinterpret_cast<int32_t*>(ws.logits + p.rows() * ws.pitch);
  return launch_rows<T, true>(p, ws, smem, p.range_end - p.range_begin, stream);
}

// MagicPig masker (p.kind == kMagicPig) over q/k elements of type T: writes the signatures of
// keys [num_cached, k_len) into p.signatures, then the rows; workspace:
// magicpig_workspace_bytes(p) bytes, 16-byte aligned.
template <typename T>
Status magicpig_mask(const SamplingParams& p, void* workspace, cudaStream_t stream) {
  using namespace sampling_detail;
  if (p.kind != SamplingKind::kMagicPig || !rows_fit(p) || !qk_fit(p) || p.lsh.tables < 1 ||
      p.lsh.bits < 1 || p.num_cached < 0 || p.num_cached > p.k_len || p.sig_cap < p.k_len) {
    return Status::kBadArgument;
  }
  if (lsh_row_bytes(p) > kMaxDynamicShared) return Status::kBadArgument;
  const size_t smem = static_cast<size_t>(p.head_dim + p.lsh.words) * sizeof(float);
  const int64_t items = (p.k_len - p.num_cached) * p.batch * p.kv_heads;
  if (items > 0) {
    const int64_t blocks = items < (1 << 20) ? items : (1 << 20);
    signature_kernel<T><<<static_cast<unsigned>(blocks), kSigThreads, smem, stream>>>(p, items);
    const Status st = launch_status();
    if (st != Status::kOk) return st;
  }
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return Status::kBadArgument;
  }
  LshScratch ws;
  lsh_scratch(p, workspace, &ws);
  const int chunks = static_cast<int>(lsh_chunks(p));
  magicpig_prep_kernel<T>
      <<<static_cast<unsigned>(p.rows()), kLshThreads, smem, stream>>>(p, ws, chunks);
  Status st = launch_status();
  if (st != Status::kOk) return st;
  const int64_t group = p.heads / p.kv_heads, set_rows = lsh_set_rows(p);
  const int64_t sets = p.batch * p.kv_heads * p.q_len * ((group + set_rows - 1) / set_rows);
  const int64_t row_items = sets * chunks;
  const size_t row_smem = static_cast<size_t>(set_rows * lsh_row_bytes(p));
  magicpig_rows_kernel<T>
      <<<static_cast<unsigned>(imin<int64_t>(row_items, 1 << 20)), kLshThreads, row_smem, stream>>>(
          p, ws, chunks, static_cast<int>(set_rows), row_items);
  st = launch_status();
  if (st != Status::kOk) return st;
  const dim3 tail(
      static_cast<unsigned>(imin<int64_t>((p.out_cap + kLshThreads - 1) / kLshThreads, 1024)),
      static_cast<unsigned>(imin<int64_t>(p.rows(), 65535)));
  magicpig_tail_kernel<<<tail, kLshThreads, 0, stream>>>(p, ws, chunks);
  return launch_status();
}

}  // namespace cuda
}  // namespace sah
