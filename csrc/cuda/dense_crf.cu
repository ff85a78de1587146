// CUDA kernels of fastseg_C::dense_crf_mean_field and their launcher
// (declared in dense_crf.cuh): the dense CRF's mean field (Kraehenbuehl &
// Koltun 2011, algorithm 1; fastseg/reference/dense_crf.py's mean_field)
// with every iteration on the GPU and launched from one host call, where the
// composition of PyTorch ops made a dozen passes over [B, N, L] tensors and
// host round trips per iteration. Plain CUDA: no torch headers.
//
// As the CPU op (csrc/cpu/dense_crf.cpp) does it:
//   - each kernel's normalisation n = (K 1)^(-1/2) is the filter of ones
//     (launch_permutohedral_apply, one channel), folded into its weights:
//     splatting and slicing with n_i w_i normalises for free;
//   - one pass over the pixels makes the unary and Q_0 from the scores;
//   - an iteration splats Q onto every kernel's lattice and blurs it
//     (launch_permutohedral_splat_blur: gathers in a fixed order, no float
//     atomics), mixes the labels of a compatibility matrix on the lattice,
//     where there are fewer rows than pixels, and then one pass over the
//     pixels slices every kernel's messages, adds the unary and takes the
//     softmax, writing Q in place (after the last iteration also label-major
//     into the result).
// Every step is a gather, so the results are the same on every run; they
// equal the CPU op's within float rounding (the CPU fuses multiply-adds and
// sums in another order).
#include <cmath>
#include <cstdint>
#include <limits>

#include "../permutohedral.h"
#include "dense_crf.cuh"
#include "grid.cuh"
#include "permutohedral_filter.cuh"

