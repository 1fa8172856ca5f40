// Schemas and input checks of the fixed masker operators (sink, local, oracle top-k/top-p).
#include "fixed_maskers.h"

#include <torch/library.h>

#include "attention.h"
#include "mask_rows.h"

namespace sah {

void check_masker_inputs(const at::Tensor& queries, const at::Tensor& keys,
                         const at::Tensor& prev_indices, const at::Tensor& prev_probs,
                         const std::optional<at::Tensor>& mask, const c10::SymInt& num_keys,
                         const c10::SymInt& size, const char* op) {
  check_rows(prev_indices, prev_probs, op);
  TORCH_CHECK(prev_indices.dim() == 4, op,
              ": prev_indices must be 4-D (batch, heads, q_len, cap), got shape ",
              prev_indices.sym_sizes());
  TORCH_CHECK(num_keys >= 0, op, ": num_keys must be >= 0, got ", num_keys);
  TORCH_CHECK(size >= 0, op, ": the masker size must be >= 0, got ", size);
  if (queries.defined()) {
    // Reuse the attention checks: queries/keys play q/k (and v), prev rows play the selection.
    check_attention_inputs(queries, keys, keys, prev_indices, prev_probs, mask, op);
    TORCH_CHECK(keys.sym_size(2) == num_keys, op, ": keys have ", keys.sym_size(2),
                " rows but num_keys is ", num_keys);
  } else if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.dim() == 4, op, ": attention_mask must be 4-D, got shape ", m.sym_sizes());
    TORCH_CHECK(m.device() == prev_indices.device(), op, ": attention_mask must be on ",
                prev_indices.device(), ", got ", m.device());
    TORCH_CHECK(m.sym_size(0) == 1 || m.sym_size(0) == prev_indices.sym_size(0), op,
                ": attention_mask batch must be 1 or ", prev_indices.sym_size(0), ", got ",
                m.sym_size(0));
    TORCH_CHECK(m.sym_size(1) == 1 || m.sym_size(1) == prev_indices.sym_size(1), op,
                ": attention_mask heads must be 1 or ", prev_indices.sym_size(1), ", got ",
                m.sym_size(1));
    TORCH_CHECK(m.sym_size(2) == 1 || m.sym_size(2) == prev_indices.sym_size(2), op,
                ": attention_mask q_len must be 1 or ", prev_indices.sym_size(2), ", got ",
                m.sym_size(2));
    TORCH_CHECK(m.sym_size(3) >= num_keys, op, ": attention_mask must have at least num_keys ",
                num_keys, " columns, got ", m.sym_size(3));
    TORCH_CHECK(m.scalar_type() == at::kBool || at::isFloatingType(m.scalar_type()), op,
                ": attention_mask must be bool or floating, got ", m.scalar_type());
  }
}

c10::SymInt masker_out_cap(const at::Tensor& prev_indices, const c10::SymInt& budget,
                           const c10::SymInt& num_keys) {
  return (prev_indices.sym_size(3) + budget).min(num_keys);
}

MaskerParams make_masker_params(MaskerKind kind, const at::Tensor& queries, const at::Tensor& keys,
                                const at::Tensor& prev_indices, const at::Tensor& prev_probs,
                                const std::optional<at::Tensor>& mask, int64_t num_keys,
                                int64_t size) {
  MaskerParams p;
  p.kind = kind;
  p.batch = prev_indices.size(0);
  p.heads = prev_indices.size(1);
  p.q_len = prev_indices.size(2);
  p.prev_cap = prev_indices.size(3);
  p.k_len = num_keys;
  p.size = size;
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
      "sink_mask(Tensor prev_indices, Tensor prev_probs, Tensor? attention_mask, SymInt num_keys, "
      "SymInt sink_size) -> (Tensor indices, Tensor probs)");
  m.def(
      "local_mask(Tensor prev_indices, Tensor prev_probs, Tensor? attention_mask, "
      "SymInt num_keys, SymInt window_size) -> (Tensor indices, Tensor probs)");
  m.def(
      "oracle_topk_mask(Tensor queries, Tensor keys, Tensor prev_indices, Tensor prev_probs, "
      "Tensor? attention_mask, SymInt k) -> (Tensor indices, Tensor probs)");
  m.def(
      "oracle_topp_mask(Tensor queries, Tensor keys, Tensor prev_indices, Tensor prev_probs, "
      "Tensor? attention_mask, float top_p, float scale) -> (Tensor indices, Tensor probs)");
}

}  // namespace sah
