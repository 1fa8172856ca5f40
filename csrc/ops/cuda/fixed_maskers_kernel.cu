// CUDA kernels of the fixed masker operators (sink, local window, oracle top-k, oracle top-p).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_type.cuh"
#include "fixed_maskers.h"
#include "sah/maskers_cuda.cuh"

namespace sah {
namespace {

void check_status(Status status, const char* op) {
  TORCH_CHECK(status != Status::kBadArgument, op,
              ": sizes unsupported by the CUDA kernel (rows, keys and row capacities must fit in "
              "int32, batch * kv_heads and the query rows of a GQA group / 8 in 65535)");
  TORCH_CHECK(status == Status::kOk, op, ": CUDA kernel launch failed");
}

std::tuple<at::Tensor, at::Tensor> run(MaskerKind kind, const at::Tensor& queries,
                                       const at::Tensor& keys, const at::Tensor& prev_indices,
                                       const at::Tensor& prev_probs,
                                       const std::optional<at::Tensor>& mask, int64_t num_keys,
                                       int64_t size, int64_t out_cap, float top_p, float scale,
                                       const char* op) {
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, num_keys, size, op);
  c10::cuda::CUDAGuard guard(prev_indices.device());
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  auto shape = pi.sizes().vec();
  shape.back() = out_cap;
  at::Tensor out_idx = at::empty(shape, pi.options()), out_probs = at::empty(shape, pp.options());
  MaskerParams p = make_masker_params(kind, queries, keys, pi, pp, mask, num_keys, size);
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = out_cap;
  p.top_p = top_p;
  p.scale = scale;
  if (p.rows() == 0 || out_cap == 0) return {out_idx, out_probs};

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const size_t ws_bytes = cuda::masker_workspace_bytes(p);
  at::Tensor ws;
  if (ws_bytes > 0) {
    ws = at::empty({static_cast<int64_t>(ws_bytes)}, pi.options().dtype(at::kByte));
  }
  void* ws_ptr = ws.defined() ? ws.data_ptr() : nullptr;
  Status status = Status::kOk;
  if (queries.defined()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                    "sah_masker_cuda", [&] {
                                      using T = typename cuda_type<scalar_t>::type;
                                      status = cuda::oracle_mask<T>(p, ws_ptr, stream);
                                    });
  } else {
    status = cuda::window_mask(p, ws_ptr, stream);
  }
  check_status(status, op);
  return {out_idx, out_probs};
}

std::tuple<at::Tensor, at::Tensor> sink_cuda(const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask,
                                             int64_t num_keys, int64_t sink) {
  const int64_t cap = std::min(pi.size(-1) + sink, num_keys);
  return run(MaskerKind::kSink, at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, sink, cap,
             0.0f, 1.0f, "sah::sink_mask");
}

std::tuple<at::Tensor, at::Tensor> local_cuda(const at::Tensor& pi, const at::Tensor& pp,
                                              const std::optional<at::Tensor>& mask,
                                              int64_t num_keys, int64_t window) {
  const int64_t cap = std::min(pi.size(-1) + window, num_keys);
  return run(MaskerKind::kLocal, at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, window, cap,
             0.0f, 1.0f, "sah::local_mask");
}

std::tuple<at::Tensor, at::Tensor> topk_cuda(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask, int64_t topk) {
  const int64_t n = k.dim() == 4 ? k.size(2) : 0;
  const int64_t cap = std::min(pi.size(-1) + topk, n);
  return run(MaskerKind::kTopK, q, k, pi, pp, mask, n, topk, cap, 0.0f, 1.0f,
             "sah::oracle_topk_mask");
}

std::tuple<at::Tensor, at::Tensor> topp_cuda(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask, double top_p,
                                             double scale) {
  TORCH_CHECK(top_p >= 0.0 && top_p <= 1.0,
              "sah::oracle_topp_mask: top_p must be in [0, 1], got ", top_p);
  const int64_t n = k.dim() == 4 ? k.size(2) : 0;
  return run(MaskerKind::kTopP, q, k, pi, pp, mask, n, n, n, static_cast<float>(top_p),
             static_cast<float>(scale), "sah::oracle_topp_mask");
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CUDA, m) {
  m.impl("sink_mask", &sink_cuda);
  m.impl("local_mask", &local_cuda);
  m.impl("oracle_topk_mask", &topk_cuda);
  m.impl("oracle_topp_mask", &topp_cuda);
}

}  // namespace sah
