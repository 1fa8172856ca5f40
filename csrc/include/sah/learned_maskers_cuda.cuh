// Torch-free CUDA kernels of the learned-score top-k maskers: HashAttention (bit signatures) and
// PQCache (product quantisation); sah/learned_maskers_cpu.h holds the reference semantics, which
// these kernels reproduce bit for bit (PQ lookup tables: see the note on floating-point order).
// Kernels never synchronise with the host and assume valid previous rows (strictly ascending
// indices in [0, k_len), then -1 padding).
//
// Top-k (hash_topk_mask, pq_topk_mask): (1) a scoring kernel writes one order-preserving uint32
// score key per (row, key) into the workspace, exactly the layout of the oracle top-k path of
// sah/maskers_cuda.cuh (0 = not a candidate: a key after the query's position or one the
// attention mask forbids); a block scores a tile of keys of one (batch, kv head) against up to 8
// query rows of the GQA group, so each key's signature or codes are loaded once for all of them.
// (2) The oracle top-k selection (its kernels reused as is, one block or one thread-block cluster
// per row) knocks out the previous row's keys, picks the k best keys (equal scores: lower key
// index) and merges them with the previous row.
//
// Floating-point order, as on the CPU: scores are (float) integer + mask value (hash), or
// LUT[0][c_0] + LUT[1][c_1] + ... then + mask value (PQ); pq_encode's squared distances are
// summed in dimension order. Every operation is an explicitly rounded fp32 add or multiply (no
// fused multiply-add), as an x86-64 CPU build computes them. LUT[m][c] = q_m . centroid[m][c] is
// summed in dimension order from 0; the CPU's dot_row (omp simd) may vectorise that sum, so a LUT
// entry can differ in its last bit from the CPU's unless the partial sums are exact. Sign tests
// read bits, so they do not depend on the flush-to-zero mode.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>

#include "sah/learned_maskers_cpu.h"
#include "sah/maskers_cuda.cuh"

