// Schemas and input checks of the page and channel top-k masker operators: Quest (page min/max
// upper bounds, with an incremental page statistics update) and DoubleSparsity (scores on a
// per-head channel subset).
#include "page_maskers.h"

#include <torch/library.h>

#include "fixed_maskers.h"

namespace sah {
namespace {

void check_label_bits(int64_t label_bits, const char* op) {
  TORCH_CHECK(label_bits >= 1 && label_bits <= 16, op, ": label_bits must be in [1, 16], got ",
              label_bits);
}

void check_page_size(int64_t page_size, const char* op) {
  TORCH_CHECK(page_size >= 1, op, ": page_size must be >= 1, got ", page_size);
}

}  // namespace

void check_page_stats(const at::Tensor& page_min, const at::Tensor& page_max,
                      const c10::SymInt& batch, const c10::SymInt& kv_heads,
                      const c10::SymInt& head_dim, const c10::SymInt& num_keys, int64_t page_size,
                      const c10::Device& device, const char* op) {
  const c10::SymInt pages = (num_keys + page_size - 1) / page_size;
  for (const at::Tensor* t : {&page_min, &page_max}) {
    const char* name = t == &page_min ? "page_min" : "page_max";
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == at::kFloat && t->sym_size(0) == batch &&
                    t->sym_size(1) == kv_heads && t->sym_size(2) >= pages &&
                    t->sym_size(3) == head_dim,
                op, ": ", name,
                " must be float32 of shape (batch, kv_heads, >= ceil(num_keys / page_size), "
                "head_dim) with (batch, kv_heads, pages, head_dim) = (",
                batch, ", ", kv_heads, ", ", pages, ", ", head_dim, "), got ", t->scalar_type(),
                " ", t->sym_sizes());
    TORCH_CHECK(t->device() == device, op, ": ", name, " must be on ", device, ", got ",
                t->device());
    TORCH_CHECK(t->is_contiguous(), op, ": ", name, " must be contiguous");
  }
  TORCH_CHECK(page_min.sym_sizes() == page_max.sym_sizes(), op, ": page_min shape ",
              page_min.sym_sizes(), " must equal page_max shape ", page_max.sym_sizes());
}

void check_quest_update_inputs(const at::Tensor& keys, const at::Tensor& page_min,
                               const at::Tensor& page_max, const c10::SymInt& num_cached_keys,
                               int64_t page_size) {
  const char* op = "sah::quest_page_minmax_update";
  check_page_size(page_size, op);
  TORCH_CHECK(keys.dim() == 4, op, ": keys must be 4-D (batch, kv_heads, k_len, head_dim), got ",
              keys.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(keys.scalar_type()), op, ": keys must be floating, got ",
              keys.scalar_type());
  check_page_stats(page_min, page_max, keys.sym_size(0), keys.sym_size(1), keys.sym_size(3),
                   keys.sym_size(2), page_size, keys.device(), op);
  TORCH_CHECK(num_cached_keys >= 0 && num_cached_keys <= keys.sym_size(2), op,
              ": num_cached_keys must be in [0, k_len=", keys.sym_size(2), "], got ",
              num_cached_keys);
}

void check_quest_inputs(const at::Tensor& queries, const at::Tensor& page_min,
                        const at::Tensor& page_max, const at::Tensor& prev_indices,
                        const at::Tensor& prev_probs, const std::optional<at::Tensor>& mask,
                        const c10::SymInt& num_keys, int64_t page_size,
                        const c10::SymInt& num_pages_to_pick, int64_t label_bits) {
  const char* op = "sah::quest_topk_mask";
  check_page_size(page_size, op);
  check_label_bits(label_bits, op);
  check_masker_inputs(at::Tensor(), at::Tensor(), prev_indices, prev_probs, mask, num_keys,
                      num_pages_to_pick, op);
  TORCH_CHECK(queries.dim() == 4, op, ": queries must be 4-D (batch, heads, q_len, head_dim), got ",
              queries.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(queries.scalar_type()), op, ": queries must be floating, got ",
              queries.scalar_type());
  TORCH_CHECK(queries.device() == prev_indices.device(), op, ": queries must be on ",
              prev_indices.device(), ", got ", queries.device());
  for (int d = 0; d < 3; ++d) {
    TORCH_CHECK(queries.sym_size(d) == prev_indices.sym_size(d), op, ": prev_indices shape ",
                prev_indices.sym_sizes(), " must start with the queries' (batch, heads, q_len) ",
                queries.sym_sizes().slice(0, 3));
  }
  TORCH_CHECK(page_min.dim() == 4, op,
              ": page_min must be 4-D (batch, kv_heads, pages, head_dim), got ", page_min.dim(),
              "-D");
  const c10::SymInt kv_heads = page_min.sym_size(1);
  TORCH_CHECK(kv_heads > 0 && queries.sym_size(1) % kv_heads == 0, op, ": query heads ",
              queries.sym_size(1), " must be a multiple of the page statistics' kv heads ",
              kv_heads);
  check_page_stats(page_min, page_max, queries.sym_size(0), kv_heads, queries.sym_size(3), num_keys,
                   page_size, queries.device(), op);
}

