// Torch-free CUDA kernels of the Quest and DoubleSparsity top-k maskers; sah/page_maskers_cpu.h
// holds the reference semantics. Every result equals the CPU kernels' bit for bit: the same float
// operations in the same order, the same candidates and the same tie rule (lower page / key
// index). Kernels never synchronise with the host and assume valid previous rows (strictly
// ascending indices in [0, k_len), then -1 padding) and channel tables (entries in
// [0, head_dim)); they only guard their memory accesses.
//
// Quest page statistics: one thread per (page, channel) folds the page's keys in key order.
// Quest selection: (1) with label_bits < 16, a warp per page row writes pseudo-quantised bounds
// into the workspace; (2) a scoring kernel stages the bounds of 128 pages of one kv head in
// shared memory, a chunk of channels at a time, and scores them against up to 8 query rows of
// the kv head's GQA group from that one load, writing one score key per (row, page) (0 = not a
// candidate: after the query's position, or no key the attention mask allows); (3) the oracle
// top-k selection of sah/maskers_cuda.cuh (a block, or for few long rows a thread-block cluster,
// per row) picks each row's best pages into a page list (ascending); (4) one block per row
// expands its pages to the keys the query may see and merges them with the previous row.
// DoubleSparsity: a scoring kernel (one thread per key, a block per (batch, head, 256 keys,
// 8 queries)) writes the score keys of the channel-subset scores into the workspace, then the
// oracle top-k selection knocks out the previous row's keys, picks and merges.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "sah/attention_params.h"
#include "sah/mask_rows_cuda.cuh"
#include "sah/maskers_cuda.cuh"
#include "sah/page_maskers_cpu.h"

