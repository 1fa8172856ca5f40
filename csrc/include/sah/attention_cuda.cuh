// Torch-free CUDA kernels for sparse (row-form) and dense-probability attention, forward and
// backward, with the semantics of sah/attention_cpu.h.
//
// Forward (flash-decoding style): kernel 1 runs a grid of rows * num_splits blocks; a block
// handles a contiguous chunk of one row's `cap` entries. It first compacts the used entries of
// the chunk (index in [0, k_len), prob > 0, mask allows the key) into shared memory as
// (key, bias = mask - log p) pairs, then groups of G lanes each own one key at a time (two keys
// per iteration), load the K and V rows (16-byte vectors when possible), reduce q.k with warp
// shuffles and keep an online softmax in registers. The groups of a block are combined in shared
// memory into a partial (m, l, acc[d]); kernel 2 (launched with programmatic dependent launch)
// merges the partials of a row into out and lse. With one split, kernel 1 writes them directly.
//
// Backward: the same grid and entry compaction; for every used key the block adds its
// contributions to the dk / dv accumulators with atomics and keeps dq in registers, which are
// combined over the block and added to the dq accumulator with atomics.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "sah/attention_params.h"

namespace sah {
namespace cuda {

constexpr int kAttnThreads = 128;  // threads of a forward / backward block
constexpr int kAttnWarps = kAttnThreads / 32;
constexpr int kMaxSlots = 8;  // row elements held per lane
constexpr int kMaxHeadDim = 32 * kMaxSlots;
constexpr int kScanPerThread = 8;  // row entries examined per thread per compaction step
constexpr int kScanTile = kAttnThreads * kScanPerThread;
constexpr int kEntryBuffer = 2 * kScanTile;  // compacted entries held in shared memory
constexpr int kMaxSplits = 256;
constexpr int kMinChunk = 64;  // fewest row entries per split
constexpr int kMergeThreads = 256;
constexpr int kFwdUnroll = 2;  // keys per group per forward iteration

namespace attn_detail {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

template <typename A>
__device__ __forceinline__ A neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() {
  return __int_as_float(0xff800000);
}
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ull));
}

__device__ __forceinline__ float amax(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double amax(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float aexp(float x) { return expf(x); }
__device__ __forceinline__ double aexp(double x) { return exp(x); }
__device__ __forceinline__ float alog(float x) { return logf(x); }
__device__ __forceinline__ double alog(double x) { return log(x); }

// True when the probability is > 0 (subnormals included, whatever the flush-to-zero mode).
__device__ __forceinline__ bool prob_positive(float p) {
  const int bits = __float_as_int(p);
  return bits > 0 && bits <= 0x7f800000;
}

// log(p) for p > 0, exact for subnormal p even when fp32 math flushes subnormals to zero.
__device__ __forceinline__ float log_prob(float p, float) {
  const int bits = __float_as_int(p);
  if (bits < 0x00800000) return logf(__int2float_rn(bits)) - 149.0f * 0.69314718055994531f;
  return logf(p);
}
__device__ __forceinline__ double log_prob(float p, double) { return log(static_cast<double>(p)); }

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_acc(typename Acc<T>::type x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
__device__ __forceinline__ T zero_value() {
  return T(0);
}
template <>
__device__ __forceinline__ __half zero_value<__half>() {
  return __ushort_as_half(0);
}
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() {
  return __ushort_as_bfloat16(0);
}

// Unpacks a 16-byte vector of T into accumulator values.
__device__ __forceinline__ void unpack(const uint4& r, float* x, float) {
  x[0] = __uint_as_float(r.x);
  x[1] = __uint_as_float(r.y);
  x[2] = __uint_as_float(r.z);
  x[3] = __uint_as_float(r.w);
}
__device__ __forceinline__ void unpack(const uint4& r, double* x, double) {
  x[0] = __hiloint2double(static_cast<int>(r.y), static_cast<int>(r.x));
  x[1] = __hiloint2double(static_cast<int>(r.w), static_cast<int>(r.z));
}
__device__ __forceinline__ void unpack_word(uint32_t w, float* x, __nv_bfloat16) {
  x[0] = __uint_as_float(w << 16);
  x[1] = __uint_as_float(w & 0xffff0000u);
}
__device__ __forceinline__ void unpack_word(uint32_t w, float* x, __half) {
  float lo, hi;
  asm("{.reg .b16 l, h;\n\tmov.b32 {l, h}, %2;\n\tcvt.f32.f16 %0, l;\n\tcvt.f32.f16 %1, h;}"
      : "=f"(lo), "=f"(hi)
      : "r"(w));
  x[0] = lo;
  x[1] = hi;
}
__device__ __forceinline__ void unpack(const uint4& r, float* x, __nv_bfloat16 tag) {
  unpack_word(r.x, x + 0, tag);
  unpack_word(r.y, x + 2, tag);
  unpack_word(r.z, x + 4, tag);
  unpack_word(r.w, x + 6, tag);
}
__device__ __forceinline__ void unpack(const uint4& r, float* x, __half tag) {
  unpack_word(r.x, x + 0, tag);
  unpack_word(r.y, x + 2, tag);
  unpack_word(r.z, x + 4, tag);
  unpack_word(r.w, x + 6, tag);
}

// 16-byte read-only load that skips L1: rows are read once, and allocating them in L1 cost
// about 7% of gather bandwidth on H100.
__device__ __forceinline__ uint4 load_no_l1(const void* ptr) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(ptr));
  return r;
}

// The part of one row (q, k, v, out or dout) held by one lane of a group of G lanes. Slot s of
// lane lg holds column col(s, g, lg): with VEC, 16-byte vectors of W = 16 / sizeof(T) columns are
// dealt round-robin over the lanes; without, single columns are.
template <typename T, bool VEC>
struct Frag;

template <typename T>
struct Frag<T, true> {
  using A = typename Acc<T>::type;
  static constexpr int kW = 16 / static_cast<int>(sizeof(T));
  static constexpr int kN = kMaxSlots / kW;
  uint4 r[kN];

  static __device__ __forceinline__ int col(int s, int g, int lg) {
    return ((s / kW) * g + lg) * kW + s % kW;
  }
  __device__ __forceinline__ void load(const T* row, int64_t, int g, int lg, int d, bool ok) {
#pragma unroll
    for (int n = 0; n < kN; ++n) {
      const int c = (n * g + lg) * kW;
      r[n] = (ok && c < d) ? load_no_l1(row + c) : make_uint4(0, 0, 0, 0);
    }
  }
  __device__ __forceinline__ void to_acc(A (&x)[kMaxSlots]) const {
#pragma unroll
    for (int n = 0; n < kN; ++n) unpack(r[n], x + n * kW, T());
  }
};

template <typename T>
struct Frag<T, false> {
  using A = typename Acc<T>::type;
  T r[kMaxSlots];

  static __device__ __forceinline__ int col(int s, int g, int lg) { return s * g + lg; }
  __device__ __forceinline__ void load(const T* row, int64_t stride, int g, int lg, int d,
                                       bool ok) {
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      const int c = s * g + lg;
      r[s] = (ok && c < d) ? row[c * stride] : zero_value<T>();
    }
  }
  __device__ __forceinline__ void to_acc(A (&x)[kMaxSlots]) const {
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) x[s] = attn_detail::to_acc(r[s]);
  }
};