namespace sah {
namespace cuda {

// Most dimensions of a hash_pack_signs input passed with its own strides.
constexpr int kMaxPackDims = 8;
// Most words (hash_pack_signs) or codes (pq_encode) one launch computes: a warp each, 8 warps per
// block, at most INT_MAX blocks.
constexpr int64_t kMaxWarpTasks = static_cast<int64_t>(INT_MAX) * 8;

// hash_pack_signs: x (..., bits) with any strides (elements), at most kMaxPackDims dimensions;
// out (rows, words) contiguous, rows the product of x's leading sizes.
struct PackSignsParams {
  const void* x = nullptr;
  int ndim = 0;
  int64_t size[kMaxPackDims] = {};
  int64_t stride[kMaxPackDims] = {};
  int64_t rows = 0, bits = 0, words = 0;
  int32_t* out = nullptr;
};

// pq_encode: keys (batch, kv_heads, n, head_dim) with any strides (elements); codebooks float32
// contiguous (batch, kv_heads, subspaces, centroids, sub_dim); codes uint8 (batch, kv_heads, n,
// subspaces) contiguous.
struct PQEncodeParams {
  const void* keys = nullptr;
  int64_t k_stride[4] = {0, 0, 0, 1};
  int64_t batch = 0, kv_heads = 0, n = 0, head_dim = 0;
  const float* codebooks = nullptr;
  int64_t subspaces = 0, centroids = 0, sub_dim = 0;
  uint8_t* codes = nullptr;
};

namespace learned_detail {

using masker_detail::to_f;

constexpr int kPackThreads = 256;    // one warp per packed word
constexpr int kEncodeThreads = 256;  // one warp per (key, subspace)
static_assert(kPackThreads == 8 * 32 && kEncodeThreads == 8 * 32, "see kMaxWarpTasks");
constexpr int kScoreThreads = 256;   // a thread scores 4 consecutive keys at a time
constexpr int kMaxRows = 8;          // query rows per scoring block
constexpr int64_t kHashSpan = 4096;  // keys per hash scoring block
constexpr int64_t kPQSpan = 8192;    // keys per PQ scoring block (one lookup-table build)
static_assert(kHashSpan % (4 * kScoreThreads) == 0 && kPQSpan % (4 * kScoreThreads) == 0,
              "whole quads of keys per block");
// Dynamic shared memory a PQ scoring block aims at (more rows per block while they fit).
constexpr size_t kPQSharedTarget = 48 * 1024;

// x >= 0 (NaN: false; -0: true), read from the bits.
__device__ __forceinline__ bool nonnegative(float x) {
  const uint32_t u = __float_as_uint(x), mag = u & 0x7fffffffu;
  return mag <= 0x7f800000u && ((u >> 31) == 0u || mag == 0u);
}
__device__ __forceinline__ bool nonnegative(double x) { return x >= 0.0; }
__device__ __forceinline__ bool nonnegative(__half x) { return nonnegative(__half2float(x)); }
__device__ __forceinline__ bool nonnegative(__nv_bfloat16 x) {
  return nonnegative(__bfloat162float(x));
}

// One warp per output word w of row r: lane t tests element 32 w + t, a ballot gathers the bits.
template <typename T>
__global__ void __launch_bounds__(kPackThreads)
    pack_signs_kernel(const __grid_constant__ PackSignsParams p) {
  const int64_t word = (static_cast<int64_t>(blockIdx.x) * kPackThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (word >= p.rows * p.words) return;  // warp-uniform
  const int64_t row = word / p.words, w = word % p.words;
  int64_t off = 0, rest = row;
  for (int d = p.ndim - 2; d >= 0; --d) {
    off += (rest % p.size[d]) * p.stride[d];
    rest /= p.size[d];
  }
  const int64_t t = 32 * w + lane;
  const bool one =
      t < p.bits && nonnegative(static_cast<const T*>(p.x)[off + t * p.stride[p.ndim - 1]]);
  const unsigned bits = __ballot_sync(0xffffffffu, one);
  if (lane == 0) p.out[word] = static_cast<int32_t>(bits);
}

// One warp per (key, subspace), flattened as the codes: lanes scan centroids lane, lane + 32, ...
// keeping their first strict minimum, then a butterfly keeps the smallest distance, lower
// centroid on ties. No centroid at a finite distance (NaN or inf everywhere) gives 0, as on the
// CPU.
template <typename T>
__global__ void __launch_bounds__(kEncodeThreads)
    pq_encode_kernel(const __grid_constant__ PQEncodeParams p) {
  const int64_t task = (static_cast<int64_t>(blockIdx.x) * kEncodeThreads + threadIdx.x) / 32;
  const int lane = threadIdx.x & 31;
  if (task >= p.batch * p.kv_heads * p.n * p.subspaces) return;  // warp-uniform
  const int64_t m = task % p.subspaces, item = task / p.subspaces;
  const int64_t j = item % p.n, bh = item / p.n, kvh = bh % p.kv_heads, b = bh / p.kv_heads;
  const T* x = static_cast<const T*>(p.keys) + b * p.k_stride[0] + kvh * p.k_stride[1] +
               j * p.k_stride[2] + m * p.sub_dim * p.k_stride[3];
  const float* book = p.codebooks + (bh * p.subspaces + m) * p.centroids * p.sub_dim;
  float best_d = __int_as_float(0x7f800000);
  int best = INT_MAX;
  for (int c = lane; c < p.centroids; c += 32) {
    const float* y = book + c * p.sub_dim;
    float d = 0.0f;
    for (int64_t t = 0; t < p.sub_dim; ++t) {
      const float diff = __fsub_rn(to_f(x[t * p.k_stride[3]]), y[t]);
      d = __fadd_rn(d, __fmul_rn(diff, diff));
    }
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float od = __shfl_xor_sync(0xffffffffu, best_d, o);
    const int oc = __shfl_xor_sync(0xffffffffu, best, o);
    if (od < best_d || (od == best_d && oc < best)) {
      best_d = od;
      best = oc;
    }
  }
  if (lane == 0) p.codes[task] = static_cast<uint8_t>(best == INT_MAX ? 0 : best);
}

// Parameters of the select kernel (and of mask_value) for a learned top-k call.
inline MaskerParams select_params(const LearnedTopKParams& p) {
  MaskerParams s;
  s.kind = MaskerKind::kTopK;
  s.batch = p.batch;
  s.heads = p.heads;
  s.kv_heads = p.key_heads;
  s.q_len = p.q_len;
  s.k_len = p.k_len;
  s.prev_idx = p.prev_idx;
  s.prev_probs = p.prev_probs;
  s.prev_cap = p.prev_cap;
  s.mask = p.mask;
  s.mask_kind = p.mask_kind;
  for (int d = 0; d < 4; ++d) s.mask_stride[d] = p.mask_stride[d];
  s.out_idx = p.out_idx;
  s.out_probs = p.out_probs;
  s.out_cap = p.out_cap;
  s.size = p.size;
  return s;
}

// A scoring block: one (batch, kv head), up to kMaxRows query rows of its GQA group and the keys
// [j0, j_end). The grid is flattened as ((b * kv_heads + kvh) * chunks + chunk) * spans + span;
// chunk c holds the group rows [c * rows_per_block, ...), group row g being query i = g / group of
// head kvh * group + g % group.
struct ScoreBlock {
  int64_t b, kvh, r0, j0, j_end, max_pos;  // max_pos: position of the block's last query
  int nrows;
};

// The block's coordinates; the query index and head of block row r go to s_i[r] / s_h[r]. Every
// thread must call (it synchronises the block).
__device__ __forceinline__ ScoreBlock score_block(const LearnedTopKParams& p, int64_t spans,
                                                  int64_t span_keys, int rows_per_block,
                                                  int64_t pitch, int* s_i, int* s_h) {
  const int64_t group = p.heads / p.key_heads, group_rows = group * p.q_len;
  const int64_t chunks = (group_rows + rows_per_block - 1) / rows_per_block;
  const int64_t span = blockIdx.x % spans, rest = blockIdx.x / spans;
  const int64_t chunk = rest % chunks, bh = rest / chunks;
  ScoreBlock s;
  s.b = bh / p.key_heads;
  s.kvh = bh % p.key_heads;
  s.r0 = chunk * rows_per_block;
  s.nrows = static_cast<int>(min(static_cast<int64_t>(rows_per_block), group_rows - s.r0));
  s.j0 = span * span_keys;
  s.j_end = min(s.j0 + span_keys, pitch);
  s.max_pos = p.k_len - p.q_len + (s.r0 + s.nrows - 1) / group;
  if (threadIdx.x < s.nrows) {
    const int64_t g = s.r0 + threadIdx.x;
    s_i[threadIdx.x] = static_cast<int>(g / group);
    s_h[threadIdx.x] = static_cast<int>(s.kvh * group + g % group);
  }
  __syncthreads();
  return s;
}

// Stores the score keys of keys j .. j + 3 (j a multiple of 4, below pitch) for query i of head h
// in one 16-byte store: score_key(score + mask value) where the query may see the key (at most
// its position, allowed by the mask), else 0.
__device__ __forceinline__ void store_quad(const MaskerParams& sp, int64_t b, int64_t h, int64_t i,
                                           int64_t j, const float* score, uint32_t* keys,
                                           int64_t pitch) {
  uint32_t out[4];
#pragma unroll
  for (int u = 0; u < 4; ++u) {
    out[u] = 0u;
    if (j + u < sp.k_len && j + u <= sp.k_len - sp.q_len + i) {
      const float mv = masker_detail::mask_value(sp, b, h, i, j + u);
      if (!isinf(mv)) out[u] = masker_detail::score_key(__fadd_rn(score[u], mv));
    }
  }
  *reinterpret_cast<uint4*>(keys + ((b * sp.heads + h) * sp.q_len + i) * pitch + j) =
      make_uint4(out[0], out[1], out[2], out[3]);
}

// HashAttention scores: a thread takes 4 consecutive keys at a time and scores them for every row
// of the block, bits - 2 popcount(q XOR k) over the first `bits` bits; the signature words come
// from memory for the first row and from L1 for the others.
static __global__ void __launch_bounds__(kScoreThreads)
    hash_score_kernel(const __grid_constant__ LearnedTopKParams p,
                      const __grid_constant__ MaskerParams sp, uint32_t* __restrict__ keys,
                      int64_t pitch, int64_t spans, int rows_per_block) {
  __shared__ int s_i[kMaxRows], s_h[kMaxRows];
  const ScoreBlock blk = score_block(p, spans, kHashSpan, rows_per_block, pitch, s_i, s_h);
  const int64_t* qs = p.q_sig_stride;
  const int64_t* ks = p.k_sig_stride;
  const int32_t* kbase = p.k_sig + blk.b * ks[0] + blk.kvh * ks[1];
  for (int64_t j = blk.j0 + 4 * threadIdx.x; j < blk.j_end; j += 4 * kScoreThreads) {
    const bool scored = j < p.k_len && j <= blk.max_pos;  // some row may see a key of the quad
    for (int r = 0; r < blk.nrows; ++r) {
      const int64_t i = s_i[r], h = s_h[r];
      const int32_t* qrow = p.q_sig + blk.b * qs[0] + h * qs[1] + i * qs[2];
      int differ[4] = {0, 0, 0, 0};
      for (int64_t w = 0; scored && w < p.words; ++w) {
        const uint32_t used =
            (w == p.words - 1 && p.bits % 32 != 0) ? (1u << (p.bits % 32)) - 1u : 0xffffffffu;
        const uint32_t qw = static_cast<uint32_t>(qrow[w * qs[3]]);
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (j + u < p.k_len) {
            const uint32_t kw = static_cast<uint32_t>(kbase[(j + u) * ks[2] + w * ks[3]]);
            differ[u] += __popc((qw ^ kw) & used);
          }
        }
      }
      float score[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        score[u] = static_cast<float>(static_cast<int32_t>(p.bits) - 2 * differ[u]);
      }
      store_quad(sp, blk.b, h, i, j, score, keys, pitch);
    }
  }
}

// Dynamic shared memory of a PQ scoring block of `rows` query rows: the rows' (query, head)
// pairs, then per row its head_dim query values and its subspaces x centroids lookup table.
inline size_t pq_shared_bytes(const LearnedTopKParams& p, int64_t rows) {
  return 2 * kMaxRows * sizeof(int) +
         static_cast<size_t>(rows * (p.head_dim + p.subspaces * p.centroids)) * sizeof(float);
}

// PQCache scores: the block builds the lookup tables of its rows in shared memory (layout in
// pq_shared_bytes; all of it dynamic, so that the opt-in limit covers it whole), then a thread
// takes 4 consecutive keys at a time and sums LUT[r][m][code_m] for every row r (codes from
// memory for the first row, from L1 for the others). A code >= centroids (invalid; the CPU reads
// out of bounds there) reads the last centroid's entry.
template <typename T>
__global__ void __launch_bounds__(kScoreThreads)
    pq_score_kernel(const __grid_constant__ LearnedTopKParams p,
                    const __grid_constant__ MaskerParams sp, uint32_t* __restrict__ keys,
                    int64_t pitch, int64_t spans, int rows_per_block) {
  extern __shared__ int s_mem[];
  int* s_i = s_mem;
  int* s_h = s_mem + kMaxRows;
  float* s_q = reinterpret_cast<float*>(s_mem + 2 * kMaxRows);  // (rows, head_dim)
  const ScoreBlock blk = score_block(p, spans, kPQSpan, rows_per_block, pitch, s_i, s_h);
  const int64_t d = p.head_dim, sub = p.sub_dim, cents = p.centroids;
  const int64_t entries = p.subspaces * cents;
  float* s_lut = s_q + rows_per_block * d;  // (rows, subspaces, centroids)

  const T* q = static_cast<const T*>(p.q) + blk.b * p.q_stride[0];
  for (int64_t e = threadIdx.x; e < blk.nrows * d; e += kScoreThreads) {
    const int64_t r = e / d;
    s_q[e] = to_f(q[s_h[r] * p.q_stride[1] + s_i[r] * p.q_stride[2] + (e % d) * p.q_stride[3]]);
  }
  __syncthreads();
  const float* book = p.codebooks + (blk.b * p.key_heads + blk.kvh) * entries * sub;
  for (int64_t e = threadIdx.x; e < blk.nrows * entries; e += kScoreThreads) {
    const int64_t r = e / entries, mc = e % entries, m = mc / cents;
    const float* x = s_q + r * d + m * sub;
    const float* y = book + mc * sub;
    float s = 0.0f;
    for (int64_t t = 0; t < sub; ++t) s = __fadd_rn(s, __fmul_rn(x[t], y[t]));
    s_lut[e] = s;
  }
  __syncthreads();

  const int64_t* cs = p.code_stride;
  const uint8_t* codes = p.codes + blk.b * cs[0] + blk.kvh * cs[1];
  for (int64_t j = blk.j0 + 4 * threadIdx.x; j < blk.j_end; j += 4 * kScoreThreads) {
    const bool scored = j < p.k_len && j <= blk.max_pos;  // some row may see a key of the quad
    for (int r = 0; r < blk.nrows; ++r) {
      const float* lut = s_lut + r * entries;
      float score[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t m = 0; scored && m < p.subspaces; ++m) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          if (j + u < p.k_len) {
            const int64_t code =
                min(static_cast<int64_t>(codes[(j + u) * cs[2] + m * cs[3]]), cents - 1);
            score[u] = __fadd_rn(score[u], lut[m * cents + code]);
          }
        }
      }
      store_quad(sp, blk.b, s_h[r], s_i[r], j, score, keys, pitch);
    }
  }
}

// Query rows per scoring block, at most max_rows, spread evenly over the fewest blocks.
inline int rows_per_block(int64_t group_rows, int64_t max_rows) {
  const int64_t chunks = (group_rows + max_rows - 1) / max_rows;
  return static_cast<int>((group_rows + chunks - 1) / chunks);
}

// Sizes the learned top-k kernels index with 32-bit integers or launch as grid dimensions.
inline bool topk_sizes_fit(const LearnedTopKParams& p) {
  return masker_detail::sizes_fit(select_params(p)) && p.key_heads > 0 &&
         p.heads % p.key_heads == 0 && p.batch >= 0 && p.q_len >= 0;
}

// Scores into the workspace with `score`, then selects and merges (launch_topk_select).
template <typename Launch>
Status score_and_select(const LearnedTopKParams& p, void* workspace, cudaStream_t stream,
                        Launch score) {
  if (p.rows() == 0 || p.out_cap == 0) return Status::kOk;
  if (workspace == nullptr || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) {
    return Status::kBadArgument;
  }
  const MaskerParams sp = select_params(p);
  uint32_t* keys = static_cast<uint32_t*>(workspace);
  const int64_t pitch = masker_detail::score_pitch(p.k_len);
  const Status st = score(sp, keys, pitch);
  if (st != Status::kOk) return st;
  return launch_topk_select(sp, keys, pitch, stream);
}

// Blocks of a scoring grid (see ScoreBlock), or -1 if they exceed the grid's x limit.
inline int64_t score_blocks(const LearnedTopKParams& p, int64_t spans, int rows) {
  const int64_t group_rows = p.heads / p.key_heads * p.q_len;
  const int64_t blocks = p.batch * p.key_heads * ((group_rows + rows - 1) / rows) * spans;
  return blocks <= INT_MAX ? blocks : -1;
}

}  // namespace learned_detail