namespace sah {
namespace cuda {

// Largest gridDim.y / gridDim.z.
constexpr int64_t kMaxGridYZ = 65535;

namespace page_detail {

constexpr int kStatsThreads = 256;
constexpr int kStatsUnroll = 8;      // keys loaded ahead per thread
constexpr int kQuantThreads = 256;   // one page row per warp
constexpr int kPageTile = 128;       // pages per scoring block, one per thread
constexpr int kPageRows = 8;         // query rows per scoring block
constexpr int kPageChunk = 32;       // head-dim columns staged in shared memory per step
constexpr int kPageBlocksPerSM = 4;  // scoring blocks resident per SM (caps registers at 128)
constexpr int kExpandThreads = 256;
constexpr int kDsKeys = 256;  // keys per DoubleSparsity scoring block, one per thread
constexpr int kDsRows = 8;    // query rows per DoubleSparsity scoring block
static_assert(kPageTile % kPageChunk == 0, "whole pages per staging pass");

// IEEE float32 arithmetic and comparison in PTX: the build uses --use_fast_math (flush-to-zero,
// FMA contraction), but these kernels must reproduce the CPU kernels bit for bit, subnormals
// included.
__device__ __forceinline__ float add_rn(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float sub_rn(float a, float b) {
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float mul_rn(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float div_rn(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
// Round to the nearest integer, ties to even (std::nearbyint in the default rounding mode).
__device__ __forceinline__ float rint_rn(float a) {
  float r;
  asm("cvt.rni.f32.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
}
// a < b (false if either is NaN).
__device__ __forceinline__ bool less(float a, float b) {
  unsigned r;
  asm("{\n\t.reg .pred lt_p;\n\tsetp.lt.f32 lt_p, %1, %2;\n\tselp.u32 %0, 1, 0, lt_p;\n\t}"
      : "=r"(r)
      : "f"(a), "f"(b));
  return r != 0u;
}
// x == +-0 exactly.
__device__ __forceinline__ bool is_zero(float x) { return (__float_as_uint(x) << 1) == 0u; }

__device__ __forceinline__ float to_float32(float x) { return x; }
__device__ __forceinline__ float to_float32(double x) {
  float r;
  asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(x));
  return r;
}
__device__ __forceinline__ float to_float32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float32(__nv_bfloat16 x) { return __bfloat162float(x); }

// masker_detail::score_key with the zero test on the bits (under flush-to-zero a subnormal
// compares equal to 0, while the CPU ranks it apart): order-preserving, never 0, -0 ties +0.
__device__ __forceinline__ uint32_t exact_score_key(float s) {
  uint32_t u = is_zero(s) ? 0u : __float_as_uint(s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return u == 0u ? 1u : u;
}

// The reference's pseudo-quantisation of one row (pseudo_quantize_row of the CPU), given the
// row's min `lo` and max `hi`.
struct Quantizer {
  float lo, scale, levels;

  __device__ __forceinline__ Quantizer(float row_min, float row_max, int bits)
      : lo(row_min), levels(static_cast<float>((1 << bits) - 1)) {
    float range = sub_rn(row_max, row_min);
    if (is_zero(range)) range = 1.0f;
    scale = mul_rn(div_rn(1.0f, range), levels);
  }

  __device__ __forceinline__ float operator()(float x) const {
    float level = rint_rn(mul_rn(sub_rn(x, lo), scale));
    level = less(0.0f, level) ? level : 0.0f;      // std::max(0.0f, level)
    level = less(level, levels) ? level : levels;  // std::min(levels, level)
    return add_rn(div_rn(level, scale), lo);
  }
};

// Running min / max as std::min(lo, x) / std::max(hi, x).
__device__ __forceinline__ void fold_min_max(float x, float* lo, float* hi) {
  *lo = less(x, *lo) ? x : *lo;
  *hi = less(*hi, x) ? x : *hi;
}

// True when the attention mask allows one of the keys [first, end) of row (b, h, i); always
// true without a mask.
__device__ __forceinline__ bool any_allowed(const MaskerParams& m, int64_t b, int64_t h, int64_t i,
                                            int64_t first, int64_t end) {
  if (m.mask_kind == MaskKind::kNone) return true;
  for (int64_t j = first; j < end; ++j) {
    if (!isinf(masker_detail::mask_value(m, b, h, i, j))) return true;
  }
  return false;
}

// Grid-stride over the (batch, kv head, page, channel) items of pages [first_page, num_pages):
// lo / hi of one channel over the page's keys, folded in key order as the CPU does.
template <typename T>
__global__ void __launch_bounds__(kStatsThreads)
    page_stats_kernel(const __grid_constant__ PageStatsParams p, int64_t pages, int64_t total) {
  const int64_t d = p.head_dim, step = static_cast<int64_t>(gridDim.x) * kStatsThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kStatsThreads + threadIdx.x; e < total;
       e += step) {
    const int64_t c = e % d, item = e / d;
    const int64_t t = p.first_page + item % pages, bh = item / pages;
    const int64_t b = bh / p.kv_heads, h = bh % p.kv_heads;
    const T* col =
        static_cast<const T*>(p.k) + b * p.k_stride[0] + h * p.k_stride[1] + c * p.k_stride[3];
    const int64_t first = t * p.page_size;
    const int64_t end = min(first + p.page_size, p.k_len);
    float lo = to_float32(col[first * p.k_stride[2]]), hi = lo;
    for (int64_t j0 = first + 1; j0 < end; j0 += kStatsUnroll) {
      float x[kStatsUnroll];
#pragma unroll
      for (int u = 0; u < kStatsUnroll; ++u) {
        x[u] = j0 + u < end ? to_float32(col[(j0 + u) * p.k_stride[2]]) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kStatsUnroll; ++u) {
        if (j0 + u < end) fold_min_max(x[u], &lo, &hi);
      }
    }
    const int64_t out = (bh * p.page_cap + t) * d + c;
    p.page_min[out] = lo;
    p.page_max[out] = hi;
  }
}

// One warp per page row: row r of dst (slabs * pages rows of n floats) is the pseudo-quantised
// page r % pages of slab r / pages of src (slabs of page_cap pages). The row's min and max do
// not depend on the folding order, up to the sign of a zero, which the quantised values ignore.
__global__ void __launch_bounds__(kQuantThreads)
    quantize_pages_kernel(const float* __restrict__ src, int64_t page_cap, int64_t pages,
                          int64_t rows, int64_t n, int bits, float* __restrict__ dst) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kQuantThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // warp-uniform
  const float* x = src + ((row / pages) * page_cap + row % pages) * n;
  float* y = dst + row * n;
  float lo = x[0], hi = x[0];
  for (int64_t c = lane; c < n; c += 32) fold_min_max(x[c], &lo, &hi);
  for (int o = 16; o > 0; o >>= 1) {
    const float olo = __shfl_xor_sync(0xffffffffu, lo, o);
    const float ohi = __shfl_xor_sync(0xffffffffu, hi, o);
    lo = less(olo, lo) ? olo : lo;
    hi = less(hi, ohi) ? ohi : hi;
  }
  const Quantizer quantize(lo, hi, bits);
  for (int64_t c = lane; c < n; c += 32) y[c] = quantize(x[c]);
}

// Stages columns [c0, c0 + kPageChunk) of pages [t0, t0 + kPageTile) of one slab of page bounds
// (pages of d floats) as dst[page][column] (0 outside). Each warp reads a page's chunk per load.
__device__ __forceinline__ void stage_bounds(const float* slab, int64_t t0, int64_t pages,
                                             int64_t d, int64_t c0, float (*dst)[kPageChunk + 1]) {
  constexpr int kStep = kPageTile / kPageChunk, kPasses = kPageTile / kStep, kBatch = 8;
  const int col = threadIdx.x % kPageChunk, lead = threadIdx.x / kPageChunk;
  const bool col_ok = c0 + col < d;
#pragma unroll
  for (int b0 = 0; b0 < kPasses; b0 += kBatch) {
    float buf[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int64_t t = t0 + lead + (b0 + u) * kStep;
      buf[u] = (col_ok && t < pages) ? slab[t * d + c0 + col] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) dst[lead + (b0 + u) * kStep][col] = buf[u];
  }
}

// acc[r] += max(q[r][c] lo[c], q[r][c] hi[c]) over one staged chunk, columns in ascending order
// (padding columns add +0, which leaves every sum unchanged: the sums start at +0 and never
// become -0).
template <int R>
__device__ __forceinline__ void accumulate_bounds(const float* lo, const float* hi,
                                                  const float (*s_q)[kPageChunk], float* acc) {
#pragma unroll
  for (int c = 0; c < kPageChunk; ++c) {
    const float l = lo[c], u = hi[c];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float a = mul_rn(s_q[r][c], l), b = mul_rn(s_q[r][c], u);
      acc[r] = add_rn(acc[r], less(a, b) ? b : a);
    }
  }
}

// Grid (pitch / kPageTile, batch * kv_heads, group rows / kPageRows). Block rows are the query
// rows r = i * group + g of one kv head (head kvh * group + g, query i); thread = page. Writes
// every entry of every row's workspace (padding included): 0 for a non-candidate, else the key of
// the page's upper bound sum_c max(q_c lo_c, q_c hi_c).
template <typename T>
__global__ void __launch_bounds__(kPageTile, kPageBlocksPerSM)
    page_score_kernel(const __grid_constant__ QuestParams p, const __grid_constant__ MaskerParams m,
                      int64_t pages, uint32_t* __restrict__ keys, int64_t pitch) {
  __shared__ float s_lo[kPageTile][kPageChunk + 1];
  __shared__ float s_hi[kPageTile][kPageChunk + 1];
  __shared__ __align__(16) float s_q[kPageRows][kPageChunk];
  const int tid = threadIdx.x;
  const int64_t group = p.heads / p.kv_heads, d = p.head_dim, ps = p.page_size;
  const int64_t b = blockIdx.y / p.kv_heads, kvh = blockIdx.y % p.kv_heads;
  const int64_t r0 = static_cast<int64_t>(blockIdx.z) * kPageRows;
  const int nrows = static_cast<int>(min(static_cast<int64_t>(kPageRows), group * p.q_len - r0));
  const int64_t t0 = static_cast<int64_t>(blockIdx.x) * kPageTile, t = t0 + tid;
  const int64_t shift = p.k_len - p.q_len;  // query i sits at absolute position shift + i
  const int64_t max_last = min(shift + (r0 + nrows - 1) / group, p.k_len - 1);
  float acc[kPageRows];
#pragma unroll
  for (int r = 0; r < kPageRows; ++r) acc[r] = 0.0f;

  if (t0 < pages && t0 * ps <= max_last) {  // block-uniform: skip tiles no row can see
    const int64_t slab = (b * p.kv_heads + kvh) * p.page_cap * d;
    const T* qbase = static_cast<const T*>(p.q) + b * p.q_stride[0];
    for (int64_t c0 = 0; c0 < d; c0 += kPageChunk) {
      for (int e = tid; e < kPageRows * kPageChunk; e += kPageTile) {
        const int r = e / kPageChunk, col = e % kPageChunk;
        float v = 0.0f;
        if (r < nrows && c0 + col < d) {
          const int64_t gr = r0 + r, i = gr / group, h = kvh * group + gr % group;
          v = to_float32(qbase[h * p.q_stride[1] + i * p.q_stride[2] + (c0 + col) * p.q_stride[3]]);
        }
        s_q[r][col] = v;
      }
      stage_bounds(p.page_min + slab, t0, pages, d, c0, s_lo);
      stage_bounds(p.page_max + slab, t0, pages, d, c0, s_hi);
      __syncthreads();
      if (nrows == 1) {
        accumulate_bounds<1>(s_lo[tid], s_hi[tid], s_q, acc);
      } else if (nrows == 2) {
        accumulate_bounds<2>(s_lo[tid], s_hi[tid], s_q, acc);
      } else if (nrows <= 4) {
        accumulate_bounds<4>(s_lo[tid], s_hi[tid], s_q, acc);
      } else {
        accumulate_bounds<8>(s_lo[tid], s_hi[tid], s_q, acc);
      }
      __syncthreads();
    }
  }
  if (t >= pitch) return;
#pragma unroll
  for (int r = 0; r < kPageRows; ++r) {
    if (r >= nrows) break;
    const int64_t gr = r0 + r, i = gr / group, h = kvh * group + gr % group;
    const int64_t last = min(shift + i, p.k_len - 1);  // last key the query may see
    uint32_t key = 0u;
    if (t < pages && t * ps <= last &&
        any_allowed(m, b, h, i, t * ps, min(t * ps + ps, last + 1))) {
      key = exact_score_key(acc[r]);
    }
    keys[((b * p.heads + h) * p.q_len + i) * pitch + t] = key;
  }
}

// One block per row: lists the keys of the row's chosen pages (page list, ascending, -1 padded)
// that the query may see (up to its position, allowed by the mask) in the row's picks buffer,
// then merges them with the previous row into the output row.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    expand_pages_kernel(const __grid_constant__ QuestParams p,
                        const __grid_constant__ MaskerParams m,
                        const int32_t* __restrict__ page_list, int64_t page_cap,
                        int32_t* __restrict__ picks, int64_t pick_cap) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage s_tmp;
  __shared__ int s_len;
  const int64_t row = blockIdx.x;
  const int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads, b = row / (p.q_len * p.heads);
  const int64_t last = min(p.k_len - p.q_len + i, p.k_len - 1);
  const int32_t* chosen = page_list + row * page_cap;
  const int n =
      masker_detail::block_row_length<kThreads>(chosen, static_cast<int>(page_cap), &s_len);
  int32_t* dst = picks + row * pick_cap;
  const int64_t span = static_cast<int64_t>(n) * p.page_size;
  int done = 0;  // keys listed so far
  for (int64_t base = 0; base < span; base += kThreads) {
    const int64_t y = base + threadIdx.x;
    int64_t j = 0;
    bool keep = false;
    if (y < span) {
      j = static_cast<int64_t>(chosen[y / p.page_size]) * p.page_size + y % p.page_size;
      keep = j <= last && any_allowed(m, b, h, i, j, j + 1);
    }
    int before, chunk;
    Scan(s_tmp).ExclusiveSum(keep ? 1 : 0, before, chunk);
    if (keep && done + before < pick_cap) dst[done + before] = static_cast<int32_t>(j);
    done += chunk;
    __syncthreads();
  }
  const int listed = static_cast<int>(min(static_cast<int64_t>(done), pick_cap));
  masker_detail::merge_row<kThreads>(
      p.prev_idx + row * p.prev_cap, p.prev_probs + row * p.prev_cap, static_cast<int>(p.prev_cap),
      masker_detail::PickList{dst, 0, listed}, p.out_idx + row * p.out_cap,
      p.out_probs + row * p.out_cap, static_cast<int>(p.out_cap), s_tmp, &s_len);
}

// Calls f(c, label) for c in [0, n) in order, with the labels of row x (element stride `stride`)
// on channels ch[0, n) (-1: outside the row, reads 0), pseudo-quantised when bits < 16: the
// CPU's double_sparsity_labels.
template <typename T, typename F>
__device__ __forceinline__ void for_each_label(const T* x, int64_t stride, const int* ch, int n,
                                               int bits, F f) {
  auto value = [&](int c) {
    const int k = ch[c];
    return k >= 0 ? to_float32(x[k * stride]) : 0.0f;
  };
  if (bits >= 16) {
    for (int c = 0; c < n; ++c) f(c, value(c));
    return;
  }
  float lo = value(0), hi = lo;
  for (int c = 1; c < n; ++c) fold_min_max(value(c), &lo, &hi);
  const Quantizer quantize(lo, hi, bits);
  for (int c = 0; c < n; ++c) f(c, quantize(value(c)));
}

// Grid (batch * heads, pitch / kDsKeys, q_len / kDsRows); thread = key j of head h, block rows =
// queries [i0, i0 + kDsRows). Dynamic shared memory: the rows' query labels (kDsRows x
// num_channels floats), then the head's channels (num_channels ints). Writes every entry of every
// row's workspace (padding included): 0 for a non-candidate, else the key of
// labels(q).labels(k) / score_divisor + mask.
template <typename T>
__global__ void __launch_bounds__(kDsKeys)
    ds_score_kernel(const __grid_constant__ DoubleSparsityParams p,
                    const __grid_constant__ MaskerParams m, uint32_t* __restrict__ keys,
                    int64_t pitch) {
  extern __shared__ float s_dyn[];
  const int n = static_cast<int>(p.num_channels);
  float* s_ql = s_dyn;
  int* s_ch = reinterpret_cast<int*>(s_dyn + kDsRows * n);
  const int tid = threadIdx.x;
  const int64_t b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int64_t kvh = h / (p.heads / p.kv_heads);
  const int64_t i0 = static_cast<int64_t>(blockIdx.z) * kDsRows;
  const int nrows = static_cast<int>(min(static_cast<int64_t>(kDsRows), p.q_len - i0));
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kDsKeys + tid;
  const int64_t shift = p.k_len - p.q_len;

  for (int c = tid; c < n; c += kDsKeys) {
    const int64_t k = p.channels[h * p.channel_stride[0] + c * p.channel_stride[1]];
    s_ch[c] = (k >= 0 && k < p.head_dim) ? static_cast<int>(k) : -1;
  }
  __syncthreads();
  if (tid < nrows) {
    const T* qrow = static_cast<const T*>(p.q) + b * p.q_stride[0] + h * p.q_stride[1] +
                    (i0 + tid) * p.q_stride[2];
    float* dst = s_ql + tid * n;
    for_each_label(qrow, p.q_stride[3], s_ch, n, p.label_bits,
                   [&](int c, float label) { dst[c] = label; });
  }
  __syncthreads();
  if (j >= pitch) return;

  float acc[kDsRows];
#pragma unroll
  for (int r = 0; r < kDsRows; ++r) acc[r] = 0.0f;
  if (j < p.k_len && j <= shift + i0 + nrows - 1) {
    const T* krow =
        static_cast<const T*>(p.k) + b * p.k_stride[0] + kvh * p.k_stride[1] + j * p.k_stride[2];
    for_each_label(krow, p.k_stride[3], s_ch, n, p.label_bits, [&](int c, float label) {
#pragma unroll
      for (int r = 0; r < kDsRows; ++r) {
        if (r < nrows) acc[r] = add_rn(acc[r], mul_rn(s_ql[r * n + c], label));
      }
    });
  }
#pragma unroll
  for (int r = 0; r < kDsRows; ++r) {
    if (r >= nrows) break;
    const int64_t i = i0 + r;
    uint32_t key = 0u;
    if (j < p.k_len && j <= shift + i) {
      const float mv = masker_detail::mask_value(m, b, h, i, j);
      if (!isinf(mv)) key = exact_score_key(add_rn(div_rn(acc[r], p.score_divisor), mv));
    }
    keys[((b * p.heads + h) * p.q_len + i) * pitch + j] = key;
  }
}

// Selection view of a masker call for the sah/maskers_cuda.cuh kernels: shapes, the previous and
// output rows, the mask and the budget.
template <typename Params>
inline MaskerParams masker_view(const Params& p, int64_t k_len, int64_t size) {
  MaskerParams m;
  m.kind = MaskerKind::kTopK;
  m.batch = p.batch;
  m.heads = p.heads;
  m.kv_heads = p.kv_heads;
  m.q_len = p.q_len;
  m.k_len = k_len;
  m.head_dim = p.head_dim;
  m.prev_idx = p.prev_idx;
  m.prev_probs = p.prev_probs;
  m.prev_cap = p.prev_cap;
  m.mask = p.mask;
  m.mask_kind = p.mask_kind;
  for (int d = 0; d < 4; ++d) m.mask_stride[d] = p.mask_stride[d];
  m.out_idx = p.out_idx;
  m.out_probs = p.out_probs;
  m.out_cap = p.out_cap;
  m.size = size;
  return m;
}

inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }

// Bytes of the pick buffer select_topk needs after the score keys (0 without a cluster).
inline size_t select_pick_bytes(const MaskerParams& m) {
  if (masker_detail::topk_cluster_blocks(m.rows(), m.k_len) == 1) return 0;
  return align16(static_cast<size_t>(m.rows() * masker_detail::topk_pick_pitch(m)) *
                 sizeof(uint32_t));
}

// Top-k selection and merge of the score keys (rows of `pitch` entries), picks in `picks`
// (select_pick_bytes(m) bytes): sah::cuda::launch_topk_select.
inline Status select_topk(const MaskerParams& m, uint32_t* keys, int64_t pitch, uint32_t* picks,
                          cudaStream_t stream) {
  return launch_topk_select(m, keys, pitch, stream, picks);
}

// Quest workspace: per row, the page score keys (pitch entries), the chosen pages and their
// (unused) probabilities (page_cap entries each), the expanded keys (pick_cap entries), then
// select_topk's pick buffer.
struct QuestLayout {
  int64_t pages = 0, pitch = 0, page_cap = 0, pick_cap = 0;
  size_t page_off = 0, prob_off = 0, pick_off = 0, select_off = 0, bytes = 0;
};

inline QuestLayout quest_layout(const QuestParams& p) {
  QuestLayout w;
  w.pages = (p.k_len + p.page_size - 1) / p.page_size;
  w.pitch = masker_detail::score_pitch(w.pages);
  w.page_cap = p.num_pages_to_pick < w.pages ? p.num_pages_to_pick : w.pages;
  w.pick_cap = w.page_cap * p.page_size < p.k_len ? w.page_cap * p.page_size : p.k_len;
  const size_t rows = static_cast<size_t>(p.rows());
  w.page_off = align16(rows * w.pitch * sizeof(uint32_t));
  w.prob_off = w.page_off + align16(rows * w.page_cap * sizeof(int32_t));
  w.pick_off = w.prob_off + align16(rows * w.page_cap * sizeof(float));
  w.select_off = w.pick_off + align16(rows * w.pick_cap * sizeof(int32_t));
  w.bytes = w.select_off + select_pick_bytes(masker_view(p, w.pages, p.num_pages_to_pick));
  return w;
}

// Output rows = the previous rows (clamped probabilities): what a zero budget selects.
template <typename Params>
inline Status copy_prev_rows(const Params& p, cudaStream_t stream) {
  return mask_union(p.prev_idx, p.prev_probs, p.prev_cap, p.prev_idx, p.prev_probs, 0, p.out_idx,
                    p.out_probs, p.out_cap, p.rows(), stream);
}

}  // namespace page_detail

// Sizes the Quest kernels support: rows, keys and row capacities in int32, batch * kv_heads and
// the query rows of a GQA group / kPageRows in a grid dimension.
inline bool quest_sizes_fit(const QuestParams& p) {
  if (p.batch < 0 || p.heads < 0 || p.q_len < 0 || p.k_len < 0 || p.head_dim < 0 ||
      p.kv_heads <= 0 || p.heads % p.kv_heads != 0 || p.page_size < 1 || p.num_pages_to_pick < 0) {
    return false;
  }
  const int64_t group_rows = p.heads / p.kv_heads * p.q_len;
  return p.rows() <= INT_MAX && p.k_len <= INT_MAX - 8 && p.prev_cap <= INT_MAX &&
         p.out_cap <= INT_MAX && p.batch * p.kv_heads <= kMaxGridYZ &&
         (group_rows + page_detail::kPageRows - 1) / page_detail::kPageRows <= kMaxGridYZ;
}

// Sizes the DoubleSparsity kernels support: rows, keys and row capacities in int32, the key tiles
// and query tiles in a grid dimension, at most kMaxDsChannels scored channels.
constexpr int64_t kMaxDsChannels = 1024;
constexpr int64_t kMaxDsKeys = kMaxGridYZ * page_detail::kDsKeys;
inline bool double_sparsity_sizes_fit(const DoubleSparsityParams& p) {
  if (p.batch < 0 || p.heads < 0 || p.q_len < 0 || p.k_len < 0 || p.kv_heads <= 0 ||
      p.heads % p.kv_heads != 0 || p.size < 0) {
    return false;
  }
  return p.rows() <= INT_MAX && p.k_len <= kMaxDsKeys && p.prev_cap <= INT_MAX &&
         p.out_cap <= INT_MAX && p.num_channels >= 1 && p.num_channels <= kMaxDsChannels &&
         (p.q_len + page_detail::kDsRows - 1) / page_detail::kDsRows <= kMaxGridYZ;
}

// Rewrites pages [p.first_page, p.num_pages()) of p.page_min / p.page_max from keys of type T
// (float, double, __half, __nv_bfloat16).
template <typename T>
Status quest_page_stats(const PageStatsParams& p, cudaStream_t stream) {
  using namespace page_detail;
  if (p.batch < 0 || p.kv_heads < 0 || p.k_len < 0 || p.head_dim < 0 || p.page_size < 1 ||
      p.first_page < 0) {
    return Status::kBadArgument;
  }
  const int64_t pages = p.num_pages() - p.first_page;
  const int64_t total = p.items() * p.head_dim;
  if (pages <= 0 || total == 0) return Status::kOk;
  int64_t blocks = (total + kStatsThreads - 1) / kStatsThreads;
  blocks = blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20);
  page_stats_kernel<T>
      <<<static_cast<unsigned>(blocks), kStatsThreads, 0, stream>>>(p, pages, total);
  return masker_detail::launch_status();
}

