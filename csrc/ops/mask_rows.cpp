// Schemas and input checks of the row-form mask operators.
#include "mask_rows.h"

#include <torch/library.h>

namespace sah {

void check_rows(const at::Tensor& indices, const at::Tensor& probs, const char* op) {
  TORCH_CHECK(indices.dim() >= 1, op, ": indices must have at least 1 dimension, got 0");
  TORCH_CHECK(indices.scalar_type() == at::kInt, op, ": indices must be int32, got ",
              indices.scalar_type());
  TORCH_CHECK(probs.scalar_type() == at::kFloat, op, ": probs must be float32, got ",
              probs.scalar_type());
  TORCH_CHECK(indices.sym_sizes() == probs.sym_sizes(), op, ": indices shape ",
              indices.sym_sizes(), " must equal probs shape ", probs.sym_sizes());
  TORCH_CHECK(indices.device() == probs.device(), op, ": indices and probs must be on one device, got ",
              indices.device(), " and ", probs.device());
}

void check_union_inputs(const at::Tensor& ia, const at::Tensor& pa, const at::Tensor& ib,
                        const at::Tensor& pb, const c10::SymInt& num_keys, const char* op) {
  check_rows(ia, pa, op);
  check_rows(ib, pb, op);
  TORCH_CHECK(ia.dim() == ib.dim(), op, ": both masks must have the same rank, got ", ia.dim(),
              " and ", ib.dim());
  TORCH_CHECK(ia.sym_sizes().slice(0, ia.dim() - 1) == ib.sym_sizes().slice(0, ib.dim() - 1), op,
              ": both masks must have the same leading dims, got ", ia.sym_sizes(), " and ",
              ib.sym_sizes());
  TORCH_CHECK(ia.device() == ib.device(), op, ": both masks must be on one device, got ",
              ia.device(), " and ", ib.device());
  TORCH_CHECK(num_keys >= 0, op, ": num_keys must be >= 0, got ", num_keys);
}

void check_dense(const at::Tensor& dense, const char* op) {
  TORCH_CHECK(dense.dim() >= 1, op, ": dense must have at least 1 dimension, got 0");
  TORCH_CHECK(dense.scalar_type() == at::kFloat, op, ": dense must be float32, got ",
              dense.scalar_type());
}

c10::SymDimVector rows_shape(const at::Tensor& like, const c10::SymInt& last) {
  c10::SymDimVector shape(like.sym_sizes().begin(), like.sym_sizes().end());
  shape.back() = last;
  return shape;
}

TORCH_LIBRARY_FRAGMENT(sah, m) {
  m.def(
      "mask_union(Tensor indices_a, Tensor probs_a, Tensor indices_b, Tensor probs_b, "
      "SymInt num_keys) -> (Tensor indices, Tensor probs)");
  m.def("rows_to_dense(Tensor indices, Tensor probs, SymInt num_keys) -> Tensor");
  m.def("dense_to_rows(Tensor dense) -> (Tensor indices, Tensor probs)");
  m.def("row_counts(Tensor indices, Tensor probs) -> Tensor");
}

}  // namespace sah
