// CPU kernels of the learned-score top-k operators (HashAttention, PQCache).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>

#include "attention.h"
#include "cpu_types.h"
#include "learned_maskers.h"

namespace sah {
namespace {

void check_prev_range(const at::Tensor& pi, int64_t num_keys, const char* op) {
  if (pi.numel() == 0) return;
  const int64_t lo = pi.min().item<int32_t>(), hi = pi.max().item<int32_t>();
  TORCH_CHECK(lo >= -1 && hi < num_keys, op, ": prev_indices must lie in [0, num_keys=", num_keys,
              ") or be -1 (padding), got values in [", lo, ", ", hi, "]");
}

// Runs the row kernel of `p` (everything but the outputs packed) into new output rows.
template <typename T>
std::tuple<at::Tensor, at::Tensor> run_rows(LearnedTopKParams p, const at::Tensor& pi,
                                            const at::Tensor& pp, const char* op) {
  const int64_t out_cap = std::min(p.prev_cap + p.size, p.k_len);
  auto shape = pi.sizes().vec();
  shape.back() = out_cap;
  at::Tensor out_idx = at::empty(shape, pi.options()), out_probs = at::empty(shape, pp.options());
  p.out_idx = out_idx.data_ptr<int32_t>();
  p.out_probs = out_probs.data_ptr<float>();
  p.out_cap = out_cap;
  std::atomic<bool> ok{true};
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, p.k_len));
  at::parallel_for(0, p.rows(), grain, [&](int64_t begin, int64_t end) {
    if (!cpu::learned_topk_rows<T>(p, begin, end)) ok = false;
  });
  TORCH_CHECK(ok.load(), op, ": prev_indices rows must be strictly ascending (then -1 padding)");
  return {out_idx, out_probs};
}

at::Tensor hash_pack_signs_cpu(const at::Tensor& x) {
  check_pack_signs_input(x, "sah::hash_pack_signs");
  const int64_t bits = x.size(-1);
  auto shape = x.sizes().vec();
  shape.back() = signature_words(bits);
  at::Tensor out = at::empty(shape, x.options().dtype(at::kInt));
  if (out.numel() == 0) return out;
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.numel() / bits, words = shape.back();
  int32_t* dst = out.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sah_pack_signs", [&] {
    using T = typename kernel_type<scalar_t>::type;
    const T* src = reinterpret_cast<const T*>(xc.data_ptr<scalar_t>());
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        cpu::pack_signs(src + r * bits, 1, bits, dst + r * words);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_topk_cpu(const at::Tensor& query_signatures,
                                                 const at::Tensor& key_signatures,
                                                 const at::Tensor& prev_indices,
                                                 const at::Tensor& prev_probs,
                                                 const std::optional<at::Tensor>& mask, int64_t k,
                                                 int64_t bits) {
  const char* op = "sah::hash_topk_mask";
  check_hash_topk_inputs(query_signatures, key_signatures, prev_indices, prev_probs, mask, k, bits,
                         op);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  const int64_t n = key_signatures.size(2);
  check_prev_range(pi, n, op);
  LearnedTopKParams p = make_learned_topk_params(pi, pp, mask, n, k);
  p.key_heads = key_signatures.size(1);
  p.bits = bits;
  p.words = signature_words(bits);
  p.q_sig = query_signatures.data_ptr<int32_t>();
  copy_strides4(query_signatures, p.q_sig_stride);
  p.k_sig = key_signatures.data_ptr<int32_t>();
  copy_strides4(key_signatures, p.k_sig_stride);
  return run_rows<float>(p, pi, pp, op);
}

at::Tensor pq_encode_cpu(const at::Tensor& keys, const at::Tensor& codebooks) {
  check_pq_encode_inputs(keys, codebooks, "sah::pq_encode");
  const int64_t batch = keys.size(0), kv_heads = keys.size(1), n = keys.size(2);
  const int64_t subspaces = codebooks.size(2), centroids = codebooks.size(3);
  at::Tensor codes = at::empty({batch, kv_heads, n, subspaces}, keys.options().dtype(at::kByte));
  if (codes.numel() == 0) return codes;
  const at::Tensor book = codebooks.contiguous();
  int64_t stride[4];
  for (int d = 0; d < 4; ++d) stride[d] = keys.stride(d);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, keys.scalar_type(), "sah_pq_encode", [&] {
        using T = typename kernel_type<scalar_t>::type;
        const T* src = reinterpret_cast<const T*>(keys.data_ptr<scalar_t>());
        at::parallel_for(0, batch * kv_heads * n, 64, [&](int64_t begin, int64_t end) {
          cpu::pq_encode_items(src, stride, kv_heads, n, keys.size(3), book.data_ptr<float>(),
                               subspaces, centroids, codes.data_ptr<uint8_t>(), begin, end);
        });
      });
  return codes;
}

std::tuple<at::Tensor, at::Tensor> pq_topk_cpu(const at::Tensor& queries,
                                               const at::Tensor& codebooks, const at::Tensor& codes,
                                               const at::Tensor& prev_indices,
                                               const at::Tensor& prev_probs,
                                               const std::optional<at::Tensor>& mask, int64_t k) {
  const char* op = "sah::pq_topk_mask";
  check_pq_topk_inputs(queries, codebooks, codes, prev_indices, prev_probs, mask, k, op);
  const at::Tensor pi = prev_indices.contiguous(), pp = prev_probs.contiguous();
  const at::Tensor book = codebooks.contiguous();
  const int64_t n = codes.size(2);
  check_prev_range(pi, n, op);
  LearnedTopKParams p = make_learned_topk_params(pi, pp, mask, n, k);
  p.key_heads = codebooks.size(1);
  p.head_dim = queries.size(3);
  p.subspaces = codebooks.size(2);
  p.centroids = codebooks.size(3);
  p.sub_dim = codebooks.size(4);
  p.q = queries.data_ptr();
  copy_strides4(queries, p.q_stride);
  p.codebooks = book.data_ptr<float>();
  p.codes = codes.data_ptr<uint8_t>();
  copy_strides4(codes, p.code_stride);
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, queries.scalar_type(), "sah_pq_topk",
      [&] { out = run_rows<typename kernel_type<scalar_t>::type>(p, pi, pp, op); });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(sah, CPU, m) {
  m.impl("hash_pack_signs", &hash_pack_signs_cpu);
  m.impl("hash_topk_mask", &hash_topk_cpu);
  m.impl("pq_encode", &pq_encode_cpu);
  m.impl("pq_topk_mask", &pq_topk_cpu);
}

}  // namespace sah
