// The CUDA bindings' check of what a launcher returned.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

namespace fastseg {

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(err));
}

}  // namespace fastseg
