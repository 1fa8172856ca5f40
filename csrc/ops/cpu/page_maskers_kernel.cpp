// CPU kernels of the page and channel top-k masker operators (Quest, DoubleSparsity).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

#include "attention.h"
#include "cpu_types.h"
#include "page_maskers.h"
#include "sah/page_maskers_cpu.h"

namespace sah {
namespace {

void check_prev_range(const at::Tensor& pi, int64_t num_keys, const char* op) {
  if (pi.numel() == 0) return;
  const int64_t lo = pi.min().item<int32_t>(), hi = pi.max().item<int32_t>();
  TORCH_CHECK(lo >= -1 && hi < num_keys, op, ": prev_indices must lie in [0, num_keys=", num_keys,
              ") or be -1 (padding), got values in [", lo, ", ", hi, "]");
}

// Output rows (indices int32 -1 / probs float32) of shape prev[:-1] + (cap,).
std::tuple<at::Tensor, at::Tensor> empty_rows(const at::Tensor& pi, const at::Tensor& pp,
                                              int64_t cap) {
  auto shape = pi.sizes().vec();
  shape.back() = cap;
  return {at::empty(shape, pi.options()), at::empty(shape, pp.options())};
}

void quest_page_minmax_update_cpu(const at::Tensor& keys, const at::Tensor& page_min,
                                  const at::Tensor& page_max, int64_t num_cached_keys,
                                  int64_t page_size) {
  check_quest_update_inputs(keys, page_min, page_max, num_cached_keys, page_size);
  PageStatsParams p;
  p.batch = keys.size(0);
  p.kv_heads = keys.size(1);
  p.k_len = keys.size(2);
  p.head_dim = keys.size(3);
  p.page_size = page_size;
  p.page_cap = page_min.size(2);
  p.first_page = num_cached_keys / page_size;  // the partial page, if any, is recomputed
  p.k = keys.data_ptr();
  for (int d = 0; d < 4; ++d) p.k_stride[d] = keys.stride(d);
  p.page_min = page_min.data_ptr<float>();
  p.page_max = page_max.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, keys.scalar_type(), "sah_quest_page_minmax_cpu", [&] {
        using T = typename kernel_type<scalar_t>::type;
        at::parallel_for(0, p.items(), 1,
                         [&](int64_t b, int64_t e) { cpu::quest_page_stats<T>(p, b, e); });
      });
}

// Pseudo-quantised copy of the first `pages` pages of page statistics (per page, over head_dim).
at::Tensor quantized_pages(const at::Tensor& stats, int64_t pages, int64_t bits) {
  at::Tensor out = stats.narrow(2, 0, pages).clone(at::MemoryFormat::Contiguous);
  float* data = out.data_ptr<float>();
  const int64_t d = out.size(3);
  at::parallel_for(0, out.numel() / std::max<int64_t>(1, d), 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) cpu::pseudo_quantize_row(data + r * d, d, bits);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> quest_topk_cpu(
    const at::Tensor& queries, const at::Tensor& page_min, const at::Tensor& page_max,
    const at::Tensor& prev_indices, const at::Tensor& prev_probs,
    const std::optional<at::Tensor>& mask, int64_t num_keys, int64_t page_size,
    int64_t num_pages_to_pick, int64_t label_bits) {
  const char* op = "sah::quest_topk_mask";
  check_quest_inputs(queries, page_min, page_max, prev_indices, prev_probs, mask, num_keys,
                     page_size, num_pages_to_pick, label_bits);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  check_prev_range(pi, num_keys, op);
  const int64_t pages = (num_keys + page_size - 1) / page_size;
  at::Tensor lo = page_min, hi = page_max;
  if (label_bits < 16) {
    lo = quantized_pages(page_min, pages, label_bits);
    hi = quantized_pages(page_max, pages, label_bits);
  }
  const int64_t cap = std::min(pi.size(3) + num_pages_to_pick * page_size, num_keys);
  auto [out_idx, out_probs] = empty_rows(pi, pp, cap);
  QuestParams p;
  p.batch = pi.size(0);
  p.heads = pi.size(1);
  p.q_len = pi.size(2);
  p.kv_heads = lo.size(1);
  p.k_len = num_keys;
  p.head_dim = queries.size(3);
  p.page_size = page_size;
  p.page_cap = lo.size(2);
  p.num_pages_to_pick = num_pages_to_pick;
  p.q = queries.data_ptr();
  copy_strides4(queries, p.q_stride);
  p.page_min = lo.data_ptr<float>();
  p.page_max = hi.data_ptr<float>();
  p.prev_idx = pi.data_ptr<int32_t>();
  p.prev_probs = pp.data_ptr<float>();
  p.prev_cap = pi.size(3);
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = cap;
  std::atomic<bool> ok{true};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, pages * p.head_dim));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "sah_quest_topk_cpu", [&] {
        at::parallel_for(0, p.rows(), grain, [&](int64_t b, int64_t e) {
          if (!cpu::quest_rows<typename kernel_type<scalar_t>::type>(p, b, e)) ok = false;
        });
      });
  TORCH_CHECK(ok.load(), op, ": prev_indices rows must be strictly ascending (then -1 padding)");
  return {out_idx, out_probs};
}

