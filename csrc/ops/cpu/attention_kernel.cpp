// CPU kernels of sah::sparse_attention and sah::masked_attention (forward and backward).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "attention.h"
#include "cpu_types.h"
#include "sah/attention_cpu.h"

namespace sah {
namespace {

void check_indices_in_range(const at::Tensor& indices, int64_t k_len, const char* op) {
  if (!indices.defined() || indices.numel() == 0) return;
  const int64_t lo = indices.min().item<int32_t>(), hi = indices.max().item<int32_t>();
  TORCH_CHECK(lo >= -1 && hi < k_len, op, ": indices must lie in [0, k_len=", k_len,
              ") or be -1 (padding), got values in [", lo, ", ", hi, "]");
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& indices,
                                           const at::Tensor& probs,
                                           const std::optional<at::Tensor>& mask, double scale,
                                           const char* op) {
  check_attention_inputs(q, k, v, indices, probs, mask, op);
  check_indices_in_range(indices, k.size(2), op);
  at::Tensor out = at::empty({q.size(0), q.size(1), q.size(2), q.size(3)}, q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  AttentionParams p = make_attention_params(q, k, v, indices, probs, mask, scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "sah_attention_cpu", [&] {
    using T = typename kernel_type<scalar_t>::type;
    const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, p.cap));
    at::parallel_for(0, p.rows(), grain, [&](int64_t begin, int64_t end) {
      cpu::attention_forward_rows<T>(p, begin, end);
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices, const at::Tensor& probs,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& mask,
    double scale, const char* op) {
  check_attention_inputs(q, k, v, indices, probs, mask, op);
  TORCH_CHECK(grad_out.sizes() == out.sizes() && out.sizes() == q.sizes(), op,
              ": grad_out and out must have the query's shape ", q.sizes(), ", got ",
              grad_out.sizes(), " and ", out.sizes());
  TORCH_CHECK(lse.sizes() == q.sizes().slice(0, 3) && lse.scalar_type() == at::kFloat, op,
              ": lse must be float32 of shape ", q.sizes().slice(0, 3));
  at::Tensor dout = grad_out.to(q.scalar_type()).contiguous();
  at::Tensor out_c = out.contiguous(), lse_c = lse.contiguous();
  at::Tensor dlse;
  if (grad_lse.has_value() && grad_lse->defined()) {
    dlse = grad_lse->to(at::kFloat).contiguous();
  }
  const auto acc = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor dq = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dk = at::zeros(k.sizes(), k.options().dtype(acc));
  at::Tensor dv = at::zeros(v.sizes(), v.options().dtype(acc));
  AttentionParams p = make_attention_params(q, k, v, indices, probs, mask, scale);
  p.out = out_c.data_ptr();
  p.lse = lse_c.data_ptr<float>();
  p.dout = dout.data_ptr();
  p.dlse = dlse.defined() ? dlse.data_ptr<float>() : nullptr;
  p.dq = dq.data_ptr();
  p.dk = dk.data_ptr();
  p.dv = dv.data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "sah_attention_cpu", [&] {
    using T = typename kernel_type<scalar_t>::type;
    at::parallel_for(0, p.batch * p.kv_heads, 1, [&](int64_t begin, int64_t end) {
      cpu::attention_backward_groups<T>(p, begin, end);
    });
  });
  return {dq, dk.to(q.scalar_type()), dv.to(q.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> sparse_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v,
                                                        const at::Tensor& indices,
                                                        const at::Tensor& probs, double scale,
                                                        const std::optional<at::Tensor>& mask) {
  return forward(q, k, v, indices, probs, mask, scale, "sah::sparse_attention");
}

std::tuple<at::Tensor, at::Tensor> masked_attention_cpu(const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v,
                                                        const at::Tensor& probs, double scale,
                                                        const std::optional<at::Tensor>& mask) {
  return forward(q, k, v, at::Tensor(), probs, mask, scale, "sah::masked_attention");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices, const at::Tensor& probs,
    const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& mask) {
  return backward(grad_out, grad_lse, q, k, v, indices, probs, out, lse, mask, scale,
                  "sah::sparse_attention_backward");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& probs, const at::Tensor& out,
    const at::Tensor& lse, double scale, const std::optional<at::Tensor>& mask) {
  return backward(grad_out, grad_lse, q, k, v, at::Tensor(), probs, out, lse, mask, scale,
                  "sah::masked_attention_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CPU, m) {
  m.impl("sparse_attention", &sparse_attention_cpu);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cpu);
  m.impl("masked_attention", &masked_attention_cpu);
  m.impl("masked_attention_backward", &masked_attention_backward_cpu);
}

}  // namespace sah
