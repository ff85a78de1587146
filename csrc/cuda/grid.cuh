// Launch geometry shared by the CUDA kernels: blocks of THREADS threads, each
// kernel a grid-stride loop over a flat int64 index (element counts such as
// B*N*C can exceed 2^31). Plain CUDA: no torch headers.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastseg {
namespace grid {

constexpr int THREADS = 256;
// The grid-stride loops cover what a grid this size leaves: 65535 blocks are
// dozens of waves on any GPU, and within every architecture's grid limit.
constexpr int64_t MAX_BLOCKS = 65535;

// Blocks for n threads' worth of work, at least one: a launch of none is an
// error.
inline int blocks_for(int64_t n) {
  return static_cast<int>(std::clamp<int64_t>((n + THREADS - 1) / THREADS, 1, MAX_BLOCKS));
}

__device__ __forceinline__ int64_t first_index() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}

__device__ __forceinline__ int64_t index_stride() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }

}  // namespace grid
}  // namespace fastseg
