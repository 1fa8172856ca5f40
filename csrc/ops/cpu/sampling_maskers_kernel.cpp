// CPU kernels of the sampling masker operators and of the LSH projection generator.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

#include "cpu_types.h"
#include "fixed_maskers.h"
#include "sampling_maskers.h"

namespace sah {
namespace {

void check_prev_range(const at::Tensor& pi, int64_t num_keys, const char* op) {
  if (pi.numel() == 0) return;
  const int64_t lo = pi.min().item<int32_t>(), hi = pi.max().item<int32_t>();
  TORCH_CHECK(lo >= -1 && hi < num_keys, op, ": prev_indices must lie in [0, num_keys=", num_keys,
              ") or be -1 (padding), got values in [", lo, ", ", hi, "]");
}

// Runs the row kernel of `p` (prev rows, mask and q/k already packed) into new output rows.
std::tuple<at::Tensor, at::Tensor> run_rows(SamplingParams p, const at::Tensor& queries,
                                            const at::Tensor& pi, const at::Tensor& pp,
                                            int64_t out_cap, const char* op) {
  auto shape = pi.sizes().vec();
  shape.back() = out_cap;
  at::Tensor out_idx = at::empty(shape, pi.options()), out_probs = at::empty(shape, pp.options());
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = out_cap;
  std::atomic<bool> ok{true};
  auto body = [&](auto type_tag) {
    using T = decltype(type_tag);
    const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, p.k_len));
    at::parallel_for(0, p.rows(), grain, [&](int64_t begin, int64_t end) {
      if (!cpu::sampling_rows<T>(p, begin, end)) ok = false;
    });
  };
  if (queries.defined()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                    "sah_sampling_cpu",
                                    [&] { body(typename kernel_type<scalar_t>::type{}); });
  } else {
    body(float{});
  }
  TORCH_CHECK(ok.load(), op, ": prev_indices rows must be strictly ascending (then -1 padding)");
  return {out_idx, out_probs};
}

std::tuple<at::Tensor, at::Tensor> random_sampling_cpu(const at::Tensor& prev_indices,
                                                       const at::Tensor& prev_probs,
                                                       const std::optional<at::Tensor>& mask,
                                                       int64_t num_keys, int64_t num_samples,
                                                       int64_t seed, int64_t layer) {
  const char* op = "sah::random_sampling_mask";
  check_masker_inputs(at::Tensor(), at::Tensor(), prev_indices, prev_probs, mask, num_keys,
                      num_samples, op);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  check_prev_range(pi, num_keys, op);
  SamplingParams p = make_sampling_params(SamplingKind::kRandom, at::Tensor(), at::Tensor(), pi, pp,
                                          mask, num_keys);
  p.num_samples = num_samples;
  p.seed = seed;
  p.layer = layer;
  return run_rows(p, at::Tensor(), pi, pp, std::min(pi.size(3) + num_samples, num_keys), op);
}

std::tuple<at::Tensor, at::Tensor> adaptive_sampling_cpu(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& prev_indices,
    const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask, double scale,
    int64_t base_samples, double epsilon, double delta_ppf, int64_t range_start, int64_t range_end,
    int64_t seed, int64_t layer) {
  const char* op = "sah::adaptive_sampling_mask";
  TORCH_CHECK(keys.dim() == 4, op, ": keys must be 4-D, got ", keys.dim(), "-D");
  const int64_t n = keys.size(2);
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, n, base_samples, op);
  check_adaptive_args(n, base_samples, epsilon, range_start, range_end, op);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  check_prev_range(pi, n, op);
  SamplingParams p = make_sampling_params(SamplingKind::kAdaptive, queries, keys, pi, pp, mask, n);
  p.num_samples = base_samples;
  p.range_begin = range_start;
  p.range_end = range_end;
  p.scale = static_cast<float>(scale);
  p.epsilon = epsilon;
  p.delta_ppf = delta_ppf;
  p.seed = seed;
  p.layer = layer;
  const int64_t cap = std::min(pi.size(3) + (range_end - range_start), n);
  return run_rows(p, queries, pi, pp, cap, op);
}

std::tuple<at::Tensor, at::Tensor> magicpig_cpu(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& prev_indices,
    const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask,
    const at::Tensor& projections, const at::Tensor& key_mean, const at::Tensor& key_norm_bound,
    const at::Tensor& key_signatures, int64_t num_cached, int64_t lsh_l, int64_t lsh_k) {
  const char* op = "sah::magicpig_mask";
  TORCH_CHECK(keys.dim() == 4, op, ": keys must be 4-D, got ", keys.dim(), "-D");
  const int64_t n = keys.size(2);
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, n, 0, op);
  check_magicpig_state(queries, keys, projections, key_mean, key_norm_bound, key_signatures,
                       num_cached, lsh_l, lsh_k, op);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  check_prev_range(pi, n, op);
  const at::Tensor proj = projections.contiguous(), mean = key_mean.contiguous(),
                   bound = key_norm_bound.contiguous();
  SamplingParams p = make_sampling_params(SamplingKind::kMagicPig, queries, keys, pi, pp, mask, n);
  p.lsh = lsh_layout(lsh_l, lsh_k);
  p.projections = proj.data_ptr<float>();
  p.key_mean = mean.data_ptr<float>();
  p.key_norm_bound = bound.data_ptr<float>();
  p.signatures = key_signatures.data_ptr<int32_t>();
  p.sig_cap = key_signatures.size(2);
  p.num_cached = num_cached;
  const int64_t fresh = (n - num_cached) * p.batch * p.kv_heads;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, keys.scalar_type(), "sah_magicpig_signatures_cpu", [&] {
        at::parallel_for(0, fresh, 16, [&](int64_t begin, int64_t end) {
          cpu::magicpig_key_signatures<typename kernel_type<scalar_t>::type>(p, begin, end);
        });
      });
  return run_rows(p, queries, pi, pp, n, op);
}

void fill_lsh_projections_cpu(const at::Tensor& out, int64_t seed, int64_t layer) {
  const char* op = "sah::fill_lsh_projections";
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous(), op,
              ": out must be a contiguous float32 tensor, got ", out.scalar_type(),
              out.is_contiguous() ? "" : " (not contiguous)");
  float* data = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 4096, [&](int64_t begin, int64_t end) {
    cpu::fill_lsh_projections(data, seed, layer, begin, end);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CPU, m) {
  m.impl("random_sampling_mask", &random_sampling_cpu);
  m.impl("adaptive_sampling_mask", &adaptive_sampling_cpu);
  m.impl("magicpig_mask", &magicpig_cpu);
  m.impl("fill_lsh_projections", &fill_lsh_projections_cpu);
}

}  // namespace sah
