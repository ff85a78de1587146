// CPU kernel of fastseg::dense_crf_mean_field: every mean-field iteration of
// the dense CRF (Kraehenbuehl & Koltun 2011, algorithm 1; the iteration of
// fastseg/reference/dense_crf.py's mean_field) in one op, for inference:
// fastseg/ops/dense_crf.py calls it where no gradient is wanted and keeps the
// differentiable composition of permutohedral_apply and PyTorch ops otherwise.
//
// Why one op: through PyTorch an iteration makes a dozen passes over [B, N, L]
// tensors, each freshly allocated, and the filter's loops run over a channel
// count known only at run time. Here the buffers are allocated once per call,
// the labels are padded to whole SIMD vectors, the unary and Q_0 are made
// from the scores (logits, probabilities or the unary, in their own layout)
// in one pass, the normalisation is computed once (a one-channel filter, in
// scalars), and an iteration is: splat Q onto every kernel's lattice (a
// gather in splat order, from lists of pixels and weights made once), blur
// along the d+1 directions and fold each kernel's compatibility into its last
// blur (a Potts weight) or into one label mix on the lattice (a matrix); then
// a single pass over the pixels slices every kernel's messages, adds the
// unary and takes the softmax, writing Q in place (after the last iteration
// also label-major into the result, a tile of pixels at a time). Each step is
// one parallel region for all kernels, its work handed out in blocks as
// threads come free; the blur keeps each kernel on one thread instead where
// that balances the threads (see blur_owners()).
//
// Deterministic whatever the thread count: every sum is a gather in a fixed
// order. The results equal the unfused path's up to float rounding (the
// compatibility multiplies before the slice, not after).
//
// The loops live in dense_crf_kernels.h, compiled twice: for 16-byte vectors
// (any CPU) and, with GCC on x86-64, for AVX2 with FMA; the second runs where
// the CPU has them. The two round differently (FMA, lane counts), each the
// same on every run.
#include "../dense_crf.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../permutohedral.h"
#include "huge_pages.h"
#include "parallel.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FASTSEG_AVX2_KERNELS 1
#else
#define FASTSEG_AVX2_KERNELS 0
#endif