std::tuple<at::Tensor, at::Tensor> double_sparsity_topk_cpu(
    const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& channels,
    const at::Tensor& prev_indices, const at::Tensor& prev_probs,
    const std::optional<at::Tensor>& mask, int64_t k, int64_t group_factor, int64_t label_bits) {
  const char* op = "sah::double_sparsity_topk_mask";
  check_double_sparsity_inputs(queries, keys, channels, prev_indices, prev_probs, mask, k,
                               group_factor, label_bits);
  const int64_t n = keys.size(2), d = queries.size(3);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  check_prev_range(pi, n, op);
  if (channels.numel() > 0) {
    const int64_t lo = channels.min().item<int64_t>(), hi = channels.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < d, op, ": channels must lie in [0, head_dim=", d,
                "), got values in [", lo, ", ", hi, "]");
  }
  DoubleSparsityParams p;
  p.batch = pi.size(0);
  p.heads = pi.size(1);
  p.q_len = pi.size(2);
  p.kv_heads = keys.size(1);
  p.k_len = n;
  p.head_dim = d;
  // The reference keeps the first head_dim / group_factor sorted channels (fewer if the table
  // lists fewer) and divides by sqrt(head_dim / group_factor) computed in double, cast to float.
  p.num_channels = std::min(channels.size(1), d / group_factor);
  p.score_divisor = static_cast<float>(std::sqrt(static_cast<double>(d / group_factor)));
  p.size = k;
  p.label_bits = static_cast<int>(label_bits);
  p.q = queries.data_ptr();
  copy_strides4(queries, p.q_stride);
  p.k = keys.data_ptr();
  copy_strides4(keys, p.k_stride);
  p.channels = channels.data_ptr<int64_t>();
  p.channel_stride[0] = channels.stride(0);
  p.channel_stride[1] = channels.stride(1);
  at::Tensor labels = at::empty({p.label_rows(), p.num_channels}, pp.options());
  p.key_labels = labels.data_ptr<float>();
  p.prev_idx = pi.data_ptr<int32_t>();
  p.prev_probs = pp.data_ptr<float>();
  p.prev_cap = pi.size(3);
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  const int64_t cap = std::min(pi.size(3) + k, n);
  auto [out_idx, out_probs] = empty_rows(pi, pp, cap);
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = cap;
  std::atomic<bool> ok{true};
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, n * p.num_channels));
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "sah_double_sparsity_topk_cpu", [&] {
        using T = typename kernel_type<scalar_t>::type;
        at::parallel_for(0, p.label_rows(), 256, [&](int64_t b, int64_t e) {
          cpu::double_sparsity_key_labels<T>(p, b, e);
        });
        at::parallel_for(0, p.rows(), grain, [&](int64_t b, int64_t e) {
          if (!cpu::double_sparsity_rows<T>(p, b, e)) ok = false;
        });
      });
  TORCH_CHECK(ok.load(), op, ": prev_indices rows must be strictly ascending (then -1 padding)");
  return {out_idx, out_probs};
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CPU, m) {
  m.impl("quest_page_minmax_update", &quest_page_minmax_update_cpu);
  m.impl("quest_topk_mask", &quest_topk_cpu);
  m.impl("double_sparsity_topk_mask", &double_sparsity_topk_cpu);
}

}  // namespace sah