template <typename A>
__device__ __forceinline__ A dot(const A (&a)[kMaxSlots], const A (&b)[kMaxSlots]) {
  A s = 0;
#pragma unroll
  for (int k = 0; k < kMaxSlots; ++k) s += a[k] * b[k];
  return s;
}

// Sum over the G lanes of a group (G a power of two <= 32); every lane of the warp must call.
template <typename A>
__device__ __forceinline__ A group_sum(A x, int g) {
  for (int o = g >> 1; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Exclusive prefix sum over the block of kAttnThreads threads; every thread must call.
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
  for (int w = 0; w < kAttnWarps; ++w) {
    const int v = s_warp[w];
    before += w < warp ? v : 0;
    sum += v;
  }
  __syncthreads();
  *total = sum;
  return before + incl - x;
}

// Adds the mask values of the keys key[r] >= 0 to bias[r]: all loads are issued before any
// value is used. `conv` maps a stored value to the additive mask (-inf when forbidden).
template <typename A, typename M, typename Conv>
__device__ __forceinline__ void add_mask(const void* mask, int64_t base, int64_t stride,
                                         const int (&key)[kScanPerThread],
                                         A (&bias)[kScanPerThread], Conv conv) {
  M raw[kScanPerThread];
#pragma unroll
  for (int r = 0; r < kScanPerThread; ++r) {
    raw[r] = key[r] >= 0 ? static_cast<const M*>(mask)[base + key[r] * stride] : M(0);
  }
#pragma unroll
  for (int r = 0; r < kScanPerThread; ++r) {
    if (key[r] >= 0) bias[r] += conv(raw[r]);
  }
}

// Adds the attention mask (see mask_value in attention_cpu.h) to the biases of used keys.
template <typename A>
__device__ __forceinline__ void apply_mask(const AttentionParams& p, int64_t base,
                                           const int (&key)[kScanPerThread],
                                           A (&bias)[kScanPerThread]) {
  const int64_t st = p.mask_stride[3];
  switch (p.mask_kind) {
    case MaskKind::kBool:
      add_mask<A, unsigned char>(p.mask, base, st, key, bias,
                                 [](unsigned char x) { return x != 0 ? A(0) : neg_inf<A>(); });
      break;
    case MaskKind::kFloat32:
      add_mask<A, float>(p.mask, base, st, key, bias,
                         [](float x) { return x <= -3.402823466e+38f ? neg_inf<A>() : A(x); });
      break;
    case MaskKind::kFloat64:
      add_mask<A, double>(p.mask, base, st, key, bias, [](double x) {
        return x <= -1.7976931348623157e+308 ? neg_inf<A>() : A(x);
      });
      break;
    case MaskKind::kFloat16:
      add_mask<A, unsigned short>(p.mask, base, st, key, bias, [](unsigned short x) {
        return (x == 0xfbffu || x == 0xfc00u) ? neg_inf<A>() : A(__half2float(__ushort_as_half(x)));
      });
      break;
    case MaskKind::kBFloat16:
      add_mask<A, unsigned short>(p.mask, base, st, key, bias, [](unsigned short x) {
        return (x == 0xff7fu || x == 0xff80u) ? neg_inf<A>()
                                              : A(__uint_as_float(static_cast<uint32_t>(x) << 16));
      });
      break;
    default:
      break;
  }
}

// Lets the grid launched next with programmatic stream serialization (the merge kernel) start
// early; that grid still waits for this one's completion before reading its results.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Waits until the grids this one depends on have completed and their writes are visible (a
// no-op when launched without programmatic stream serialization).
__device__ __forceinline__ void wait_for_prerequisite_grids() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

template <typename A>
struct Shared {
  int32_t key[kEntryBuffer];        // compacted used entries: key index
  A bias[kEntryBuffer];             // and mask - log(prob)
  A acc[kAttnThreads * kMaxSlots];  // per-group rows for the block combine
  A m[kAttnThreads];
  A l[kAttnThreads];
  int warp_total[kAttnWarps];
};

// One row of the (batch, heads, q_len) grid and the chunk of its entries that a block handles.
struct RowChunk {
  int64_t row, b, h, i, kvh, begin, end;
  int64_t split;
};

__device__ __forceinline__ RowChunk row_chunk(const AttentionParams& p, int64_t num_splits) {
  RowChunk rc;
  rc.row = static_cast<int64_t>(blockIdx.x) / num_splits;
  rc.split = static_cast<int64_t>(blockIdx.x) % num_splits;
  rc.i = rc.row % p.q_len;
  rc.h = (rc.row / p.q_len) % p.heads;
  rc.b = rc.row / (p.q_len * p.heads);
  rc.kvh = rc.h / (p.heads / p.kv_heads);
  const int64_t chunk = (p.cap + num_splits - 1) / num_splits;
  rc.begin = min(p.cap, rc.split * chunk);
  rc.end = min(p.cap, rc.begin + chunk);
  return rc;
}

// Appends the used entries among [t0, min(t0 + kScanTile, rc.end)) to sh.key / sh.bias from
// position `count` on, in a fixed order; returns how many (the same value in every thread).
// Every thread of the block must call; the caller syncs before reading the buffer.
template <typename A>
__device__ int compact_entries(const AttentionParams& p, const RowChunk& rc, int64_t t0, int count,
                               Shared<A>& sh) {
  const int64_t pbase = rc.b * p.prob_stride[0] + rc.h * p.prob_stride[1] + rc.i * p.prob_stride[2];
  const int64_t ibase = rc.b * p.idx_stride[0] + rc.h * p.idx_stride[1] + rc.i * p.idx_stride[2];
  int key[kScanPerThread];
  A bias[kScanPerThread];
  float prob[kScanPerThread];
#pragma unroll
  for (int r = 0; r < kScanPerThread; ++r) {
    const int64_t t = t0 + r * kAttnThreads + threadIdx.x;
    key[r] = -1;
    prob[r] = 0.0f;
    if (t < rc.end) {
      key[r] = p.indices == nullptr ? static_cast<int>(t) : p.indices[ibase + t * p.idx_stride[3]];
      prob[r] = p.probs[pbase + t * p.prob_stride[3]];
    }
  }
#pragma unroll
  for (int r = 0; r < kScanPerThread; ++r) {
    if (key[r] >= p.k_len || !prob_positive(prob[r])) key[r] = -1;
    bias[r] = key[r] >= 0 ? -log_prob(prob[r], A()) : A(0);
  }
  if (p.mask_kind != MaskKind::kNone) {
    apply_mask(p, rc.b * p.mask_stride[0] + rc.h * p.mask_stride[1] + rc.i * p.mask_stride[2], key,
               bias);
  }
  int n = 0;
#pragma unroll
  for (int r = 0; r < kScanPerThread; ++r) {
    // A forbidden key (mask -inf) or prob == +inf gives bias -inf: the CPU skips those too.
    if (key[r] >= 0 && bias[r] == neg_inf<A>()) key[r] = -1;
    n += key[r] >= 0 ? 1 : 0;
  }
  int total;
  int pos = count + block_exclusive_scan(n, &total, sh.warp_total);
#pragma unroll
  for (int r = 0; r < kScanPerThread; ++r) {
    if (key[r] >= 0) {
      sh.key[pos] = key[r];
      sh.bias[pos] = bias[r];
      ++pos;
    }
  }
  return total;
}

// Fills sh.key / sh.bias from the row chunk starting at *t; returns the entry count (uniform).
template <typename A>
__device__ __forceinline__ int fill_entries(const AttentionParams& p, const RowChunk& rc,
                                            int64_t* t, Shared<A>& sh) {
  int count = 0;
  while (*t < rc.end && count + kScanTile <= kEntryBuffer) {
    count += compact_entries(p, rc, *t, count, sh);
    *t += kScanTile;
  }
  __syncthreads();
  return count;
}

// Stores this lane's slots of its group's row, times f, into sh.acc[grp * d + column]; the
// caller syncs and sums the groups' rows.
template <typename T, bool VEC, typename A>
__device__ __forceinline__ void store_group_row(const A (&x)[kMaxSlots], A f, int g, int lg,
                                                int grp, int d, Shared<A>& sh) {
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    const int c = Frag<T, VEC>::col(s, g, lg);
    if (c < d) sh.acc[grp * d + c] = x[s] * f;
  }
}

