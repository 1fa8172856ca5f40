// Shared checks, output capacity and parameter packing of the fixed masker operators.
#pragma once
#include <ATen/core/Tensor.h>

#include "sah/maskers_cpu.h"

namespace sah {

// Checks the previous mask rows (batch, heads, q_len, prev_cap), the optional attention mask and,
// for scoring maskers (queries defined), queries (b, h, q_len, d) and keys (b, kv_heads, k_len, d).
void check_masker_inputs(const at::Tensor& queries, const at::Tensor& keys,
                         const at::Tensor& prev_indices, const at::Tensor& prev_probs,
                         const std::optional<at::Tensor>& mask, const c10::SymInt& num_keys,
                         const c10::SymInt& size, const char* op);

// Output row capacity min(prev_cap + budget, num_keys): the union never needs more.
c10::SymInt masker_out_cap(const at::Tensor& prev_indices, const c10::SymInt& budget,
                           const c10::SymInt& num_keys);

// Packs real tensors (prev rows contiguous) into kernel parameters.
MaskerParams make_masker_params(MaskerKind kind, const at::Tensor& queries, const at::Tensor& keys,
                                const at::Tensor& prev_indices, const at::Tensor& prev_probs,
                                const std::optional<at::Tensor>& mask, int64_t num_keys,
                                int64_t size);

}  // namespace sah
