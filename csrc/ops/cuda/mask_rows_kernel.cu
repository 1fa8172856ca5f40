// CUDA kernels of the row-form mask operators.
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mask_rows.h"
#include "sah/mask_rows_cuda.cuh"

namespace sah {
namespace {

// Product of all but the last dimension.
int64_t leading_rows(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

void check_status(Status status, const char* op) {
  TORCH_CHECK(status != Status::kBadArgument, op,
              ": sizes too large for the CUDA kernel (rows and row lengths must fit in int32)");
  TORCH_CHECK(status == Status::kOk, op, ": CUDA kernel launch failed");
}

std::tuple<at::Tensor, at::Tensor> mask_union_cuda(const at::Tensor& ia, const at::Tensor& pa,
                                                   const at::Tensor& ib, const at::Tensor& pb,
                                                   int64_t num_keys) {
  const char* op = "sah::mask_union";
  check_union_inputs(ia, pa, ib, pb, num_keys, op);
  c10::cuda::CUDAGuard guard(ia.device());
  const int64_t ca = ia.size(-1), cb = ib.size(-1), co = std::min(ca + cb, num_keys);
  const at::Tensor ia_c = ia.contiguous(), pa_c = pa.contiguous(), ib_c = ib.contiguous(),
                   pb_c = pb.contiguous();
  auto shape = ia.sizes().vec();
  shape.back() = co;
  at::Tensor io = at::empty(shape, ia.options()), po = at::empty(shape, pa.options());
  check_status(cuda::mask_union(ia_c.data_ptr<int32_t>(), pa_c.data_ptr<float>(), ca,
                                ib_c.data_ptr<int32_t>(), pb_c.data_ptr<float>(), cb,
                                io.data_ptr<int32_t>(), po.data_ptr<float>(), co, leading_rows(ia),
                                at::cuda::getCurrentCUDAStream()),
               op);
  return {io, po};
}

at::Tensor rows_to_dense_cuda(const at::Tensor& idx, const at::Tensor& prob, int64_t num_keys) {
  const char* op = "sah::rows_to_dense";
  check_rows(idx, prob, op);
  TORCH_CHECK(num_keys >= 0, op, ": num_keys must be >= 0, got ", num_keys);
  c10::cuda::CUDAGuard guard(idx.device());
  auto shape = idx.sizes().vec();
  const int64_t cap = shape.back();
  shape.back() = num_keys;
  at::Tensor dense = at::zeros(shape, prob.options());
  const at::Tensor idx_c = idx.contiguous(), prob_c = prob.contiguous();
  check_status(cuda::rows_to_dense(idx_c.data_ptr<int32_t>(), prob_c.data_ptr<float>(), cap,
                                   dense.data_ptr<float>(), num_keys, leading_rows(idx),
                                   at::cuda::getCurrentCUDAStream()),
               op);
  return dense;
}

std::tuple<at::Tensor, at::Tensor> dense_to_rows_cuda(const at::Tensor& dense) {
  const char* op = "sah::dense_to_rows";
  check_dense(dense, op);
  c10::cuda::CUDAGuard guard(dense.device());
  const at::Tensor d = dense.contiguous();
  at::Tensor idx = at::empty(dense.sizes(), dense.options().dtype(at::kInt));
  at::Tensor prob = at::empty(dense.sizes(), dense.options());
  check_status(cuda::dense_to_rows(d.data_ptr<float>(), dense.size(-1), idx.data_ptr<int32_t>(),
                                   prob.data_ptr<float>(), leading_rows(dense),
                                   at::cuda::getCurrentCUDAStream()),
               op);
  return {idx, prob};
}

at::Tensor row_counts_cuda(const at::Tensor& idx, const at::Tensor& prob) {
  const char* op = "sah::row_counts";
  check_rows(idx, prob, op);
  c10::cuda::CUDAGuard guard(idx.device());
  auto shape = idx.sizes().vec();
  const int64_t cap = shape.back();
  shape.pop_back();
  at::Tensor counts = at::empty(shape, idx.options());
  const at::Tensor idx_c = idx.contiguous(), prob_c = prob.contiguous();
  check_status(cuda::row_counts(idx_c.data_ptr<int32_t>(), prob_c.data_ptr<float>(), cap,
                                counts.data_ptr<int32_t>(), leading_rows(idx),
                                at::cuda::getCurrentCUDAStream()),
               op);
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CUDA, m) {
  m.impl("mask_union", &mask_union_cuda);
  m.impl("rows_to_dense", &rows_to_dense_cuda);
  m.impl("dense_to_rows", &dense_to_rows_cuda);
  m.impl("row_counts", &row_counts_cuda);
}

}  // namespace sah
