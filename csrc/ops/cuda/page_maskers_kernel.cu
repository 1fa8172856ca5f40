// CUDA kernels of the page and channel top-k masker operators (Quest, DoubleSparsity).
// Same checks, output capacities and parameters as the CPU binding, except the checks that need
// a host synchronisation (prev_indices range and order, channel range): the kernels assume valid
// values there and only guard their memory accesses. Results equal the CPU kernels' exactly.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda/cuda_type.cuh"
#include "attention.h"
#include "page_maskers.h"
#include "sah/page_maskers_cuda.cuh"

namespace sah {
namespace {

// A size the CUDA kernels index with 32-bit integers or launch along a grid dimension.
void check_limit(int64_t value, int64_t limit, const char* op, const char* what) {
  TORCH_CHECK(value <= limit, op, ": ", what, " must be at most ", limit, " on CUDA, got ", value);
}

void check_status(Status status, const char* op) {
  TORCH_CHECK(status != Status::kBadArgument, op, ": sizes unsupported by the CUDA kernel");
  TORCH_CHECK(status == Status::kOk, op, ": CUDA kernel launch failed");
}

// Output rows (indices int32 / probs float32) of shape prev[:-1] + (cap,).
std::tuple<at::Tensor, at::Tensor> empty_rows(const at::Tensor& pi, const at::Tensor& pp,
                                              int64_t cap) {
  auto shape = pi.sizes().vec();
  shape.back() = cap;
  return {at::empty(shape, pi.options()), at::empty(shape, pp.options())};
}

void quest_page_minmax_update_cuda(const at::Tensor& keys, const at::Tensor& page_min,
                                   const at::Tensor& page_max, int64_t num_cached_keys,
                                   int64_t page_size) {
  check_quest_update_inputs(keys, page_min, page_max, num_cached_keys, page_size);
  c10::cuda::CUDAGuard guard(keys.device());
  PageStatsParams p;
  p.batch = keys.size(0);
  p.kv_heads = keys.size(1);
  p.k_len = keys.size(2);
  p.head_dim = keys.size(3);
  p.page_size = page_size;
  p.page_cap = page_min.size(2);
  p.first_page = num_cached_keys / page_size;  // the partial page, if any, is recomputed
  p.k = keys.data_ptr();
  for (int d = 0; d < 4; ++d) p.k_stride[d] = keys.stride(d);
  p.page_min = page_min.data_ptr<float>();
  p.page_max = page_max.data_ptr<float>();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, keys.scalar_type(), "sah_quest_page_minmax_cuda",
      [&] { status = cuda::quest_page_stats<typename cuda_type<scalar_t>::type>(p, stream); });
  check_status(status, "sah::quest_page_minmax_update");
}

std::tuple<at::Tensor, at::Tensor> quest_topk_cuda(
    const at::Tensor& queries, const at::Tensor& page_min, const at::Tensor& page_max,
    const at::Tensor& prev_indices, const at::Tensor& prev_probs,
    const std::optional<at::Tensor>& mask, int64_t num_keys, int64_t page_size,
    int64_t num_pages_to_pick, int64_t label_bits) {
  const char* op = "sah::quest_topk_mask";
  check_quest_inputs(queries, page_min, page_max, prev_indices, prev_probs, mask, num_keys,
                     page_size, num_pages_to_pick, label_bits);
  c10::cuda::CUDAGuard guard(prev_indices.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  const int64_t pages = (num_keys + page_size - 1) / page_size;
  const int64_t cap = std::min(pi.size(3) + num_pages_to_pick * page_size, num_keys);
  auto [out_idx, out_probs] = empty_rows(pi, pp, cap);
  QuestParams p;
  p.batch = pi.size(0);
  p.heads = pi.size(1);
  p.q_len = pi.size(2);
  p.kv_heads = page_min.size(1);
  p.k_len = num_keys;
  p.head_dim = queries.size(3);
  p.page_size = page_size;
  p.page_cap = page_min.size(2);
  p.num_pages_to_pick = num_pages_to_pick;
  p.q = queries.data_ptr();
  copy_strides4(queries, p.q_stride);
  p.page_min = page_min.data_ptr<float>();
  p.page_max = page_max.data_ptr<float>();
  p.prev_idx = pi.data_ptr<int32_t>();
  p.prev_probs = pp.data_ptr<float>();
  p.prev_cap = pi.size(3);
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = cap;
  if (p.rows() == 0 || cap == 0) return {out_idx, out_probs};
  check_limit(p.rows(), INT_MAX, op, "batch * heads * q_len (rows of prev_indices)");
  check_limit(num_keys, INT_MAX - 8, op, "num_keys");
  check_limit(p.prev_cap, INT_MAX, op, "prev_indices.size(3)");
  check_limit(p.batch * p.kv_heads, cuda::kMaxGridYZ, op, "batch * kv_heads of page_min");
  check_limit(p.heads / p.kv_heads * p.q_len, cuda::kMaxGridYZ * cuda::page_detail::kPageRows, op,
              "q_len * heads / kv_heads (query rows per kv head)");

  // One workspace: the pseudo-quantised page bounds (label_bits < 16), then quest_mask's.
  const int64_t slabs = p.batch * p.kv_heads;
  const bool quantize = label_bits < 16 && num_pages_to_pick > 0;
  const size_t bound_bytes =
      quantize ? cuda::page_detail::align16(static_cast<size_t>(slabs * pages * p.head_dim) *
                                            sizeof(float))
               : 0;
  const size_t ws_bytes = 2 * bound_bytes + cuda::quest_workspace_bytes(p);
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, pi.options().dtype(at::kByte));
  char* base = ws.defined() ? static_cast<char*>(ws.data_ptr()) : nullptr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  if (quantize) {
    float* lo = reinterpret_cast<float*>(base);
    float* hi = reinterpret_cast<float*>(base + bound_bytes);
    const int bits = static_cast<int>(label_bits);
    status = cuda::quest_quantize_pages(page_min.data_ptr<float>(), slabs, p.page_cap, pages,
                                        p.head_dim, bits, lo, stream);
    if (status == Status::kOk) {
      status = cuda::quest_quantize_pages(page_max.data_ptr<float>(), slabs, p.page_cap, pages,
                                          p.head_dim, bits, hi, stream);
    }
    check_status(status, op);
    p.page_min = lo;
    p.page_max = hi;
    p.page_cap = pages;
  }
  void* quest_ws = base != nullptr ? base + 2 * bound_bytes : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "sah_quest_topk_cuda",
      [&] { status = cuda::quest_mask<typename cuda_type<scalar_t>::type>(p, quest_ws, stream); });
  check_status(status, op);
  return {out_idx, out_probs};
}

