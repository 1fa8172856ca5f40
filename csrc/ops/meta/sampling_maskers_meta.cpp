// Meta (shape-only) kernels of the sampling masker operators; symbolic sizes are supported.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fixed_maskers.h"
#include "mask_rows.h"
#include "sampling_maskers.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> rows_like(const at::Tensor& pi, const at::Tensor& pp,
                                             const c10::SymInt& cap) {
  auto shape = rows_shape(pi, cap);
  return {at::empty_symint(shape, pi.options()), at::empty_symint(shape, pp.options())};
}

std::tuple<at::Tensor, at::Tensor> random_sampling_meta(const at::Tensor& pi, const at::Tensor& pp,
                                                        const std::optional<at::Tensor>& mask,
                                                        c10::SymInt num_keys,
                                                        c10::SymInt num_samples, int64_t seed,
                                                        int64_t layer) {
  check_masker_inputs(at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, num_samples,
                      "sah::random_sampling_mask");
  return rows_like(pi, pp, masker_out_cap(pi, num_samples, num_keys));
}

std::tuple<at::Tensor, at::Tensor> adaptive_sampling_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& pi, const at::Tensor& pp,
    const std::optional<at::Tensor>& mask, double scale, c10::SymInt base_samples, double epsilon,
    double delta_ppf, c10::SymInt range_start, c10::SymInt range_end, int64_t seed, int64_t layer) {
  const char* op = "sah::adaptive_sampling_mask";
  TORCH_CHECK(k.dim() == 4, op, ": keys must be 4-D, got ", k.dim(), "-D");
  check_masker_inputs(q, k, pi, pp, mask, k.sym_size(2), base_samples, op);
  check_adaptive_args(k.sym_size(2), base_samples, epsilon, range_start, range_end, op);
  return rows_like(pi, pp, masker_out_cap(pi, range_end - range_start, k.sym_size(2)));
}

std::tuple<at::Tensor, at::Tensor> magicpig_meta(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& pi, const at::Tensor& pp,
    const std::optional<at::Tensor>& mask, const at::Tensor& projections,
    const at::Tensor& key_mean, const at::Tensor& key_norm_bound, const at::Tensor& key_signatures,
    c10::SymInt num_cached, int64_t lsh_l, int64_t lsh_k) {
  const char* op = "sah::magicpig_mask";
  TORCH_CHECK(k.dim() == 4, op, ": keys must be 4-D, got ", k.dim(), "-D");
  check_masker_inputs(q, k, pi, pp, mask, k.sym_size(2), 0, op);
  check_magicpig_state(q, k, projections, key_mean, key_norm_bound, key_signatures, num_cached,
                       lsh_l, lsh_k, op);
  return rows_like(pi, pp, k.sym_size(2));
}

void fill_lsh_projections_meta(const at::Tensor& out, int64_t seed, int64_t layer) {
  TORCH_CHECK(out.scalar_type() == at::kFloat, "sah::fill_lsh_projections: out must be float32, ",
              "got ", out.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Meta, m) {
  m.impl("random_sampling_mask", &random_sampling_meta);
  m.impl("adaptive_sampling_mask", &adaptive_sampling_meta);
  m.impl("magicpig_mask", &magicpig_meta);
  m.impl("fill_lsh_projections", &fill_lsh_projections_meta);
}

}  // namespace sah
