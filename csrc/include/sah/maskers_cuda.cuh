// Torch-free CUDA kernels of the fixed maskers (sink, local window, oracle top-k, oracle top-p);
// sah/maskers_cpu.h holds the reference semantics. Kernels never synchronise with the host and
// assume valid previous rows (strictly ascending indices in [0, k_len), then -1 padding).
//
// Sink / local: one block per row finds the first / last `size` keys the query may see (in the
// workspace, only when an attention mask can remove keys) and merges them with the previous row.
// Oracle top-k / top-p: (1) a scoring kernel reads each key row once per kv head and scores it
// against every query row of its GQA group, writing one order-preserving uint32 key per
// (row, key) into the workspace (0 = not a candidate); (2) one block per row knocks out the keys
// of the previous row, finds the selection threshold with three radix passes (11, 11 and 10
// bits) of a shared-memory histogram (counts for top-k, fixed-point exp-mass for top-p),
// compacts the picks in ascending key order in place over the row's workspace (ties at the
// threshold: lowest key indices), and merges them with the previous row (the two are disjoint:
// each entry's place is its index plus a binary search in the other list, the previous row
// staged in shared memory). Decode rows (few, long) use a cluster of blocks per row instead.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cooperative_groups.h>
#include <cub/block/block_scan.cuh>
#include <type_traits>

#include "sah/attention_params.h"
#include "sah/cluster_launch.cuh"
#include "sah/maskers_cpu.h"

