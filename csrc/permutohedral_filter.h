// Host-side pieces shared by the CPU and CUDA bindings of
// fastseg::permutohedral_lattice and fastseg::permutohedral_apply: the
// argument checks and the lattice's tensor format (documented in
// fastseg/ops/permutohedral_filter.py).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>

namespace fastseg {

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_lattice_features(const at::Tensor& features, const char* op) {
  TORCH_CHECK(features.dim() == 3, op, ": features must be 3-D [B, N, d], got ", features.dim(), "-D");
  check_float_dtype(features, op, "features");
  TORCH_CHECK(features.size(2) >= 1, op, ": features need at least one channel (d >= 1)");
  // Corner indices are int32.
  const int64_t corners = features.size(0) * features.size(1) * (features.size(2) + 1);
  TORCH_CHECK(corners <= std::numeric_limits<int32_t>::max(), op, ": B * N * (d+1) = ", corners,
              " exceeds the lattice's int32 indices");
}

// The lattice tensors, as produced by permutohedral_lattice, in the order of
// its outputs (held by value: the bindings pass contiguous copies).
struct LatticeArgs {
  at::Tensor vertex_of;     // int32 [B, N, d+1]
  at::Tensor barycentric;   // float [B, N, d+1]
  at::Tensor neighbors;     // int32 [d+1, M, 2]
  at::Tensor splat_order;   // int32 [B*N*(d+1)]
  at::Tensor vertex_start;  // int32 [M+1]

  int64_t d() const { return vertex_of.size(2) - 1; }
  int64_t vertices() const { return neighbors.size(1); }
};

inline void check_apply(const at::Tensor& values, const LatticeArgs& lattice, const char* op) {
  TORCH_CHECK(values.dim() == 3, op, ": values must be 3-D [B, N, C], got ", values.dim(), "-D");
  check_float_dtype(values, op, "values");
  TORCH_CHECK(lattice.vertex_of.dim() == 3 && lattice.vertex_of.scalar_type() == at::kInt, op,
              ": vertex_of must be int32 [B, N, d+1]");
  TORCH_CHECK(lattice.vertex_of.size(0) == values.size(0) && lattice.vertex_of.size(1) == values.size(1), op,
              ": the lattice is of ", lattice.vertex_of.size(0), " images of ", lattice.vertex_of.size(1),
              " pixels, values have ", values.size(0), " of ", values.size(1));
  TORCH_CHECK(lattice.barycentric.sizes() == lattice.vertex_of.sizes(), op,
              ": barycentric must have the shape of vertex_of");
  TORCH_CHECK(lattice.barycentric.scalar_type() == values.scalar_type(), op, ": barycentric (",
              lattice.barycentric.scalar_type(), ") and values (", values.scalar_type(), ") must have one dtype");
  const int64_t d = lattice.d();
  TORCH_CHECK(lattice.neighbors.dim() == 3 && lattice.neighbors.size(0) == d + 1 && lattice.neighbors.size(2) == 2 &&
                  lattice.neighbors.scalar_type() == at::kInt,
              op, ": neighbors must be int32 [d+1, M, 2]");
  TORCH_CHECK(lattice.splat_order.dim() == 1 && lattice.splat_order.numel() == lattice.vertex_of.numel() &&
                  lattice.splat_order.scalar_type() == at::kInt,
              op, ": splat_order must be int32 [B*N*(d+1)]");
  TORCH_CHECK(lattice.vertex_start.dim() == 1 && lattice.vertex_start.numel() == lattice.vertices() + 1 &&
                  lattice.vertex_start.scalar_type() == at::kInt,
              op, ": vertex_start must be int32 [M+1]");
  for (const at::Tensor* t : {&lattice.vertex_of, &lattice.barycentric, &lattice.neighbors, &lattice.splat_order,
                              &lattice.vertex_start}) {
    TORCH_CHECK(t->device() == values.device(), op, ": the lattice is on ", t->device(), ", values on ",
                values.device());
  }
}

}  // namespace fastseg