// Resident forward blocks per SM that ptxas must allow (a register cap): 6 for 16-bit types,
// measured as slightly faster than the uncapped 92 registers on H100.
template <typename T>
constexpr int kFwdMinBlocks = sizeof(T) <= 2 ? 6 : 1;

// Forward kernel 1: see the file comment. ws_acc (rows, num_splits, d) and ws_ml
// (rows, num_splits, 2) receive the partials when num_splits > 1.
template <typename T, bool VEC>
__global__ void __launch_bounds__(kAttnThreads, kFwdMinBlocks<T>)
    attention_forward_kernel(const AttentionParams p, int g, int64_t num_splits,
                             typename Acc<T>::type* ws_acc, typename Acc<T>::type* ws_ml) {
  using A = typename Acc<T>::type;
  __shared__ Shared<A> sh;
  if (num_splits > 1) allow_dependent_launch();  // only the merge kernel follows with PDL
  const RowChunk rc = row_chunk(p, num_splits);
  const int d = static_cast<int>(p.head_dim);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int lg = lane & (g - 1), gw = lane / g, kpw = 32 / g;
  const int grp = threadIdx.x / g, ngroups = kAttnThreads / g;
  const A ninf = neg_inf<A>();
  const A scale = static_cast<A>(p.scale);

  // q is converted after the first compaction, so that both loads are in flight together.
  Frag<T, VEC> fq;
  fq.load(static_cast<const T*>(p.q) + rc.b * p.q_stride[0] + rc.h * p.q_stride[1] +
              rc.i * p.q_stride[2],
          p.q_stride[3], g, lg, d, true);
  A qf[kMaxSlots];
  bool have_q = false;
  const T* kbase = static_cast<const T*>(p.k) + rc.b * p.k_stride[0] + rc.kvh * p.k_stride[1];
  const T* vbase = static_cast<const T*>(p.v) + rc.b * p.v_stride[0] + rc.kvh * p.v_stride[1];

  A m = ninf, l = 0;
  A acc[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) acc[s] = 0;

  int64_t t = rc.begin;
  while (t < rc.end) {
    const int n = fill_entries(p, rc, &t, sh);
    if (!have_q) {
      fq.to_acc(qf);
      have_q = true;
    }
    // Each group takes kFwdUnroll keys per iteration, so that their loads are in flight together.
    for (int e0 = warp * kpw * kFwdUnroll; e0 < n; e0 += kAttnWarps * kpw * kFwdUnroll) {
      bool ok[kFwdUnroll];
      int64_t j[kFwdUnroll];
      A bias[kFwdUnroll], sc[kFwdUnroll];
      Frag<T, VEC> fk[kFwdUnroll], fv[kFwdUnroll];
#pragma unroll
      for (int u = 0; u < kFwdUnroll; ++u) {
        const int e = e0 + u * kpw + gw;
        ok[u] = e < n;
        j[u] = ok[u] ? sh.key[e] : 0;
        bias[u] = ok[u] ? sh.bias[e] : A(0);
      }
#pragma unroll
      for (int u = 0; u < kFwdUnroll; ++u) {
        fk[u].load(kbase + j[u] * p.k_stride[2], p.k_stride[3], g, lg, d, ok[u]);
        fv[u].load(vbase + j[u] * p.v_stride[2], p.v_stride[3], g, lg, d, ok[u]);
      }
      A x[kMaxSlots];
#pragma unroll
      for (int u = 0; u < kFwdUnroll; ++u) {
        fk[u].to_acc(x);
        sc[u] = dot(qf, x);
      }
      for (int o = g >> 1; o > 0; o >>= 1) {
#pragma unroll
        for (int u = 0; u < kFwdUnroll; ++u) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], o);
      }
      A mn = m;
#pragma unroll
      for (int u = 0; u < kFwdUnroll; ++u) {
        sc[u] = ok[u] ? sc[u] * scale + bias[u] : ninf;
        mn = amax(mn, sc[u]);
      }
      if (mn != ninf) {
        const A f = aexp(m - mn);
        l *= f;
#pragma unroll
        for (int s = 0; s < kMaxSlots; ++s) acc[s] *= f;
#pragma unroll
        for (int u = 0; u < kFwdUnroll; ++u) {
          const A w = aexp(sc[u] - mn);
          l += w;
          fv[u].to_acc(x);
#pragma unroll
          for (int s = 0; s < kMaxSlots; ++s) acc[s] += w * x[s];
        }
        m = mn;
      }
    }
    __syncthreads();  // the entry buffer is refilled next
  }

  // Combine the groups of the block.
  if (lg == 0) sh.m[grp] = m;
  __syncthreads();
  A mb = ninf;
  for (int k = 0; k < ngroups; ++k) mb = amax(mb, sh.m[k]);
  const A f = m == ninf ? A(0) : aexp(m - mb);
  if (lg == 0) sh.l[grp] = l * f;
  store_group_row<T, VEC>(acc, f, g, lg, grp, d, sh);
  __syncthreads();
  A lb = 0;
  for (int k = 0; k < ngroups; ++k) lb += sh.l[k];
  const bool empty = mb == ninf;
  if (num_splits == 1) {
    T* out = static_cast<T*>(p.out) + rc.row * d;
    for (int c = threadIdx.x; c < d; c += kAttnThreads) {
      A sum = 0;
      for (int k = 0; k < ngroups; ++k) sum += sh.acc[k * d + c];
      out[c] = from_acc<T>(empty ? A(0) : sum / lb);
    }
    if (threadIdx.x == 0) {
      p.lse[rc.row] = empty ? __int_as_float(0xff800000) : static_cast<float>(mb + alog(lb));
    }
  } else {
    const int64_t slot = rc.row * num_splits + rc.split;
    for (int c = threadIdx.x; c < d; c += kAttnThreads) {
      A sum = 0;
      for (int k = 0; k < ngroups; ++k) sum += sh.acc[k * d + c];
      ws_acc[slot * d + c] = sum;
    }
    if (threadIdx.x == 0) {
      ws_ml[slot * 2] = mb;
      ws_ml[slot * 2 + 1] = lb;
    }
  }
}

