// CUDA kernels of the learned-score top-k operators (HashAttention, PQCache). Same checks, output
// shapes and parameters as the CPU binding, except the check that needs a host synchronisation
// (prev_indices range and order): the kernels assume valid previous rows.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>

#include "cuda/cuda_type.cuh"
#include "attention.h"
#include "learned_maskers.h"
#include "sah/learned_maskers_cuda.cuh"

namespace sah {
namespace {

// Launcher status: the sizes were checked before the launch, so kBadArgument is a bug here.
void check_status(Status status, const char* op) {
  TORCH_CHECK(status != Status::kBadArgument, op, ": sizes unsupported by the CUDA kernel");
  TORCH_CHECK(status == Status::kOk, op, ": CUDA kernel launch failed");
}

// The int32 / grid limits of the top-k kernels, named after the op's arguments.
void check_topk_sizes(const LearnedTopKParams& p, const char* keys_name, const char* op) {
  TORCH_CHECK(p.rows() <= INT_MAX, op, ": batch * heads * q_len of prev_indices must be at most ",
              INT_MAX, " on CUDA, got ", p.rows());
  TORCH_CHECK(p.k_len <= INT_MAX - 8, op, ": ", keys_name, " must have at most ", INT_MAX - 8,
              " keys on CUDA, got ", p.k_len);
  TORCH_CHECK(p.prev_cap <= INT_MAX, op, ": prev_indices rows must hold at most ", INT_MAX,
              " entries on CUDA, got ", p.prev_cap);
}

// Allocates the output rows (prev rows' shape with last dimension min(prev_cap + k, k_len)) and
// the score workspace, and runs `launch(p, workspace)` unless there is nothing to write.
template <typename Launch>
std::tuple<at::Tensor, at::Tensor> run_topk(LearnedTopKParams p, const at::Tensor& pi,
                                            const at::Tensor& pp, const char* op, Launch launch) {
  const int64_t out_cap = std::min(p.prev_cap + p.size, p.k_len);
  auto shape = pi.sizes().vec();
  shape.back() = out_cap;
  at::Tensor out_idx = at::empty(shape, pi.options()), out_probs = at::empty(shape, pp.options());
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = out_cap;
  if (p.rows() == 0 || out_cap == 0) return {out_idx, out_probs};
  const size_t bytes = cuda::learned_topk_workspace_bytes(p);
  at::Tensor ws = at::empty({static_cast<int64_t>(bytes)}, pi.options().dtype(at::kByte));
  check_status(launch(p, ws.data_ptr()), op);
  return {out_idx, out_probs};
}

at::Tensor hash_pack_signs_cuda(const at::Tensor& x) {
  const char* op = "sah::hash_pack_signs";
  check_pack_signs_input(x, op);
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t bits = x.size(-1);
  auto shape = x.sizes().vec();
  shape.back() = signature_words(bits);
  at::Tensor out = at::empty(shape, x.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  // Up to kMaxPackDims dimensions are read in place with their strides.
  const at::Tensor xs = x.dim() <= cuda::kMaxPackDims ? x : x.reshape({-1, bits});
  cuda::PackSignsParams p;
  p.x = xs.data_ptr();
  p.ndim = static_cast<int>(xs.dim());
  for (int d = 0; d < p.ndim; ++d) {
    p.size[d] = xs.size(d);
    p.stride[d] = xs.stride(d);
  }
  p.rows = xs.numel() / bits;
  p.bits = bits;
  p.words = shape.back();
  p.out = out.data_ptr<int32_t>();
  TORCH_CHECK(out.numel() <= cuda::kMaxWarpTasks, op, ": x packs into ", out.numel(),
              " words, more than one CUDA launch computes (", cuda::kMaxWarpTasks, ")");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sah_pack_signs_cuda",
                                  [&] {
                                    using T = typename cuda_type<scalar_t>::type;
                                    status = cuda::pack_signs<T>(p, stream);
                                  });
  check_status(status, op);
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_topk_cuda(const at::Tensor& query_signatures,
                                                  const at::Tensor& key_signatures,
                                                  const at::Tensor& prev_indices,
                                                  const at::Tensor& prev_probs,
                                                  const std::optional<at::Tensor>& mask, int64_t k,
                                                  int64_t bits) {
  const char* op = "sah::hash_topk_mask";
  check_hash_topk_inputs(query_signatures, key_signatures, prev_indices, prev_probs, mask, k, bits,
                         op);
  c10::cuda::CUDAGuard guard(prev_indices.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  LearnedTopKParams p = make_learned_topk_params(pi, pp, mask, key_signatures.size(2), k);
  p.key_heads = key_signatures.size(1);
  p.bits = bits;
  p.words = signature_words(bits);
  p.q_sig = query_signatures.data_ptr<int32_t>();
  copy_strides4(query_signatures, p.q_sig_stride);
  p.k_sig = key_signatures.data_ptr<int32_t>();
  copy_strides4(key_signatures, p.k_sig_stride);
  check_topk_sizes(p, "key_signatures", op);
  TORCH_CHECK(bits <= INT_MAX, op, ": bits must be at most ", INT_MAX, " on CUDA, got ", bits);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  return run_topk(p, pi, pp, op, [&](const LearnedTopKParams& full, void* ws) {
    return cuda::hash_topk_mask(full, ws, stream);
  });
}

at::Tensor pq_encode_cuda(const at::Tensor& keys, const at::Tensor& codebooks) {
  const char* op = "sah::pq_encode";
  check_pq_encode_inputs(keys, codebooks, op);
  c10::cuda::CUDAGuard guard(keys.device());
  const int64_t batch = keys.size(0), kv_heads = keys.size(1), n = keys.size(2);
  const int64_t subspaces = codebooks.size(2);
  at::Tensor codes = at::empty({batch, kv_heads, n, subspaces}, keys.options().dtype(at::kByte));
  if (codes.numel() == 0) return codes;
  TORCH_CHECK(codes.numel() <= cuda::kMaxWarpTasks, op, ": keys give ", codes.numel(),
              " codes (batch * kv_heads * n * subspaces), more than one CUDA launch computes (",
              cuda::kMaxWarpTasks, ")");
  const at::Tensor book = codebooks.contiguous();
  cuda::PQEncodeParams p;
  p.keys = keys.data_ptr();
  for (int d = 0; d < 4; ++d) p.k_stride[d] = keys.stride(d);
  p.batch = batch;
  p.kv_heads = kv_heads;
  p.n = n;
  p.head_dim = keys.size(3);
  p.codebooks = book.data_ptr<float>();
  p.subspaces = subspaces;
  p.centroids = codebooks.size(3);
  p.sub_dim = codebooks.size(4);
  p.codes = codes.data_ptr<uint8_t>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(),
                                  "sah_pq_encode_cuda", [&] {
                                    using T = typename cuda_type<scalar_t>::type;
                                    status = cuda::pq_encode<T>(p, stream);
                                  });
  check_status(status, op);
  return codes;
}

std::tuple<at::Tensor, at::Tensor> pq_topk_cuda(const at::Tensor& queries,
                                                const at::Tensor& codebooks,
                                                const at::Tensor& codes,
                                                const at::Tensor& prev_indices,
                                                const at::Tensor& prev_probs,
                                                const std::optional<at::Tensor>& mask, int64_t k) {
  const char* op = "sah::pq_topk_mask";
  check_pq_topk_inputs(queries, codebooks, codes, prev_indices, prev_probs, mask, k, op);
  c10::cuda::CUDAGuard guard(prev_indices.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  const at::Tensor book = codebooks.contiguous();
  LearnedTopKParams p = make_learned_topk_params(pi, pp, mask, codes.size(2), k);
  p.key_heads = codebooks.size(1);
  p.head_dim = queries.size(3);
  p.subspaces = codebooks.size(2);
  p.centroids = codebooks.size(3);
  p.sub_dim = codebooks.size(4);
  p.q = queries.data_ptr();
  copy_strides4(queries, p.q_stride);
  p.codebooks = book.data_ptr<float>();
  p.codes = codes.data_ptr<uint8_t>();
  copy_strides4(codes, p.code_stride);
  check_topk_sizes(p, "codes", op);
  const size_t max_shared = at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
  TORCH_CHECK(cuda::pq_topk_min_shared_bytes(p) <= max_shared, op,
              ": a query row and its lookup table, head_dim + subspaces * centroids = ",
              p.head_dim + p.subspaces * p.centroids,
              " floats, must fit in the GPU's shared memory per block (", max_shared,
              " bytes); use fewer subspaces (a larger pq_sub_dim) or fewer centroids");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "sah_pq_topk_cuda", [&] {
        using T = typename cuda_type<scalar_t>::type;
        out = run_topk(p, pi, pp, op, [&](const LearnedTopKParams& full, void* ws) {
          return cuda::pq_topk_mask<T>(full, ws, stream);
        });
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CUDA, m) {
  m.impl("hash_pack_signs", &hash_pack_signs_cuda);
  m.impl("hash_topk_mask", &hash_topk_cuda);
  m.impl("pq_encode", &pq_encode_cuda);
  m.impl("pq_topk_mask", &pq_topk_cuda);
}

}  // namespace sah
