// CUDA binding of fastseg_C::dense_crf_mean_field: checks, allocation (the
// result and the scratch, through PyTorch's caching allocator) and the
// launch of the iterations in dense_crf.cu on the current stream, registered
// for the CUDA dispatch key. The op's contract is the CPU one's
// (csrc/cpu/dense_crf.cpp, fastseg/ops/dense_crf.py's fused_mean_field).
#include "../dense_crf.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "check_launch.h"
#include "dense_crf.cuh"

namespace fastseg {
namespace {

at::Tensor dense_crf_mean_field_cuda(const at::Tensor& scores, c10::string_view scores_are, at::TensorList vertex_of,
                                     at::TensorList barycentric, at::TensorList neighbors, at::TensorList splat_order,
                                     at::TensorList vertex_start, at::TensorList compat, int64_t iterations) {
  constexpr const char* op = "fastseg::dense_crf_mean_field";
  const std::vector<LatticeArgs> lattices =
      mean_field_lattices(vertex_of, barycentric, neighbors, splat_order, vertex_start, op);
  const ScoreKind kind = score_kind(std::string_view(scores_are.data(), scores_are.size()), op);
  check_mean_field(scores, lattices, compat, iterations, c10::DeviceType::CUDA, op);
  TORCH_CHECK(lattices.size() <= static_cast<size_t>(DENSE_CRF_CUDA_MAX_KERNELS), op, ": the CUDA op takes at most ",
              DENSE_CRF_CUDA_MAX_KERNELS, " kernels, got ", lattices.size());

  const c10::cuda::CUDAGuard device_guard(scores.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t batch = scores.size(0), image_pixels = scores.size(1), points = batch * image_pixels;
  const int labels = static_cast<int>(scores.size(2));
  // Q is written label-major, [B, L, N], the layout of the logits it is
  // turned back into, and returned as its [B, N, L] view.
  at::Tensor result = at::empty({batch, labels, image_pixels}, scores.options());
  if (result.numel() == 0) return result.transpose(1, 2);

  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), op, [&] {
    const at::TensorOptions options = scores.options();
    at::Tensor unary = at::empty({points, labels}, options), q = at::empty({points, labels}, options);
    std::vector<at::Tensor> scratch;  // alive until the launches are queued (the allocator is stream-ordered)
    std::vector<MeanFieldKernel<scalar_t>> kernels;
    for (size_t k = 0; k < lattices.size(); ++k) {
      const LatticeArgs& lattice = lattices[k];
      const int64_t corners = lattice.d() + 1, vertices = lattice.vertices();
      at::Tensor weight = at::empty({points * corners}, options);
      at::Tensor values = at::empty({3, vertices + 1, labels}, options);
      at::Tensor matrix = compat[k].dim() == 2 ? compat[k].contiguous() : at::Tensor();
      // A Potts weight is read on the host: a CPU scalar as fused_mean_field
      // passes it costs no synchronisation.
      const scalar_t potts = compat[k].dim() == 0 ? compat[k].item<scalar_t>() : scalar_t(0);
      kernels.push_back({static_cast<int>(lattice.d()), static_cast<int32_t>(vertices),
                         lattice.vertex_of.const_data_ptr<int32_t>(), lattice.barycentric.const_data_ptr<scalar_t>(),
                         lattice.neighbors.const_data_ptr<int32_t>(), lattice.splat_order.const_data_ptr<int32_t>(),
                         lattice.vertex_start.const_data_ptr<int32_t>(), potts,
                         matrix.defined() ? matrix.const_data_ptr<scalar_t>() : nullptr,
                         weight.mutable_data_ptr<scalar_t>(), values.mutable_data_ptr<scalar_t>()});
      scratch.insert(scratch.end(), {weight, values, matrix});
    }
    check_launch(launch_dense_crf_mean_field(mean_field_scores<scalar_t>(scores, kind), batch, image_pixels, labels,
                                             kernels.data(), static_cast<int>(kernels.size()), iterations,
                                             unary.mutable_data_ptr<scalar_t>(), q.mutable_data_ptr<scalar_t>(),
                                             result.mutable_data_ptr<scalar_t>(), stream),
                 op);
  });
  return result.transpose(1, 2);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg_C, CUDA, m) {
  m.impl("dense_crf_mean_field", &dense_crf_mean_field_cuda);
}

}  // namespace fastseg