// Forward kernel 2: merges the num_splits partials of each row (one block per row). Threads form
// slices of ct column-threads (4 columns each); a slice folds its share of the splits with an
// online softmax, so all loads of a thread are independent, then the slices are combined.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    attention_merge_kernel(const typename Acc<T>::type* ws_acc, const typename Acc<T>::type* ws_ml,
                           int64_t num_splits, int d, T* out, float* lse) {
  using A = typename Acc<T>::type;
  __shared__ A s_m[kMergeThreads];
  __shared__ A s_l[kMergeThreads];
  __shared__ A s_part[kMergeThreads * 4];
  wait_for_prerequisite_grids();
  const int64_t row = blockIdx.x;
  const int ns = static_cast<int>(num_splits);
  const A ninf = neg_inf<A>();
  const int ct = (d + 3) / 4, slices = kMergeThreads / ct;
  const int cid = threadIdx.x % ct, slice = threadIdx.x / ct;
  if (slice < slices) {
    A m = ninf, l = 0, part[4] = {0, 0, 0, 0};
#pragma unroll 4
    for (int s = slice; s < ns; s += slices) {
      const int64_t slot = row * num_splits + s;
      const A ms = ws_ml[slot * 2], ls = ws_ml[slot * 2 + 1];
      A x[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const int c = cid * 4 + k;
        x[k] = c < d ? ws_acc[slot * d + c] : A(0);
      }
      if (ms != ninf) {
        const A mn = amax(m, ms), f = aexp(m - mn), w = aexp(ms - mn);
        l = l * f + ls * w;
#pragma unroll
        for (int k = 0; k < 4; ++k) part[k] = part[k] * f + x[k] * w;
        m = mn;
      }
    }
    if (cid == 0) {
      s_m[slice] = m;
      s_l[slice] = l;
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int c = cid * 4 + k;
      if (c < d) s_part[slice * d + c] = part[k];
    }
  }
  __syncthreads();
  A mb = ninf;
  for (int sl = 0; sl < slices; ++sl) mb = amax(mb, s_m[sl]);
  const bool empty = mb == ninf;
  A lb = 0;
  for (int sl = 0; sl < slices; ++sl) {
    if (s_m[sl] != ninf) lb += s_l[sl] * aexp(s_m[sl] - mb);
  }
  for (int c = threadIdx.x; c < d; c += kMergeThreads) {
    A sum = 0;
    for (int sl = 0; sl < slices; ++sl) {
      if (s_m[sl] != ninf) sum += s_part[sl * d + c] * aexp(s_m[sl] - mb);
    }
    out[row * d + c] = from_acc<T>(empty ? A(0) : sum / lb);
  }
  if (threadIdx.x == 0) {
    lse[row] = empty ? __int_as_float(0xff800000) : static_cast<float>(mb + alog(lb));
  }
}

