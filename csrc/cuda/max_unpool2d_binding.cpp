// CUDA binding of fastseg::max_unpool2d and fastseg::max_unpool2d_backward:
// checks, allocation and the launch of the kernels in max_unpool2d.cu on the
// current stream, registered for the CUDA dispatch key.
#include "../max_unpool2d.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "../pool_window.h"
#include "check_launch.h"
#include "max_unpool2d.cuh"

namespace fastseg {
namespace {

std::tuple<at::Tensor, at::Tensor> max_unpool2d_cuda(const at::Tensor& input,
                                                     const at::Tensor& indices,
                                                     at::IntArrayRef output_size,
                                                     at::IntArrayRef kernel_size,
                                                     at::IntArrayRef stride,
                                                     at::IntArrayRef padding,
                                                     at::IntArrayRef dilation) {
  constexpr const char* op = "fastseg::max_unpool2d";
  check_forward(input, indices, output_size, op);
  TORCH_CHECK(input.is_cuda(), op, ": expected CUDA tensors, got ", input.device());
  const bool compact = is_compact(indices);
  const auto window = make_window(kernel_size, stride, padding, dilation, compact, op);

  const c10::cuda::CUDAGuard device_guard(input.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const bool channels_last = prefers_channels_last(input);
  at::Tensor output =
      empty_dense({input.size(0), input.size(1), output_size[0], output_size[1]}, input.options(), channels_last);
  at::Tensor invalid =
      at::full({1}, invalid_by_shape(input, output, compact, window) ? 1 : 0, input.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, invalid};
  if (input.numel() == 0) return {output.zero_(), invalid};

  dispatch_word(input.scalar_type(), op, [&](auto word) {
    using word_t = decltype(word);
    const auto* in = static_cast<const word_t*>(input.const_data_ptr());
    auto* out = static_cast<word_t*>(output.mutable_data_ptr());
    int32_t* bad = invalid.mutable_data_ptr<int32_t>();
    const cudaError_t err =
        compact
            ? launch_max_unpool2d_compact(in, strides4(input), indices.const_data_ptr<uint8_t>(), strides4(indices),
                                          sizes4(input), out, output.size(2), output.size(3), channels_last, window,
                                          bad, stream)
            : launch_max_unpool2d_flat(in, strides4(input), indices.const_data_ptr<int64_t>(), strides4(indices),
                                       sizes4(input), out, output.size(2), output.size(3), channels_last, bad, stream);
    check_launch(err, op);
  });
  return {output, invalid};
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad_output,
                                      const at::Tensor& indices,
                                      at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride,
                                      at::IntArrayRef padding,
                                      at::IntArrayRef dilation) {
  constexpr const char* op = "fastseg::max_unpool2d_backward";
  check_backward(grad_output, indices, op);
  TORCH_CHECK(grad_output.is_cuda(), op, ": expected CUDA tensors, got ", grad_output.device());
  const bool compact = is_compact(indices);
  const auto window = make_window(kernel_size, stride, padding, dilation, compact, op);

  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const bool channels_last = prefers_channels_last(indices);
  at::Tensor grad_input = empty_dense(indices.sizes(), grad_output.options(), channels_last);
  if (grad_input.numel() == 0) return grad_input;

  dispatch_word(grad_output.scalar_type(), op, [&](auto word) {
    using word_t = decltype(word);
    const auto* go = static_cast<const word_t*>(grad_output.const_data_ptr());
    auto* gi = static_cast<word_t*>(grad_input.mutable_data_ptr());
    const int64_t out_h = grad_output.size(2), out_w = grad_output.size(3);
    const cudaError_t err =
        compact
            ? launch_max_unpool2d_backward(go, strides4(grad_output), out_h, out_w, indices.const_data_ptr<uint8_t>(),
                                           strides4(indices), sizes4(indices), gi, channels_last, window, stream)
            : launch_max_unpool2d_backward(go, strides4(grad_output), out_h, out_w, indices.const_data_ptr<int64_t>(),
                                           strides4(indices), sizes4(indices), gi, channels_last, window, stream);
    check_launch(err, op);
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg_C, CUDA, m) {
  m.impl("max_unpool2d", &max_unpool2d_cuda);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cuda);
}

}  // namespace fastseg