namespace fastseg {
namespace {

// Every row the kernels read or write is a whole number of these.
constexpr int kMaxVectorBytes = 32;

// How many corners ahead the splat prefetches rows (see splat()); the splat
// lists carry kSplatLookahead extra entries so that the look-ahead stays in
// bounds.
constexpr int kSplatLookahead = 32;

// Pixels per tile where rows and label planes are transposed (see
// for_each_tile() in dense_crf_kernels.h).
constexpr int64_t kTilePixels = 64;

// One CRF kernel's lattice in the layout of the iteration.
template <typename scalar_t>
struct KernelLattice {
  int corners;                    // d+1
  int64_t pixels;                 // P = B*N
  int64_t vertices;               // M
  const int32_t* vertex_of;       // [P, corners]
  const scalar_t* slice_weight;   // [P, corners]: barycentric weights times the pixel's norm
  const int32_t* neighbors;       // [corners, M, 2]
  const int32_t* vertex_start;    // [M+1]: a vertex's corners in the splat lists
  const int32_t* splat_pixel;     // [P*corners + kSplatLookahead]: each corner's pixel, in splat order
  const scalar_t* splat_weight;   // [P*corners]: its weight times its pixel's norm, in splat order
  scalar_t* values;               // [M+1, width]; row M stays zero (absent neighbours)
  scalar_t* spare;                // [M+1, width], the same
  scalar_t potts_factor;          // -w * lattice_scale(d) for a Potts weight w
  const scalar_t* matrix;         // [labels, width]: lattice_scale(d) * compat; nullptr for Potts
};

template <typename scalar_t>
struct MeanFieldArgs {
  MeanFieldScores<scalar_t> scores;
  scalar_t* unary;        // [P, width], +inf in the padding: made from the scores by the first pass
  const scalar_t* mask;   // [width]: 1 for a label, 0 for padding
  scalar_t* result;       // [B, labels, N]
  int64_t pixels;         // P = B*N
  int64_t image_pixels;   // N
  int labels;
  int width;
  int64_t iterations;
  std::vector<KernelLattice<scalar_t>> kernels;
};



namespace portable {
constexpr int kVectorBytes = 16;
#include "dense_crf_kernels.h"
}  // namespace portable

#if FASTSEG_AVX2_KERNELS
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
constexpr int kVectorBytes = 32;
#include "dense_crf_kernels.h"
}  // namespace avx2
#pragma GCC pop_options

// Where the CPU has AVX2 and FMA, unless ATEN_CPU_CAPABILITY=default asks
// for the baseline, as it does of PyTorch's own kernels.
bool use_avx2() {
  static const bool use = [] {
    const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
    if (capability != nullptr && std::string_view(capability) == "default") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return use;
}
#endif

template <typename scalar_t>
void run_mean_field(const MeanFieldArgs<scalar_t>& args, scalar_t* q) {
#if FASTSEG_AVX2_KERNELS
  if (use_avx2()) return avx2::mean_field(args, q);
#endif
  portable::mean_field(args, q);
}

// A lattice in the layout of the iteration: the splat lists (each corner's
// pixel and weight, in splat order, gathered once per call instead of once
// per iteration) and the slice weights, each weight times its pixel's
// n = (K 1)^(-1/2), the symmetric normalisation (see normalization in
// fastseg/reference/dense_crf.py; norm gets n). The filter of ones has one
// channel, so it is computed here, in scalars, with the arithmetic of
// permutohedral_apply (splatting ones sums each vertex's weights).
template <typename scalar_t>
void normalized_lists(const LatticeArgs& lattice, int32_t* splat_pixel, scalar_t* splat_weight,
                      scalar_t* slice_weight, scalar_t* norm) {
  const int corners = static_cast<int>(lattice.d() + 1);
  const int64_t vertices = lattice.vertices(), pixels = lattice.vertex_of.size(0) * lattice.vertex_of.size(1);
  const int32_t* start = lattice.vertex_start.const_data_ptr<int32_t>();
  const int32_t* order = lattice.splat_order.const_data_ptr<int32_t>();
  const int32_t* vertex_of = lattice.vertex_of.const_data_ptr<int32_t>();
  const int32_t* neighbors = lattice.neighbors.const_data_ptr<int32_t>();
  const scalar_t* barycentric = lattice.barycentric.const_data_ptr<scalar_t>();
  const int64_t total = pixels * corners, mean_corners = total / std::max<int64_t>(1, vertices);
  // The pixel of corner c is c / corners: (c + 1/2) / corners, a double, is at
  // least 1/(2 corners) away from an integer, far beyond its rounding error,
  // so truncating it is exact, and a multiplication is cheaper than a
  // division on this path of a million corners.
  const double per_corner = 1.0 / corners;
  // The weights are gathered in splat order, from all over the image: the
  // one kLookahead corners on is fetched early (as in splat()).
  constexpr int kLookahead = 16;
  std::vector<scalar_t> current(vertices + 1, 0), spare(vertices + 1, 0);  // row M: the absent neighbour's zero
  parallel_blocks(vertices, mean_corners, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      scalar_t sum = 0;
      for (int32_t e = start[v], stop = start[v + 1]; e < stop; ++e) {
        __builtin_prefetch(barycentric + order[std::min<int64_t>(e + kLookahead, total - 1)]);
        splat_pixel[e] = static_cast<int32_t>((order[e] + 0.5) * per_corner);
        splat_weight[e] = barycentric[order[e]];
        sum += splat_weight[e];
      }
      current[v] = sum;
    }
  });
  std::fill_n(splat_pixel + total, kSplatLookahead, 0);
  for (int j = 0; j < corners; ++j) {
    const int32_t* pairs = neighbors + j * vertices * 2;
    at::parallel_for(0, vertices, grain_for(3), [&](int64_t begin, int64_t end) {
      for (int64_t v = begin; v < end; ++v) {
        const int32_t before = pairs[2 * v], after = pairs[2 * v + 1];
        spare[v] = scalar_t(0.5) * current[v] +
                   scalar_t(0.25) * (current[before < 0 ? vertices : before] + current[after < 0 ? vertices : after]);
      }
    });
    std::swap(current, spare);
  }
  const scalar_t scale = static_cast<scalar_t>(permutohedral::lattice_scale(corners - 1));
  at::parallel_for(0, pixels, grain_for(2 * corners), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t filtered = 0;
      for (int r = 0; r < corners; ++r) {
        filtered += scale * barycentric[p * corners + r] * current[vertex_of[p * corners + r]];
      }
      norm[p] = 1 / std::sqrt(filtered + scalar_t(1e-20));
      for (int r = 0; r < corners; ++r) slice_weight[p * corners + r] = barycentric[p * corners + r] * norm[p];
    }
  });
  at::parallel_for(0, total, grain_for(2), [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) splat_weight[e] *= norm[splat_pixel[e]];
  });
}