// Adds x (the lane's slots) to an accumulator row of d columns.
template <typename T, bool VEC, typename A>
__device__ __forceinline__ void atomic_add_row(A* row, const A (&x)[kMaxSlots], int g, int lg,
                                               int d) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVec4 = VEC && sizeof(A) == 4 && Frag<T, true>::kW % 4 == 0;
#else
  constexpr bool kVec4 = false;
#endif
  if constexpr (kVec4) {
    constexpr int kW = Frag<T, true>::kW;
#pragma unroll
    for (int n = 0; n < Frag<T, true>::kN; ++n) {
      const int c = (n * g + lg) * kW;
      if (c < d) {
#pragma unroll
        for (int k = 0; k < kW; k += 4) {
          atomicAdd(
              reinterpret_cast<float4*>(row + c + k),
              make_float4(x[n * kW + k], x[n * kW + k + 1], x[n * kW + k + 2], x[n * kW + k + 3]));
        }
      }
    }
  } else {
#pragma unroll
    for (int s = 0; s < kMaxSlots; ++s) {
      const int c = Frag<T, VEC>::col(s, g, lg);
      if (c < d) atomicAdd(row + c, x[s]);
    }
  }
}

// Backward kernel: see the file comment. p.dq / p.dk / p.dv are zeroed accumulators of Acc<T>.
template <typename T, bool VEC>
__global__ void __launch_bounds__(kAttnThreads)
    attention_backward_kernel(const AttentionParams p, int g, int64_t num_splits) {
  using A = typename Acc<T>::type;
  __shared__ Shared<A> sh;
  const RowChunk rc = row_chunk(p, num_splits);
  const float lse_row = p.lse[rc.row];
  if (!(lse_row > __int_as_float(0xff800000))) return;  // empty row (or NaN lse): no gradient
  const int d = static_cast<int>(p.head_dim);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int lg = lane & (g - 1), gw = lane / g, kpw = 32 / g;
  const int grp = threadIdx.x / g, ngroups = kAttnThreads / g;
  const A scale = static_cast<A>(p.scale);
  const A lse = static_cast<A>(lse_row);

  A qf[kMaxSlots], dof[kMaxSlots], delta;
  {
    Frag<T, VEC> fq, fdo, fo;
    fq.load(static_cast<const T*>(p.q) + rc.b * p.q_stride[0] + rc.h * p.q_stride[1] +
                rc.i * p.q_stride[2],
            p.q_stride[3], g, lg, d, true);
    fdo.load(static_cast<const T*>(p.dout) + rc.row * d, 1, g, lg, d, true);
    fo.load(static_cast<const T*>(p.out) + rc.row * d, 1, g, lg, d, true);
    A of[kMaxSlots];
    fq.to_acc(qf);
    fdo.to_acc(dof);
    fo.to_acc(of);
    delta = group_sum(dot(dof, of), g);
    if (p.dlse != nullptr) delta -= static_cast<A>(p.dlse[rc.row]);
  }
  const T* kbase = static_cast<const T*>(p.k) + rc.b * p.k_stride[0] + rc.kvh * p.k_stride[1];
  const T* vbase = static_cast<const T*>(p.v) + rc.b * p.v_stride[0] + rc.kvh * p.v_stride[1];
  const int64_t kv_row0 = (rc.b * p.kv_heads + rc.kvh) * p.k_len;
  A* dk = static_cast<A*>(p.dk);
  A* dv = static_cast<A*>(p.dv);

  A dq[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) dq[s] = 0;

  int64_t t = rc.begin;
  while (t < rc.end) {
    const int n = fill_entries(p, rc, &t, sh);
    for (int e0 = warp * kpw * 2; e0 < n; e0 += kAttnWarps * kpw * 2) {
      const int ea = e0 + gw, eb = e0 + kpw + gw;
      const bool oka = ea < n, okb = eb < n;
      const int64_t ja = oka ? sh.key[ea] : 0, jb = okb ? sh.key[eb] : 0;
      const A ba = oka ? sh.bias[ea] : A(0), bb = okb ? sh.bias[eb] : A(0);
      Frag<T, VEC> fka, fkb, fva, fvb;
      fka.load(kbase + ja * p.k_stride[2], p.k_stride[3], g, lg, d, oka);
      fkb.load(kbase + jb * p.k_stride[2], p.k_stride[3], g, lg, d, okb);
      fva.load(vbase + ja * p.v_stride[2], p.v_stride[3], g, lg, d, oka);
      fvb.load(vbase + jb * p.v_stride[2], p.v_stride[3], g, lg, d, okb);
      A x[kMaxSlots];
      fka.to_acc(x);
      A sa = dot(qf, x);
      fkb.to_acc(x);
      A sb = dot(qf, x);
      fva.to_acc(x);
      A dpa = dot(dof, x);
      fvb.to_acc(x);
      A dpb = dot(dof, x);
      for (int o = g >> 1; o > 0; o >>= 1) {
        sa += __shfl_xor_sync(0xffffffffu, sa, o);
        sb += __shfl_xor_sync(0xffffffffu, sb, o);
        dpa += __shfl_xor_sync(0xffffffffu, dpa, o);
        dpb += __shfl_xor_sync(0xffffffffu, dpb, o);
      }
      const A pa = oka ? aexp(sa * scale + ba - lse) : A(0);
      const A pb = okb ? aexp(sb * scale + bb - lse) : A(0);
      const A dsa = pa * (dpa - delta) * scale, dsb = pb * (dpb - delta) * scale;
      A y[kMaxSlots];
      fka.to_acc(x);
      fkb.to_acc(y);
#pragma unroll
      for (int s = 0; s < kMaxSlots; ++s) dq[s] += dsa * x[s] + dsb * y[s];
      if (oka) {
#pragma unroll
        for (int s = 0; s < kMaxSlots; ++s) {
          x[s] = pa * dof[s];
          y[s] = dsa * qf[s];
        }
        atomic_add_row<T, VEC>(dv + (kv_row0 + ja) * d, x, g, lg, d);
        atomic_add_row<T, VEC>(dk + (kv_row0 + ja) * d, y, g, lg, d);
      }
      if (okb) {
#pragma unroll
        for (int s = 0; s < kMaxSlots; ++s) {
          x[s] = pb * dof[s];
          y[s] = dsb * qf[s];
        }
        atomic_add_row<T, VEC>(dv + (kv_row0 + jb) * d, x, g, lg, d);
        atomic_add_row<T, VEC>(dk + (kv_row0 + jb) * d, y, g, lg, d);
      }
    }
    __syncthreads();  // the entry buffer is refilled next
  }

  store_group_row<T, VEC>(dq, A(1), g, lg, grp, d, sh);
  __syncthreads();
  A* dq_row = static_cast<A*>(p.dq) + rc.row * d;
  for (int c = threadIdx.x; c < d; c += kAttnThreads) {
    A sum = 0;
    for (int k = 0; k < ngroups; ++k) sum += sh.acc[k * d + c];
    if (sum != A(0)) atomicAdd(dq_row + c, sum);
  }
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Whether a (.., head_dim) tensor with the given strides can be read in 16-byte vectors.
template <typename T>
inline bool vec_ok(const void* ptr, const int64_t* stride, int64_t head_dim) {
  constexpr int64_t w = 16 / static_cast<int64_t>(sizeof(T));
  if (!aligned16(ptr) || stride[3] != 1 || head_dim % w != 0) return false;
  for (int k = 0; k < 3; ++k) {
    if (stride[k] % w != 0) return false;
  }
  return true;
}

inline int next_pow2(int64_t x) {
  int g = 1;
  while (g < x && g < 32) g <<= 1;
  return g;
}

// Lanes per key for a head_dim (power of two <= 32), with or without 16-byte vectors.
template <typename T>
inline int group_lanes(int64_t head_dim, bool vec) {
  return vec ? next_pow2(head_dim / (16 / static_cast<int64_t>(sizeof(T)))) : next_pow2(head_dim);
}

inline bool params_ok(const AttentionParams& p) {
  return p.head_dim >= 1 && p.head_dim <= kMaxHeadDim && p.kv_heads >= 1 &&
         p.heads % p.kv_heads == 0 && p.batch >= 0 && p.q_len >= 0 && p.cap >= 0 && p.k_len >= 0 &&
         p.k_len <= INT_MAX;
}

inline Status launch_status() {
  return cudaGetLastError() == cudaSuccess ? Status::kOk : Status::kLaunchFailed;
}

}  // namespace attn_detail

