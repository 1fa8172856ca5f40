// Schemas and input checks of the learned-score top-k operators: HashAttention (sign packing and
// popcount top-k) and PQCache (product-quantisation encoding and lookup-table top-k).
#include "learned_maskers.h"

#include <torch/library.h>

#include "attention.h"
#include "fixed_maskers.h"

namespace sah {
namespace {

bool is_floating(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_same_device(const at::Tensor& t, const at::Tensor& like, const char* name,
                       const char* op) {
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " must be on ", like.device(), ", got ",
              t.device());
}

// The previous rows' (batch, heads, q_len) must equal t's first three sizes.
void check_leading_dims(const at::Tensor& t, const at::Tensor& prev_indices, const char* name,
                        const char* op) {
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(t.sym_size(d) == prev_indices.sym_size(d), op, ": ", name, " shape ", t.sym_sizes(),
                " must start with the previous rows' (batch, heads, q_len) ",
                prev_indices.sym_sizes().slice(0, 3));
  }
}

}  // namespace

void check_pack_signs_input(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least 1 dimension (..., bits), got 0");
  TORCH_CHECK(is_floating(x.scalar_type()), op,
              ": x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
}

void check_hash_topk_inputs(const at::Tensor& query_signatures, const at::Tensor& key_signatures,
                            const at::Tensor& prev_indices, const at::Tensor& prev_probs,
                            const std::optional<at::Tensor>& mask, const c10::SymInt& k,
                            int64_t bits, const char* op) {
  TORCH_CHECK(bits >= 1, op, ": bits must be >= 1, got ", bits);
  const int64_t words = signature_words(bits);
  const at::Tensor& qs = query_signatures;
  const at::Tensor& ks = key_signatures;
  TORCH_CHECK(qs.dim() == 4 && qs.scalar_type() == at::kInt, op,
              ": query_signatures must be int32 of shape (batch, heads, q_len, words), got ",
              qs.scalar_type(), " ", qs.sym_sizes());
  TORCH_CHECK(ks.dim() == 4 && ks.scalar_type() == at::kInt, op,
              ": key_signatures must be int32 of shape (batch, key_heads, k_len, words), got ",
              ks.scalar_type(), " ", ks.sym_sizes());
  check_masker_inputs(at::Tensor(), at::Tensor(), prev_indices, prev_probs, mask, ks.sym_size(2), k,
                      op);
  check_leading_dims(qs, prev_indices, "query_signatures", op);
  TORCH_CHECK(qs.sym_size(3) == words && ks.sym_size(3) == words, op, ": signatures of ", bits,
              " bits must have ", words, " int32 words, got ", qs.sym_size(3),
              " (query_signatures) and ", ks.sym_size(3), " (key_signatures)");
  TORCH_CHECK(ks.sym_size(0) == qs.sym_size(0), op, ": key_signatures batch ", ks.sym_size(0),
              " must equal query_signatures batch ", qs.sym_size(0));
  TORCH_CHECK(ks.sym_size(1) > 0 && qs.sym_size(1) % ks.sym_size(1) == 0, op, ": query heads ",
              qs.sym_size(1), " must be a multiple of key_signatures heads ", ks.sym_size(1));
  check_same_device(qs, prev_indices, "query_signatures", op);
  check_same_device(ks, prev_indices, "key_signatures", op);
}

void check_pq_codebooks(const at::Tensor& vectors, const at::Tensor& codebooks, const char* op) {
  const at::Tensor& cb = codebooks;
  TORCH_CHECK(cb.dim() == 5 && cb.scalar_type() == at::kFloat, op,
              ": codebooks must be float32 of shape (batch, kv_heads, subspaces, centroids, "
              "sub_dim), got ",
              cb.scalar_type(), " ", cb.sym_sizes());
  TORCH_CHECK(vectors.dim() == 4 && is_floating(vectors.scalar_type()), op,
              ": vectors must be floating of shape (batch, heads, n, head_dim), got ",
              vectors.scalar_type(), " ", vectors.sym_sizes());
  TORCH_CHECK(cb.sym_size(0) == vectors.sym_size(0), op, ": codebooks batch ", cb.sym_size(0),
              " must equal the batch ", vectors.sym_size(0));
  TORCH_CHECK(cb.sym_size(1) > 0 && vectors.sym_size(1) % cb.sym_size(1) == 0, op, ": heads ",
              vectors.sym_size(1), " must be a multiple of codebooks kv_heads ", cb.sym_size(1));
  TORCH_CHECK(cb.sym_size(2) >= 1 && cb.sym_size(2) * cb.sym_size(4) == vectors.sym_size(3), op,
              ": codebooks subspaces * sub_dim = ", cb.sym_size(2), " * ", cb.sym_size(4),
              " must equal head_dim ", vectors.sym_size(3));
  TORCH_CHECK(cb.sym_size(3) >= 1 && cb.sym_size(3) <= 256, op,
              ": codebooks must have 1 to 256 centroids (uint8 codes), got ", cb.sym_size(3));
  check_same_device(cb, vectors, "codebooks", op);
}

void check_pq_encode_inputs(const at::Tensor& keys, const at::Tensor& codebooks, const char* op) {
  check_pq_codebooks(keys, codebooks, op);
  TORCH_CHECK(keys.sym_size(1) == codebooks.sym_size(1), op, ": keys kv_heads ", keys.sym_size(1),
              " must equal codebooks kv_heads ", codebooks.sym_size(1));
}

void check_pq_topk_inputs(const at::Tensor& queries, const at::Tensor& codebooks,
                          const at::Tensor& codes, const at::Tensor& prev_indices,
                          const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask,
                          const c10::SymInt& k, const char* op) {
  TORCH_CHECK(codes.dim() == 4 && codes.scalar_type() == at::kByte, op,
              ": codes must be uint8 of shape (batch, kv_heads, k_len, subspaces), got ",
              codes.scalar_type(), " ", codes.sym_sizes());
  check_masker_inputs(at::Tensor(), at::Tensor(), prev_indices, prev_probs, mask, codes.sym_size(2),
                      k, op);
  check_pq_codebooks(queries, codebooks, op);
  check_leading_dims(queries, prev_indices, "queries", op);
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(codes.sym_size(d) == codebooks.sym_size(d), op, ": codes shape ", codes.sym_sizes(),
                " must start with the codebooks' (batch, kv_heads) ",
                codebooks.sym_sizes().slice(0, 2));
  }
  TORCH_CHECK(codes.sym_size(3) == codebooks.sym_size(2), op, ": codes must have ",
              codebooks.sym_size(2), " subspaces, got ", codes.sym_size(3));
  check_same_device(queries, prev_indices, "queries", op);
  check_same_device(codes, prev_indices, "codes", op);
}

