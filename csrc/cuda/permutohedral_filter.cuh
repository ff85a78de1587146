// Launchers of the CUDA kernels of fastseg::permutohedral_lattice and
// fastseg::permutohedral_apply (permutohedral_filter.cu).
//
// Plain CUDA on raw pointers and a stream, with no torch headers, so that the
// .cu compiles without a CUDA build of PyTorch. scalar_t is float or double.
// Every tensor is dense and contiguous; the lattice format is the one
// documented in fastseg/ops/permutohedral_filter.py (B images of N pixels, d
// features, E = B*N*(d+1) corners, M vertices). Device memory is never
// allocated here: the caller passes a workspace of the size asked for.
// Each launcher returns the first CUDA error it met.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace fastseg {

// The most features the lattice kernels take (their per-thread arrays are
// sized at compile time; see the dispatch in permutohedral_filter.cu).
constexpr int PERMUTOHEDRAL_CUDA_MAX_D = 64;

// The bytes of workspace that both lattice launchers below need, for a
// batch of `batch` images of `pixels` pixels (batch * pixels >= 1) and d
// features, 1 <= d <= PERMUTOHEDRAL_CUDA_MAX_D, E < 2^31.
cudaError_t permutohedral_lattice_workspace_bytes(int64_t batch, int64_t pixels, int d, size_t* bytes);

// Building a lattice, first half: the simplex and barycentric weights of
// every pixel, the vertices numbered in order of first appearance (flat
// corner order, as the CPU builds them), vertex_of, and the vertex count M
// written to *vertex_count on the device. The workspace then holds what the
// second half reads: keep it, unchanged, until that has run.
template <typename scalar_t>
cudaError_t launch_permutohedral_lattice_vertices(const scalar_t* features,  // [B, N, d]
                                                  int64_t batch,
                                                  int64_t pixels,
                                                  int d,
                                                  int32_t* vertex_of,     // [B, N, d+1]
                                                  scalar_t* barycentric,  // [B, N, d+1]
                                                  void* workspace,
                                                  size_t workspace_bytes,
                                                  int32_t* vertex_count,  // [1]
                                                  cudaStream_t stream);

// Second half, once M (`vertices`) is known on the host: each vertex's
// neighbours along the d+1 lattice directions and the CSR list of the
// corners that land on each vertex (corner indices sorted stably by vertex).
cudaError_t launch_permutohedral_lattice_links(int64_t batch,
                                               int64_t pixels,
                                               int d,
                                               int32_t vertices,
                                               const int32_t* vertex_of,  // [B, N, d+1]
                                               int32_t* neighbors,        // [d+1, M, 2]
                                               int32_t* splat_order,      // [E]
                                               int32_t* vertex_start,     // [M+1]
                                               void* workspace,
                                               size_t workspace_bytes,
                                               cudaStream_t stream);

// Splat and blur along directions 0..d (d..0 where reverse): the first
// steps of launch_permutohedral_apply, for callers that read the lattice's
// values themselves (the dense CRF's mean field). *blurred gets which of the
// two [M+1, C] halves of lattice_values ([2, M+1, C] scratch) holds them;
// points >= 1, channels >= 1. barycentric: the splat's weight of each corner.
template <typename scalar_t>
cudaError_t launch_permutohedral_splat_blur(const scalar_t* values,          // [B*N, C]
                                            int64_t points,                  // B*N
                                            int64_t channels,                // C
                                            int d,
                                            int32_t vertices,                // M
                                            const scalar_t* barycentric,     // [B*N, d+1]
                                            const int32_t* neighbors,        // [d+1, M, 2]
                                            const int32_t* splat_order,      // [B*N*(d+1)]
                                            const int32_t* vertex_start,     // [M+1]
                                            bool reverse,
                                            scalar_t* lattice_values,  // [2, M+1, C] scratch
                                            scalar_t** blurred,
                                            cudaStream_t stream);

// Splat, blur along directions 0..d (d..0 where reverse), slice, times
// `scale` (permutohedral::lattice_scale(d)): values [B*N, C] -> out
// [B*N, C]. Every step is a gather in a fixed order, so the results are the
// same on every run. lattice_values is scratch of 2 * (M+1) * C elements.
template <typename scalar_t>
cudaError_t launch_permutohedral_apply(const scalar_t* values,  // [B*N, C]
                                       int64_t points,          // B*N
                                       int64_t channels,        // C
                                       int d,
                                       int32_t vertices,                // M
                                       const int32_t* vertex_of,        // [B*N, d+1]
                                       const scalar_t* barycentric,     // [B*N, d+1]
                                       const int32_t* neighbors,        // [d+1, M, 2]
                                       const int32_t* splat_order,      // [B*N*(d+1)]
                                       const int32_t* vertex_start,     // [M+1]
                                       bool reverse,
                                       scalar_t scale,
                                       scalar_t* lattice_values,  // [2, M+1, C] scratch
                                       scalar_t* out,             // [B*N, C]
                                       cudaStream_t stream);

}  // namespace fastseg
