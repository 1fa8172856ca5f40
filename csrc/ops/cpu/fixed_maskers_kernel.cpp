// CPU kernels of the fixed masker operators.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

#include "cpu_types.h"
#include "fixed_maskers.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> run(MaskerKind kind, const at::Tensor& queries,
                                       const at::Tensor& keys, const at::Tensor& prev_indices,
                                       const at::Tensor& prev_probs,
                                       const std::optional<at::Tensor>& mask, int64_t num_keys,
                                       int64_t size, int64_t out_cap, float top_p, float scale,
                                       const char* op) {
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, num_keys, size, op);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  if (pi.numel() > 0) {
    const int64_t lo = pi.min().item<int32_t>(), hi = pi.max().item<int32_t>();
    TORCH_CHECK(lo >= -1 && hi < num_keys, op, ": prev_indices must lie in [0, num_keys=",
                num_keys, ") or be -1 (padding), got values in [", lo, ", ", hi, "]");
  }
  auto shape = pi.sizes().vec();
  shape.back() = out_cap;
  at::Tensor out_idx = at::empty(shape, pi.options()), out_probs = at::empty(shape, pp.options());
  MaskerParams p = make_masker_params(kind, queries, keys, pi, pp, mask, num_keys, size);
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = out_cap;
  p.top_p = top_p;
  p.scale = scale;
  std::atomic<bool> ok{true};
  auto body = [&](auto type_tag) {
    using T = decltype(type_tag);
    const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, num_keys));
    at::parallel_for(0, p.rows(), grain, [&](int64_t begin, int64_t end) {
      if (!cpu::masker_rows<T>(p, begin, end)) ok = false;
    });
  };
  if (queries.defined()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, queries.scalar_type(),
                                    "sah_masker_cpu",
                                    [&] { body(typename kernel_type<scalar_t>::type{}); });
  } else {
    body(float{});
  }
  TORCH_CHECK(ok.load(), op, ": prev_indices rows must be strictly ascending (then -1 padding)");
  return {out_idx, out_probs};
}

std::tuple<at::Tensor, at::Tensor> sink_cpu(const at::Tensor& pi, const at::Tensor& pp,
                                            const std::optional<at::Tensor>& mask,
                                            int64_t num_keys, int64_t sink) {
  const int64_t cap = std::min(pi.size(-1) + sink, num_keys);
  return run(MaskerKind::kSink, at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, sink, cap,
             0.0f, 1.0f, "sah::sink_mask");
}

std::tuple<at::Tensor, at::Tensor> local_cpu(const at::Tensor& pi, const at::Tensor& pp,
                                             const std::optional<at::Tensor>& mask,
                                             int64_t num_keys, int64_t window) {
  const int64_t cap = std::min(pi.size(-1) + window, num_keys);
  return run(MaskerKind::kLocal, at::Tensor(), at::Tensor(), pi, pp, mask, num_keys, window, cap,
             0.0f, 1.0f, "sah::local_mask");
}

std::tuple<at::Tensor, at::Tensor> topk_cpu(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& pi, const at::Tensor& pp,
                                            const std::optional<at::Tensor>& mask, int64_t topk) {
  const int64_t n = k.dim() == 4 ? k.size(2) : 0;
  const int64_t cap = std::min(pi.size(-1) + topk, n);
  return run(MaskerKind::kTopK, q, k, pi, pp, mask, n, topk, cap, 0.0f, 1.0f,
             "sah::oracle_topk_mask");
}

std::tuple<at::Tensor, at::Tensor> topp_cpu(const at::Tensor& q, const at::Tensor& k,
                                            const at::Tensor& pi, const at::Tensor& pp,
                                            const std::optional<at::Tensor>& mask, double top_p,
                                            double scale) {
  TORCH_CHECK(top_p >= 0.0 && top_p <= 1.0, "sah::oracle_topp_mask: top_p must be in [0, 1], got ",
              top_p);
  const int64_t n = k.dim() == 4 ? k.size(2) : 0;
  return run(MaskerKind::kTopP, q, k, pi, pp, mask, n, n, n, static_cast<float>(top_p),
             static_cast<float>(scale), "sah::oracle_topp_mask");
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CPU, m) {
  m.impl("sink_mask", &sink_cpu);
  m.impl("local_mask", &local_cpu);
  m.impl("oracle_topk_mask", &topk_cpu);
  m.impl("oracle_topp_mask", &topp_cpu);
}

}  // namespace sah
