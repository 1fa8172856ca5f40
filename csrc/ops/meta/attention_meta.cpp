// Meta (shape-only) kernels of the attention operators; symbolic sizes are supported.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "attention.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> forward_meta(const at::Tensor& q, const at::Tensor& k,
                                                const at::Tensor& v, const at::Tensor& indices,
                                                const at::Tensor& probs,
                                                const std::optional<at::Tensor>& mask,
                                                const char* op) {
  check_attention_inputs(q, k, v, indices, probs, mask, op);
  at::Tensor out = at::empty_symint(q.sym_sizes(), q.options());
  at::Tensor lse = at::empty_symint(q.sym_sizes().slice(0, 3), q.options().dtype(at::kFloat));
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_meta(const at::Tensor& q,
                                                             const at::Tensor& k,
                                                             const at::Tensor& v) {
  return {at::empty_symint(q.sym_sizes(), q.options()), at::empty_symint(k.sym_sizes(), k.options()),
          at::empty_symint(v.sym_sizes(), v.options())};
}

std::tuple<at::Tensor, at::Tensor> sparse_attention_meta(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const at::Tensor& indices,
                                                         const at::Tensor& probs, double scale,
                                                         const std::optional<at::Tensor>& mask) {
  return forward_meta(q, k, v, indices, probs, mask, "sah::sparse_attention");
}

std::tuple<at::Tensor, at::Tensor> masked_attention_meta(const at::Tensor& q, const at::Tensor& k,
                                                         const at::Tensor& v,
                                                         const at::Tensor& probs, double scale,
                                                         const std::optional<at::Tensor>& mask) {
  return forward_meta(q, k, v, at::Tensor(), probs, mask, "sah::masked_attention");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_meta(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices, const at::Tensor& probs,
    const at::Tensor& out, const at::Tensor& lse, double scale,
    const std::optional<at::Tensor>& mask) {
  check_attention_inputs(q, k, v, indices, probs, mask, "sah::sparse_attention_backward");
  return backward_meta(q, k, v);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> masked_attention_backward_meta(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_lse, const at::Tensor& q,
    const at::Tensor& k, const at::Tensor& v, const at::Tensor& probs, const at::Tensor& out,
    const at::Tensor& lse, double scale, const std::optional<at::Tensor>& mask) {
  check_attention_inputs(q, k, v, at::Tensor(), probs, mask, "sah::masked_attention_backward");
  return backward_meta(q, k, v);
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Meta, m) {
  m.impl("sparse_attention", &sparse_attention_meta);
  m.impl("sparse_attention_backward", &sparse_attention_backward_meta);
  m.impl("masked_attention", &masked_attention_meta);
  m.impl("masked_attention_backward", &masked_attention_backward_meta);
}

}  // namespace sah