// Workspace bytes of hash_topk_mask / pq_topk_mask: those of an oracle top-k call of the same
// shapes (one uint32 score key per (row, key), rows padded to a multiple of 4 keys, then the
// cluster selection's picks).
inline size_t learned_topk_workspace_bytes(const LearnedTopKParams& p) {
  return masker_workspace_bytes(learned_detail::select_params(p));
}

// Shared memory a PQ scoring block needs at least (one query row); pq_topk_mask needs it to fit
// the device's opt-in limit per block.
inline size_t pq_topk_min_shared_bytes(const LearnedTopKParams& p) {
  return learned_detail::pq_shared_bytes(p, 1);
}

// Packs signs of x elements of type T (float, double, __half, __nv_bfloat16).
template <typename T>
Status pack_signs(const PackSignsParams& p, cudaStream_t stream) {
  using namespace learned_detail;
  if (p.ndim < 1 || p.ndim > kMaxPackDims || p.bits < 1 || p.rows < 0 ||
      p.rows * p.words > kMaxWarpTasks) {
    return Status::kBadArgument;
  }
  const int64_t blocks = (p.rows * p.words + 7) / 8;
  if (blocks == 0) return Status::kOk;
  pack_signs_kernel<T><<<static_cast<unsigned>(blocks), kPackThreads, 0, stream>>>(p);
  return masker_detail::launch_status();
}