namespace sah {
namespace cuda {
namespace masker_detail {

constexpr int kScoreKeys = 256;  // keys per scoring block, one per thread
constexpr int kScoreRows = 8;    // query rows per scoring block
constexpr int kScoreChunk = 32;  // head-dim columns staged in shared memory per step
constexpr int kSelectThreads = 512;
constexpr int kWindowThreads = 256;
constexpr int kMaxBins = 2048;
constexpr int kNumPasses = 3;
constexpr int kLoadUnroll = 8;  // uint4 loads in flight per thread in a histogram pass
static_assert(kScoreRows * kScoreChunk == kScoreKeys, "one query element per thread");

// Digits of the three radix passes, most significant first: bits [21, 32), [10, 21), [0, 10).
__host__ __device__ constexpr int pass_shift(int pass) {
  return pass == 0 ? 21 : pass == 1 ? 10 : 0;
}
__host__ __device__ constexpr int pass_bits(int pass) { return pass == 2 ? 10 : 11; }

// Keys per workspace row: a multiple of 4 so that every row is 16-byte aligned.
__host__ __device__ constexpr int64_t score_pitch(int64_t k_len) { return (k_len + 3) / 4 * 4; }

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(double x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }

// Additive mask value at (b, h, i, j), as mask_value_at in attention_cpu.h (-inf = forbidden).
__device__ __forceinline__ float mask_value(const MaskerParams& p, int64_t b, int64_t h, int64_t i,
                                            int64_t j) {
  if (p.mask_kind == MaskKind::kNone) return 0.0f;
  const float inf = __int_as_float(0x7f800000);
  const int64_t off = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] +
                      j * p.mask_stride[3];
  switch (p.mask_kind) {
    case MaskKind::kBool:
      return static_cast<const unsigned char*>(p.mask)[off] != 0 ? 0.0f : -inf;
    case MaskKind::kFloat32: {
      const float x = static_cast<const float*>(p.mask)[off];
      return x <= -FLT_MAX ? -inf : x;
    }
    case MaskKind::kFloat64: {
      const double x = static_cast<const double*>(p.mask)[off];
      return x <= -DBL_MAX ? -inf : static_cast<float>(x);
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

// Order-preserving uint32 key of a candidate's score (never 0; -0 and +0 tie as on the CPU).
__device__ __forceinline__ uint32_t score_key(float s) {
  uint32_t u = __float_as_uint(s == 0.0f ? 0.0f : s);
  u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  return u == 0u ? 1u : u;
}

// Inverse of score_key.
__device__ __forceinline__ float key_score(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ float clamp01(float x) { return fminf(1.0f, fmaxf(0.0f, x)); }

// acc[r] += q[r][c] * k[c] over one staged chunk, columns in ascending order.
template <int R>
__device__ __forceinline__ void accumulate(const float* krow, const float (*s_q)[kScoreChunk],
                                           float* acc) {
#pragma unroll
  for (int c = 0; c < kScoreChunk; c += 4) {
    const float k0 = krow[c], k1 = krow[c + 1], k2 = krow[c + 2], k3 = krow[c + 3];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 q = *reinterpret_cast<const float4*>(&s_q[r][c]);
      acc[r] = fmaf(q.x, k0, acc[r]);
      acc[r] = fmaf(q.y, k1, acc[r]);
      acc[r] = fmaf(q.z, k2, acc[r]);
      acc[r] = fmaf(q.w, k3, acc[r]);
    }
  }
}

// Stages keys [j0, j0 + kScoreKeys) x columns [c0, c0 + kScoreChunk) as floats (0 outside the
// tensor). kVec: 16-byte loads (k_stride[3] == 1, head_dim a multiple of 16 / sizeof(T), 16-byte
// aligned rows); else element loads. Loads are batched in registers before the shared stores
// (a generic pointer may alias shared memory, which would serialise load-store pairs).
template <typename T, bool kVec>
__device__ __forceinline__ void stage_keys(const MaskerParams& p, const T* kbase, int64_t j0,
                                           int64_t c0, float (*s_k)[kScoreChunk + 1]) {
  const int tid = threadIdx.x;
  if constexpr (kVec) {
    constexpr int kPerVec = 16 / sizeof(T);
    constexpr int kVecsPerKey = kScoreChunk / kPerVec;  // == vectors per thread
    constexpr int kBatch = kVecsPerKey < 4 ? kVecsPerKey : 4;
#pragma unroll
    for (int v0 = 0; v0 < kVecsPerKey; v0 += kBatch) {
      uint4 buf[kBatch];
#pragma unroll
      for (int v = 0; v < kBatch; ++v) {
        const int e = tid + (v0 + v) * kScoreKeys, kk = e / kVecsPerKey;
        const int64_t col = c0 + (e % kVecsPerKey) * kPerVec;
        buf[v] = (j0 + kk < p.k_len && col < p.head_dim)
                     ? *reinterpret_cast<const uint4*>(kbase + (j0 + kk) * p.k_stride[2] + col)
                     : make_uint4(0u, 0u, 0u, 0u);
      }
#pragma unroll
      for (int v = 0; v < kBatch; ++v) {
        const int e = tid + (v0 + v) * kScoreKeys, kk = e / kVecsPerKey;
        const int c = (e % kVecsPerKey) * kPerVec;
        const T* x = reinterpret_cast<const T*>(&buf[v]);
#pragma unroll
        for (int t = 0; t < kPerVec; ++t) s_k[kk][c + t] = to_f(x[t]);
      }
    }
  } else {
    // Thread -> column col of keys lead, lead + 8, ...: each warp reads one key's chunk.
    constexpr int kStep = kScoreKeys / kScoreChunk, kBatch = 8;
    const int col = tid % kScoreChunk, lead = tid / kScoreChunk;
    const bool col_ok = c0 + col < p.head_dim;
    const T* kp = kbase + (j0 + lead) * p.k_stride[2] + (c0 + col) * p.k_stride[3];
    const int64_t kstep = kStep * p.k_stride[2];
#pragma unroll
    for (int b0 = 0; b0 < kScoreChunk; b0 += kBatch) {
      float buf[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int kk = lead + (b0 + u) * kStep;
        buf[u] = (col_ok && j0 + kk < p.k_len) ? to_f(kp[(b0 + u) * kstep]) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) s_k[lead + (b0 + u) * kStep][col] = buf[u];
    }
  }
}

// Grid (pitch / kScoreKeys, batch * kv_heads, group rows / kScoreRows). Block rows are the query
// rows r = i * group + g of one kv head (head kvh * group + g, query i). Writes every key of
// every row's workspace (padding included): 0 for a non-candidate, else score_key(score).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kScoreKeys)
    score_kernel(const __grid_constant__ MaskerParams p, uint32_t* __restrict__ keys,
                 int64_t pitch) {
  __shared__ float s_k[kScoreKeys][kScoreChunk + 1];
  __shared__ __align__(16) float s_q[kScoreRows][kScoreChunk];
  const int tid = threadIdx.x;
  const int64_t group = p.heads / p.kv_heads;
  const int64_t b = blockIdx.y / p.kv_heads, kvh = blockIdx.y % p.kv_heads;
  const int64_t r0 = static_cast<int64_t>(blockIdx.z) * kScoreRows;
  const int nrows = static_cast<int>(min(static_cast<int64_t>(kScoreRows), group * p.q_len - r0));
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kScoreKeys, j = j0 + tid;
  const int64_t shift = p.k_len - p.q_len;  // query i sits at absolute position shift + i
  const int64_t max_pos = shift + (r0 + nrows - 1) / group;
  float acc[kScoreRows];
#pragma unroll
  for (int r = 0; r < kScoreRows; ++r) acc[r] = 0.0f;

  if (j0 <= max_pos && j0 < p.k_len) {  // block-uniform: skip tiles no row of the block can see
    const T* qbase = static_cast<const T*>(p.q) + b * p.q_stride[0];
    const T* kbase = static_cast<const T*>(p.k) + b * p.k_stride[0] + kvh * p.k_stride[1];
    const int col = tid % kScoreChunk, lead = tid / kScoreChunk;
    for (int64_t c0 = 0; c0 < p.head_dim; c0 += kScoreChunk) {
      {  // thread -> query element (row lead, column col)
        float v = 0.0f;
        if (lead < nrows && c0 + col < p.head_dim) {
          const int64_t gr = r0 + lead, i = gr / group, h = kvh * group + gr % group;
          v = to_f(qbase[h * p.q_stride[1] + i * p.q_stride[2] + (c0 + col) * p.q_stride[3]]);
        }
        s_q[lead][col] = v;
      }
      stage_keys<T, kVec>(p, kbase, j0, c0, s_k);
      __syncthreads();
      if (nrows > 4) {
        accumulate<8>(s_k[tid], s_q, acc);
      } else {
        accumulate<4>(s_k[tid], s_q, acc);
      }
      __syncthreads();
    }
  }
  if (j >= pitch) return;
#pragma unroll
  for (int r = 0; r < kScoreRows; ++r) {
    if (r >= nrows) break;
    const int64_t gr = r0 + r, i = gr / group, h = kvh * group + gr % group;
    uint32_t key = 0u;
    if (j < p.k_len && j <= shift + i) {
      const float mv = mask_value(p, b, h, i, j);
      if (!isinf(mv)) {
        const float dot = p.kind == MaskerKind::kTopK ? acc[r] : __fmul_rn(p.scale, acc[r]);
        key = score_key(__fadd_rn(dot, mv));
      }
    }
    keys[((b * p.heads + h) * p.q_len + i) * pitch + j] = key;
  }
}

// A row's new picks, ascending: idx[0, n) or, when idx is null, first, first + 1, ...
struct PickList {
  const int32_t* idx;
  int32_t first;
  int n;
  __device__ __forceinline__ int32_t at(int y) const { return idx != nullptr ? idx[y] : first + y; }
};

// First position in [0, n) whose value is >= key (at(.) ascending).
template <typename Get>
__device__ __forceinline__ int lower_bound(Get at, int n, int32_t key) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (at(mid) < key) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Length of a row: its first negative entry (cap if none); every thread must call.
template <int kThreads>
__device__ __forceinline__ int block_row_length(const int32_t* idx, int cap, int* s_len) {
  if (threadIdx.x == 0) *s_len = cap;
  __syncthreads();
  for (int t = threadIdx.x; t < cap; t += kThreads) {
    if (idx[t] < 0) atomicMin(s_len, t);
  }
  __syncthreads();
  const int n = *s_len;
  __syncthreads();
  return n;
}

// Previous-row entries a block stages in shared memory (8 KB) for its merge (binary searches).
constexpr int kPrevStage = 2048;

// The previous row's first na entries in shared memory when they fit (else the row itself, in
// global memory). Every thread must call.
template <int kThreads>
__device__ __forceinline__ const int32_t* stage_prev(const int32_t* prev, int na, int32_t* s_prev) {
  if (na > kPrevStage) return prev;
  for (int t = threadIdx.x; t < na; t += kThreads) s_prev[t] = prev[t];
  __syncthreads();
  return s_prev;
}

// Writes the union of the previous row and the picks (probability 1) into the output row:
// clamp-add on common keys, ascending, tail padded with -1 / 0. An entry lands at the number of
// distinct keys below it: its index in its own list, plus the keys of the other list below it,
// minus the common keys below it (a running block scan). Every thread must call.
template <int kThreads>
__device__ void merge_row(const int32_t* prev, const float* pprev, int prev_cap,
                          const PickList& picks, int32_t* out, float* pout, int out_cap,
                          typename cub::BlockScan<int, kThreads>::TempStorage& tmp, int* s_len) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ int32_t s_prev[kPrevStage];
  const int na = block_row_length<kThreads>(prev, prev_cap, s_len);
  prev = stage_prev<kThreads>(prev, na, s_prev);
  const int nb = picks.n;
  auto prev_at = [prev](int x) { return prev[x]; };
  auto pick_at = [&picks](int y) { return picks.at(y); };

  int common = 0;
  for (int base = 0; base < na; base += kThreads) {
    const int x = base + threadIdx.x;
    int32_t key = 0;
    int y = 0;
    bool dup = false;
    if (x < na) {
      key = prev[x];
      y = lower_bound(pick_at, nb, key);
      dup = y < nb && picks.at(y) == key;
    }
    int before, chunk;
    Scan(tmp).ExclusiveSum(dup ? 1 : 0, before, chunk);
    if (x < na) {
      const int64_t pos = static_cast<int64_t>(x) + y - (common + before);
      if (pos >= 0 && pos < out_cap) {
        out[pos] = key;
        pout[pos] = clamp01(dup ? pprev[x] + 1.0f : pprev[x]);
      }
    }
    common += chunk;
    __syncthreads();
  }
  const int total_common = common;

  common = 0;
  for (int base = 0; base < nb; base += kThreads) {
    const int y = base + threadIdx.x;
    int32_t key = 0;
    int x = 0;
    bool dup = false;
    if (y < nb) {
      key = picks.at(y);
      x = lower_bound(prev_at, na, key);
      dup = x < na && prev[x] == key;
    }
    int before, chunk;
    Scan(tmp).ExclusiveSum(dup ? 1 : 0, before, chunk);
    if (y < nb && !dup) {
      const int64_t pos = static_cast<int64_t>(y) + x - (common + before);
      if (pos >= 0 && pos < out_cap) {
        out[pos] = key;
        pout[pos] = 1.0f;
      }
    }
    common += chunk;
    __syncthreads();
  }

  const int64_t n = static_cast<int64_t>(na) + nb - total_common;
  for (int64_t t = (n > 0 ? n : 0) + threadIdx.x; t < out_cap; t += kThreads) {
    out[t] = -1;
    pout[t] = 0.0f;
  }
}

// Writes the union of the previous row (na entries; `search` is the same entries, possibly
// staged in shared memory) and picks[0, nb), both ascending and DISJOINT (the selections knock
// the previous keys out of their candidates), into the output row: an entry lands at its index
// in its own list plus the number of entries of the other list below it; the tail is padded with
// -1 / 0. The work is split over `parts` blocks (this one is `part`); no block-wide barrier.
template <int kThreads>
__device__ void merge_disjoint(const int32_t* search, const float* pprev, int na,
                               const int32_t* picks, int nb, int32_t* out, float* pout,
                               int out_cap, int part, int parts) {
  const int stride = kThreads * parts, first = part * kThreads + static_cast<int>(threadIdx.x);
  auto pick_at = [picks](int y) { return picks[y]; };
  auto prev_at = [search](int x) { return search[x]; };
  for (int x = first; x < na; x += stride) {
    const int32_t key = search[x];
    const int pos = x + lower_bound(pick_at, nb, key);
    if (pos < out_cap) {
      out[pos] = key;
      pout[pos] = clamp01(pprev[x]);
    }
  }
  for (int y = first; y < nb; y += stride) {
    const int32_t key = picks[y];
    const int pos = y + lower_bound(prev_at, na, key);
    if (pos < out_cap) {
      out[pos] = key;
      pout[pos] = 1.0f;
    }
  }
  for (int64_t t = static_cast<int64_t>(na) + nb + first; t < out_cap; t += stride) {
    out[t] = -1;
    pout[t] = 0.0f;
  }
}

// Sink / local window: one block per row. Sink picks the first `size` keys the query may see
// (j <= pos, allowed by the mask), local the last `size` of them. Without a mask these are the
// ranges [0, size) and (pos - size, pos]; with one, a block scan walks the keys forward (sink) or
// backward (local) until `size` allowed keys are found, writing them to the row's workspace
// (local: from the end, so that they end up ascending).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    window_kernel(const __grid_constant__ MaskerParams p, int32_t* ws, int64_t ws_pitch) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage s_tmp;
  __shared__ int s_len;
  const int64_t row = blockIdx.x;
  const int64_t i = row % p.q_len, h = (row / p.q_len) % p.heads, b = row / (p.q_len * p.heads);
  const int64_t last = p.k_len - p.q_len + i;  // last key the query may see (<= k_len - 1)
  const bool sink = p.kind == MaskerKind::kSink;
  const int64_t want = last < 0 ? 0 : min(p.size, last + 1);  // picks without a mask
  PickList picks{nullptr, static_cast<int32_t>(sink ? 0 : last - want + 1),
                 static_cast<int>(want)};
  if (p.mask_kind != MaskKind::kNone && want > 0) {
    int32_t* dst = ws + row * ws_pitch;
    int done = 0;  // allowed keys met so far
    for (int64_t base = 0; base <= last && done < want; base += kThreads) {
      const int64_t step = base + threadIdx.x;  // keys in walking order
      const int64_t j = sink ? step : last - step;
      const bool keep = step <= last && !isinf(mask_value(p, b, h, i, j));
      int before, chunk;
      Scan(s_tmp).ExclusiveSum(keep ? 1 : 0, before, chunk);
      const int rank = done + before;
      if (keep && rank < want) dst[sink ? rank : ws_pitch - 1 - rank] = static_cast<int32_t>(j);
      done += chunk;
      __syncthreads();
    }
    const int n = static_cast<int>(min(static_cast<int64_t>(done), want));
    picks = PickList{sink ? dst : dst + (ws_pitch - n), 0, n};
  }
  merge_row<kThreads>(p.prev_idx + row * p.prev_cap, p.prev_probs + row * p.prev_cap,
                      static_cast<int>(p.prev_cap), picks, p.out_idx + row * p.out_cap,
                      p.out_probs + row * p.out_cap, static_cast<int>(p.out_cap), s_tmp, &s_len);
}

// Calls f(key) for every key of a row of nvec uint4; the trip count is block-uniform (keys past
// the end read as 0) so that f may use warp collectives.
template <int kThreads, typename F>
__device__ __forceinline__ void for_each_key(const uint32_t* row, int64_t nvec, F f) {
  const uint4* v = reinterpret_cast<const uint4*>(row);
  for (int64_t base = 0; base < nvec; base += static_cast<int64_t>(kThreads) * kLoadUnroll) {
    uint4 buf[kLoadUnroll];
#pragma unroll
    for (int u = 0; u < kLoadUnroll; ++u) {
      const int64_t t = base + u * kThreads + threadIdx.x;
      buf[u] = t < nvec ? v[t] : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int u = 0; u < kLoadUnroll; ++u) {
      f(buf[u].x);
      f(buf[u].y);
      f(buf[u].z);
      f(buf[u].w);
    }
  }
}

template <typename W>
struct BinChoice {
  int bin;      // chosen bin, -1 if none
  W above;      // sum of the bins above it
  W total;      // sum of all bins
};

// Picks the highest non-empty bin b with ok(sum of bins >= b, total). When none qualifies and
// `fallback` is set, picks the lowest non-empty bin. Every thread must call; hist is left intact.
template <typename W, typename Ok>
__device__ BinChoice<W> choose_bin(const W* hist, int nbins, bool fallback, Ok ok,
                                   typename cub::BlockScan<W, kSelectThreads>::TempStorage& tmp,
                                   int* s_bin, int* s_low, W* s_above) {
  const int per = nbins / kSelectThreads;
  const int top = nbins - static_cast<int>(threadIdx.x) * per;  // owns bins [top - per, top)
  W local = 0;
  for (int q = 1; q <= per; ++q) local += hist[top - q];
  W before, total;
  cub::BlockScan<W, kSelectThreads>(tmp).ExclusiveSum(local, before, total);
  if (threadIdx.x == 0) {
    *s_bin = -1;
    *s_low = INT_MAX;
  }
  __syncthreads();
  W run = before;
  for (int q = 1; q <= per; ++q) {
    const int b = top - q;
    const W incl = run + hist[b];
    if (hist[b] != W(0) && ok(incl, total)) {
      atomicMax(s_bin, b);
      break;
    }
    run = incl;
  }
  for (int q = per; q >= 1; --q) {
    if (hist[top - q] != W(0)) {
      atomicMin(s_low, top - q);
      break;
    }
  }
  __syncthreads();
  int bin = *s_bin;
  if (bin < 0 && fallback && *s_low != INT_MAX) bin = *s_low;
  if (bin >= top - per && bin < top) {
    run = before;
    for (int q = 1; q <= per; ++q) {
      if (top - q == bin) *s_above = run;
      run += hist[top - q];
    }
  }
  __syncthreads();
  BinChoice<W> res{bin, bin >= 0 ? *s_above : W(0), total};
  __syncthreads();
  return res;
}

// Fixed-point unit of the top-p exp-mass: exp(score - max) <= 1 is counted in units of 2^-31.
constexpr float kMassScale = 2147483648.0f;

// Histogram of digit `pass` over the candidate keys whose higher digits equal `prefix`: counts
// (top-k) or fixed-point exp(score - mx) (top-p; exact integer sums, so order-independent and
// deterministic). The 64-bit sums are kept as two 32-bit words (native shared atomics), the
// carry added by the one thread whose addition wraps the low word.
template <bool kTopP, typename W>
__device__ void histogram(const uint32_t* row, int64_t nvec, int pass, uint32_t prefix, float mx,
                          W* hist) {
  const int shift = pass_shift(pass), nbins = 1 << pass_bits(pass);
  const int high = shift + pass_bits(pass);
  const uint32_t hi_mask = high >= 32 ? 0u : ~((1u << high) - 1u);
  for (int b = threadIdx.x; b < nbins; b += kSelectThreads) hist[b] = W(0);
  __syncthreads();
  for_each_key<kSelectThreads>(row, nvec, [&](uint32_t k) {
    if (k == 0u || (k & hi_mask) != prefix) return;
    const int digit = static_cast<int>((k >> shift) & static_cast<uint32_t>(nbins - 1));
    if constexpr (kTopP) {
      static_assert(sizeof(W) == 8, "64-bit mass");
      const unsigned q = __float2uint_rn(__expf(key_score(k) - mx) * kMassScale);
      unsigned* word = reinterpret_cast<unsigned*>(&hist[digit]);  // little endian: low first
      const unsigned old = atomicAdd(&word[0], q);
      if (old + q < old) atomicAdd(&word[1], 1u);
    } else {
      atomicAdd(&hist[digit], 1);
    }
  });
  __syncthreads();
}

// Writes to dst, in ascending order, the indices j (key_base + position in src) of the keys of src
// that are > thr, or == thr among the first take_eq such keys counting eq_done earlier ones; a
// pick lands at gt_done + (picks > thr before it here) + min(keys == thr before it, take_eq).
// Returns the numbers of keys > thr and == thr in src. dst may equal src (in place, with zero
// offsets): the n-th pick's index is >= n, and a chunk is fully read before any pick is written.
__device__ inline int2 compact_picks_to(const uint32_t* src, int64_t nvec, int64_t key_base, uint32_t thr,
                                 int take_eq, int gt_done, int eq_done, uint32_t* dst,
                                 cub::BlockScan<unsigned long long, kSelectThreads>::TempStorage& tmp) {
  using Scan = cub::BlockScan<unsigned long long, kSelectThreads>;
  int gt_here = 0, eq_here = 0;  // totals of the earlier chunks of src
  const uint4* v = reinterpret_cast<const uint4*>(src);
  for (int64_t base = 0; base < nvec; base += static_cast<int64_t>(kSelectThreads) * 4) {
    const int64_t first = base + static_cast<int64_t>(threadIdx.x) * 4;  // 16 consecutive keys
    uint32_t k[16];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const uint4 x = first + u < nvec ? v[first + u] : make_uint4(0u, 0u, 0u, 0u);
      k[4 * u] = x.x;
      k[4 * u + 1] = x.y;
      k[4 * u + 2] = x.z;
      k[4 * u + 3] = x.w;
    }
    int gt = 0, eq = 0;
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      gt += k[e] > thr ? 1 : 0;
      eq += (k[e] == thr && k[e] != 0u) ? 1 : 0;
    }
    const unsigned long long mine = (static_cast<unsigned long long>(gt) << 32) | eq;
    unsigned long long before, total;
    Scan(tmp).ExclusiveSum(mine, before, total);
    int eq_seen = eq_done + eq_here + static_cast<int>(before & 0xffffffffu);
    int out = gt_done + gt_here + static_cast<int>(before >> 32) + min(eq_seen, take_eq);
#pragma unroll
    for (int e = 0; e < 16; ++e) {
      bool pick = k[e] > thr;
      if (!pick && k[e] == thr && k[e] != 0u) pick = eq_seen++ < take_eq;
      if (pick) dst[out++] = static_cast<uint32_t>(key_base + first * 4 + e);
    }
    gt_here += static_cast<int>(total >> 32);
    eq_here += static_cast<int>(total & 0xffffffffu);
    __syncthreads();
  }
  return make_int2(gt_here, eq_here);
}

// In-place compaction of a whole row (see compact_picks_to); returns the number of picks.
__device__ inline int compact_picks(uint32_t* row, int64_t nvec, uint32_t thr, int take_eq,
                             cub::BlockScan<unsigned long long, kSelectThreads>::TempStorage& tmp) {
  const int2 n = compact_picks_to(row, nvec, 0, thr, take_eq, 0, 0, row, tmp);
  return n.x + min(n.y, take_eq);
}

// Oracle top-k (kTopP false) or top-p selection and merge: one block per row.
template <bool kTopP>
__global__ void __launch_bounds__(kSelectThreads)
    select_kernel(const __grid_constant__ MaskerParams p, uint32_t* scores, int64_t pitch) {
  using W = std::conditional_t<kTopP, unsigned long long, int>;
  using ScanW = cub::BlockScan<W, kSelectThreads>;
  using ScanU = cub::BlockScan<unsigned long long, kSelectThreads>;
  __shared__ union {
    typename ScanW::TempStorage w;
    typename ScanU::TempStorage u;
  } s_tmp;
  __shared__ W s_hist[kMaxBins];
  __shared__ W s_above;
  __shared__ int s_bin, s_low, s_len;
  __shared__ unsigned s_max;
  __shared__ int32_t s_prev[kPrevStage];

  const int64_t row = blockIdx.x;
  uint32_t* keys = scores + row * pitch;
  const int64_t nvec = pitch / 4;
  const int32_t* prev = p.prev_idx + row * p.prev_cap;
  if (threadIdx.x == 0) s_max = 0u;
  // The previous row's keys are never candidates.
  for (int64_t t = threadIdx.x; t < p.prev_cap; t += kSelectThreads) {
    const int32_t j = prev[t];
    if (j >= 0 && j < p.k_len) keys[j] = 0u;
  }
  __syncthreads();

  uint32_t thr = 0u;  // picks: keys > thr, and the first take_eq keys == thr
  int take_eq = 0;
  bool none = false;
  if constexpr (kTopP) {
    unsigned m = 0u;
    for_each_key<kSelectThreads>(keys, nvec, [&](uint32_t k) { m = max(m, k); });
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffffu, m, o));  // any arch
    if ((threadIdx.x & 31) == 0) atomicMax(&s_max, m);
    __syncthreads();
    m = s_max;
    none = m == 0u;
    if (!none && p.top_p < 1.0f) {  // top_p >= 1 keeps every candidate (thr = 0)
      const float mx = key_score(m);
      const double top_p = static_cast<double>(p.top_p);
      W above = 0, total = 0;
      uint32_t prefix = 0u;
      for (int pass = 0; pass < kNumPasses; ++pass) {
        histogram<true>(keys, nvec, pass, prefix, mx, s_hist);
        // Value v qualifies when the exp-mass of the scores >= v exceeds top_p of the total.
        auto ok = [&](W incl, W tot) {
          return static_cast<double>(above + incl) / static_cast<double>(pass == 0 ? tot : total) >
                 top_p;
        };
        const BinChoice<W> c = choose_bin<W>(s_hist, 1 << pass_bits(pass), pass > 0, ok, s_tmp.w,
                                             &s_bin, &s_low, &s_above);
        if (pass == 0) total = c.total;
        if (c.bin < 0) {  // pass 0: nothing qualifies, keep every candidate
          if (pass > 0) {
            thr = prefix;
            take_eq = INT_MAX;
          }
          break;
        }
        prefix |= static_cast<uint32_t>(c.bin) << pass_shift(pass);
        above += c.above;
        if (pass == kNumPasses - 1) {
          thr = prefix;
          take_eq = INT_MAX;
        }
      }
    }
  } else {
    const int64_t budget = min(p.size, p.k_len);
    int need = 0;  // picks still to place inside the current prefix
    uint32_t prefix = 0u;
    for (int pass = 0; pass < kNumPasses; ++pass) {
      histogram<false>(keys, nvec, pass, prefix, 0.0f, s_hist);
      auto ok = [&](int incl, int tot) {
        const int goal =
            pass == 0 ? static_cast<int>(min(budget, static_cast<int64_t>(tot))) : need;
        return incl >= goal;
      };
      const BinChoice<int> c =
          choose_bin<int>(s_hist, 1 << pass_bits(pass), false, ok, s_tmp.w, &s_bin, &s_low,
                          &s_above);
      if (pass == 0) {
        need = static_cast<int>(min(budget, static_cast<int64_t>(c.total)));
        if (need == 0 || c.bin < 0) {
          none = true;
          break;
        }
      }
      need -= c.above;
      prefix |= static_cast<uint32_t>(c.bin) << pass_shift(pass);
      if (s_hist[c.bin] == need || pass == kNumPasses - 1) {
        // The whole bin is taken (or the key is exact): every key == thr is a pick.
        thr = prefix;
        take_eq = pass == kNumPasses - 1 ? need : INT_MAX;
        break;
      }
      __syncthreads();  // s_hist is read above before the next pass clears it
    }
  }

  int n_picks = 0;
  if (!none) n_picks = compact_picks(keys, nvec, thr, take_eq, s_tmp.u);
  __syncthreads();
  const int na = block_row_length<kSelectThreads>(prev, static_cast<int>(p.prev_cap), &s_len);
  const int32_t* search = stage_prev<kSelectThreads>(prev, na, s_prev);
  merge_disjoint<kSelectThreads>(search, p.prev_probs + row * p.prev_cap, na,
                                 reinterpret_cast<const int32_t*>(keys), n_picks,
                                 p.out_idx + row * p.out_cap, p.out_probs + row * p.out_cap,
                                 static_cast<int>(p.out_cap), 0, 1);
}

