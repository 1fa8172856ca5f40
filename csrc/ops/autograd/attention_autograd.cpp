// Autograd of the attention operators (gradients for q, k, v and through lse), and the
// registration that marks the row-form mask operators as non-differentiable.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace sah {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor&, const at::Tensor&,
                                                     const at::Tensor&, double,
                                                     const std::optional<at::Tensor>&);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    double, const std::optional<at::Tensor>&);

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Row-form attention: selection (indices, probs) and attention_mask are constants.
class SparseAttentionFn : public torch::autograd::Function<SparseAttentionFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& indices,
                               const at::Tensor& probs, double scale,
                               const std::optional<at::Tensor>& mask) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("sah::sparse_attention", "")
                         .typed<ForwardFn>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = op.call(q, k, v, indices, probs, scale, mask);
    ctx->save_for_backward({q, k, v, indices, probs, out, lse, mask.value_or(at::Tensor())});
    ctx->saved_data["scale"] = scale;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("sah::sparse_attention_backward", "")
                         .typed<BackwardFn>();
    auto s = ctx->get_saved_variables();
    at::Tensor gout = grads[0].defined() ? grads[0] : at::zeros_like(s[5]);
    auto [dq, dk, dv] = op.call(gout, opt(grads[1]), s[0], s[1], s[2], s[3], s[4], s[5], s[6],
                                ctx->saved_data["scale"].toDouble(), opt(s[7]));
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Dense-probability attention: probs and attention_mask are constants.
class MaskedAttentionFn : public torch::autograd::Function<MaskedAttentionFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v, const at::Tensor& probs, double scale,
                               const std::optional<at::Tensor>& mask) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("sah::masked_attention", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, double, const std::optional<at::Tensor>&)>();
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [out, lse] = op.call(q, k, v, probs, scale, mask);
    ctx->save_for_backward({q, k, v, probs, out, lse, mask.value_or(at::Tensor())});
    ctx->saved_data["scale"] = scale;
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static auto op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("sah::masked_attention_backward", "")
            .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                const at::Tensor&, double, const std::optional<at::Tensor>&)>();
    auto s = ctx->get_saved_variables();
    at::Tensor gout = grads[0].defined() ? grads[0] : at::zeros_like(s[4]);
    auto [dq, dk, dv] = op.call(gout, opt(grads[1]), s[0], s[1], s[2], s[3], s[4], s[5],
                                ctx->saved_data["scale"].toDouble(), opt(s[6]));
    return {dq, dk, dv, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> sparse_attention_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& indices,
    const at::Tensor& probs, double scale, const std::optional<at::Tensor>& mask) {
  auto r = SparseAttentionFn::apply(q, k, v, indices, probs, scale, mask);
  return {r[0], r[1]};
}

std::tuple<at::Tensor, at::Tensor> masked_attention_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& probs,
    double scale, const std::optional<at::Tensor>& mask) {
  auto r = MaskedAttentionFn::apply(q, k, v, probs, scale, mask);
  return {r[0], r[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Autograd, m) {
  m.impl("sparse_attention", &sparse_attention_autograd);
  m.impl("masked_attention", &masked_attention_autograd);
  // Mask selection is not differentiable: run below autograd, outputs carry no gradient.
  m.impl("mask_union", torch::CppFunction::makeFallthrough());
  m.impl("rows_to_dense", torch::CppFunction::makeFallthrough());
  m.impl("dense_to_rows", torch::CppFunction::makeFallthrough());
  m.impl("row_counts", torch::CppFunction::makeFallthrough());
  m.impl("sink_mask", torch::CppFunction::makeFallthrough());
  m.impl("local_mask", torch::CppFunction::makeFallthrough());
  m.impl("oracle_topk_mask", torch::CppFunction::makeFallthrough());
  m.impl("oracle_topp_mask", torch::CppFunction::makeFallthrough());
  m.impl("random_sampling_mask", torch::CppFunction::makeFallthrough());
  m.impl("adaptive_sampling_mask", torch::CppFunction::makeFallthrough());
  m.impl("magicpig_mask", torch::CppFunction::makeFallthrough());
  m.impl("fill_lsh_projections", torch::CppFunction::makeFallthrough());
}

}  // namespace sah