std::tuple<at::Tensor, at::Tensor> double_sparsity_topk_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& channels,
    const at::Tensor& prev_indices, const at::Tensor& prev_probs,
    const std::optional<at::Tensor>& mask, int64_t k, int64_t group_factor, int64_t label_bits) {
  const char* op = "sah::double_sparsity_topk_mask";
  check_double_sparsity_inputs(queries, keys, channels, prev_indices, prev_probs, mask, k,
                               group_factor, label_bits);
  c10::cuda::CUDAGuard guard(prev_indices.device());
  const int64_t n = keys.size(2), d = queries.size(3);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  DoubleSparsityParams p;
  p.batch = pi.size(0);
  p.heads = pi.size(1);
  p.q_len = pi.size(2);
  p.kv_heads = keys.size(1);
  p.k_len = n;
  p.head_dim = d;
  // As the CPU binding: the first head_dim / group_factor sorted channels (fewer if the table
  // lists fewer), scores divided by sqrt(head_dim / group_factor) computed in double.
  p.num_channels = std::min(channels.size(1), d / group_factor);
  p.score_divisor = static_cast<float>(std::sqrt(static_cast<double>(d / group_factor)));
  p.size = k;
  p.label_bits = static_cast<int>(label_bits);
  p.q = queries.data_ptr();
  copy_strides4(queries, p.q_stride);
  p.k = keys.data_ptr();
  copy_strides4(keys, p.k_stride);
  p.channels = channels.data_ptr<int64_t>();
  p.channel_stride[0] = channels.stride(0);
  p.channel_stride[1] = channels.stride(1);
  p.prev_idx = pi.data_ptr<int32_t>();
  p.prev_probs = pp.data_ptr<float>();
  p.prev_cap = pi.size(3);
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  const int64_t cap = std::min(pi.size(3) + k, n);
  auto [out_idx, out_probs] = empty_rows(pi, pp, cap);
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = cap;
  if (p.rows() == 0 || cap == 0) return {out_idx, out_probs};
  check_limit(p.rows(), INT_MAX, op, "batch * heads * q_len (rows of prev_indices)");
  check_limit(n, cuda::kMaxDsKeys, op, "keys.size(2) (k_len)");
  check_limit(p.prev_cap, INT_MAX, op, "prev_indices.size(3)");
  check_limit(p.q_len, cuda::kMaxGridYZ * cuda::page_detail::kDsRows, op, "q_len");
  check_limit(p.num_channels, cuda::kMaxDsChannels, op,
              "the scored channel count min(channels.size(1), head_dim / group_factor)");

  const size_t ws_bytes = cuda::double_sparsity_workspace_bytes(p);
  at::Tensor ws;
  if (ws_bytes > 0) ws = at::empty({static_cast<int64_t>(ws_bytes)}, pi.options().dtype(at::kByte));
  void* ws_ptr = ws.defined() ? ws.data_ptr() : nullptr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "sah_double_sparsity_topk_cuda", [&] {
        status = cuda::double_sparsity_mask<typename cuda_type<scalar_t>::type>(p, ws_ptr, stream);
      });
  check_status(status, op);
  return {out_idx, out_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CUDA, m) {
  m.impl("quest_page_minmax_update", &quest_page_minmax_update_cuda);
  m.impl("quest_topk_mask", &quest_topk_cuda);
  m.impl("double_sparsity_topk_mask", &double_sparsity_topk_cuda);
}

}  // namespace sah
