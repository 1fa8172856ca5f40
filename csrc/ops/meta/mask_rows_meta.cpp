// Meta (shape-only) kernels of the row-form mask operators; symbolic sizes are supported.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "mask_rows.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> mask_union_meta(const at::Tensor& ia, const at::Tensor& pa,
                                                   const at::Tensor& ib, const at::Tensor& pb,
                                                   c10::SymInt num_keys) {
  check_union_inputs(ia, pa, ib, pb, num_keys, "sah::mask_union");
  const c10::SymInt cap = (ia.sym_size(-1) + ib.sym_size(-1)).min(num_keys);
  auto shape = rows_shape(ia, cap);
  return {at::empty_symint(shape, ia.options()), at::empty_symint(shape, pa.options())};
}

at::Tensor rows_to_dense_meta(const at::Tensor& idx, const at::Tensor& prob, c10::SymInt num_keys) {
  check_rows(idx, prob, "sah::rows_to_dense");
  return at::empty_symint(rows_shape(idx, num_keys), prob.options());
}

std::tuple<at::Tensor, at::Tensor> dense_to_rows_meta(const at::Tensor& dense) {
  check_dense(dense, "sah::dense_to_rows");
  return {at::empty_symint(dense.sym_sizes(), dense.options().dtype(at::kInt)),
          at::empty_symint(dense.sym_sizes(), dense.options())};
}

at::Tensor row_counts_meta(const at::Tensor& idx, const at::Tensor& prob) {
  check_rows(idx, prob, "sah::row_counts");
  return at::empty_symint(idx.sym_sizes().slice(0, idx.dim() - 1), idx.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Meta, m) {
  m.impl("mask_union", &mask_union_meta);
  m.impl("rows_to_dense", &rows_to_dense_meta);
  m.impl("dense_to_rows", &dense_to_rows_meta);
  m.impl("row_counts", &row_counts_meta);
}

}  // namespace sah
