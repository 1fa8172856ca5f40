// Meta (shape-only) kernels of the fixed masker operators; symbolic sizes are supported.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fixed_maskers.h"
#include "mask_rows.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> rows_like(const at::Tensor& pi, const at::Tensor& pp,
                                             const c10::SymInt& cap) {
  auto shape = rows_shape(pi, cap);
  return {at::empty_symint(shape, pi.options()), at::empty_symint(shape, pp.options())};
}

std::tuple<at::Tensor, at::Tensor> sink_meta(const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask,
                                             c10::SymInt num_keys, c10::SymInt sink) {
  check_masker_inputs(at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, sink, "sah::sink_mask");
  return rows_like(pi, pp, masker_out_cap(pi, sink, num_keys));
}

std::tuple<at::Tensor, at::Tensor> local_meta(const at::Tensor& pi, const at::Tensor& pp,
                                              const std::optional<at::Tensor>& mask,
                                              c10::SymInt num_keys, c10::SymInt window) {
  check_masker_inputs(at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, window,
                      "sah::local_mask");
  return rows_like(pi, pp, masker_out_cap(pi, window, num_keys));
}

std::tuple<at::Tensor, at::Tensor> topk_meta(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask,
                                             c10::SymInt topk) {
  TORCH_CHECK(k.dim() == 4, "sah::oracle_topk_mask: keys must be 4-D, got ", k.dim(), "-D");
  check_masker_inputs(q, k, pi, pp, mask, k.sym_size(2), topk, "sah::oracle_topk_mask");
  return rows_like(pi, pp, masker_out_cap(pi, topk, k.sym_size(2)));
}

std::tuple<at::Tensor, at::Tensor> topp_meta(const at::Tensor& q, const at::Tensor& k,
                                             const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask, double top_p,
                                             double scale) {
  TORCH_CHECK(k.dim() == 4, "sah::oracle_topp_mask: keys must be 4-D, got ", k.dim(), "-D");
  check_masker_inputs(q, k, pi, pp, mask, k.sym_size(2), 0, "sah::oracle_topp_mask");
  return rows_like(pi, pp, k.sym_size(2));
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Meta, m) {
  m.impl("sink_mask", &sink_meta);
  m.impl("local_mask", &local_meta);
  m.impl("oracle_topk_mask", &topk_meta);
  m.impl("oracle_topp_mask", &topp_meta);
}

}  // namespace sah
