// Schemas and input checks of the sampling masker operators (random sampling, adaptive sampling,
// MagicPig) and of the LSH projection generator.
#include "sampling_maskers.h"

#include <torch/library.h>

#include "attention.h"
#include "fixed_maskers.h"

namespace sah {

void check_adaptive_args(const c10::SymInt& num_keys, const c10::SymInt& base_samples,
                         double epsilon, const c10::SymInt& range_start,
                         const c10::SymInt& range_end, const char* op) {
  TORCH_CHECK(base_samples >= 2, op, ": base_samples must be >= 2, got ", base_samples);
  TORCH_CHECK(epsilon > 0.0, op, ": epsilon must be > 0, got ", epsilon);
  TORCH_CHECK(range_start >= 0 && range_start <= range_end && range_end <= num_keys, op,
              ": the sampling range must satisfy 0 <= range_start <= range_end <= num_keys=",
              num_keys, ", got [", range_start, ", ", range_end, ")");
}

void check_magicpig_state(const at::Tensor& queries, const at::Tensor& keys,
                          const at::Tensor& projections, const at::Tensor& key_mean,
                          const at::Tensor& key_norm_bound, const at::Tensor& key_signatures,
                          const c10::SymInt& num_cached, int64_t lsh_l, int64_t lsh_k,
                          const char* op) {
  TORCH_CHECK(lsh_l >= 1 && lsh_k >= 1, op, ": lsh_l and lsh_k must be >= 1, got ", lsh_l, " and ",
              lsh_k);
  const auto b = keys.sym_size(0), hkv = keys.sym_size(1), sk = keys.sym_size(2),
             d = keys.sym_size(3);
  auto on_device = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == queries.device(), op, ": ", name, " must be on ", queries.device(),
                ", got ", t.device());
  };
  TORCH_CHECK(projections.dim() == 2 && projections.scalar_type() == at::kFloat &&
                  projections.sym_size(0) == d + 1 && projections.sym_size(1) == lsh_l * lsh_k,
              op, ": projections must be float32 of shape (head_dim + 1, lsh_l * lsh_k) = (", d + 1,
              ", ", lsh_l * lsh_k, "), got ", projections.scalar_type(), " ",
              projections.sym_sizes());
  on_device(projections, "projections");
  TORCH_CHECK(key_mean.dim() == 3 && key_mean.scalar_type() == at::kFloat &&
                  key_mean.sym_size(0) == b && key_mean.sym_size(1) == hkv &&
                  key_mean.sym_size(2) == d,
              op, ": key_mean must be float32 of shape (batch, kv_heads, head_dim) = (", b, ", ",
              hkv, ", ", d, "), got ", key_mean.scalar_type(), " ", key_mean.sym_sizes());
  on_device(key_mean, "key_mean");
  TORCH_CHECK(key_norm_bound.dim() == 2 && key_norm_bound.scalar_type() == at::kFloat &&
                  key_norm_bound.sym_size(0) == b && key_norm_bound.sym_size(1) == hkv,
              op, ": key_norm_bound must be float32 of shape (batch, kv_heads) = (", b, ", ", hkv,
              "), got ", key_norm_bound.scalar_type(), " ", key_norm_bound.sym_sizes());
  on_device(key_norm_bound, "key_norm_bound");
  const int64_t words = lsh_layout(lsh_l, lsh_k).words;
  TORCH_CHECK(key_signatures.dim() == 4 && key_signatures.scalar_type() == at::kInt &&
                  key_signatures.sym_size(0) == b && key_signatures.sym_size(1) == hkv &&
                  key_signatures.sym_size(2) >= sk && key_signatures.sym_size(3) == words,
              op,
              ": key_signatures must be int32 of shape (batch, kv_heads, >= k_len, words) with ",
              "(batch, kv_heads, k_len, words) = (", b, ", ", hkv, ", ", sk, ", ", words, "), got ",
              key_signatures.scalar_type(), " ", key_signatures.sym_sizes());
  on_device(key_signatures, "key_signatures");
  TORCH_CHECK(key_signatures.is_contiguous(), op,
              ": key_signatures must be contiguous (it is updated in place)");
  TORCH_CHECK(num_cached >= 0 && num_cached <= sk, op, ": num_cached must be in [0, k_len=", sk,
              "], got ", num_cached);
}

SamplingParams make_sampling_params(SamplingKind kind, const at::Tensor& queries,
                                    const at::Tensor& keys, const at::Tensor& prev_indices,
                                    const at::Tensor& prev_probs,
                                    const std::optional<at::Tensor>& mask, int64_t num_keys) {
  SamplingParams p;
  p.kind = kind;
  p.batch = prev_indices.size(0);
  p.heads = prev_indices.size(1);
  p.q_len = prev_indices.size(2);
  p.prev_cap = prev_indices.size(3);
  p.k_len = num_keys;
  p.prev_idx = prev_indices.data_ptr<int32_t>();
  p.prev_probs = prev_probs.data_ptr<float>();
  if (queries.defined()) {
    p.kv_heads = keys.size(1);
    p.head_dim = queries.size(3);
    p.q = queries.data_ptr();
    copy_strides4(queries, p.q_stride);
    p.k = keys.data_ptr();
    copy_strides4(keys, p.k_stride);
  }
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  return p;
}

TORCH_LIBRARY_FRAGMENT(sah, m) {
  m.def(
      "random_sampling_mask(Tensor prev_indices, Tensor prev_probs, Tensor? attention_mask, "
      "SymInt num_keys, SymInt num_samples, int seed, int layer) -> (Tensor indices, "
      "Tensor probs)");
  m.def(
      "adaptive_sampling_mask(Tensor queries, Tensor keys, Tensor prev_indices, "
      "Tensor prev_probs, Tensor? attention_mask, float scale, SymInt base_samples, "
      "float epsilon, float delta_ppf, SymInt range_start, SymInt range_end, int seed, "
      "int layer) -> (Tensor indices, Tensor probs)");
  m.def(
      "magicpig_mask(Tensor queries, Tensor keys, Tensor prev_indices, Tensor prev_probs, "
      "Tensor? attention_mask, Tensor projections, Tensor key_mean, Tensor key_norm_bound, "
      "Tensor(a!) key_signatures, SymInt num_cached, int lsh_l, int lsh_k) -> (Tensor indices, "
      "Tensor probs)");
  // CPU only: MagicPig's projections are small and made once per layer, then moved to the device.
  m.def("fill_lsh_projections(Tensor(a!) out, int seed, int layer) -> ()");
}

}  // namespace sah
