// Launchers of the CUDA kernels of max_unpool2d and max_unpool2d_backward.
//
// Plain CUDA on raw pointers and a stream, with no torch headers, so that the
// .cu compiles without a CUDA build of PyTorch. word_t is uint16_t, uint32_t
// or uint64_t, the element size of the dtype: the kernels only move elements.
// Data tensors may have any strides; outputs are dense, NCHW or, where
// channels_last is set, NHWC. Each launcher returns the launch's error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../pool_window.h"

namespace fastseg {

// Zero-fills output, then output[n, c].flat[indices[n, c, h, w]] =
// input[n, c, h, w], one thread per element; of duplicate indices an
// arbitrary one wins. An index outside [0, Ho*Wo) is skipped and sets *invalid.
template <typename word_t>
cudaError_t launch_max_unpool2d_flat(const word_t* input,  // [N, C, Hi, Wi]
                                     Dims4<int64_t> input_stride,
                                     const int64_t* indices,  // [N, C, Hi, Wi]
                                     Dims4<int64_t> indices_stride,
                                     Dims4<int64_t> input_size,  // N, C, Hi, Wi
                                     word_t* output,             // [N, C, Ho, Wo]
                                     int64_t output_h,
                                     int64_t output_w,
                                     bool channels_last,
                                     int32_t* invalid,  // [1]
                                     cudaStream_t stream);

// Dense gather: every output element written once, with the input value of
// the largest (oh, ow) whose compact index targets it, else 0. An index that
// names no tap or a target outside the output sets *invalid.
template <typename word_t>
cudaError_t launch_max_unpool2d_compact(const word_t* input,  // [N, C, Hi, Wi]
                                        Dims4<int64_t> input_stride,
                                        const uint8_t* indices,  // [N, C, Hi, Wi]
                                        Dims4<int64_t> indices_stride,
                                        Dims4<int64_t> input_size,  // N, C, Hi, Wi
                                        word_t* output,             // [N, C, Ho, Wo]
                                        int64_t output_h,
                                        int64_t output_w,
                                        bool channels_last,
                                        const PoolWindow2d<int64_t>& window,
                                        int32_t* invalid,  // [1]
                                        cudaStream_t stream);

// grad_input[n, c, h, w] = grad_output[n, c, target of indices[n, c, h, w]],
// 0 where the index is invalid. index_t is int64_t (flat) or uint8_t
// (compact, which reads window; flat ignores it).
template <typename word_t, typename index_t>
cudaError_t launch_max_unpool2d_backward(const word_t* grad_output,  // [N, C, Ho, Wo]
                                         Dims4<int64_t> grad_output_stride,
                                         int64_t output_h,
                                         int64_t output_w,
                                         const index_t* indices,  // [N, C, Hi, Wi]
                                         Dims4<int64_t> indices_stride,
                                         Dims4<int64_t> input_size,  // N, C, Hi, Wi
                                         word_t* grad_input,         // [N, C, Hi, Wi]
                                         bool channels_last,
                                         const PoolWindow2d<int64_t>& window,
                                         cudaStream_t stream);

}  // namespace fastseg
