// Maps ATen scalar types to the torch-free kernel types of csrc/include/sah/types.h.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "sah/types.h"

namespace sah {

template <typename scalar_t>
struct kernel_type {
  using type = scalar_t;
};
template <>
struct kernel_type<c10::Half> {
  using type = f16_t;
};
template <>
struct kernel_type<c10::BFloat16> {
  using type = bf16_t;
};

}  // namespace sah
