// Shared checks of the row-form mask operators (mask_union, rows_to_dense, dense_to_rows,
// row_counts).
#pragma once
#include <ATen/core/Tensor.h>

namespace sah {

// Checks a row-form mask: indices int32 and probs float32 of one shape (..., cap), same device.
void check_rows(const at::Tensor& indices, const at::Tensor& probs, const char* op);

// Checks two row-form masks for a union: same leading dims and device.
void check_union_inputs(const at::Tensor& ia, const at::Tensor& pa, const at::Tensor& ib,
                        const at::Tensor& pb, const c10::SymInt& num_keys, const char* op);

// Checks a dense probability tensor (..., n) of float32.
void check_dense(const at::Tensor& dense, const char* op);

// Output shape of a row-form op: `like`'s leading dims with a new last dim.
c10::SymDimVector rows_shape(const at::Tensor& like, const c10::SymInt& last);

}  // namespace sah