// PQ codes of keys of type T (float, double, __half, __nv_bfloat16).
template <typename T>
Status pq_encode(const PQEncodeParams& p, cudaStream_t stream) {
  using namespace learned_detail;
  if (p.subspaces < 1 || p.centroids < 1 || p.centroids > 256 ||
      p.subspaces * p.sub_dim != p.head_dim) {
    return Status::kBadArgument;
  }
  const int64_t tasks = p.batch * p.kv_heads * p.n * p.subspaces;
  if (tasks > kMaxWarpTasks) return Status::kBadArgument;
  const int64_t blocks = (tasks + 7) / 8;
  if (blocks == 0) return Status::kOk;
  pq_encode_kernel<T><<<static_cast<unsigned>(blocks), kEncodeThreads, 0, stream>>>(p);
  return masker_detail::launch_status();
}

// HashAttention top-k (p.q_sig / p.k_sig set); workspace: learned_topk_workspace_bytes(p) bytes,
// 16-byte aligned.
inline Status hash_topk_mask(const LearnedTopKParams& p, void* workspace, cudaStream_t stream) {
  using namespace learned_detail;
  if (!topk_sizes_fit(p) || p.bits < 1 || p.bits > INT_MAX || p.words != (p.bits + 31) / 32) {
    return Status::kBadArgument;
  }
  return score_and_select(
      p, workspace, stream, [&](const MaskerParams& sp, uint32_t* keys, int64_t pitch) {
        const int rows = rows_per_block(p.heads / p.key_heads * p.q_len, kMaxRows);
        const int64_t spans = (pitch + kHashSpan - 1) / kHashSpan;
        const int64_t blocks = score_blocks(p, spans, rows);
        if (blocks < 0) return Status::kBadArgument;
        hash_score_kernel<<<static_cast<unsigned>(blocks), kScoreThreads, 0, stream>>>(
            p, sp, keys, pitch, spans, rows);
        return masker_detail::launch_status();
      });
}

