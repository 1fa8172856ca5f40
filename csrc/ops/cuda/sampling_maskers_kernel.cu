// CUDA kernels of the sampling masker operators (random sampling, adaptive sampling, MagicPig).
// Same checks, output capacities and parameters as the CPU binding, except the checks that need
// a host synchronisation (prev_indices range and order): the kernels assume valid previous rows
// and only guard their memory accesses. fill_lsh_projections stays CPU-only.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda/cuda_type.cuh"
#include "fixed_maskers.h"
#include "sah/sampling_cuda.cuh"
#include "sampling_maskers.h"

namespace sah {
namespace {

void check_status(Status status, const char* op) {
  TORCH_CHECK(status != Status::kBadArgument, op,
              ": sizes unsupported by the CUDA kernel (rows, keys and row capacities must fit in "
              "int32; adaptive: head_dim must be at most ",
              cuda::sampling_detail::kMaxDynamicShared / 4,
              "; MagicPig: 2 * head_dim + signature words must be at most ",
              cuda::sampling_detail::kMaxDynamicShared / 4, ")");
  TORCH_CHECK(status == Status::kOk, op, ": CUDA kernel launch failed");
}

// Scratch memory of a kernel call on the tensor's device and current stream (undefined if empty).
at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  if (bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

// Allocates the output rows (prev rows' shape with last dimension out_cap) and points p at them.
std::tuple<at::Tensor, at::Tensor> alloc_rows(SamplingParams* p, const at::Tensor& pi,
                                              const at::Tensor& pp, int64_t out_cap) {
  auto shape = pi.sizes().vec();
  shape.back() = out_cap;
  at::Tensor out_idx = at::empty(shape, pi.options()), out_probs = at::empty(shape, pp.options());
  p->out_idx = out_idx.data_ptr<int32_t>();
  p->out_probs = out_probs.data_ptr<float>();
  p->out_cap = out_cap;
  return {out_idx, out_probs};
}

std::tuple<at::Tensor, at::Tensor> random_sampling_cuda(const at::Tensor& prev_indices,
                                                        const at::Tensor& prev_probs,
                                                        const std::optional<at::Tensor>& mask,
                                                        int64_t num_keys, int64_t num_samples,
                                                        int64_t seed, int64_t layer) {
  const char* op = "sah::random_sampling_mask";
  check_masker_inputs(at::Tensor(), at::Tensor(), prev_indices, prev_probs, mask, num_keys,
                      num_samples, op);
  c10::cuda::CUDAGuard guard(prev_indices.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  SamplingParams p = make_sampling_params(SamplingKind::kRandom, at::Tensor(), at::Tensor(), pi, pp,
                                          mask, num_keys);
  p.num_samples = num_samples;
  p.seed = seed;
  p.layer = layer;
  auto out = alloc_rows(&p, pi, pp, std::min(pi.size(3) + num_samples, num_keys));
  check_status(cuda::random_sampling_mask(p, at::cuda::getCurrentCUDAStream()), op);
  return out;
}

std::tuple<at::Tensor, at::Tensor> adaptive_sampling_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& prev_indices,
    const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask, double scale,
    int64_t base_samples, double epsilon, double delta_ppf, int64_t range_start, int64_t range_end,
    int64_t seed, int64_t layer) {
  const char* op = "sah::adaptive_sampling_mask";
  TORCH_CHECK(keys.dim() == 4, op, ": keys must be 4-D, got ", keys.dim(), "-D");
  const int64_t n = keys.size(2);
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, n, base_samples, op);
  check_adaptive_args(n, base_samples, epsilon, range_start, range_end, op);
  c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  SamplingParams p = make_sampling_params(SamplingKind::kAdaptive, queries, keys, pi, pp, mask, n);
  p.num_samples = base_samples;
  p.range_begin = range_start;
  p.range_end = range_end;
  p.scale = static_cast<float>(scale);
  p.epsilon = epsilon;
  p.delta_ppf = delta_ppf;
  p.seed = seed;
  p.layer = layer;
  auto out = alloc_rows(&p, pi, pp, std::min(pi.size(3) + (range_end - range_start), n));
  const at::Tensor ws = workspace(cuda::adaptive_workspace_bytes(p), pi);
  void* ws_ptr = ws.defined() ? ws.data_ptr() : nullptr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                  "sah_adaptive_sampling_cuda", [&] {
                                    using T = typename cuda_type<scalar_t>::type;
                                    status = cuda::adaptive_sampling_mask<T>(p, ws_ptr, stream);
                                  });
  check_status(status, op);
  return out;
}

std::tuple<at::Tensor, at::Tensor> magicpig_cuda(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& prev_indices,
    const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask,
    const at::Tensor& projections, const at::Tensor& key_mean, const at::Tensor& key_norm_bound,
    const at::Tensor& key_signatures, int64_t num_cached, int64_t lsh_l, int64_t lsh_k) {
  const char* op = "sah::magicpig_mask";
  TORCH_CHECK(keys.dim() == 4, op, ": keys must be 4-D, got ", keys.dim(), "-D");
  const int64_t n = keys.size(2);
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, n, 0, op);
  check_magicpig_state(queries, keys, projections, key_mean, key_norm_bound, key_signatures,
                       num_cached, lsh_l, lsh_k, op);
  c10::cuda::CUDAGuard guard(queries.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  const at::Tensor proj = projections.contiguous(), mean = key_mean.contiguous(),
                   bound = key_norm_bound.contiguous();
  SamplingParams p = make_sampling_params(SamplingKind::kMagicPig, queries, keys, pi, pp, mask, n);
  p.lsh = lsh_layout(lsh_l, lsh_k);
  p.projections = proj.data_ptr<float>();
  p.key_mean = mean.data_ptr<float>();
  p.key_norm_bound = bound.data_ptr<float>();
  p.signatures = key_signatures.data_ptr<int32_t>();
  p.sig_cap = key_signatures.size(2);
  p.num_cached = num_cached;
  auto out = alloc_rows(&p, pi, pp, n);
  const at::Tensor ws = workspace(cuda::magicpig_workspace_bytes(p), pi);
  void* ws_ptr = ws.defined() ? ws.data_ptr() : nullptr;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, keys.scalar_type(), "sah_magicpig_cuda",
                                  [&] {
                                    using T = typename cuda_type<scalar_t>::type;
                                    status = cuda::magicpig_mask<T>(p, ws_ptr, stream);
                                  });
  check_status(status, op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CUDA, m) {
  m.impl("random_sampling_mask", &random_sampling_cuda);
  m.impl("adaptive_sampling_mask", &adaptive_sampling_cuda);
  m.impl("magicpig_mask", &magicpig_cuda);
}

}  // namespace sah
