// Shared checks, output capacities and parameter packing of the sampling masker operators.
#pragma once
#include <ATen/core/Tensor.h>

#include "sah/sampling_cpu.h"

namespace sah {

// Checks the adaptive sampling scalars: base_samples >= 2, 0 <= range_start <= range_end <=
// num_keys, epsilon > 0.
void check_adaptive_args(const c10::SymInt& num_keys, const c10::SymInt& base_samples,
                         double epsilon, const c10::SymInt& range_start,
                         const c10::SymInt& range_end, const char* op);

// Checks the MagicPig state against queries (b, h, q_len, d) and keys (b, kv_heads, k_len, d):
// projections float32 (d + 1, L * K); key_mean float32 (b, kv_heads, d); key_norm_bound float32
// (b, kv_heads); key_signatures int32 (b, kv_heads, >= k_len, words); 0 <= num_cached <= k_len.
void check_magicpig_state(const at::Tensor& queries, const at::Tensor& keys,
                          const at::Tensor& projections, const at::Tensor& key_mean,
                          const at::Tensor& key_norm_bound, const at::Tensor& key_signatures,
                          const c10::SymInt& num_cached, int64_t lsh_l, int64_t lsh_k,
                          const char* op);

// Packs real tensors (prev rows contiguous) into kernel parameters; queries/keys may be
// undefined (random sampling).
SamplingParams make_sampling_params(SamplingKind kind, const at::Tensor& queries,
                                    const at::Tensor& keys, const at::Tensor& prev_indices,
                                    const at::Tensor& prev_probs,
                                    const std::optional<at::Tensor>& mask, int64_t num_keys);

}  // namespace sah
