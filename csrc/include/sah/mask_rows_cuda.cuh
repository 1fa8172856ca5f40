// Torch-free CUDA kernels for masks in row form (see sah/mask_rows_cpu.h): each row lists
// distinct key indices in ascending order, padded at the end with -1, and a probability per
// entry. All tensors are contiguous with rows flattened; kernels never read or write out of
// bounds, whatever the data, and never synchronise with the host.
#pragma once
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "sah/attention_params.h"

namespace sah {
namespace cuda {

constexpr int kRowThreads = 256;  // threads of a one-block-per-row kernel

namespace rows_detail {

// Exclusive prefix sum over a block of kThreads threads; every thread must call.
template <int kThreads>
__device__ __forceinline__ int block_exclusive_scan(int x, int* total, int* s_warp) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) s_warp[warp] = incl;
  __syncthreads();
  int before = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kThreads / 32; ++w) {
    const int v = s_warp[w];
    before += w < warp ? v : 0;
    sum += v;
  }
  __syncthreads();
  *total = sum;
  return before + incl - x;
}

// First position in [0, n) whose index is >= key (a is ascending on [0, n)).
__device__ __forceinline__ int lower_bound(const int32_t* a, int n, int32_t key) {
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

__device__ __forceinline__ float clamp01(float p) { return fminf(1.0f, fmaxf(0.0f, p)); }

// True when p > 0 (subnormals included, whatever the flush-to-zero mode).
__device__ __forceinline__ bool positive(float p) {
  const int bits = __float_as_int(p);
  return bits > 0 && bits <= 0x7f800000;
}

// True when p != 0 (NaN and subnormals included, whatever the flush-to-zero mode).
__device__ __forceinline__ bool nonzero(float p) { return (__float_as_uint(p) << 1) != 0u; }

// Valid length of a row: the first position holding a negative index (cap if none). Every
// thread of the block must call; the result is the same in all threads.
template <int kThreads>
__device__ __forceinline__ int row_length(const int32_t* idx, int cap, int* s_len) {
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

// One block per row. Entry x of A lands at x + |B < key| - |common keys < key|, and an entry of
// B not in A likewise; the common-key counts are running block scans over A and over B.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    mask_union_kernel(const int32_t* __restrict__ ia, const float* __restrict__ pa, int ca,
                      const int32_t* __restrict__ ib, const float* __restrict__ pb, int cb,
                      int32_t* __restrict__ io, float* __restrict__ po, int co) {
  __shared__ int s_len;
  __shared__ int s_warp[kThreads / 32];
  const int64_t row = blockIdx.x;
  ia += row * ca;
  pa += row * ca;
  ib += row * cb;
  pb += row * cb;
  io += row * co;
  po += row * co;
  const int na = row_length<kThreads>(ia, ca, &s_len);
  const int nb = row_length<kThreads>(ib, cb, &s_len);

  int common = 0;  // common keys among the A entries scanned so far
  for (int base = 0; base < na; base += kThreads) {
    const int x = base + threadIdx.x;
    int32_t key = 0;
    int y = 0;
    bool dup = false;
    if (x < na) {
      key = ia[x];
      y = lower_bound(ib, nb, key);
      dup = y < nb && ib[y] == key;
    }
    int chunk;
    const int before = common + block_exclusive_scan<kThreads>(dup ? 1 : 0, &chunk, s_warp);
    if (x < na) {
      const int64_t pos = static_cast<int64_t>(x) + y - before;
      if (pos >= 0 && pos < co) {
        io[pos] = key;
        po[pos] = clamp01(dup ? pa[x] + pb[y] : pa[x]);
      }
    }
    common += chunk;
  }
  const int total_common = common;

  common = 0;  // common keys among the B entries scanned so far
  for (int base = 0; base < nb; base += kThreads) {
    const int y = base + threadIdx.x;
    int32_t key = 0;
    int x = 0;
    bool dup = false;
    if (y < nb) {
      key = ib[y];
      x = lower_bound(ia, na, key);
      dup = x < na && ia[x] == key;
    }
    int chunk;
    const int before = common + block_exclusive_scan<kThreads>(dup ? 1 : 0, &chunk, s_warp);
    if (y < nb && !dup) {
      const int64_t pos = static_cast<int64_t>(y) + x - before;
      if (pos >= 0 && pos < co) {
        io[pos] = key;
        po[pos] = clamp01(pb[y]);
      }
    }
    common += chunk;
  }

  const int64_t n = static_cast<int64_t>(na) + nb - total_common;
  for (int64_t t = (n > 0 ? n : 0) + threadIdx.x; t < co; t += kThreads) {
    io[t] = -1;
    po[t] = 0.0f;
  }
}

// Scatters the entries with an index in [0, n) into a zeroed dense (rows, n) array.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    rows_to_dense_kernel(const int32_t* __restrict__ idx, const float* __restrict__ prob,
                         int64_t cap, int64_t total, float* __restrict__ dense, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < total;
       e += stride) {
    const int32_t j = idx[e];
    if (j >= 0 && j < n) dense[(e / cap) * n + j] = prob[e];
  }
}