// Number of splits of each row's entries for the forward pass, from shapes only: enough blocks
// to fill the GPU (num_sms * blocks_per_sm), chunks of at least kMinChunk entries.
inline int64_t attention_num_splits(int64_t rows, int64_t cap, int num_sms, int blocks_per_sm = 4) {
  if (rows <= 0 || cap <= 0) return 1;
  int64_t splits = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) *
                   (blocks_per_sm > 0 ? blocks_per_sm : 1) / rows;
  splits = splits < cap / kMinChunk ? splits : cap / kMinChunk;
  splits = splits < kMaxSplits ? splits : kMaxSplits;
  const int64_t max_grid = INT_MAX / rows;
  splits = splits < max_grid ? splits : max_grid;
  return splits < 1 ? 1 : splits;
}

// Workspace of the forward pass in 4-byte words (acc_bytes: 4, or 8 for double inputs); 0 when
// num_splits == 1.
inline size_t attention_workspace_floats(int64_t rows, int64_t num_splits, int64_t head_dim,
                                         int acc_bytes = 4) {
  if (num_splits <= 1 || rows <= 0) return 0;
  return static_cast<size_t>(rows) * static_cast<size_t>(num_splits) *
         static_cast<size_t>(head_dim + 2) * static_cast<size_t>(acc_bytes / 4);
}

