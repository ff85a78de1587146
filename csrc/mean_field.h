// What the CPU and CUDA kernels of fastseg_C::dense_crf_mean_field (the
// dense CRF's mean-field iterations in one op; see fastseg/ops/dense_crf.py)
// share. Plain C++ with no torch headers, so that .cu files can include it.
#pragma once

#include <cstdint>

namespace fastseg {

// What the op's scores are: the unary itself, logits, or probabilities.
enum class ScoreKind { kUnary, kLogits, kProbabilities };

// The scores: [B, N, L] with these strides (in elements).
template <typename scalar_t>
struct MeanFieldScores {
  const scalar_t* data;
  int64_t image_stride, pixel_stride, label_stride;
  ScoreKind kind;
};

// pydensecrf's unary_from_softmax clips probabilities here before the log;
// fastseg/reference/dense_crf.py's PROBABILITY_CLIP.
constexpr double kProbabilityClip = 1e-5;

}  // namespace fastseg
