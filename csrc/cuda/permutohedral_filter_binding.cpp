// CUDA binding of fastseg::permutohedral_lattice and
// fastseg::permutohedral_apply: checks, allocation (outputs, scratch and the
// lattice build's workspace, all through PyTorch's caching allocator) and the
// launch of the kernels in permutohedral_filter.cu on the current stream,
// registered for the CUDA dispatch key.
#include "../permutohedral_filter.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstddef>
#include <cstdint>
#include <tuple>

#include "../permutohedral.h"
#include "check_launch.h"
#include "permutohedral_filter.cuh"

namespace fastseg {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_cuda(
    const at::Tensor& features) {
  constexpr const char* op = "fastseg::permutohedral_lattice";
  check_lattice_features(features, op);
  TORCH_CHECK(features.is_cuda(), op, ": expected CUDA tensors, got ", features.device());
  TORCH_CHECK(features.size(2) <= PERMUTOHEDRAL_CUDA_MAX_D, op, ": the CUDA lattice takes at most ",
              PERMUTOHEDRAL_CUDA_MAX_D, " features (d), got ", features.size(2),
              "; build the lattice of CPU features (the cpp backend) instead");

  const c10::cuda::CUDAGuard device_guard(features.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor feats = features.contiguous();
  const int64_t batch = feats.size(0), pixels = feats.size(1);
  const int d = static_cast<int>(feats.size(2));
  const int64_t corners = d + 1, total = batch * pixels * corners;
  const at::TensorOptions index_options = feats.options().dtype(at::kInt);
  at::Tensor vertex_of = at::empty({batch, pixels, corners}, index_options);
  at::Tensor barycentric = at::empty({batch, pixels, corners}, feats.options());
  if (total == 0) {
    return {vertex_of, barycentric, at::empty({corners, 0, 2}, index_options), at::empty({0}, index_options),
            at::zeros({1}, index_options)};
  }

  size_t workspace_bytes = 0;
  check_launch(permutohedral_lattice_workspace_bytes(batch, pixels, d, &workspace_bytes), op);
  // Lives until both halves of the build have run; freeing it at the end of
  // this function is safe, the caching allocator being ordered on `stream`.
  at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, feats.options().dtype(at::kByte));
  at::Tensor vertex_count = at::empty({1}, index_options);
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), op, [&] {
    check_launch(launch_permutohedral_lattice_vertices(
                     feats.const_data_ptr<scalar_t>(), batch, pixels, d, vertex_of.mutable_data_ptr<int32_t>(),
                     barycentric.mutable_data_ptr<scalar_t>(), workspace.mutable_data_ptr(), workspace_bytes,
                     vertex_count.mutable_data_ptr<int32_t>(), stream),
                 op);
  });

  // The outputs' sizes depend on M: the one synchronisation of the build.
  const int32_t vertices = vertex_count.item<int32_t>();
  at::Tensor neighbors = at::empty({corners, vertices, 2}, index_options);
  at::Tensor splat_order = at::empty({total}, index_options);
  at::Tensor vertex_start = at::empty({vertices + 1}, index_options);
  check_launch(launch_permutohedral_lattice_links(batch, pixels, d, vertices, vertex_of.const_data_ptr<int32_t>(),
                                                  neighbors.mutable_data_ptr<int32_t>(),
                                                  splat_order.mutable_data_ptr<int32_t>(),
                                                  vertex_start.mutable_data_ptr<int32_t>(),
                                                  workspace.mutable_data_ptr(), workspace_bytes, stream),
               op);
  return {vertex_of, barycentric, neighbors, splat_order, vertex_start};
}

at::Tensor permutohedral_apply_cuda(const at::Tensor& values, const at::Tensor& vertex_of,
                                    const at::Tensor& barycentric, const at::Tensor& neighbors,
                                    const at::Tensor& splat_order, const at::Tensor& vertex_start, bool reverse) {
  constexpr const char* op = "fastseg::permutohedral_apply";
  const LatticeArgs lattice{vertex_of.contiguous(), barycentric.contiguous(), neighbors.contiguous(),
                            splat_order.contiguous(), vertex_start.contiguous()};
  check_apply(values, lattice, op);
  TORCH_CHECK(values.is_cuda(), op, ": expected CUDA tensors, got ", values.device());

  const c10::cuda::CUDAGuard device_guard(values.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor in = values.contiguous();
  at::Tensor out = at::empty_like(in);
  if (out.numel() == 0) return out;
  const int64_t points = in.size(0) * in.size(1), channels = in.size(2), vertices = lattice.vertices();
  const int d = static_cast<int>(lattice.d());

  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), op, [&] {
    // Two buffers that the blur swaps, each with the zero row M at the end
    // (the kernels write every row, that one included).
    at::Tensor buffers = at::empty({2, vertices + 1, channels}, in.options());
    check_launch(launch_permutohedral_apply(
                     in.const_data_ptr<scalar_t>(), points, channels, d, static_cast<int32_t>(vertices),
                     lattice.vertex_of.const_data_ptr<int32_t>(), lattice.barycentric.const_data_ptr<scalar_t>(),
                     lattice.neighbors.const_data_ptr<int32_t>(), lattice.splat_order.const_data_ptr<int32_t>(),
                     lattice.vertex_start.const_data_ptr<int32_t>(), reverse,
                     static_cast<scalar_t>(permutohedral::lattice_scale(d)), buffers.mutable_data_ptr<scalar_t>(),
                     out.mutable_data_ptr<scalar_t>(), stream),
                 op);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg_C, CUDA, m) {
  m.impl("permutohedral_lattice", &permutohedral_lattice_cuda);
  m.impl("permutohedral_apply", &permutohedral_apply_cuda);
}

}  // namespace fastseg
