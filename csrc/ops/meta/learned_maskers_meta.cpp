// Meta (shape-only) kernels of the learned-score top-k operators; symbolic sizes are supported.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "fixed_maskers.h"
#include "learned_maskers.h"
#include "mask_rows.h"

namespace sah {
namespace {

std::tuple<at::Tensor, at::Tensor> rows_like(const at::Tensor& pi, const at::Tensor& pp,
                                             const c10::SymInt& cap) {
  auto shape = rows_shape(pi, cap);
  return {at::empty_symint(shape, pi.options()), at::empty_symint(shape, pp.options())};
}

at::Tensor hash_pack_signs_meta(const at::Tensor& x) {
  check_pack_signs_input(x, "sah::hash_pack_signs");
  return at::empty_symint(rows_shape(x, (x.sym_size(-1) + 31) / 32), x.options().dtype(at::kInt));
}

std::tuple<at::Tensor, at::Tensor> hash_topk_meta(const at::Tensor& query_signatures,
                                                  const at::Tensor& key_signatures,
                                                  const at::Tensor& pi, const at::Tensor& pp,
                                                  const std::optional<at::Tensor>& mask,
                                                  c10::SymInt k, int64_t bits) {
  check_hash_topk_inputs(query_signatures, key_signatures, pi, pp, mask, k, bits,
                         "sah::hash_topk_mask");
  return rows_like(pi, pp, masker_out_cap(pi, k, key_signatures.sym_size(2)));
}

at::Tensor pq_encode_meta(const at::Tensor& keys, const at::Tensor& codebooks) {
  check_pq_encode_inputs(keys, codebooks, "sah::pq_encode");
  return at::empty_symint(rows_shape(keys, codebooks.sym_size(2)), keys.options().dtype(at::kByte));
}

std::tuple<at::Tensor, at::Tensor> pq_topk_meta(const at::Tensor& queries,
                                                const at::Tensor& codebooks,
                                                const at::Tensor& codes, const at::Tensor& pi,
                                                const at::Tensor& pp,
                                                const std::optional<at::Tensor>& mask,
                                                c10::SymInt k) {
  check_pq_topk_inputs(queries, codebooks, codes, pi, pp, mask, k, "sah::pq_topk_mask");
  return rows_like(pi, pp, masker_out_cap(pi, k, codes.sym_size(2)));
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, Meta, m) {
  m.impl("hash_pack_signs", &hash_pack_signs_meta);
  m.impl("hash_topk_mask", &hash_topk_meta);
  m.impl("pq_encode", &pq_encode_meta);
  m.impl("pq_topk_mask", &pq_topk_meta);
}

}  // namespace sah