// One block per row: lists the non-zero entries of a dense row in order (capacity n).
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    dense_to_rows_kernel(const float* __restrict__ dense, int n, int32_t* __restrict__ idx,
                         float* __restrict__ prob) {
  constexpr int kPer = 4;  // consecutive entries per thread
  __shared__ int s_warp[kThreads / 32];
  const int64_t row = blockIdx.x;
  dense += row * n;
  idx += row * n;
  prob += row * n;
  int count = 0;
  for (int base = 0; base < n; base += kThreads * kPer) {
    const int t0 = base + threadIdx.x * kPer;
    float v[kPer];
    int cnt = 0;
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      v[k] = t0 + k < n ? dense[t0 + k] : 0.0f;
      cnt += nonzero(v[k]) ? 1 : 0;
    }
    int chunk;
    int pos = count + block_exclusive_scan<kThreads>(cnt, &chunk, s_warp);
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      if (nonzero(v[k])) {
        idx[pos] = t0 + k;
        prob[pos] = v[k];
        ++pos;
      }
    }
    count += chunk;
  }
  for (int t = count + threadIdx.x; t < n; t += kThreads) {
    idx[t] = -1;
    prob[t] = 0.0f;
  }
}

// One warp per row: number of entries with index >= 0 and probability > 0.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    row_counts_kernel(const int32_t* __restrict__ idx, const float* __restrict__ prob, int64_t cap,
                      int64_t rows, int32_t* __restrict__ counts) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  idx += row * cap;
  prob += row * cap;
  int c = 0;
  for (int64_t t = lane; t < cap; t += 32) c += (idx[t] >= 0 && positive(prob[t])) ? 1 : 0;
  for (int o = 16; o > 0; o >>= 1) c += __shfl_xor_sync(0xffffffffu, c, o);
  if (lane == 0) counts[row] = c;
}

inline Status launch_status() {
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kLaunchFailed;
}

}  // namespace rows_detail

// Union of rows (rows, ca) and (rows, cb) into (rows, co) with clamp-add probabilities; entries
// beyond co (only possible for unsorted or repeated input indices) are dropped.
inline Status mask_union(const int32_t* ia, const float* pa, int64_t ca, const int32_t* ib,
                         const float* pb, int64_t cb, int32_t* io, float* po, int64_t co,
                         int64_t rows, cudaStream_t stream) {
  if (rows < 0 || ca < 0 || cb < 0 || co < 0 || ca > INT_MAX || cb > INT_MAX || co > INT_MAX ||
      rows > INT_MAX) {
    return Status::kBadArgument;
  }
  if (rows == 0 || co == 0) return Status::kOk;
  rows_detail::mask_union_kernel<kRowThreads>
      <<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(
          ia, pa, static_cast<int>(ca), ib, pb, static_cast<int>(cb), io, po, static_cast<int>(co));
  return rows_detail::launch_status();
}

// Scatters rows (rows, cap) into `dense` (rows, n), which the caller has zeroed.
inline Status rows_to_dense(const int32_t* idx, const float* prob, int64_t cap, float* dense,
                            int64_t n, int64_t rows, cudaStream_t stream) {
  if (rows < 0 || cap < 0 || n < 0) return Status::kBadArgument;
  const int64_t total = rows * cap;
  if (total == 0 || n == 0) return Status::kOk;
  int64_t blocks = (total + kRowThreads - 1) / kRowThreads;
  blocks = blocks < (1 << 20) ? blocks : (1 << 20);
  rows_detail::rows_to_dense_kernel<kRowThreads>
      <<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(idx, prob, cap, total, dense, n);
  return rows_detail::launch_status();
}

// Lists the non-zero entries of dense rows (rows, n) into rows (rows, n), tail -1 / 0.
inline Status dense_to_rows(const float* dense, int64_t n, int32_t* idx, float* prob, int64_t rows,
                            cudaStream_t stream) {
  if (rows < 0 || n < 0 || n > INT_MAX - kRowThreads * 4 || rows > INT_MAX) {
    return Status::kBadArgument;
  }
  if (rows == 0 || n == 0) return Status::kOk;
  rows_detail::dense_to_rows_kernel<kRowThreads>
      <<<static_cast<unsigned>(rows), kRowThreads, 0, stream>>>(dense, static_cast<int>(n), idx,
                                                                prob);
  return rows_detail::launch_status();
}

// Per row of (rows, cap): the number of entries with index >= 0 and probability > 0.
inline Status row_counts(const int32_t* idx, const float* prob, int64_t cap, int32_t* counts,
                         int64_t rows, cudaStream_t stream) {
  constexpr int64_t kWarps = kRowThreads / 32;
  if (rows < 0 || cap < 0) return Status::kBadArgument;
  if (rows == 0) return Status::kOk;
  const int64_t blocks = (rows + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) return Status::kBadArgument;
  rows_detail::row_counts_kernel<kRowThreads>
      <<<static_cast<unsigned>(blocks), kRowThreads, 0, stream>>>(idx, prob, cap, rows, counts);
  return rows_detail::launch_status();
}

}  // namespace cuda
}  // namespace sah