// Pseudo-quantised copy (label_bits `bits`, per page over head_dim) of pages [0, pages) of page
// statistics (slabs, page_cap, head_dim) into dst (slabs, pages, head_dim).
inline Status quest_quantize_pages(const float* src, int64_t slabs, int64_t page_cap, int64_t pages,
                                   int64_t head_dim, int bits, float* dst, cudaStream_t stream) {
  using namespace page_detail;
  if (slabs < 0 || pages < 0 || page_cap < pages || head_dim < 0 || bits < 1 || bits > 16) {
    return Status::kBadArgument;
  }
  const int64_t rows = slabs * pages;
  if (rows == 0 || head_dim == 0) return Status::kOk;
  constexpr int64_t kWarps = kQuantThreads / 32;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) return Status::kBadArgument;
  quantize_pages_kernel<<<static_cast<unsigned>(blocks), kQuantThreads, 0, stream>>>(
      src, page_cap, pages, rows, head_dim, bits, dst);
  return masker_detail::launch_status();
}

// Workspace bytes of quest_mask (from shapes and the page budget only; 0 for a zero budget).
inline size_t quest_workspace_bytes(const QuestParams& p) {
  const page_detail::QuestLayout w = page_detail::quest_layout(p);
  return w.page_cap > 0 ? w.bytes : 0;
}

