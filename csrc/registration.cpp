// The schemas of the fastseg_C operators, defined once for every backend, and
// the Python module fastseg._C, which tells the loader which sources it was
// built from and whether it holds the CUDA kernels.
//
// The kernels register themselves per dispatch key (csrc/cpu, csrc/cuda);
// autograd and the fake (meta) functions are registered in Python.
#include <torch/extension.h>

#ifndef FASTSEG_SOURCE_HASH
#error "FASTSEG_SOURCE_HASH is undefined: build with the flags from fastseg/_sources.py"
#endif

#define FASTSEG_STRINGIFY_(x) #x
#define FASTSEG_STRINGIFY(x) FASTSEG_STRINGIFY_(x)

namespace {

// The build passes the hash as a bare token (-DFASTSEG_SOURCE_HASH=0123abcd...)
// so that no shell quoting is involved. The tag prefix lets the loader find the
// hash in the binary without importing it (fastseg/_extension.py).
constexpr char kHashTagPrefix[] = "fastseg-source-hash:";
constexpr char kHashTag[] = "fastseg-source-hash:" FASTSEG_STRINGIFY(FASTSEG_SOURCE_HASH);

}  // namespace

TORCH_LIBRARY(fastseg_C, m) {
  // `invalid` is int32 [1]: nonzero iff some index names no output element.
  m.def(
      "max_unpool2d(Tensor input, Tensor indices, int[2] output_size, int[2] kernel_size, "
      "int[2] stride, int[2] padding, int[2] dilation) -> (Tensor output, Tensor invalid)");
  m.def(
      "max_unpool2d_backward(Tensor grad_output, Tensor indices, int[2] kernel_size, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
  // The lattice of a batch of feature maps [B, N, d]; its format is
  // documented in fastseg/ops/permutohedral_filter.py.
  m.def(
      "permutohedral_lattice(Tensor features) -> (Tensor vertex_of, Tensor barycentric, Tensor neighbors, "
      "Tensor splat_order, Tensor vertex_start)");
  m.def(
      "permutohedral_apply(Tensor values, Tensor vertex_of, Tensor barycentric, Tensor neighbors, "
      "Tensor splat_order, Tensor vertex_start, bool reverse) -> Tensor");
  // Mean-field inference of a dense CRF (no gradient): scores [B, N, L] (any
  // strides) that are the unary, logits or probabilities (scores_are), one
  // lattice per kernel (as permutohedral_lattice builds it; the op normalises
  // it) and its compatibility, a 0-dim Potts weight or a symmetric [L, L]
  // matrix -> Q [B, N, L], a view of [B, L, N] memory.
  // See fastseg/ops/dense_crf.py.
  m.def(
      "dense_crf_mean_field(Tensor scores, str scores_are, Tensor[] vertex_of, Tensor[] barycentric, Tensor[] neighbors, "
      "Tensor[] splat_order, Tensor[] vertex_start, Tensor[] compat, int iterations) -> Tensor");
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.attr("source_hash") = pybind11::str(kHashTag + sizeof(kHashTagPrefix) - 1);
#ifdef FASTSEG_WITH_CUDA
  m.attr("with_cuda") = pybind11::bool_(true);
#else
  m.attr("with_cuda") = pybind11::bool_(false);
#endif
}