// Oracle top-k selection of one row by a thread-block cluster (decode has few rows: one block per
// row would leave most SMs idle). Block `rank` of the cluster owns the keys of vectors
// [rank * chunk, (rank + 1) * chunk) of the row; each radix pass sums the blocks' histograms
// through distributed shared memory, so every block takes the same decisions as select_kernel;
// the picks are compacted to `picks` (pick_pitch entries per row) at offsets from the blocks'
// counts, and block 0 merges them with the previous row. Same result as select_kernel<false>.
static __global__ void __launch_bounds__(kSelectThreads, 2)
    select_topk_cluster_kernel(const __grid_constant__ MaskerParams p, uint32_t* scores,
                               int64_t pitch, uint32_t* picks, int64_t pick_pitch) {
  namespace cg = cooperative_groups;
  using ScanW = cub::BlockScan<int, kSelectThreads>;
  using ScanU = cub::BlockScan<unsigned long long, kSelectThreads>;
  __shared__ union {
    typename ScanW::TempStorage w;
    typename ScanU::TempStorage u;
  } s_tmp;
  __shared__ int s_hist[kMaxBins];  // this block's histogram (read by the whole cluster)
  __shared__ int s_sum[kMaxBins];   // the cluster's histogram
  __shared__ int s_above;
  __shared__ int s_bin, s_low, s_len;
  __shared__ int2 s_count;          // this block's picks > thr and == thr
  __shared__ int32_t s_prev[kPrevStage];

  cg::cluster_group cluster = cg::this_cluster();
  const int nblocks = static_cast<int>(cluster.num_blocks());
  const int rank = static_cast<int>(cluster.block_rank());
  const int64_t row = blockIdx.x / nblocks;
  uint32_t* keys = scores + row * pitch;
  const int64_t nvec_row = pitch / 4;
  const int64_t chunk = (nvec_row + nblocks - 1) / nblocks;
  const int64_t v0 = min(nvec_row, rank * chunk), v1 = min(nvec_row, v0 + chunk);
  uint32_t* mine = keys + v0 * 4;
  const int64_t nvec = v1 - v0;
  const int32_t* prev = p.prev_idx + row * p.prev_cap;
  // The previous row's keys are never candidates (each block clears those of its own chunk).
  for (int64_t t = threadIdx.x; t < p.prev_cap; t += kSelectThreads) {
    const int32_t j = prev[t];
    if (j >= 0 && j < p.k_len && j >= v0 * 4 && j < v1 * 4) keys[j] = 0u;
  }
  __syncthreads();

  const int64_t budget = min(p.size, p.k_len);
  uint32_t thr = 0u;
  int take_eq = 0, need = 0;
  bool none = false;
  uint32_t prefix = 0u;
  for (int pass = 0; pass < kNumPasses; ++pass) {
    const int nbins = 1 << pass_bits(pass);
    histogram<false>(mine, nvec, pass, prefix, 0.0f, s_hist);
    cluster.sync();  // every block's histogram is complete
    for (int b = threadIdx.x; b < nbins; b += kSelectThreads) {
      int total = 0;
      for (int c = 0; c < nblocks; ++c) total += cluster.map_shared_rank(s_hist, c)[b];
      s_sum[b] = total;
    }
    cluster.sync();  // no block clears its histogram while another still reads it
    auto ok = [&](int incl, int tot) {
      const int goal = pass == 0 ? static_cast<int>(min(budget, static_cast<int64_t>(tot))) : need;
      return incl >= goal;
    };
    const BinChoice<int> c =
        choose_bin<int>(s_sum, nbins, false, ok, s_tmp.w, &s_bin, &s_low, &s_above);
    if (pass == 0) {
      need = static_cast<int>(min(budget, static_cast<int64_t>(c.total)));
      if (need == 0 || c.bin < 0) {
        none = true;
        break;
      }
    }
    need -= c.above;
    prefix |= static_cast<uint32_t>(c.bin) << pass_shift(pass);
    if (s_sum[c.bin] == need || pass == kNumPasses - 1) {
      thr = prefix;
      take_eq = pass == kNumPasses - 1 ? need : INT_MAX;
      break;
    }
    __syncthreads();
  }

  int n_picks = 0;
  if (!none) {
    // Count this block's picks, then compact them after those of the lower-ranked blocks.
    int gt = 0, eq = 0;
    for_each_key<kSelectThreads>(mine, nvec, [&](uint32_t k) {
      gt += k > thr ? 1 : 0;
      eq += (k == thr && k != 0u) ? 1 : 0;
    });
    unsigned long long both = (static_cast<unsigned long long>(gt) << 32) | eq;
    unsigned long long unused, all;
    ScanU(s_tmp.u).ExclusiveSum(both, unused, all);
    if (threadIdx.x == 0) {
      s_count = make_int2(static_cast<int>(all >> 32), static_cast<int>(all & 0xffffffffu));
    }
    cluster.sync();
    int gt_before = 0, eq_before = 0, gt_all = 0, eq_all = 0;
    for (int c = 0; c < nblocks; ++c) {
      const int2 n = *cluster.map_shared_rank(&s_count, c);
      if (c < rank) {
        gt_before += n.x;
        eq_before += n.y;
      }
      gt_all += n.x;
      eq_all += n.y;
    }
    n_picks = gt_all + min(eq_all, take_eq);
    __syncthreads();
    compact_picks_to(mine, nvec, v0 * 4, thr, take_eq, gt_before, eq_before,
                     picks + row * pick_pitch, s_tmp.u);
    __threadfence();
  }
  cluster.sync();  // every block's picks are written (and no block reads s_count any more)
  // Every block merges its share of the row (the picks never repeat a previous key).
  const int na = block_row_length<kSelectThreads>(prev, static_cast<int>(p.prev_cap), &s_len);
  const int32_t* search = stage_prev<kSelectThreads>(prev, na, s_prev);
  merge_disjoint<kSelectThreads>(search, p.prev_probs + row * p.prev_cap, na,
                                 reinterpret_cast<const int32_t*>(picks + row * pick_pitch),
                                 n_picks, p.out_idx + row * p.out_cap,
                                 p.out_probs + row * p.out_cap, static_cast<int>(p.out_cap), rank,
                                 nblocks);
}