// Quest over queries of type T (float, double, __half, __nv_bfloat16) and float32 page bounds
// (already pseudo-quantised when asked for); workspace: quest_workspace_bytes(p) bytes,
// 16-byte aligned.
template <typename T>
Status quest_mask(const QuestParams& p, void* workspace, cudaStream_t stream) {
  using namespace page_detail;
  if (!quest_sizes_fit(p)) return Status::kBadArgument;
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  const QuestLayout w = quest_layout(p);
  if (w.page_cap == 0) return copy_prev_rows(p, stream);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return Status::kBadArgument;
  }
  char* base = static_cast<char*>(workspace);
  uint32_t* keys = reinterpret_cast<uint32_t*>(base);
  int32_t* page_list = reinterpret_cast<int32_t*>(base + w.page_off);
  int32_t* picks = reinterpret_cast<int32_t*>(base + w.pick_off);
  // Page selection: the top num_pages_to_pick candidate pages of each row, no previous row.
  MaskerParams sel = masker_view(p, w.pages, p.num_pages_to_pick);
  sel.prev_cap = 0;
  sel.out_idx = page_list;
  sel.out_probs = reinterpret_cast<float*>(base + w.prob_off);
  sel.out_cap = w.page_cap;

  const int64_t group_rows = p.heads / p.kv_heads * p.q_len;
  const dim3 grid(static_cast<unsigned>((w.pitch + kPageTile - 1) / kPageTile),
                  static_cast<unsigned>(p.batch * p.kv_heads),
                  static_cast<unsigned>((group_rows + kPageRows - 1) / kPageRows));
  page_score_kernel<T><<<grid, kPageTile, 0, stream>>>(p, sel, w.pages, keys, w.pitch);
  Status st = masker_detail::launch_status();
  if (st != Status::kOk) return st;
  st = select_topk(sel, keys, w.pitch, reinterpret_cast<uint32_t*>(base + w.select_off), stream);
  if (st != Status::kOk) return st;
  const unsigned rows = static_cast<unsigned>(p.rows());
  expand_pages_kernel<kExpandThreads>
      <<<rows, kExpandThreads, 0, stream>>>(p, sel, page_list, w.page_cap, picks, w.pick_cap);
  return masker_detail::launch_status();
}

