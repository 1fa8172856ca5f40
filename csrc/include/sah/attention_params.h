// Torch-free description of one sparse/masked attention call, shared by the CPU and CUDA kernels.
#pragma once
#include <cstdint>

namespace sah {

// How the optional additive attention mask is stored.
enum class MaskKind : int32_t { kNone = 0, kBool = 1, kFloat32 = 2, kFloat16 = 3, kBFloat16 = 4, kFloat64 = 5 };

// All strides are in elements. Shapes:
//   q, out, dout: (batch, heads, q_len, head_dim)       k, v: (batch, kv_heads, k_len, head_dim)
//   sparse rows:  indices int32 / probs float32 (batch, heads, q_len, cap), ascending, -1 padded
//   dense rows:   probs float32 (batch, heads, q_len, k_len), indices == nullptr, cap == k_len
//   mask:         (batch|1, heads|1, q_len, >= k_len); broadcast dimensions have stride 0
//   lse, dlse:    float32 (batch, heads, q_len) contiguous
// Query head h reads kv head h / (heads / kv_heads). A key t of a row is used when its index is
// in [0, k_len) and its probability p > 0; it is weighted by 1/p.
struct AttentionParams {
  int64_t batch = 0, heads = 0, kv_heads = 0, q_len = 0, k_len = 0, head_dim = 0, cap = 0;
  const void* q = nullptr;
  int64_t q_stride[4] = {0, 0, 0, 1};
  const void* k = nullptr;
  int64_t k_stride[4] = {0, 0, 0, 1};
  const void* v = nullptr;
  int64_t v_stride[4] = {0, 0, 0, 1};
  const int32_t* indices = nullptr;
  int64_t idx_stride[4] = {0, 0, 0, 1};
  const float* probs = nullptr;
  int64_t prob_stride[4] = {0, 0, 0, 1};
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::kNone;
  int64_t mask_stride[4] = {0, 0, 0, 1};
  float scale = 1.0f;
  void* out = nullptr;  // forward output, (batch, heads, q_len, head_dim), q's dtype, contiguous
  float* lse = nullptr;  // log-sum-exp of the weighted logits; -inf for a row with no key
  // Backward only.
  const void* dout = nullptr;  // contiguous, q's dtype
  const float* dlse = nullptr;  // may be null (no gradient flows into lse)
  void* dq = nullptr;  // contiguous; CPU: q's dtype; CUDA: float32 accumulator (zeroed)
  void* dk = nullptr;  // contiguous (batch, kv_heads, k_len, head_dim); float32 accumulator (zeroed)
  void* dv = nullptr;  // same as dk

  int64_t rows() const { return batch * heads * q_len; }
  int64_t group_size() const { return heads / kv_heads; }
};

// Error codes returned by launchers.
enum class Status : int32_t { kOk = 0, kBadArgument = 1, kLaunchFailed = 2 };

}  // namespace sah