inline Status launch_status() {
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kLaunchFailed;
}

// Cluster size of the top-k selection: one block per row already fills the GPU for many rows,
// and short rows do not pay for the cluster barriers; otherwise up to 8 blocks (the portable
// maximum) per row, each owning at least 4096 keys. 1 = one block per row (select_kernel).
inline int topk_cluster_blocks(int64_t rows, int64_t k_len) {
  int c = 1;
  while (c < 8 && rows * c < 256 && k_len / (2 * c) >= 4096) c *= 2;
  return c;
}

// Picks per row of the cluster selection's pick buffer (a multiple of 4: 16-byte rows).
__host__ __device__ inline int64_t topk_pick_pitch(const MaskerParams& p) {
  const int64_t n = p.size < p.k_len ? p.size : p.k_len;
  return (n + 3) / 4 * 4;
}

// Sizes the kernels index with 32-bit integers.
inline bool sizes_fit(const MaskerParams& p) {
  return p.rows() <= INT_MAX && p.k_len <= INT_MAX - 8 && p.prev_cap <= INT_MAX &&
         p.out_cap <= INT_MAX && p.size >= 0;
}

}  // namespace masker_detail

// Workspace bytes a masker call needs (from shapes, kind and mask presence only).
inline size_t masker_workspace_bytes(const MaskerParams& p) {
  const int64_t rows = p.rows();
  switch (p.kind) {
    case MaskerKind::kSink:
    case MaskerKind::kLocal: {
      if (p.mask_kind == MaskKind::kNone) return 0;
      const int64_t pitch = p.size < p.k_len ? p.size : p.k_len;
      return pitch > 0 ? static_cast<size_t>(rows * pitch) * sizeof(int32_t) : 0;
    }
    case MaskerKind::kTopK: {
      const size_t scores = static_cast<size_t>(rows * masker_detail::score_pitch(p.k_len));
      const size_t picks = masker_detail::topk_cluster_blocks(rows, p.k_len) > 1
                               ? static_cast<size_t>(rows * masker_detail::topk_pick_pitch(p))
                               : 0;
      return (scores + picks) * sizeof(uint32_t);
    }
    case MaskerKind::kTopP:
      return static_cast<size_t>(rows * masker_detail::score_pitch(p.k_len)) * sizeof(uint32_t);
  }
  return 0;
}

