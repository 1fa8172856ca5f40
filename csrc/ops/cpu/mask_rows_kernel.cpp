// CPU kernels of the row-form mask operators.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>

#include "mask_rows.h"
#include "sah/mask_rows_cpu.h"

namespace sah {
namespace {

void check_range(const at::Tensor& idx, int64_t n, const char* op) {
  if (idx.numel() == 0) return;
  const int64_t lo = idx.min().item<int32_t>(), hi = idx.max().item<int32_t>();
  TORCH_CHECK(lo >= -1 && hi < n, op, ": indices must lie in [0, num_keys=", n,
              ") or be -1 (padding), got values in [", lo, ", ", hi, "]");
}

std::tuple<at::Tensor, at::Tensor> mask_union_cpu(const at::Tensor& ia, const at::Tensor& pa,
                                                  const at::Tensor& ib, const at::Tensor& pb,
                                                  int64_t num_keys) {
  const char* op = "sah::mask_union";
  check_union_inputs(ia, pa, ib, pb, num_keys, op);
  check_range(ia, num_keys, op);
  check_range(ib, num_keys, op);
  const int64_t ca = ia.size(-1), cb = ib.size(-1), co = std::min(ca + cb, num_keys);
  at::Tensor ia_c = ia.contiguous(), pa_c = pa.contiguous(), ib_c = ib.contiguous(),
             pb_c = pb.contiguous();
  auto shape = ia.sizes().vec();
  shape.back() = co;
  at::Tensor io = at::empty(shape, ia.options()), po = at::empty(shape, pa.options());
  const int64_t rows = co == 0 ? 0 : io.numel() / co;
  std::atomic<bool> overflow{false};
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = cpu::union_row(ia_c.data_ptr<int32_t>() + r * ca, pa_c.data_ptr<float>() + r * ca, ca,
                                       ib_c.data_ptr<int32_t>() + r * cb, pb_c.data_ptr<float>() + r * cb, cb,
                                       io.data_ptr<int32_t>() + r * co, po.data_ptr<float>() + r * co, co);
      if (n < 0) overflow = true;
    }
  });
  TORCH_CHECK(!overflow, op, ": a row has repeated or unsorted indices (the union of rows with ",
              "distinct ascending indices below num_keys always fits)");
  return {io, po};
}

at::Tensor rows_to_dense_cpu(const at::Tensor& idx, const at::Tensor& prob, int64_t num_keys) {
  const char* op = "sah::rows_to_dense";
  check_rows(idx, prob, op);
  TORCH_CHECK(num_keys >= 0, op, ": num_keys must be >= 0, got ", num_keys);
  check_range(idx, num_keys, op);
  auto shape = idx.sizes().vec();
  const int64_t cap = shape.back();
  shape.back() = num_keys;
  at::Tensor dense = at::zeros(shape, prob.options());
  at::Tensor idx_c = idx.contiguous(), prob_c = prob.contiguous();
  const int64_t rows = cap == 0 ? dense.numel() / std::max<int64_t>(1, num_keys) : idx.numel() / cap;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      cpu::row_to_dense(idx_c.data_ptr<int32_t>() + r * cap, prob_c.data_ptr<float>() + r * cap,
                        cap, dense.data_ptr<float>() + r * num_keys, num_keys);
    }
  });
  return dense;
}

std::tuple<at::Tensor, at::Tensor> dense_to_rows_cpu(const at::Tensor& dense) {
  const char* op = "sah::dense_to_rows";
  check_dense(dense, op);
  const int64_t n = dense.size(-1);
  at::Tensor d = dense.contiguous();
  at::Tensor idx = at::empty(dense.sizes(), dense.options().dtype(at::kInt));
  at::Tensor prob = at::empty(dense.sizes(), dense.options());
  const int64_t rows = n == 0 ? 0 : d.numel() / n;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      cpu::dense_to_row(d.data_ptr<float>() + r * n, n, idx.data_ptr<int32_t>() + r * n,
                        prob.data_ptr<float>() + r * n, n);
    }
  });
  return {idx, prob};
}

at::Tensor row_counts_cpu(const at::Tensor& idx, const at::Tensor& prob) {
  check_rows(idx, prob, "sah::row_counts");
  const int64_t cap = idx.size(-1);
  auto shape = idx.sizes().vec();
  shape.pop_back();
  at::Tensor counts = at::empty(shape, idx.options());
  at::Tensor idx_c = idx.contiguous(), prob_c = prob.contiguous();
  const int64_t rows = counts.numel();
  at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      counts.data_ptr<int32_t>()[r] = cpu::row_count(idx_c.data_ptr<int32_t>() + r * cap,
                                                     prob_c.data_ptr<float>() + r * cap, cap);
    }
  });
  return counts;
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CPU, m) {
  m.impl("mask_union", &mask_union_cpu);
  m.impl("rows_to_dense", &rows_to_dense_cpu);
  m.impl("dense_to_rows", &dense_to_rows_cpu);
  m.impl("row_counts", &row_counts_cpu);
}

}  // namespace sah
