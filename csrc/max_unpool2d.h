// Host-side pieces shared by the CPU and CUDA bindings of max_unpool2d and
// max_unpool2d_backward: argument checks, the pooling geometry, the output
// layout and the dispatch on element size.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#include "pool_window.h"

namespace fastseg {

inline bool is_compact(const at::Tensor& indices) { return indices.scalar_type() == at::kByte; }

// Only the layouts the kernels are fast for: channels_last when the tensor is
// stored that way (and not also plain contiguous, as when C == 1), else NCHW.
inline bool prefers_channels_last(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor empty_dense(at::IntArrayRef sizes, const at::TensorOptions& options, bool channels_last) {
  return at::empty(
      sizes, options.memory_format(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

inline Dims4<int64_t> sizes4(const at::Tensor& t) { return {t.size(0), t.size(1), t.size(2), t.size(3)}; }

inline Dims4<int64_t> strides4(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}; }

inline void check_pair(at::IntArrayRef values, const char* op, const char* name) {
  TORCH_CHECK(values.size() == 2, op, ": ", name, " must have 2 elements, got ", values.size());
}

// The geometry is only read for compact indices; flat indices carry their
// targets themselves, so their values are neither checked nor used (a 1x1
// window stands in for them).
inline PoolWindow2d<int64_t> make_window(at::IntArrayRef kernel_size,
                                         at::IntArrayRef stride,
                                         at::IntArrayRef padding,
                                         at::IntArrayRef dilation,
                                         bool compact,
                                         const char* op) {
  check_pair(kernel_size, op, "kernel_size");
  check_pair(stride, op, "stride");
  check_pair(padding, op, "padding");
  check_pair(dilation, op, "dilation");
  if (!compact) return {PoolAxis<int64_t>::make(1, 1, 0, 1), PoolAxis<int64_t>::make(1, 1, 0, 1)};
  for (int i = 0; i < 2; ++i) {
    TORCH_CHECK(kernel_size[i] >= 1 && stride[i] >= 1 && dilation[i] >= 1 && padding[i] >= 0, op,
                ": expected kernel_size, stride, dilation >= 1 and padding >= 0, got kernel_size=", kernel_size,
                ", stride=", stride, ", padding=", padding, ", dilation=", dilation);
  }
  // A uint8 names taps 0..255 only.
  TORCH_CHECK(kernel_size[0] * kernel_size[1] <= 256, op,
              ": compact (uint8) indices need a window of at most 256 taps, got kernel_size=", kernel_size);
  return {PoolAxis<int64_t>::make(kernel_size[0], stride[0], padding[0], dilation[0]),
          PoolAxis<int64_t>::make(kernel_size[1], stride[1], padding[1], dilation[1])};
}

inline void check_data(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D [N, C, H, W], got ", t.dim(), "-D");
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op, ": ",
              name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

inline void check_indices(const at::Tensor& indices, const at::Tensor& data, const char* op) {
  TORCH_CHECK(indices.dim() == 4, op, ": indices must be 4-D [N, C, H, W], got ", indices.dim(), "-D");
  TORCH_CHECK(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kByte, op,
              ": indices must be int64 (flat) or uint8 (compact), got ", indices.scalar_type());
  TORCH_CHECK(indices.device() == data.device(), op, ": indices are on ", indices.device(), " but the data on ",
              data.device());
}

inline void check_forward(const at::Tensor& input,
                          const at::Tensor& indices,
                          at::IntArrayRef output_size,
                          const char* op) {
  check_data(input, op, "input");
  check_indices(indices, input, op);
  TORCH_CHECK(indices.sizes() == input.sizes(), op, ": indices must have the input's shape ", input.sizes(), ", got ",
              indices.sizes());
  check_pair(output_size, op, "output_size");
  TORCH_CHECK(output_size[0] >= 0 && output_size[1] >= 0, op, ": output_size must be >= 0, got ", output_size);
}

inline void check_backward(const at::Tensor& grad_output, const at::Tensor& indices, const char* op) {
  check_data(grad_output, op, "grad_output");
  check_indices(indices, grad_output, op);
  TORCH_CHECK(grad_output.size(0) == indices.size(0) && grad_output.size(1) == indices.size(1), op, ": grad_output ",
              grad_output.sizes(), " and indices ", indices.sizes(), " must agree in N and C");
}

// Set before any kernel runs when some index is invalid whatever its value:
// an empty output leaves no valid target, and a window that misses the output
// entirely is never examined by the compact gather.
inline bool invalid_by_shape(const at::Tensor& input,
                             const at::Tensor& output,
                             bool compact,
                             const PoolWindow2d<int64_t>& window) {
  if (input.numel() == 0) return false;
  if (output.numel() == 0) return true;
  return compact && !window.every_window_reaches(input.size(2), input.size(3), output.size(2), output.size(3));
}

// Both unpool directions only move elements, so one kernel per element size
// serves every dtype of that size; zero is the all-zero bit pattern for each.
template <typename F>
void dispatch_word(at::ScalarType dtype, const char* op, F&& body) {
  switch (c10::elementSize(dtype)) {
    case 2: body(uint16_t{}); break;
    case 4: body(uint32_t{}); break;
    case 8: body(uint64_t{}); break;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

}  // namespace fastseg
