// CUDA kernels of max_unpool2d and max_unpool2d_backward, and their launchers
// (declared in max_unpool2d.cuh). Plain CUDA: no torch headers.
//
// Every kernel walks the tensor it writes (for the flat scatter: the input,
// in the order of the output's layout) in memory order, one thread per
// element in a grid-stride loop, so that NCHW and NHWC are both coalesced.
// The invalid flag is written only by threads that saw a bad index.
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "../pool_window.h"
#include "grid.cuh"
#include "max_unpool2d.cuh"

namespace fastseg {
namespace {

using namespace grid;

// Coordinates of element i of a dense [N, C, H, W] tensor stored NCHW or NHWC.
template <typename offset_t>
__device__ __forceinline__ Dims4<offset_t> unravel(offset_t i, const Dims4<offset_t>& size, bool channels_last) {
  Dims4<offset_t> at;
  if (channels_last) {
    at.c = i % size.c;
    i /= size.c;
    at.w = i % size.w;
    i /= size.w;
    at.h = i % size.h;
    at.n = i / size.h;
  } else {
    at.w = i % size.w;
    i /= size.w;
    at.h = i % size.h;
    i /= size.h;
    at.c = i % size.c;
    at.n = i / size.c;
  }
  return at;
}

template <typename offset_t>
__device__ __forceinline__ offset_t offset_of(const Dims4<offset_t>& at, const Dims4<offset_t>& stride) {
  return at.n * stride.n + at.c * stride.c + at.h * stride.h + at.w * stride.w;
}

// output: zero-filled; element (n, c, y, x) at n*out_stride.n + c*out_stride.c
// + (y*Wo + x)*out_stride.w, which holds for dense NCHW and NHWC alike.
template <typename word_t, typename offset_t>
__global__ void unpool_flat_kernel(const word_t* __restrict__ input,  // [N, C, Hi, Wi]
                                   Dims4<offset_t> in_stride,
                                   const int64_t* __restrict__ indices,  // [N, C, Hi, Wi]
                                   Dims4<offset_t> idx_stride,
                                   Dims4<offset_t> in_size,
                                   int64_t numel,
                                   word_t* __restrict__ output,  // [N, C, Ho, Wo]
                                   Dims4<offset_t> out_stride,
                                   int64_t out_plane,
                                   bool channels_last,
                                   int32_t* __restrict__ invalid) {  // [1]
  bool bad = false;
  for (int64_t i = first_index(); i < numel; i += index_stride()) {
    const Dims4<offset_t> at = unravel(static_cast<offset_t>(i), in_size, channels_last);
    const int64_t idx = indices[offset_of(at, idx_stride)];
    if (idx < 0 || idx >= out_plane) {
      bad = true;
      continue;
    }
    output[at.n * out_stride.n + at.c * out_stride.c + static_cast<offset_t>(idx) * out_stride.w] =
        input[offset_of(at, in_stride)];
  }
  if (bad) atomicOr(invalid, 1);
}

// DISJOINT: at most one candidate window per output pixel (PoolAxis::disjoint).
template <typename word_t, typename offset_t, bool DISJOINT>
__global__ void unpool_compact_kernel(const word_t* __restrict__ input,  // [N, C, Hi, Wi]
                                      Dims4<offset_t> in_stride,
                                      const uint8_t* __restrict__ indices,  // [N, C, Hi, Wi]
                                      Dims4<offset_t> idx_stride,
                                      offset_t in_h,
                                      offset_t in_w,
                                      word_t* __restrict__ output,  // [N, C, Ho, Wo]
                                      Dims4<offset_t> out_size,
                                      int64_t numel,
                                      bool channels_last,
                                      PoolWindow2d<offset_t> window,
                                      int32_t* __restrict__ invalid) {  // [1]
  bool bad = false;
  for (int64_t i = first_index(); i < numel; i += index_stride()) {
    const Dims4<offset_t> at = unravel(static_cast<offset_t>(i), out_size, channels_last);
    const word_t* in = input + (at.n * in_stride.n + at.c * in_stride.c);
    const uint8_t* idx = indices + (at.n * idx_stride.n + at.c * idx_stride.c);
    word_t value = 0;
    if constexpr (DISJOINT) {
      offset_t oh, r, ow, k;
      if (only_window(window.h, at.h, in_h, oh, r) && only_window(window.w, at.w, in_w, ow, k)) {
        const offset_t v = idx[oh * idx_stride.h + ow * idx_stride.w];
        if (v == r * window.w.kernel + k) {
          value = in[oh * in_stride.h + ow * in_stride.w];
        } else if (!window.compact_valid(oh, ow, v, out_size.h, out_size.w)) {
          bad = true;
        }
      }
    } else {
      // Candidates in decreasing (oh, ow): the first match is the one that a
      // sequential row-major scatter (PyTorch's CPU kernel) writes last. The
      // loop goes on after it so that every index gets examined.
      bool found = false;
      const TapWalk<offset_t> first_col(window.w, at.w);
      TapWalk<offset_t> row(window.h, at.h);
      for (offset_t r = 0; r < window.h.kernel && !row.exhausted(); ++r, row.next(window.h)) {
        if (!row.hit(in_h)) continue;
        TapWalk<offset_t> col = first_col;
        for (offset_t k = 0; k < window.w.kernel && !col.exhausted(); ++k, col.next(window.w)) {
          if (!col.hit(in_w)) continue;
          const offset_t v = idx[row.o * idx_stride.h + col.o * idx_stride.w];
          if (v == r * window.w.kernel + k) {
            if (!found) {
              found = true;
              value = in[row.o * in_stride.h + col.o * in_stride.w];
            }
          } else if (!window.compact_valid(row.o, col.o, v, out_size.h, out_size.w)) {
            bad = true;
          }
        }
      }
    }
    output[i] = value;
  }
  if (bad) atomicOr(invalid, 1);
}

// flat_rows: grad_output's rows are dense (stride.h == Wo * stride.w), so a
// flat index becomes an offset without a division.
template <typename word_t, typename index_t, typename offset_t>
__global__ void unpool_backward_kernel(const word_t* __restrict__ grad_output,  // [N, C, Ho, Wo]
                                       Dims4<offset_t> go_stride,
                                       offset_t out_h,
                                       offset_t out_w,
                                       int64_t out_plane,
                                       bool flat_rows,
                                       const index_t* __restrict__ indices,  // [N, C, Hi, Wi]
                                       Dims4<offset_t> idx_stride,
                                       word_t* __restrict__ grad_input,  // [N, C, Hi, Wi]
                                       Dims4<offset_t> in_size,
                                       int64_t numel,
                                       bool channels_last,
                                       PoolWindow2d<offset_t> window) {
  for (int64_t i = first_index(); i < numel; i += index_stride()) {
    const Dims4<offset_t> at = unravel(static_cast<offset_t>(i), in_size, channels_last);
    const int64_t v = indices[offset_of(at, idx_stride)];
    const word_t* go = grad_output + (at.n * go_stride.n + at.c * go_stride.c);
    word_t value = 0;
    if constexpr (std::is_same<index_t, uint8_t>::value) {
      offset_t y, x;
      if (window.compact_target(at.h, at.w, static_cast<offset_t>(v), out_h, out_w, y, x)) {
        value = go[y * go_stride.h + x * go_stride.w];
      }
    } else if (v >= 0 && v < out_plane) {
      const offset_t f = static_cast<offset_t>(v);
      value = go[flat_rows ? f * go_stride.w : (f / out_w) * go_stride.h + (f % out_w) * go_stride.w];
    }
    grad_input[i] = value;
  }
}

int64_t numel_of(const Dims4<int64_t>& size) { return size.n * size.c * size.h * size.w; }

// Largest element offset of a non-empty strided tensor.
int64_t max_offset(const Dims4<int64_t>& size, const Dims4<int64_t>& stride) {
  return (size.n - 1) * stride.n + (size.c - 1) * stride.c + (size.h - 1) * stride.h + (size.w - 1) * stride.w;
}

// A bound on every position the window helpers compute along one axis.
int64_t position_bound(const PoolAxis<int64_t>& axis, int64_t in_size, int64_t out_size) {
  return std::max(in_size * axis.stride, out_size) + axis.padding + axis.kernel * axis.dilation;
}

Dims4<int64_t> dense_strides(const Dims4<int64_t>& size, bool channels_last) {
  if (channels_last) return {size.h * size.w * size.c, 1, size.w * size.c, size.c};
  return {size.c * size.h * size.w, size.h * size.w, size.w, 1};
}

// Runs body(int32_t{}) when every value fits in 32 bits, else body(int64_t{}).
template <typename F>
void with_offset_type(std::initializer_list<int64_t> values, F&& body) {
  bool fits = true;
  for (const int64_t v : values) fits = fits && v <= std::numeric_limits<int32_t>::max();
  if (fits) {
    body(int32_t{});
  } else {
    body(int64_t{});
  }
}

}  // namespace

template <typename word_t>
cudaError_t launch_max_unpool2d_flat(const word_t* input,
                                     Dims4<int64_t> input_stride,
                                     const int64_t* indices,
                                     Dims4<int64_t> indices_stride,
                                     Dims4<int64_t> input_size,
                                     word_t* output,
                                     int64_t output_h,
                                     int64_t output_w,
                                     bool channels_last,
                                     int32_t* invalid,
                                     cudaStream_t stream) {
  const Dims4<int64_t> out_size{input_size.n, input_size.c, output_h, output_w};
  const int64_t numel = numel_of(input_size), out_numel = numel_of(out_size);
  if (out_numel == 0) return cudaSuccess;
  const cudaError_t err = cudaMemsetAsync(output, 0, out_numel * sizeof(word_t), stream);
  if (err != cudaSuccess || numel == 0) return err;
  const Dims4<int64_t> out_stride = dense_strides(out_size, channels_last);
  with_offset_type({numel, out_numel, max_offset(input_size, input_stride), max_offset(input_size, indices_stride)},
                   [&](auto offset) {
                     using offset_t = decltype(offset);
                     unpool_flat_kernel<word_t, offset_t><<<blocks_for(numel), THREADS, 0, stream>>>(
                         input, input_stride.cast<offset_t>(), indices, indices_stride.cast<offset_t>(),
                         input_size.cast<offset_t>(), numel, output, out_stride.cast<offset_t>(), output_h * output_w,
                         channels_last, invalid);
                   });
  return cudaGetLastError();
}

template <typename word_t>
cudaError_t launch_max_unpool2d_compact(const word_t* input,
                                        Dims4<int64_t> input_stride,
                                        const uint8_t* indices,
                                        Dims4<int64_t> indices_stride,
                                        Dims4<int64_t> input_size,
                                        word_t* output,
                                        int64_t output_h,
                                        int64_t output_w,
                                        bool channels_last,
                                        const PoolWindow2d<int64_t>& window,
                                        int32_t* invalid,
                                        cudaStream_t stream) {
  const Dims4<int64_t> out_size{input_size.n, input_size.c, output_h, output_w};
  const int64_t out_numel = numel_of(out_size);
  if (out_numel == 0) return cudaSuccess;
  if (numel_of(input_size) == 0) return cudaMemsetAsync(output, 0, out_numel * sizeof(word_t), stream);
  with_offset_type({out_numel, max_offset(input_size, input_stride), max_offset(input_size, indices_stride),
                    position_bound(window.h, input_size.h, output_h), position_bound(window.w, input_size.w, output_w)},
                   [&](auto offset) {
                     using offset_t = decltype(offset);
                     const auto launch = [&](auto kernel) {
                       kernel<<<blocks_for(out_numel), THREADS, 0, stream>>>(
                           input, input_stride.cast<offset_t>(), indices, indices_stride.cast<offset_t>(),
                           static_cast<offset_t>(input_size.h), static_cast<offset_t>(input_size.w), output,
                           out_size.cast<offset_t>(), out_numel, channels_last, window.cast<offset_t>(), invalid);
                     };
                     if (window.disjoint()) {
                       launch(unpool_compact_kernel<word_t, offset_t, true>);
                     } else {
                       launch(unpool_compact_kernel<word_t, offset_t, false>);
                     }
                   });
  return cudaGetLastError();
}

template <typename word_t, typename index_t>
cudaError_t launch_max_unpool2d_backward(const word_t* grad_output,
                                         Dims4<int64_t> grad_output_stride,
                                         int64_t output_h,
                                         int64_t output_w,
                                         const index_t* indices,
                                         Dims4<int64_t> indices_stride,
                                         Dims4<int64_t> input_size,
                                         word_t* grad_input,
                                         bool channels_last,
                                         const PoolWindow2d<int64_t>& window,
                                         cudaStream_t stream) {
  const int64_t numel = numel_of(input_size);
  if (numel == 0) return cudaSuccess;
  const Dims4<int64_t> out_size{input_size.n, input_size.c, output_h, output_w};
  const int64_t out_plane = output_h * output_w;
  // An empty grad_output is never read: every index is then invalid.
  const int64_t go_max = numel_of(out_size) == 0 ? 0 : max_offset(out_size, grad_output_stride);
  const bool flat_rows = grad_output_stride.h == output_w * grad_output_stride.w;
  with_offset_type({numel, out_plane, go_max, max_offset(input_size, indices_stride),
                    position_bound(window.h, input_size.h, output_h), position_bound(window.w, input_size.w, output_w)},
                   [&](auto offset) {
                     using offset_t = decltype(offset);
                     unpool_backward_kernel<word_t, index_t, offset_t><<<blocks_for(numel), THREADS, 0, stream>>>(
                         grad_output, grad_output_stride.cast<offset_t>(), static_cast<offset_t>(output_h),
                         static_cast<offset_t>(output_w), out_plane, flat_rows, indices,
                         indices_stride.cast<offset_t>(), grad_input, input_size.cast<offset_t>(), numel, channels_last,
                         window.cast<offset_t>());
                   });
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(word_t)                                                                                    \
  template cudaError_t launch_max_unpool2d_flat<word_t>(const word_t*, Dims4<int64_t>, const int64_t*, Dims4<int64_t>, \
                                                        Dims4<int64_t>, word_t*, int64_t, int64_t, bool, int32_t*,     \
                                                        cudaStream_t);                                                 \
  template cudaError_t launch_max_unpool2d_compact<word_t>(                                                            \
      const word_t*, Dims4<int64_t>, const uint8_t*, Dims4<int64_t>, Dims4<int64_t>, word_t*, int64_t, int64_t, bool,  \
      const PoolWindow2d<int64_t>&, int32_t*, cudaStream_t);                                                           \
  template cudaError_t launch_max_unpool2d_backward<word_t, int64_t>(                                                  \
      const word_t*, Dims4<int64_t>, int64_t, int64_t, const int64_t*, Dims4<int64_t>, Dims4<int64_t>, word_t*, bool,  \
      const PoolWindow2d<int64_t>&, cudaStream_t);                                                                     \
  template cudaError_t launch_max_unpool2d_backward<word_t, uint8_t>(                                                  \
      const word_t*, Dims4<int64_t>, int64_t, int64_t, const uint8_t*, Dims4<int64_t>, Dims4<int64_t>, word_t*, bool,  \
      const PoolWindow2d<int64_t>&, cudaStream_t);

FASTSEG_INSTANTIATE(uint16_t)
FASTSEG_INSTANTIATE(uint32_t)
FASTSEG_INSTANTIATE(uint64_t)

#undef FASTSEG_INSTANTIATE

}  // namespace fastseg
