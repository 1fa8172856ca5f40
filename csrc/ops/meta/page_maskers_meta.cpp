// Meta (shape-only) kernels of the page and channel top-k masker operators; symbolic sizes are
// supported.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fixed_maskers.h"
#include "mask_rows.h"
#include "page_maskers.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> rows_like(const at::Tensor& pi, const at::Tensor& pp,
                                             const c10::SymInt& cap) {
  auto shape = rows_shape(pi, cap);
  return {at::empty_symint(shape, pi.options()), at::empty_symint(shape, pp.options())};
}

void quest_page_minmax_update_meta(const at::Tensor& keys, const at::Tensor& page_min,
                                   const at::Tensor& page_max, c10::SymInt num_cached_keys,
                                   int64_t page_size) {
  check_quest_update_inputs(keys, page_min, page_max, num_cached_keys, page_size);
}

std::tuple<at::Tensor, at::Tensor> quest_topk_meta(
    const at::Tensor& queries, const at::Tensor& page_min, const at::Tensor& page_max,
    const at::Tensor& pi, const at::Tensor& pp, const std::optional<at::Tensor>& mask,
    c10::SymInt num_keys, int64_t page_size, c10::SymInt num_pages_to_pick, int64_t label_bits) {
  check_quest_inputs(queries, page_min, page_max, pi, pp, mask, num_keys, page_size,
                     num_pages_to_pick, label_bits);
  return rows_like(pi, pp, quest_out_cap(pi, num_keys, page_size, num_pages_to_pick));
}

std::tuple<at::Tensor, at::Tensor> double_sparsity_topk_meta(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& channels,
    const at::Tensor& pi, const at::Tensor& pp, const std::optional<at::Tensor>& mask,
    c10::SymInt k, int64_t group_factor, int64_t label_bits) {
  check_double_sparsity_inputs(queries, keys, channels, pi, pp, mask, k, group_factor, label_bits);
  return rows_like(pi, pp, masker_out_cap(pi, k, keys.sym_size(2)));
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Meta, m) {
  m.impl("quest_page_minmax_update", &quest_page_minmax_update_meta);
  m.impl("quest_topk_mask", &quest_topk_meta);
  m.impl("double_sparsity_topk_mask", &double_sparsity_topk_meta);
}

}  // namespace sah
