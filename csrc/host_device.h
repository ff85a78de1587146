// FASTSEG_HOST_DEVICE marks the helpers that CPU and CUDA kernels share:
// __host__ __device__ under nvcc, nothing for the C++ compiler.
#pragma once

#ifdef __CUDACC__
#define FASTSEG_HOST_DEVICE __host__ __device__
#else
#define FASTSEG_HOST_DEVICE
#endif