// Sink or local window masker; workspace: masker_workspace_bytes(p) bytes (may be null if 0).
inline Status window_mask(const MaskerParams& p, void* workspace, cudaStream_t stream) {
  using namespace masker_detail;
  if (p.kind != MaskerKind::kSink && p.kind != MaskerKind::kLocal) return Status::kBadArgument;
  if (!sizes_fit(p) || p.q_len < 0 || p.heads < 0 || p.batch < 0) return Status::kBadArgument;
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  const int64_t pitch = p.size < p.k_len ? p.size : p.k_len;
  if (masker_workspace_bytes(p) > 0 && workspace == nullptr) return Status::kBadArgument;
  window_kernel<kWindowThreads><<<static_cast<unsigned>(p.rows()), kWindowThreads, 0, stream>>>(
      p, static_cast<int32_t*>(workspace), pitch);
  return launch_status();
}

// Top-k selection and merge of a workspace of score keys (rows of `pitch` entries, written by a
// scoring kernel): a thread-block cluster per row when masker_detail::topk_cluster_blocks asks
// for one and the device runs it (picks: rows * topk_pick_pitch(p) entries; default: right after
// the score keys, as masker_workspace_bytes sizes it), else one block per row. Both give
// select_kernel<false>'s result. Shared by every top-k masker (oracle, hash, PQ, Quest, DS).
inline Status launch_topk_select(const MaskerParams& p, uint32_t* keys, int64_t pitch,
                                 cudaStream_t stream, uint32_t* picks = nullptr) {
  using namespace masker_detail;
  const unsigned rows = static_cast<unsigned>(p.rows());
  const int cluster = topk_cluster_blocks(p.rows(), p.k_len);
  if (cluster > 1) {
    const ClusterLaunch launch(rows * cluster, kSelectThreads, cluster, 0, stream);
    if (picks == nullptr) picks = keys + p.rows() * pitch;
    // Two blocks per SM (the carveout would otherwise leave room for one): twice the clusters
    // in flight.
    (void)cudaFuncSetAttribute(select_topk_cluster_kernel,
                               cudaFuncAttributePreferredSharedMemoryCarveout,
                               cudaSharedmemCarveoutMaxShared);
    if (cudaLaunchKernelEx(&launch.config, select_topk_cluster_kernel, p, keys, pitch, picks,
                           topk_pick_pitch(p)) == cudaSuccess) {
      return launch_status();
    }
    (void)cudaGetLastError();  // no cluster support: one block per row below
  }
  select_kernel<false><<<rows, kSelectThreads, 0, stream>>>(p, keys, pitch);
  return launch_status();
}