// Workspace bytes of double_sparsity_mask (from shapes and the budget only; 0 for a zero
// budget): the score keys, then select_topk's pick buffer.
inline size_t double_sparsity_workspace_bytes(const DoubleSparsityParams& p) {
  using namespace page_detail;
  if (p.size == 0 || p.k_len == 0) return 0;
  const size_t keys = static_cast<size_t>(p.rows() * masker_detail::score_pitch(p.k_len));
  return align16(keys * sizeof(uint32_t)) + select_pick_bytes(masker_view(p, p.k_len, p.size));
}

// DoubleSparsity over q/k elements of type T (float, double, __half, __nv_bfloat16);
// p.key_labels is unused; workspace: double_sparsity_workspace_bytes(p) bytes, 16-byte aligned.
template <typename T>
Status double_sparsity_mask(const DoubleSparsityParams& p, void* workspace, cudaStream_t stream) {
  using namespace page_detail;
  if (!double_sparsity_sizes_fit(p)) return Status::kBadArgument;
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  if (p.size == 0 || p.k_len == 0) return copy_prev_rows(p, stream);
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return Status::kBadArgument;
  }
  uint32_t* keys = static_cast<uint32_t*>(workspace);
  const MaskerParams m = masker_view(p, p.k_len, p.size);
  const int64_t pitch = masker_detail::score_pitch(p.k_len);
  const dim3 grid(static_cast<unsigned>(p.batch * p.heads),
                  static_cast<unsigned>((pitch + kDsKeys - 1) / kDsKeys),
                  static_cast<unsigned>((p.q_len + kDsRows - 1) / kDsRows));
  const size_t smem = static_cast<size_t>(p.num_channels) * (kDsRows * sizeof(float) + sizeof(int));
  ds_score_kernel<T><<<grid, kDsKeys, smem, stream>>>(p, m, keys, pitch);
  const Status st = masker_detail::launch_status();
  if (st != Status::kOk) return st;
  const size_t key_bytes = align16(static_cast<size_t>(p.rows() * pitch) * sizeof(uint32_t));
  uint32_t* picks = reinterpret_cast<uint32_t*>(static_cast<char*>(workspace) + key_bytes);
  return select_topk(m, keys, pitch, picks, stream);
}

}  // namespace cuda
}  // namespace sah
