// Host-side pieces shared by the CPU and CUDA bindings of
// fastseg_C::dense_crf_mean_field: reading its arguments and checking them.
#pragma once

#include <ATen/ATen.h>

#include <string_view>
#include <vector>

#include "mean_field.h"
#include "permutohedral_filter.h"

namespace fastseg {

inline ScoreKind score_kind(std::string_view scores_are, const char* op) {
  if (scores_are == "unary") return ScoreKind::kUnary;
  if (scores_are == "logits") return ScoreKind::kLogits;
  TORCH_CHECK(scores_are == "probabilities", op, ": scores_are must be 'unary', 'logits' or 'probabilities', got '",
              scores_are, "'");
  return ScoreKind::kProbabilities;
}

// The scores' data and strides as the kernels read them.
template <typename scalar_t>
MeanFieldScores<scalar_t> mean_field_scores(const at::Tensor& scores, ScoreKind kind) {
  return {scores.const_data_ptr<scalar_t>(), scores.stride(0), scores.stride(1), scores.stride(2), kind};
}

// The lattices of the op's list arguments, contiguous, one per kernel.
inline std::vector<LatticeArgs> mean_field_lattices(at::TensorList vertex_of, at::TensorList barycentric,
                                                    at::TensorList neighbors, at::TensorList splat_order,
                                                    at::TensorList vertex_start, const char* op) {
  TORCH_CHECK(barycentric.size() == vertex_of.size() && neighbors.size() == vertex_of.size() &&
                  splat_order.size() == vertex_of.size() && vertex_start.size() == vertex_of.size(),
              op, ": the lattice lists must have one length");
  std::vector<LatticeArgs> lattices;
  for (size_t k = 0; k < vertex_of.size(); ++k) {
    lattices.push_back({vertex_of[k].contiguous(), barycentric[k].contiguous(), neighbors[k].contiguous(),
                        splat_order[k].contiguous(), vertex_start[k].contiguous()});
  }
  return lattices;
}

// scores [B, N, L] on a device of `device_type`, each lattice of the batch
// and on the scores' device, a compatibility per lattice of the scores'
// dtype, on their device (or a 0-dim Potts weight on the CPU).
inline void check_mean_field(const at::Tensor& scores, const std::vector<LatticeArgs>& lattices,
                             at::TensorList compat, int64_t iterations, c10::DeviceType device_type, const char* op) {
  TORCH_CHECK(scores.dim() == 3, op, ": scores must be 3-D [B, N, L], got ", scores.dim(), "-D");
  check_float_dtype(scores, op, "scores");
  TORCH_CHECK(scores.device().type() == device_type, op, ": expected ", c10::DeviceTypeName(device_type),
              " tensors, got ", scores.device());
  TORCH_CHECK(iterations >= 0, op, ": iterations must be >= 0, got ", iterations);
  TORCH_CHECK(compat.size() == lattices.size(), op, ": one compatibility per lattice, got ", compat.size(),
              " for ", lattices.size());
  const int64_t labels = scores.size(2);
  for (size_t k = 0; k < lattices.size(); ++k) {
    check_apply(scores, lattices[k], op);
    TORCH_CHECK(compat[k].dim() == 0 || (compat[k].dim() == 2 && compat[k].size(0) == labels &&
                                         compat[k].size(1) == labels),
                op, ": compat must be a 0-dim Potts weight or an [L, L] = [", labels, ", ", labels,
                "] matrix, got shape ", compat[k].sizes());
    // A Potts weight may be a CPU scalar whatever the device: it is read on the host.
    const bool on_device = compat[k].device() == scores.device() || (compat[k].dim() == 0 && compat[k].is_cpu());
    TORCH_CHECK(compat[k].scalar_type() == scores.scalar_type() && on_device, op,
                ": compat must be a tensor of the dtype and device of scores (", scores.scalar_type(), ", ",
                scores.device(), "), or a CPU scalar for a Potts weight");
  }
}

}  // namespace fastseg