// Oracle top-k or top-p masker over q/k elements of type T (float, double, __half,
// __nv_bfloat16); workspace: masker_workspace_bytes(p) bytes, 16-byte aligned.
template <typename T>
Status oracle_mask(const MaskerParams& p, void* workspace, cudaStream_t stream) {
  using namespace masker_detail;
  if (p.kind != MaskerKind::kTopK && p.kind != MaskerKind::kTopP) return Status::kBadArgument;
  if (!sizes_fit(p) || p.kv_heads <= 0 || p.heads % p.kv_heads != 0 || p.head_dim < 0) {
    return Status::kBadArgument;
  }
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return Status::kBadArgument;
  }
  const int64_t pitch = score_pitch(p.k_len);
  const int64_t group_rows = p.heads / p.kv_heads * p.q_len;
  const dim3 grid(static_cast<unsigned>((pitch + kScoreKeys - 1) / kScoreKeys),
                  static_cast<unsigned>(p.batch * p.kv_heads),
                  static_cast<unsigned>((group_rows + kScoreRows - 1) / kScoreRows));
  if (p.batch * p.kv_heads > 65535 || (group_rows + kScoreRows - 1) / kScoreRows > 65535) {
    return Status::kBadArgument;
  }
  uint32_t* keys = static_cast<uint32_t*>(workspace);
  constexpr int64_t kPerVec = 16 / sizeof(T);
  const bool vec = p.k_stride[3] == 1 && p.head_dim % kPerVec == 0 &&
                   p.k_stride[0] % kPerVec == 0 && p.k_stride[1] % kPerVec == 0 &&
                   p.k_stride[2] % kPerVec == 0 && reinterpret_cast<uintptr_t>(p.k) % 16 == 0;
  if (vec) {
    score_kernel<T, true><<<grid, kScoreKeys, 0, stream>>>(p, keys, pitch);
  } else {
    score_kernel<T, false><<<grid, kScoreKeys, 0, stream>>>(p, keys, pitch);
  }
  Status st = launch_status();
  if (st != Status::kOk) return st;
  if (p.kind == MaskerKind::kTopK) return launch_topk_select(p, keys, pitch, stream);
  select_kernel<true><<<static_cast<unsigned>(p.rows()), kSelectThreads, 0, stream>>>(p, keys,
                                                                                      pitch);
  return launch_status();
}

}  // namespace cuda
}  // namespace sah