c10::SymInt quest_out_cap(const at::Tensor& prev_indices, const c10::SymInt& num_keys,
                          int64_t page_size, const c10::SymInt& num_pages_to_pick) {
  return masker_out_cap(prev_indices, num_pages_to_pick * page_size, num_keys);
}

void check_double_sparsity_inputs(const at::Tensor& queries, const at::Tensor& keys,
                                  const at::Tensor& channels, const at::Tensor& prev_indices,
                                  const at::Tensor& prev_probs,
                                  const std::optional<at::Tensor>& mask, const c10::SymInt& k,
                                  int64_t group_factor, int64_t label_bits) {
  const char* op = "sah::double_sparsity_topk_mask";
  check_label_bits(label_bits, op);
  TORCH_CHECK(keys.dim() == 4, op, ": keys must be 4-D, got ", keys.dim(), "-D");
  check_masker_inputs(queries, keys, prev_indices, prev_probs, mask, keys.sym_size(2), k, op);
  TORCH_CHECK(group_factor >= 1 && queries.sym_size(3) >= group_factor, op,
              ": group_factor must be in [1, head_dim=", queries.sym_size(3), "], got ",
              group_factor);
  TORCH_CHECK(channels.dim() == 2 && channels.scalar_type() == at::kLong &&
                  channels.sym_size(0) == queries.sym_size(1) && channels.sym_size(1) >= 1,
              op, ": channels must be int64 of shape (heads=", queries.sym_size(1),
              ", >= 1) (one sorted channel list per query head), got ", channels.scalar_type(), " ",
              channels.sym_sizes());
  TORCH_CHECK(channels.device() == queries.device(), op, ": channels must be on ", queries.device(),
              ", got ", channels.device());
}

TORCH_LIBRARY_FRAGMENT(sah, m) {
  // Rewrites, in place, the min/max of the pages from the one holding key num_cached_keys (the
  // cached partial page) to the last page of keys; page_min/page_max are float32 state tensors
  // (batch, kv_heads, capacity >= ceil(k_len / page_size), head_dim) that the caller grows.
  m.def(
      "quest_page_minmax_update(Tensor keys, Tensor(a!) page_min, Tensor(b!) page_max, "
      "SymInt num_cached_keys, int page_size) -> ()");
  // Quest: the keys of the best num_pages_to_pick pages of the first ceil(num_keys / page_size)
  // pages (label_bits < 16: pseudo-quantised bounds), union with the previous rows.
  m.def(
      "quest_topk_mask(Tensor queries, Tensor page_min, Tensor page_max, Tensor prev_indices, "
      "Tensor prev_probs, Tensor? attention_mask, SymInt num_keys, int page_size, "
      "SymInt num_pages_to_pick, int label_bits) -> (Tensor indices, Tensor probs)");
  // DoubleSparsity: the top-k keys not in the previous rows, scored on the first
  // head_dim / group_factor channels of channels[h] (one sorted list per query head).
  m.def(
      "double_sparsity_topk_mask(Tensor queries, Tensor keys, Tensor channels, "
      "Tensor prev_indices, Tensor prev_probs, Tensor? attention_mask, SymInt k, "
      "int group_factor, int label_bits) -> (Tensor indices, Tensor probs)");
}

// Mask selection is not differentiable: run below autograd, outputs carry no gradient.
TORCH_LIBRARY_IMPL(sah, Autograd, m) {
  m.impl("quest_page_minmax_update", torch::CppFunction::makeFallthrough());
  m.impl("quest_topk_mask", torch::CppFunction::makeFallthrough());
  m.impl("double_sparsity_topk_mask", torch::CppFunction::makeFallthrough());
}

}  // namespace sah
