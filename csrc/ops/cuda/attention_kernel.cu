// CUDA kernels of sah::sparse_attention and sah::masked_attention (forward and backward).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_type.cuh"
#include "attention.h"
#include "sah/attention_cuda.cuh"

namespace sah {
namespace {

at::Tensor last_dim_contiguous(const at::Tensor& t) {
  return t.stride(-1) == 1 ? t : t.contiguous();
}

void check_status(Status status, const char* op) {
  TORCH_CHECK(status != Status::kBadArgument, op,
              ": unsupported arguments for the CUDA kernel (head_dim must be in [1, ",
              cuda::kMaxHeadDim, "])");
  TORCH_CHECK(status == Status::kOk, op, ": CUDA kernel launch failed");
}

void check_head_dim(const at::Tensor& q, const char* op) {
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= cuda::kMaxHeadDim, op, ": head_dim must be in [1, ",
              cuda::kMaxHeadDim, "] on CUDA, got ", q.size(3));
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q_in, const at::Tensor& k_in,
                                           const at::Tensor& v_in, const at::Tensor& indices,
                                           const at::Tensor& probs,
                                           const std::optional<at::Tensor>& mask, double scale,
                                           const char* op) {
  check_attention_inputs(q_in, k_in, v_in, indices, probs, mask, op);
  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in),
                   v = last_dim_contiguous(v_in);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (lse.numel() == 0) return {out, lse};
  check_head_dim(q, op);
  AttentionParams p = make_attention_params(q, k, v, indices, probs, mask, scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  Status status = Status::kOk;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, q.scalar_type(), "sah_attention_cuda", [&] {
        using T = typename cuda_type<scalar_t>::type;
        const int64_t splits = cuda::attention_num_splits(
            p.rows(), p.cap, num_sms, cuda::attention_forward_blocks_per_sm<T>());
        const size_t words = cuda::attention_workspace_floats(
            p.rows(), splits, p.head_dim, sizeof(typename cuda::attn_detail::Acc<T>::type));
        at::Tensor workspace;
        if (words > 0) {
          workspace = at::empty({static_cast<int64_t>(words)}, q.options().dtype(at::kFloat));
        }
        status = cuda::attention_forward<T>(p, words > 0 ? workspace.data_ptr() : nullptr, splits,
                                            stream);
      });
  check_status(status, op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q_in,
    const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& indices,
    const at::Tensor& probs, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& mask, double scale, const char* op) {
  check_attention_inputs(q_in, k_in, v_in, indices, probs, mask, op);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == q_in.sizes(), op,
              ": grad_out and out must have the query's shape ", q_in.sizes(), ", got ",
              grad_out.sizes(), " and ", out.sizes());
  TORCH_CHECK(lse.sizes() == q_in.sizes().slice(0, 3) && lse.scalar_type() == at::kFloat, op,
              ": lse must be float32 of shape ", q_in.sizes().slice(0, 3));
  TORCH_CHECK(grad_out.device() == q_in.device() && out.device() == q_in.device() &&
                  lse.device() == q_in.device(),
              op, ": grad_out, out and lse must be on ", q_in.device());
  const bool has_dlse = grad_lse.has_value() && grad_lse->defined();
  if (has_dlse) {
    TORCH_CHECK(grad_lse->sizes() == lse.sizes() && grad_lse->device() == q_in.device(), op,
                ": grad_lse must have lse's shape ", lse.sizes(), " on ", q_in.device());
  }
  c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = last_dim_contiguous(q_in), k = last_dim_contiguous(k_in),
                   v = last_dim_contiguous(v_in);
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dq = at::zeros(q.sizes(), q.options().dtype(acc));
  at::Tensor dk = at::zeros(k.sizes(), k.options().dtype(acc));
  at::Tensor dv = at::zeros(v.sizes(), v.options().dtype(acc));
  if (lse.numel() > 0) {
    check_head_dim(q, op);
    at::Tensor dout = grad_out.to(q.scalar_type()).contiguous();
    at::Tensor out_c = out.to(q.scalar_type()).contiguous();
    at::Tensor lse_c = lse.contiguous();
    at::Tensor dlse;
    if (has_dlse) dlse = grad_lse->to(at::kFloat).contiguous();
    AttentionParams p = make_attention_params(q, k, v, indices, probs, mask, scale);
    p.out = out_c.data_ptr();
    p.lse = lse_c.data_ptr<float>();
    p.dout = dout.data_ptr();
    p.dlse = has_dlse ? dlse.data_ptr<float>() : nullptr;
    p.dq = dq.data_ptr();
    p.dk = dk.data_ptr();
    p.dv = dv.data_ptr();
    const int num_sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
    const int64_t splits = cuda::attention_num_splits(p.rows(), p.cap, num_sms);
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    Status status = Status::kOk;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "sah_attention_cuda",
                                    [&] {
                                      using T = typename cuda_type<scalar_t>::type;
                                      status = cuda::attention_backward<T>(p, splits, stream);
                                    });
    check_status(status, op);
  }
  return {dq.to(q.scalar_type()), dk.to(q.scalar_type()), dv.to(q.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> sparse_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const at::Tensor& indices,
                                                         const at::Tensor& probs, double scale,
                                                         const std::optional<at::Tensor>& mask) {
  return forward(q, k, v, indices, probs, mask, scale, "sah::sparse_attention");
}

std::tuple<at::Tensor, at::Tensor> masked_attention_cuda(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const at::Tensor& probs, double scale,
                                                         const std::optional<at::Tensor>& mask) {
  return forward(q, k, v, at::Tensor(), probs, mask, scale, "sah::masked_attention");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices, const at::Tensor& probs,
    const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& mask) {
  return backward(grad_out, grad_lse, q, k, v, indices, probs, out, lse, mask, scale,
                  "sah::sparse_attention_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_cuda(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& probs, const at::Tensor& out,
    const at::Tensor& lse, double scale, const std::optional<at::Tensor>& mask) {
  return backward(grad_out, grad_lse, q, k, v, at::Tensor(), probs, out, lse, mask, scale,
                  "sah::masked_attention_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CUDA, m) {
  m.impl("sparse_attention", &sparse_attention_cuda);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cuda);
  m.impl("masked_attention", &masked_attention_cuda);
  m.impl("masked_attention_backward", &masked_attention_backward_cuda);
}

}  // namespace sah
