// Shared checks and parameter packing of the learned-score top-k operators (HashAttention,
// PQCache).
#pragma once
#include <ATen/core/Tensor.h>

#include "sah/learned_maskers_cpu.h"

namespace sah {

// Checks x (..., bits): floating with at least one dimension.
void check_pack_signs_input(const at::Tensor& x, const char* op);

// Checks query signatures int32 (b, h, q_len, words) and key signatures int32
// (b, key_heads, k_len, words) with words = ceil(bits / 32) and h a multiple of key_heads,
// against the previous rows (b, h, q_len, cap), the optional attention mask and k >= 0.
void check_hash_topk_inputs(const at::Tensor& query_signatures, const at::Tensor& key_signatures,
                            const at::Tensor& prev_indices, const at::Tensor& prev_probs,
                            const std::optional<at::Tensor>& mask, const c10::SymInt& k,
                            int64_t bits, const char* op);

// Checks codebooks float32 (b, kv_heads, subspaces, centroids, sub_dim) against vectors
// (b, kv_heads or a multiple, n, head_dim): subspaces * sub_dim == head_dim, 1..256 centroids.
void check_pq_codebooks(const at::Tensor& vectors, const at::Tensor& codebooks, const char* op);

// Checks keys (b, kv_heads, n, head_dim) against codebooks with the same kv_heads.
void check_pq_encode_inputs(const at::Tensor& keys, const at::Tensor& codebooks, const char* op);

// Checks queries (b, h, q_len, head_dim), codebooks, codes uint8 (b, kv_heads, k_len, subspaces),
// the previous rows, the optional attention mask and k >= 0.
void check_pq_topk_inputs(const at::Tensor& queries, const at::Tensor& codebooks,
                          const at::Tensor& codes, const at::Tensor& prev_indices,
                          const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask,
                          const c10::SymInt& k, const char* op);

// Packs the previous rows (contiguous), the mask and k into kernel parameters.
LearnedTopKParams make_learned_topk_params(const at::Tensor& prev_indices,
                                           const at::Tensor& prev_probs,
                                           const std::optional<at::Tensor>& mask, int64_t k_len,
                                           int64_t k);

}  // namespace sah