// Scratch memory kept from one call to the next. Fresh memory costs a page
// fault per 4 KiB on first touch (about a microsecond each), and glibc gives
// large blocks back to the system when they are freed: a pipeline refining
// VOC-size images one after another would fault in the ~60 MB of scratch on
// every call, several percent of its time. One block is kept per process,
// of at most kKeptScratchBytes; a call that finds it taken (another
// thread's call) or too small allocates its own, and the larger is kept.
constexpr int64_t kKeptScratchBytes = int64_t(128) << 20;
constexpr std::align_val_t kScratchAlignment{64};  // a cache line

struct ScratchDeleter {
  void operator()(std::byte* p) const { ::operator delete[](p, kScratchAlignment); }
};
struct ScratchBlock {
  std::unique_ptr<std::byte[], ScratchDeleter> data;
  int64_t bytes = 0;
};

class ScratchPool {
 public:
  ScratchBlock take(int64_t bytes) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (kept_.bytes >= bytes) return std::exchange(kept_, ScratchBlock{});
    }
    // Not advised to take huge pages (huge_pages.h), unlike the lattices and
    // the result: right after a pydensecrf call, a Cityscapes-size call's
    // ~650 MB of scratch so advised made the op at 5 iterations 1419 ms
    // instead of 926 (medians of 8 rounds, interleaved in one process): the
    // kernel compacted memory into huge pages at each fault.
    return {std::unique_ptr<std::byte[], ScratchDeleter>(new (kScratchAlignment) std::byte[bytes]), bytes};
  }

  void give_back(ScratchBlock block) {
    if (block.bytes > kKeptScratchBytes) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    if (block.bytes > kept_.bytes) kept_ = std::move(block);
  }

 private:
  std::mutex mutex_;
  ScratchBlock kept_;
};

ScratchPool& scratch_pool() {
  static ScratchPool* pool = new ScratchPool;  // never destroyed: no order to get wrong at exit
  return *pool;
}

// Hands out pieces of a scratch block, each starting on a cache line; with
// no block, it only adds up the bytes they need.
class Carver {
 public:
  explicit Carver(std::byte* base = nullptr) : base_(base) {}

  template <typename T>
  T* take(int64_t count) {
    const int64_t at = used_;
    used_ += (count * static_cast<int64_t>(sizeof(T)) + 63) / 64 * 64;
    return base_ == nullptr ? nullptr : reinterpret_cast<T*>(base_ + at);
  }
  int64_t used() const { return used_; }

 private:
  std::byte* base_;
  int64_t used_ = 0;
};

template <typename scalar_t>
struct KernelScratch {
  int32_t* splat_pixel;    // [P*corners + kSplatLookahead]
  scalar_t* splat_weight;  // [P*corners]
  scalar_t* slice_weight;  // [P*corners]
  scalar_t* norm;          // [P]
  scalar_t* values;        // [M+1, width]
  scalar_t* spare;         // [M+1, width]
};

template <typename scalar_t>
struct Scratch {
  scalar_t* unary;  // [P, width]
  scalar_t* q;      // [P, width]
  std::vector<KernelScratch<scalar_t>> kernels;
};

template <typename scalar_t>
Scratch<scalar_t> carve_scratch(Carver& carver, int64_t pixels, int width, const std::vector<LatticeArgs>& lattices) {
  Scratch<scalar_t> scratch{carver.take<scalar_t>(pixels * width), carver.take<scalar_t>(pixels * width), {}};
  for (const LatticeArgs& lattice : lattices) {
    const int64_t corners = lattice.d() + 1, rows = lattice.vertices() + 1;
    scratch.kernels.push_back({carver.take<int32_t>(pixels * corners + kSplatLookahead),
                               carver.take<scalar_t>(pixels * corners), carver.take<scalar_t>(pixels * corners),
                               carver.take<scalar_t>(pixels), carver.take<scalar_t>(rows * width),
                               carver.take<scalar_t>(rows * width)});
  }
  return scratch;
}

