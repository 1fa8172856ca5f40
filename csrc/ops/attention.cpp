// Schemas and input checks of the attention operators.
#include "attention.h"

#include <torch/library.h>

namespace sah {
namespace {

void check_4d(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D, got ", t.dim(), "-D tensor of shape ",
              t.sym_sizes());
}

bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble;
}

}  // namespace

void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& indices, const at::Tensor& probs,
                            const std::optional<at::Tensor>& mask, const char* op) {
  check_4d(q, "query (batch, heads, q_len, head_dim)", op);
  check_4d(k, "key (batch, kv_heads, k_len, head_dim)", op);
  check_4d(v, "value (batch, kv_heads, k_len, head_dim)", op);
  TORCH_CHECK(is_float_dtype(q.scalar_type()), op,
              ": query must be float16, bfloat16, float32 or float64, got ", q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": key and value must have the query's dtype ", q.scalar_type(), ", got ",
              k.scalar_type(), " and ", v.scalar_type());
  TORCH_CHECK(k.device() == q.device() && v.device() == q.device(), op,
              ": query, key and value must be on one device, got ", q.device(), ", ", k.device(),
              ", ", v.device());
  TORCH_CHECK(k.sym_sizes() == v.sym_sizes(), op, ": key and value must have the same shape, got ",
              k.sym_sizes(), " and ", v.sym_sizes());
  TORCH_CHECK(k.sym_size(0) == q.sym_size(0), op, ": key batch ", k.sym_size(0),
              " must equal query batch ", q.sym_size(0));
  TORCH_CHECK(k.sym_size(3) == q.sym_size(3), op, ": key head_dim ", k.sym_size(3),
              " must equal query head_dim ", q.sym_size(3));
  TORCH_CHECK(k.sym_size(1) > 0 && q.sym_size(1) % k.sym_size(1) == 0, op, ": query heads ",
              q.sym_size(1), " must be a multiple of kv heads ", k.sym_size(1));
  const bool rows = indices.defined();
  if (rows) {
    check_4d(indices, "indices (batch, heads, q_len, cap)", op);
    TORCH_CHECK(indices.scalar_type() == at::kInt, op, ": indices must be int32, got ",
                indices.scalar_type());
    TORCH_CHECK(indices.device() == q.device(), op, ": indices must be on ", q.device(), ", got ",
                indices.device());
  }
  check_4d(probs, rows ? "probs (batch, heads, q_len, cap)" : "probs (batch, heads, q_len, k_len)",
           op);
  TORCH_CHECK(probs.scalar_type() == at::kFloat, op, ": probs must be float32, got ",
              probs.scalar_type());
  TORCH_CHECK(probs.device() == q.device(), op, ": probs must be on ", q.device(), ", got ",
              probs.device());
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(probs.sym_size(d) == q.sym_size(d), op, ": probs shape ", probs.sym_sizes(),
                " must start with the query's (batch, heads, q_len) ",
                q.sym_sizes().slice(0, 3));
  }
  if (rows) {
    TORCH_CHECK(indices.sym_sizes() == probs.sym_sizes(), op, ": indices shape ",
                indices.sym_sizes(), " must equal probs shape ", probs.sym_sizes());
  } else {
    TORCH_CHECK(probs.sym_size(3) == k.sym_size(2), op, ": dense probs must have k_len ",
                k.sym_size(2), " columns, got ", probs.sym_size(3));
  }
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    check_4d(m, "attention_mask (batch|1, heads|1, q_len|1, >= k_len)", op);
    TORCH_CHECK(m.scalar_type() == at::kBool || is_float_dtype(m.scalar_type()), op,
                ": attention_mask must be bool or floating, got ", m.scalar_type());
    TORCH_CHECK(m.device() == q.device(), op, ": attention_mask must be on ", q.device(),
                ", got ", m.device());
    TORCH_CHECK(m.sym_size(0) == 1 || m.sym_size(0) == q.sym_size(0), op,
                ": attention_mask batch must be 1 or ", q.sym_size(0), ", got ", m.sym_size(0));
    TORCH_CHECK(m.sym_size(1) == 1 || m.sym_size(1) == q.sym_size(1), op,
                ": attention_mask heads must be 1 or ", q.sym_size(1), ", got ", m.sym_size(1));
    TORCH_CHECK(m.sym_size(2) == 1 || m.sym_size(2) == q.sym_size(2), op,
                ": attention_mask q_len must be 1 or ", q.sym_size(2), ", got ", m.sym_size(2));
    TORCH_CHECK(m.sym_size(3) >= k.sym_size(2), op, ": attention_mask must have at least k_len ",
                k.sym_size(2), " columns, got ", m.sym_size(3));
  }
}

namespace {

MaskKind mask_kind(at::ScalarType s) {
  switch (s) {
    case at::kBool:
      return MaskKind::kBool;
    case at::kFloat:
      return MaskKind::kFloat32;
    case at::kHalf:
      return MaskKind::kFloat16;
    case at::kBFloat16:
      return MaskKind::kBFloat16;
    case at::kDouble:
      return MaskKind::kFloat64;
    default:
      TORCH_CHECK(false, "attention_mask: unsupported dtype ", s);
  }
}

}  // namespace

void copy_strides4(const at::Tensor& t, int64_t* dst) {
  for (int d = 0; d < 4; ++d) dst[d] = t.size(d) == 1 ? 0 : t.stride(d);
}

void pack_mask(const std::optional<at::Tensor>& mask, const void** data, MaskKind* kind,
               int64_t* stride) {
  if (!mask.has_value()) return;
  *data = mask->data_ptr();
  *kind = mask_kind(mask->scalar_type());
  copy_strides4(*mask, stride);
}

AttentionParams make_attention_params(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& indices,
                                      const at::Tensor& probs,
                                      const std::optional<at::Tensor>& mask, double scale) {
  AttentionParams p;
  p.batch = q.size(0);
  p.heads = q.size(1);
  p.q_len = q.size(2);
  p.head_dim = q.size(3);
  p.kv_heads = k.size(1);
  p.k_len = k.size(2);
  p.cap = probs.size(3);
  p.q = q.data_ptr();
  copy_strides4(q, p.q_stride);
  p.k = k.data_ptr();
  copy_strides4(k, p.k_stride);
  p.v = v.data_ptr();
  copy_strides4(v, p.v_stride);
  if (indices.defined()) {
    p.indices = indices.data_ptr<int32_t>();
    copy_strides4(indices, p.idx_stride);
  }
  p.probs = probs.data_ptr<float>();
  copy_strides4(probs, p.prob_stride);
  pack_mask(mask, &p.mask, &p.mask_kind, p.mask_stride);
  p.scale = static_cast<float>(scale);
  return p;
}

TORCH_LIBRARY_FRAGMENT(sah, m) {
  m.def(
      "sparse_attention(Tensor q, Tensor k, Tensor v, Tensor indices, Tensor probs, float scale, "
      "Tensor? attention_mask=None) -> (Tensor out, Tensor lse)");
  m.def(
      "sparse_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor indices, Tensor probs, Tensor out, Tensor lse, float scale, "
      "Tensor? attention_mask=None) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  m.def(
      "masked_attention(Tensor q, Tensor k, Tensor v, Tensor probs, float scale, "
      "Tensor? attention_mask=None) -> (Tensor out, Tensor lse)");
  m.def(
      "masked_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k, Tensor v, "
      "Tensor probs, Tensor out, Tensor lse, float scale, Tensor? attention_mask=None) "
      "-> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
}

}  // namespace sah