LearnedTopKParams make_learned_topk_params(const at::Tensor& prev_indices,
                                           const at::Tensor& prev_probs,
                                           const std::optional<at::Tensor>& mask, int64_t k_len,
                                           int64_t k) {
  LearnedTopKParams p;
  p.batch = prev_indices.size(0);
  p.heads = prev_indices.size(1);
  p.q_len = prev_indices.size(2);
  p.prev_cap = prev_indices.size(3);
  p.k_len = k_len;
  p.size = k;
  p.prev_idx = prev_indices.data_ptr<int32_t>();
  p.prev_probs = prev_probs.data_ptr<float>();
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  return p;
}

TORCH_LIBRARY_FRAGMENT(sah, m) {
  m.def("hash_pack_signs(Tensor x) -> Tensor");
  m.def(
      "hash_topk_mask(Tensor query_signatures, Tensor key_signatures, Tensor prev_indices, "
      "Tensor prev_probs, Tensor? attention_mask, SymInt k, int bits) -> (Tensor indices, "
      "Tensor probs)");
  m.def("pq_encode(Tensor keys, Tensor codebooks) -> Tensor");
  m.def(
      "pq_topk_mask(Tensor queries, Tensor codebooks, Tensor codes, Tensor prev_indices, "
      "Tensor prev_probs, Tensor? attention_mask, SymInt k) -> (Tensor indices, Tensor probs)");
}

// Selection and encoding are not differentiable: run below autograd, outputs carry no gradient.
TORCH_LIBRARY_IMPL(sah, Autograd, m) {
  m.impl("hash_pack_signs", torch::CppFunction::makeFallthrough());
  m.impl("hash_topk_mask", torch::CppFunction::makeFallthrough());
  m.impl("pq_encode", torch::CppFunction::makeFallthrough());
  m.impl("pq_topk_mask", torch::CppFunction::makeFallthrough());
}

}  // namespace sah
