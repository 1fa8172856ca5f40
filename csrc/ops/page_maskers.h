// Shared checks of the page and channel top-k masker operators (Quest, DoubleSparsity).
#pragma once
#include <ATen/core/Tensor.h>

namespace sah {

// Checks Quest page statistics: page_min and page_max float32, contiguous, of one shape
// (batch, kv_heads, >= ceil(num_keys / page_size), head_dim), on `device`.
void check_page_stats(const at::Tensor& page_min, const at::Tensor& page_max,
                      const c10::SymInt& batch, const c10::SymInt& kv_heads,
                      const c10::SymInt& head_dim, const c10::SymInt& num_keys, int64_t page_size,
                      const c10::Device& device, const char* op);

// Checks the inputs of sah::quest_page_minmax_update.
void check_quest_update_inputs(const at::Tensor& keys, const at::Tensor& page_min,
                               const at::Tensor& page_max, const c10::SymInt& num_cached_keys,
                               int64_t page_size);

// Checks the inputs of sah::quest_topk_mask: queries (batch, heads, q_len, head_dim), the page
// statistics of its kv heads, the previous rows, the attention mask and the scalars.
void check_quest_inputs(const at::Tensor& queries, const at::Tensor& page_min,
                        const at::Tensor& page_max, const at::Tensor& prev_indices,
                        const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask,
                        const c10::SymInt& num_keys, int64_t page_size,
                        const c10::SymInt& num_pages_to_pick, int64_t label_bits);

// Output row capacity of sah::quest_topk_mask: min(prev_cap + pages * page_size, num_keys).
c10::SymInt quest_out_cap(const at::Tensor& prev_indices, const c10::SymInt& num_keys,
                          int64_t page_size, const c10::SymInt& num_pages_to_pick);

// Checks the inputs of sah::double_sparsity_topk_mask; channels int64 (heads, >= 1).
void check_double_sparsity_inputs(const at::Tensor& queries, const at::Tensor& keys,
                                  const at::Tensor& channels, const at::Tensor& prev_indices,
                                  const at::Tensor& prev_probs,
                                  const std::optional<at::Tensor>& mask, const c10::SymInt& k,
                                  int64_t group_factor, int64_t label_bits);

}  // namespace sah
