// Shared input checks and parameter packing for sah::sparse_attention / sah::masked_attention.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "sah/attention_params.h"

namespace sah {

// Checks q (b,h,sq,d), k/v (b,hkv,sk,d), the optional attention mask, and either row-form
// indices/probs (b,h,sq,cap) (indices defined) or dense probs (b,h,sq,sk) (indices undefined).
// Works on real, meta and fake tensors (symbolic sizes).
void check_attention_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& indices, const at::Tensor& probs,
                            const std::optional<at::Tensor>& mask, const char* op);

// Packs real tensors into kernel parameters (out/lse and gradients are set by the caller).
AttentionParams make_attention_params(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const at::Tensor& indices,
                                      const at::Tensor& probs,
                                      const std::optional<at::Tensor>& mask, double scale);

// Strides of a 4-D tensor in elements, 0 for dimensions of size 1 (broadcast).
void copy_strides4(const at::Tensor& t, int64_t* dst);

// Points a kernel at an optional attention mask (data, storage kind, broadcast strides).
void pack_mask(const std::optional<at::Tensor>& mask, const void** data, MaskKind* kind,
               int64_t* stride);

}  // namespace sah