at::Tensor dense_crf_mean_field_cpu(const at::Tensor& scores, c10::string_view scores_are, at::TensorList vertex_of, at::TensorList barycentric,
                                    at::TensorList neighbors, at::TensorList splat_order,
                                    at::TensorList vertex_start, at::TensorList compat, int64_t iterations) {
  constexpr const char* op = "fastseg::dense_crf_mean_field";
  const std::vector<LatticeArgs> lattices =
      mean_field_lattices(vertex_of, barycentric, neighbors, splat_order, vertex_start, op);
  const ScoreKind kind = score_kind(std::string_view(scores_are.data(), scores_are.size()), op);
  check_mean_field(scores, lattices, compat, iterations, c10::DeviceType::CPU, op);
  const int64_t batch = scores.size(0), image_pixels = scores.size(1), pixels = batch * image_pixels;
  const int labels = static_cast<int>(scores.size(2));
  // Q is written label-major, [B, L, N], the layout of the logits it is
  // turned back into, and returned as its [B, N, L] view.
  at::Tensor result = empty_in_huge_pages({batch, labels, image_pixels}, scores.options());
  if (result.numel() == 0) return result.transpose(1, 2);

  AT_DISPATCH_FLOATING_TYPES(scores.scalar_type(), op, [&] {
    constexpr int per_vector = kMaxVectorBytes / sizeof(scalar_t);
    const int width = (labels + per_vector - 1) / per_vector * per_vector;
    const at::TensorOptions options = scores.options();
    Carver sizing;
    carve_scratch<scalar_t>(sizing, pixels, width, lattices);
    ScratchBlock block = scratch_pool().take(sizing.used());
    Carver carver(block.data.get());
    const Scratch<scalar_t> scratch = carve_scratch<scalar_t>(carver, pixels, width, lattices);
    at::Tensor mask = at::zeros({width}, options);
    mask.narrow(0, 0, labels).fill_(1);

    MeanFieldArgs<scalar_t> args{mean_field_scores<scalar_t>(scores, kind),
                                 scratch.unary,
                                 mask.const_data_ptr<scalar_t>(),
                                 result.mutable_data_ptr<scalar_t>(),
                                 pixels, image_pixels, labels, width, iterations, {}};
    std::vector<at::Tensor> matrices;  // keeps the kernels' matrices alive
    for (size_t k = 0; k < lattices.size(); ++k) {
      const LatticeArgs& lattice = lattices[k];
      const KernelScratch<scalar_t>& buffers = scratch.kernels[k];
      const int corners = static_cast<int>(lattice.d() + 1);
      const int64_t vertices = lattice.vertices();
      normalized_lists(lattice, buffers.splat_pixel, buffers.splat_weight, buffers.slice_weight, buffers.norm);
      std::fill_n(buffers.values + vertices * width, width, scalar_t(0));
      std::fill_n(buffers.spare + vertices * width, width, scalar_t(0));
      const scalar_t scale = static_cast<scalar_t>(permutohedral::lattice_scale(corners - 1));
      at::Tensor matrix;
      if (compat[k].dim() == 2) {
        matrix = at::zeros({labels, width}, options);
        matrix.narrow(1, 0, labels).copy_(compat[k] * scale);
        matrices.push_back(matrix);
      }
      args.kernels.push_back({corners, pixels, vertices, lattice.vertex_of.const_data_ptr<int32_t>(),
                              buffers.slice_weight, lattice.neighbors.const_data_ptr<int32_t>(),
                              lattice.vertex_start.const_data_ptr<int32_t>(), buffers.splat_pixel,
                              buffers.splat_weight, buffers.values, buffers.spare,
                              compat[k].dim() == 0 ? -compat[k].item<scalar_t>() * scale : scalar_t(0),
                              matrix.defined() ? matrix.const_data_ptr<scalar_t>() : nullptr});
    }
    run_mean_field(args, scratch.q);
    scratch_pool().give_back(std::move(block));
  });
  return result.transpose(1, 2);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg_C, CPU, m) {
  m.impl("dense_crf_mean_field", &dense_crf_mean_field_cpu);
}

}  // namespace fastseg