// Resident forward blocks per SM of the main (vectorised) instantiation for T; for
// attention_num_splits.
template <typename T>
inline int attention_forward_blocks_per_sm() {
  static const int blocks = [] {
    int n = 0;
    constexpr bool kVec = sizeof(T) < 8;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &n, attn_detail::attention_forward_kernel<T, kVec>, kAttnThreads, 0) != cudaSuccess) {
      cudaGetLastError();
      n = 4;
    }
    return n < 1 ? 1 : n;
  }();
  return blocks;
}

// Forward pass: writes p.out and p.lse. `workspace` holds attention_workspace_floats(...) words
// (unused when num_splits == 1).
template <typename T>
inline Status attention_forward(const AttentionParams& p, void* workspace, int64_t num_splits,
                                cudaStream_t stream) {
  using A = typename attn_detail::Acc<T>::type;
  if (!attn_detail::params_ok(p) || num_splits < 1 || num_splits > kMaxSplits) {
    return Status::kBadArgument;
  }
  const int64_t rows = p.rows();
  if (rows == 0) return Status::kOk;
  if (rows > INT_MAX / num_splits) return Status::kBadArgument;
  if (num_splits > 1 && workspace == nullptr) return Status::kBadArgument;
  A* ws_acc = static_cast<A*>(workspace);
  A* ws_ml = num_splits > 1 ? ws_acc + rows * num_splits * p.head_dim : nullptr;
  const unsigned grid = static_cast<unsigned>(rows * num_splits);
  bool vec = false;
  if constexpr (sizeof(T) < 8) {
    vec = attn_detail::vec_ok<T>(p.q, p.q_stride, p.head_dim) &&
          attn_detail::vec_ok<T>(p.k, p.k_stride, p.head_dim) &&
          attn_detail::vec_ok<T>(p.v, p.v_stride, p.head_dim);
  }
  const int g = attn_detail::group_lanes<T>(p.head_dim, vec);
  if constexpr (sizeof(T) < 8) {
    if (vec) {
      attn_detail::attention_forward_kernel<T, true>
          <<<grid, kAttnThreads, 0, stream>>>(p, g, num_splits, ws_acc, ws_ml);
    }
  }
  if (!vec) {
    attn_detail::attention_forward_kernel<T, false>
        <<<grid, kAttnThreads, 0, stream>>>(p, g, num_splits, ws_acc, ws_ml);
  }
  if (num_splits > 1) {
    const Status st = attn_detail::launch_status();
    if (st != Status::kOk) return st;
    // Programmatic stream serialization lets the merge grid be scheduled while kernel 1 runs; it
    // waits (griddepcontrol.wait) for kernel 1 to finish before reading the workspace.
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(static_cast<unsigned>(rows));
    cfg.blockDim = dim3(kMergeThreads);
    cfg.dynamicSmemBytes = 0;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    const A* ws_acc_c = ws_acc;
    const A* ws_ml_c = ws_ml;
    const int d = static_cast<int>(p.head_dim);
    T* out = static_cast<T*>(p.out);
    if (cudaLaunchKernelEx(&cfg, attn_detail::attention_merge_kernel<T>, ws_acc_c, ws_ml_c,
                           num_splits, d, out, p.lse) != cudaSuccess) {
      cudaGetLastError();  // fall back to a plain launch
      attn_detail::attention_merge_kernel<T>
          <<<static_cast<unsigned>(rows), kMergeThreads, 0, stream>>>(ws_acc_c, ws_ml_c, num_splits,
                                                                      d, out, p.lse);
    }
  }
  return attn_detail::launch_status();
}