// PQCache top-k with queries of type T (float, double, __half, __nv_bfloat16) (p.q,
// p.codebooks, p.codes set); workspace: learned_topk_workspace_bytes(p) bytes, 16-byte aligned.
// pq_topk_min_shared_bytes(p) must fit the device's shared memory per block (opt-in limit).
template <typename T>
Status pq_topk_mask(const LearnedTopKParams& p, void* workspace, cudaStream_t stream) {
  using namespace learned_detail;
  if (!topk_sizes_fit(p) || p.subspaces < 1 || p.centroids < 1 ||
      p.subspaces * p.sub_dim != p.head_dim) {
    return Status::kBadArgument;
  }
  return score_and_select(
      p, workspace, stream, [&](const MaskerParams& sp, uint32_t* keys, int64_t pitch) {
        int device = 0, max_shared = 0;
        if (cudaGetDevice(&device) != cudaSuccess ||
            cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
                cudaSuccess) {
          return Status::kLaunchFailed;
        }
        if (pq_shared_bytes(p, 1) > static_cast<size_t>(max_shared)) return Status::kBadArgument;
        int64_t fit = 1;  // rows per block while they stay within kPQSharedTarget
        while (fit < kMaxRows && pq_shared_bytes(p, fit + 1) <= kPQSharedTarget) ++fit;
        const int rows = rows_per_block(p.heads / p.key_heads * p.q_len, fit);
        const size_t smem = pq_shared_bytes(p, rows);
        if (smem > 48 * 1024 &&
            cudaFuncSetAttribute(pq_score_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 max_shared) != cudaSuccess) {
          return Status::kLaunchFailed;
        }
        const int64_t spans = (pitch + kPQSpan - 1) / kPQSpan;
        const int64_t blocks = score_blocks(p, spans, rows);
        if (blocks < 0) return Status::kBadArgument;
        pq_score_kernel<T><<<static_cast<unsigned>(blocks), kScoreThreads, smem, stream>>>(
            p, sp, keys, pitch, spans, rows);
        return masker_detail::launch_status();
      });
}

}  // namespace cuda
}  // namespace sah