namespace fastseg {
namespace {

using namespace grid;

template <typename scalar_t>
__global__ void fill_kernel(scalar_t* __restrict__ out, int64_t n, scalar_t value) {
  for (int64_t i = first_index(); i < n; i += index_stride()) out[i] = value;
}

// weight[e] = barycentric[e] * n_p, n_p = (filtered_p + 1e-20)^(-1/2) for the
// pixel p of corner e, filtered = K 1 (normalization in
// fastseg/reference/dense_crf.py).
template <typename scalar_t>
__global__ void normalized_weights_kernel(const scalar_t* __restrict__ barycentric,  // [P, corners]
                                          const scalar_t* __restrict__ filtered,     // [P]
                                          int64_t total_corners,
                                          int corners,
                                          scalar_t* __restrict__ weight) {           // [P, corners]
  for (int64_t e = first_index(); e < total_corners; e += index_stride()) {
    weight[e] = barycentric[e] / sqrt(filtered[e / corners] + scalar_t(1e-20));
  }
}

// row[0, labels) holds energies whose least is `lowest`: replaced by
// softmax(-energy) = exp(lowest - energy) / sum. A +inf energy (a forbidden
// label of a unary) gets 0.
template <typename scalar_t>
__device__ void softmax_negative(scalar_t* row, int labels, scalar_t lowest) {
  scalar_t total = 0;
  for (int l = 0; l < labels; ++l) {
    row[l] = exp(lowest - row[l]);
    total += row[l];
  }
  const scalar_t inverse = scalar_t(1) / total;
  for (int l = 0; l < labels; ++l) row[l] *= inverse;
}

// Q's row of pixel p to the result's label planes [B, L, N].
template <typename scalar_t>
__device__ void write_column(const scalar_t* row, int64_t p, int64_t image_pixels, int labels, scalar_t* result) {
  const int64_t image = p / image_pixels, pixel = p - image * image_pixels;
  scalar_t* out = result + image * labels * image_pixels + pixel;
  for (int l = 0; l < labels; ++l) out[l * image_pixels] = row[l];
}

// The unary and Q_0 = softmax(-unary) of every pixel from its scores; Q_0
// also to the result where it is the last Q (no iterations).
template <typename scalar_t>
__global__ void first_pass_kernel(MeanFieldScores<scalar_t> scores,
                                  int64_t points,        // P
                                  int64_t image_pixels,  // N
                                  int labels,
                                  scalar_t* __restrict__ unary,  // [P, L]
                                  scalar_t* __restrict__ q,      // [P, L]
                                  scalar_t* __restrict__ result) {  // [B, L, N], or nullptr
  constexpr scalar_t infinity = std::numeric_limits<scalar_t>::infinity();
  for (int64_t p = first_index(); p < points; p += index_stride()) {
    const int64_t image = p / image_pixels;
    const scalar_t* in = scores.data + image * scores.image_stride + (p - image * image_pixels) * scores.pixel_stride;
    scalar_t* u = unary + p * labels;
    scalar_t* row = q + p * labels;
    if (scores.kind == ScoreKind::kLogits) {
      // -log softmax = log sum exp(x - max) + max - x; Q_0 = softmax(x).
      scalar_t highest = -infinity;
      for (int l = 0; l < labels; ++l) highest = max(highest, in[l * scores.label_stride]);
      scalar_t total = 0;
      for (int l = 0; l < labels; ++l) {
        row[l] = exp(in[l * scores.label_stride] - highest);
        total += row[l];
      }
      const scalar_t shift = log(total) + highest, inverse = scalar_t(1) / total;
      for (int l = 0; l < labels; ++l) {
        u[l] = shift - in[l * scores.label_stride];
        row[l] *= inverse;
      }
    } else if (scores.kind == ScoreKind::kProbabilities) {
      // -log max(p, clip); Q_0 = softmax(log max(p, clip)), the clipped p normalised.
      const scalar_t clip = static_cast<scalar_t>(kProbabilityClip);
      scalar_t total = 0;
      for (int l = 0; l < labels; ++l) {
        row[l] = max(in[l * scores.label_stride], clip);
        u[l] = -log(row[l]);
        total += row[l];
      }
      const scalar_t inverse = scalar_t(1) / total;
      for (int l = 0; l < labels; ++l) row[l] *= inverse;
    } else {
      scalar_t lowest = infinity;
      for (int l = 0; l < labels; ++l) {
        u[l] = row[l] = in[l * scores.label_stride];
        lowest = min(lowest, row[l]);
      }
      softmax_negative(row, labels, lowest);
    }
    if (result != nullptr) write_column(row, p, image_pixels, labels, result);
  }
}

// out[v] = in[v] @ matrix for the M vertices: a compatibility matrix applied
// on the lattice (the slice is linear, so slicing and mixing commute).
template <typename scalar_t>
__global__ void mix_labels_kernel(const scalar_t* __restrict__ in,      // [M+1, L]
                                  const scalar_t* __restrict__ matrix,  // [L, L]
                                  int32_t vertices,
                                  int labels,
                                  scalar_t* __restrict__ out) {         // [M+1, L]
  const int64_t total = static_cast<int64_t>(vertices) * labels;
  for (int64_t i = first_index(); i < total; i += index_stride()) {
    const int64_t v = i / labels;
    const int l = static_cast<int>(i - v * labels);
    scalar_t sum = 0;
    for (int from = 0; from < labels; ++from) sum += in[v * labels + from] * matrix[from * labels + l];
    out[i] = sum;
  }
}

// What the update slices: each kernel's messages on its lattice and the
// factor they enter the energy with.
template <typename scalar_t>
struct Messages {
  struct Kernel {
    const scalar_t* values;    // [M+1, L]: blurred (a Potts weight) or mixed (a matrix)
    const int32_t* vertex_of;  // [P, corners]
    const scalar_t* weight;    // [P, corners]: normalised
    int corners;
    scalar_t factor;  // lattice_scale(d), times -w for a Potts weight w
  };
  Kernel kernel[DENSE_CRF_CUDA_MAX_KERNELS];
  int count;
};

// For every pixel: the energy, its unary plus each kernel's messages sliced
// with the pixel's weights, then Q = softmax(-energy), written over its row
// of q (which this kernel does not read: the splat before it did) and, after
// the last iteration, to the result.
template <typename scalar_t>
__global__ void update_kernel(const scalar_t* __restrict__ unary,  // [P, L]
                              int64_t points,
                              int64_t image_pixels,
                              int labels,
                              Messages<scalar_t> messages,
                              scalar_t* __restrict__ q,          // [P, L]
                              scalar_t* __restrict__ result) {   // [B, L, N], or nullptr
  for (int64_t p = first_index(); p < points; p += index_stride()) {
    scalar_t* row = q + p * labels;
    scalar_t lowest = std::numeric_limits<scalar_t>::infinity();
    for (int l = 0; l < labels; ++l) {
      scalar_t energy = unary[p * labels + l];
      for (int k = 0; k < messages.count; ++k) {
        const typename Messages<scalar_t>::Kernel& kernel = messages.kernel[k];
        scalar_t sliced = 0;
        for (int r = 0; r < kernel.corners; ++r) {
          const int64_t corner = p * kernel.corners + r;
          sliced += kernel.weight[corner] * kernel.values[static_cast<int64_t>(kernel.vertex_of[corner]) * labels + l];
        }
        energy += kernel.factor * sliced;
      }
      row[l] = energy;
      lowest = min(lowest, energy);
    }
    softmax_negative(row, labels, lowest);
    if (result != nullptr) write_column(row, p, image_pixels, labels, result);
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t launch_dense_crf_mean_field(const MeanFieldScores<scalar_t>& scores,
                                        int64_t batch,
                                        int64_t image_pixels,
                                        int labels,
                                        const MeanFieldKernel<scalar_t>* kernels,
                                        int kernel_count,
                                        int64_t iterations,
                                        scalar_t* unary,
                                        scalar_t* q,
                                        scalar_t* result,
                                        cudaStream_t stream) {
  const int64_t points = batch * image_pixels;
  if (points == 0 || labels == 0) return cudaSuccess;
  if (kernel_count < 0 || kernel_count > DENSE_CRF_CUDA_MAX_KERNELS) return cudaErrorInvalidValue;
  cudaError_t err = cudaSuccess;
  // Each kernel's normalisation (needed only by iterations), before the
  // first pass: q holds the ones and unary the filtered ones until then.
  if (iterations > 0 && kernel_count > 0) {
    fill_kernel<scalar_t><<<blocks_for(points), THREADS, 0, stream>>>(q, points, scalar_t(1));
    for (int k = 0; k < kernel_count; ++k) {
      const MeanFieldKernel<scalar_t>& kernel = kernels[k];
      const int corners = kernel.d + 1;
      err = launch_permutohedral_apply(q, points, 1, kernel.d, kernel.vertices, kernel.vertex_of, kernel.barycentric,
                                       kernel.neighbors, kernel.splat_order, kernel.vertex_start, false,
                                       static_cast<scalar_t>(permutohedral::lattice_scale(kernel.d)),
                                       kernel.lattice_values, unary, stream);
      if (err != cudaSuccess) return err;
      normalized_weights_kernel<scalar_t><<<blocks_for(points * corners), THREADS, 0, stream>>>(
          kernel.barycentric, unary, points * corners, corners, kernel.weight);
    }
  }
  first_pass_kernel<scalar_t><<<blocks_for(points), THREADS, 0, stream>>>(
      scores, points, image_pixels, labels, unary, q, iterations == 0 ? result : nullptr);
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  Messages<scalar_t> messages{};
  messages.count = kernel_count;
  for (int64_t it = 0; it < iterations; ++it) {
    for (int k = 0; k < kernel_count; ++k) {
      const MeanFieldKernel<scalar_t>& kernel = kernels[k];
      const scalar_t scale = static_cast<scalar_t>(permutohedral::lattice_scale(kernel.d));
      scalar_t* blurred = nullptr;
      err = launch_permutohedral_splat_blur(q, points, labels, kernel.d, kernel.vertices, kernel.weight,
                                            kernel.neighbors, kernel.splat_order, kernel.vertex_start, false,
                                            kernel.lattice_values, &blurred, stream);
      if (err != cudaSuccess) return err;
      const scalar_t* values = blurred;
      if (kernel.matrix != nullptr) {
        // The third [M+1, L] of the scratch: the splat and blur use the first two.
        scalar_t* mixed = kernel.lattice_values + 2 * (static_cast<int64_t>(kernel.vertices) + 1) * labels;
        mix_labels_kernel<scalar_t><<<blocks_for(static_cast<int64_t>(kernel.vertices) * labels), THREADS, 0,
                                      stream>>>(blurred, kernel.matrix, kernel.vertices, labels, mixed);
        values = mixed;
      }
      messages.kernel[k] = {values, kernel.vertex_of, kernel.weight, kernel.d + 1,
                            kernel.matrix != nullptr ? scale : -kernel.potts * scale};
    }
    update_kernel<scalar_t><<<blocks_for(points), THREADS, 0, stream>>>(
        unary, points, image_pixels, labels, messages, q, it == iterations - 1 ? result : nullptr);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

#define FASTSEG_INSTANTIATE(scalar_t)                                                                        \
  template cudaError_t launch_dense_crf_mean_field<scalar_t>(const MeanFieldScores<scalar_t>&, int64_t,     \
                                                             int64_t, int, const MeanFieldKernel<scalar_t>*, \
                                                             int, int64_t, scalar_t*, scalar_t*, scalar_t*,  \
                                                             cudaStream_t);

FASTSEG_INSTANTIATE(float)
FASTSEG_INSTANTIATE(double)

#undef FASTSEG_INSTANTIATE

}  // namespace fastseg
