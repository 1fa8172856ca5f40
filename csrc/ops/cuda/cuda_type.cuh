// Maps ATen scalar types to the CUDA element types of the torch-free kernels (shared by every
// CUDA op file).
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace sah {

template <typename scalar_t>
struct cuda_type {
  using type = scalar_t;
};
template <>
struct cuda_type<c10::Half> {
  using type = __half;
};
template <>
struct cuda_type<c10::BFloat16> {
  using type = __nv_bfloat16;
};

}  // namespace sah
