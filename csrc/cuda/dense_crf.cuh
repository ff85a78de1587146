// Launcher of the CUDA kernels of fastseg_C::dense_crf_mean_field
// (dense_crf.cu): every mean-field iteration of the dense CRF, on the GPU,
// from one call. Plain CUDA on raw pointers and a stream, with no torch
// headers, so that the .cu compiles without a CUDA build of PyTorch;
// scalar_t is float or double. Device memory is never allocated here: the
// caller passes the scratch.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../mean_field.h"

namespace fastseg {

// The most CRF kernels one call takes: the update kernel gets them all by
// value.
constexpr int DENSE_CRF_CUDA_MAX_KERNELS = 8;

// One CRF kernel: its lattice as permutohedral_lattice builds it (P = B*N
// pixels, d features, M vertices), its compatibility, and its scratch.
template <typename scalar_t>
struct MeanFieldKernel {
  int d;
  int32_t vertices;              // M >= 1
  const int32_t* vertex_of;      // [P, d+1]
  const scalar_t* barycentric;   // [P, d+1]
  const int32_t* neighbors;      // [d+1, M, 2]
  const int32_t* splat_order;    // [P*(d+1)]
  const int32_t* vertex_start;   // [M+1]
  scalar_t potts;                // the Potts weight, where matrix is null
  const scalar_t* matrix;        // [L, L] symmetric compatibility, or nullptr
  scalar_t* weight;              // [P, d+1] scratch: barycentric times the pixel's norm
  scalar_t* lattice_values;      // [3, M+1, L] scratch
};

// Q_0 = softmax(-unary), the unary made from the scores (itself, -log
// softmax of logits, or -log max(p, kProbabilityClip) of probabilities),
// then `iterations` times Q <- softmax(-unary - sum of the kernels'
// messages), each message n K n Q through its compatibility (n = (K 1)^(-1/2),
// the symmetric normalisation), as fastseg/reference/dense_crf.py's
// mean_field; the last Q goes to `result`. kernels: a host array of
// kernel_count <= DENSE_CRF_CUDA_MAX_KERNELS.
template <typename scalar_t>
cudaError_t launch_dense_crf_mean_field(const MeanFieldScores<scalar_t>& scores,
                                        int64_t batch,         // B
                                        int64_t image_pixels,  // N
                                        int labels,            // L
                                        const MeanFieldKernel<scalar_t>* kernels,
                                        int kernel_count,
                                        int64_t iterations,
                                        scalar_t* unary,   // [P, L] scratch
                                        scalar_t* q,       // [P, L] scratch
                                        scalar_t* result,  // [B, L, N]
                                        cudaStream_t stream);

}  // namespace fastseg