// Backward pass: adds into the zeroed accumulators p.dq, p.dk, p.dv (float, or double for
// double inputs). Needs p.out, p.lse, p.dout (contiguous) and optionally p.dlse.
template <typename T>
inline Status attention_backward(const AttentionParams& p, int64_t num_splits,
                                 cudaStream_t stream) {
  if (!attn_detail::params_ok(p) || num_splits < 1 || num_splits > kMaxSplits) {
    return Status::kBadArgument;
  }
  const int64_t rows = p.rows();
  if (rows == 0) return Status::kOk;
  if (rows > INT_MAX / num_splits) return Status::kBadArgument;
  const unsigned grid = static_cast<unsigned>(rows * num_splits);
  bool vec = false;
  if constexpr (sizeof(T) < 8) {
    const int64_t contiguous[4] = {0, 0, p.head_dim, 1};
    vec = attn_detail::vec_ok<T>(p.q, p.q_stride, p.head_dim) &&
          attn_detail::vec_ok<T>(p.k, p.k_stride, p.head_dim) &&
          attn_detail::vec_ok<T>(p.v, p.v_stride, p.head_dim) &&
          attn_detail::vec_ok<T>(p.out, contiguous, p.head_dim) &&
          attn_detail::vec_ok<T>(p.dout, contiguous, p.head_dim) && attn_detail::aligned16(p.dk) &&
          attn_detail::aligned16(p.dv);
  }
  const int g = attn_detail::group_lanes<T>(p.head_dim, vec);
  if constexpr (sizeof(T) < 8) {
    if (vec) {
      attn_detail::attention_backward_kernel<T, true>
          <<<grid, kAttnThreads, 0, stream>>>(p, g, num_splits);
    }
  }
  if (!vec) {
    attn_detail::attention_backward_kernel<T, false>
        <<<grid, kAttnThreads, 0, stream>>>(p, g, num_splits);
  }
  return attn_detail::launch_status();
}

}  // namespace cuda
}  // namespace sah
