// What the CPU and CUDA kernels of fastseg_C::dense_crf_mean_field (the
// dense CRF's mean-field iterations in one op; see fastseg/ops/dense_crf.py)
// share. Plain C++ with no torch headers, so that .cu files can include it.
#pragma once

namespace fastseg {

// What the op's scores are: the unary itself, logits, or probabilities.
enum class ScoreKind { kUnary, kLogits, kProbabilities };

// pydensecrf's unary_from_softmax clips probabilities here before the log;
// fastseg/reference/dense_crf.py's PROBABILITY_CLIP.
constexpr double kProbabilityClip = 1e-5;

}  // namespace fastseg
