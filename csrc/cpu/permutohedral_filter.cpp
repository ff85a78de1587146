// CPU kernels of fastseg::permutohedral_lattice (build a lattice once per
// batch of feature maps) and fastseg::permutohedral_apply (splat, blur,
// slice any number of value channels with it), and their registration for
// the CPU dispatch key.
//
// Building: the simplex of every pixel is found in parallel; the vertices
// are then numbered by one pass through a hash table per image, in pixel
// order, so the numbering (and every result) is the same on every run and
// thread count. Neighbouring pixels often share a simplex, and then the
// previous pixel's vertices are reused without hashing.
//
// Applying: every step is a gather, parallel without atomics or races. The
// splat reads, for each vertex, the corners that land on it (splat_order
// and vertex_start, a CSR list built with the lattice); the blur reads each
// vertex's two neighbours; the slice reads each pixel's d+1 corners. Values
// are [pixels, channels] with channels contiguous, so the inner loops run
// over contiguous channels and vectorise.
#include "../permutohedral_filter.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "../permutohedral.h"

namespace fastseg {
namespace {

using namespace permutohedral;

constexpr int64_t GRAIN_SIZE = 32768;  // scalar operations per task, as at::internal::GRAIN_SIZE

int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// Open addressing with linear probing from d-coordinate keys to vertex
// numbers 0, 1, ... in order of insertion; the keys are kept contiguously.
class VertexTable {
 public:
  VertexTable(int d, int64_t expected) : d_(d) {
    keys_.reserve(expected * d);
    rehash(std::max<uint64_t>(64, ceil_pow2(2 * expected)));
  }

  int32_t size() const { return static_cast<int32_t>(keys_.size() / d_); }
  const int32_t* key(int32_t vertex) const { return keys_.data() + static_cast<int64_t>(vertex) * d_; }

  int32_t find(const int32_t* key) const {
    for (uint64_t slot = hash_key(key, d_) & mask_;; slot = (slot + 1) & mask_) {
      const int32_t vertex = slots_[slot];
      if (vertex < 0 || same(vertex, key)) return vertex;
    }
  }

  int32_t find_or_insert(const int32_t* key) {
    uint64_t slot = hash_key(key, d_) & mask_;
    for (;; slot = (slot + 1) & mask_) {
      const int32_t vertex = slots_[slot];
      if (vertex < 0) break;
      if (same(vertex, key)) return vertex;
    }
    const int32_t vertex = size();
    keys_.insert(keys_.end(), key, key + d_);
    slots_[slot] = vertex;
    if (2 * static_cast<uint64_t>(size()) > slots_.size()) rehash(2 * slots_.size());  // load <= 1/2
    return vertex;
  }

 private:
  static uint64_t ceil_pow2(uint64_t n) {
    uint64_t p = 1;
    while (p < n) p <<= 1;
    return p;
  }

  bool same(int32_t vertex, const int32_t* key) const {
    return std::memcmp(this->key(vertex), key, d_ * sizeof(int32_t)) == 0;
  }

  void rehash(uint64_t capacity) {
    slots_.assign(capacity, -1);
    mask_ = capacity - 1;
    for (int32_t vertex = 0; vertex < size(); ++vertex) {
      uint64_t slot = hash_key(key(vertex), d_) & mask_;
      while (slots_[slot] >= 0) slot = (slot + 1) & mask_;
      slots_[slot] = vertex;
    }
  }

  int d_;
  std::vector<int32_t> keys_;   // [M, d]
  std::vector<int32_t> slots_;  // vertex number, or -1 where empty
  uint64_t mask_ = 0;
};

// One image's part of the lattice: its vertex count and the neighbours of
// its vertices, numbered from `first_vertex`, [d+1][M_image][2].
struct ImageLattice {
  int32_t vertices;
  std::vector<int32_t> neighbors;
};

template <typename scalar_t>
ImageLattice build_image(const scalar_t* features,  // [N, d]
                         int64_t pixels,
                         int d,
                         int32_t first_vertex,
                         int32_t* vertex_of,        // [N, d+1]
                         scalar_t* barycentric) {   // [N, d+1]
  const int corners = d + 1;
  // Simplex of every pixel: rem0 and rank side by side, [N, 2(d+1)].
  std::vector<int32_t> simplex(pixels * 2 * corners);
  at::parallel_for(0, pixels, grain_for(corners * corners), [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> elevated(corners), weights(corners + 1);
    for (int64_t p = begin; p < end; ++p) {
      int32_t* rem0 = simplex.data() + p * 2 * corners;
      lift(features + p * d, d, elevated.data());
      enclosing_simplex(elevated.data(), d, rem0, rem0 + corners, weights.data());
      std::copy(weights.begin(), weights.begin() + corners, barycentric + p * corners);
    }
  });

  VertexTable table(d, pixels);
  std::vector<int32_t> key(d);
  for (int64_t p = 0; p < pixels; ++p) {
    const int32_t* rem0 = simplex.data() + p * 2 * corners;
    int32_t* vertices = vertex_of + p * corners;
    if (p > 0 && std::equal(rem0, rem0 + 2 * corners, rem0 - 2 * corners)) {
      std::copy(vertices - corners, vertices, vertices);
      continue;
    }
    for (int r = 0; r < corners; ++r) {
      corner_key(rem0, rem0 + corners, d, r, key.data());
      vertices[r] = first_vertex + table.find_or_insert(key.data());
    }
  }

  const int32_t count = table.size();
  std::vector<int32_t> neighbors(static_cast<int64_t>(corners) * count * 2);
  at::parallel_for(0, count, grain_for(corners * 2 * d), [&](int64_t begin, int64_t end) {
    std::vector<int32_t> moved(d);
    for (int64_t v = begin; v < end; ++v) {
      for (int j = 0; j < corners; ++j) {
        for (int slot = 0; slot < 2; ++slot) {
          neighbor_key(table.key(static_cast<int32_t>(v)), d, j, slot == 0 ? 1 : -1, moved.data());
          const int32_t found = table.find(moved.data());
          neighbors[(j * count + v) * 2 + slot] = found < 0 ? -1 : first_vertex + found;
        }
      }
    }
  });
  return {count, std::move(neighbors)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_cpu(
    const at::Tensor& features) {
  constexpr const char* op = "fastseg::permutohedral_lattice";
  check_lattice_features(features, op);
  TORCH_CHECK(features.device().is_cpu(), op, ": expected CPU tensors, got ", features.device());
  const at::Tensor feats = features.contiguous();
  const int64_t batch = feats.size(0), pixels = feats.size(1);
  const int d = static_cast<int>(feats.size(2));
  const int corners = d + 1;

  at::Tensor vertex_of = at::empty({batch, pixels, corners}, feats.options().dtype(at::kInt));
  at::Tensor barycentric = at::empty({batch, pixels, corners}, feats.options());
  std::vector<ImageLattice> images;
  int64_t vertices = 0;
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), op, [&] {
    for (int64_t b = 0; b < batch; ++b) {
      images.push_back(build_image(feats.const_data_ptr<scalar_t>() + b * pixels * d, pixels, d,
                                   static_cast<int32_t>(vertices),
                                   vertex_of.mutable_data_ptr<int32_t>() + b * pixels * corners,
                                   barycentric.mutable_data_ptr<scalar_t>() + b * pixels * corners));
      vertices += images.back().vertices;
    }
  });

  at::Tensor neighbors = at::empty({corners, vertices, 2}, vertex_of.options());
  int32_t* neighbors_out = neighbors.mutable_data_ptr<int32_t>();
  int64_t first = 0;
  for (const ImageLattice& image : images) {
    for (int j = 0; j < corners; ++j) {
      std::copy_n(image.neighbors.data() + static_cast<int64_t>(j) * image.vertices * 2, image.vertices * 2,
                  neighbors_out + (j * vertices + first) * 2);
    }
    first += image.vertices;
  }

  // The corners of each vertex, in corner order (a counting sort: stable).
  const int64_t total = batch * pixels * corners;
  at::Tensor vertex_start = at::zeros({vertices + 1}, vertex_of.options());
  at::Tensor splat_order = at::empty({total}, vertex_of.options());
  const int32_t* owner = vertex_of.const_data_ptr<int32_t>();
  int32_t* start = vertex_start.mutable_data_ptr<int32_t>();
  for (int64_t e = 0; e < total; ++e) ++start[owner[e] + 1];
  for (int64_t v = 0; v < vertices; ++v) start[v + 1] += start[v];
  std::vector<int32_t> next(start, start + vertices);
  int32_t* order = splat_order.mutable_data_ptr<int32_t>();
  for (int64_t e = 0; e < total; ++e) order[next[owner[e]]++] = static_cast<int32_t>(e);
  return {vertex_of, barycentric, neighbors, splat_order, vertex_start};
}

template <typename scalar_t>
void splat(const scalar_t* values, const LatticeArgs& lattice, int64_t channels, scalar_t* lattice_values) {
  const int64_t corners = lattice.d() + 1;
  const int32_t* order = lattice.splat_order.const_data_ptr<int32_t>();
  const int32_t* start = lattice.vertex_start.const_data_ptr<int32_t>();
  const scalar_t* weight = lattice.barycentric.const_data_ptr<scalar_t>();
  const int64_t mean_corners = lattice.splat_order.numel() / std::max<int64_t>(1, lattice.vertices());
  at::parallel_for(0, lattice.vertices(), grain_for(mean_corners * channels), [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      scalar_t* acc = lattice_values + v * channels;
      std::fill_n(acc, channels, scalar_t(0));
      for (int32_t e = start[v]; e < start[v + 1]; ++e) {
        const int32_t corner = order[e];
        const scalar_t w = weight[corner];
        const scalar_t* src = values + (corner / corners) * channels;
        for (int64_t k = 0; k < channels; ++k) acc[k] += w * src[k];
      }
    }
  });
}

// [1/4 1/2 1/4] along one direction; row M of both buffers is the zero
// that absent neighbours (-1) read.
template <typename scalar_t>
void blur(const scalar_t* in, const int32_t* neighbors, int64_t vertices, int64_t channels, scalar_t* out) {
  at::parallel_for(0, vertices, grain_for(3 * channels), [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int32_t before = neighbors[2 * v], after = neighbors[2 * v + 1];
      const scalar_t* a = in + (before < 0 ? vertices : before) * channels;
      const scalar_t* b = in + (after < 0 ? vertices : after) * channels;
      const scalar_t* self = in + v * channels;
      scalar_t* dst = out + v * channels;
      for (int64_t k = 0; k < channels; ++k) dst[k] = scalar_t(0.5) * self[k] + scalar_t(0.25) * (a[k] + b[k]);
    }
  });
}

template <typename scalar_t>
void slice(const scalar_t* lattice_values, const LatticeArgs& lattice, int64_t channels, scalar_t scale,
           scalar_t* out) {
  const int64_t corners = lattice.d() + 1;
  const int64_t pixels = lattice.vertex_of.size(0) * lattice.vertex_of.size(1);
  const int32_t* vertex_of = lattice.vertex_of.const_data_ptr<int32_t>();
  const scalar_t* weight = lattice.barycentric.const_data_ptr<scalar_t>();
  at::parallel_for(0, pixels, grain_for(corners * channels), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* dst = out + p * channels;
      std::fill_n(dst, channels, scalar_t(0));
      for (int64_t r = 0; r < corners; ++r) {
        const scalar_t w = scale * weight[p * corners + r];
        const scalar_t* src = lattice_values + static_cast<int64_t>(vertex_of[p * corners + r]) * channels;
        for (int64_t k = 0; k < channels; ++k) dst[k] += w * src[k];
      }
    }
  });
}

at::Tensor permutohedral_apply_cpu(const at::Tensor& values, const at::Tensor& vertex_of,
                                   const at::Tensor& barycentric, const at::Tensor& neighbors,
                                   const at::Tensor& splat_order, const at::Tensor& vertex_start, bool reverse) {
  constexpr const char* op = "fastseg::permutohedral_apply";
  const LatticeArgs lattice{vertex_of.contiguous(), barycentric.contiguous(), neighbors.contiguous(),
                            splat_order.contiguous(), vertex_start.contiguous()};
  check_apply(values, lattice, op);
  TORCH_CHECK(values.device().is_cpu(), op, ": expected CPU tensors, got ", values.device());
  const at::Tensor in = values.contiguous();
  at::Tensor out = at::empty_like(in);
  const int64_t channels = in.size(2), vertices = lattice.vertices(), d = lattice.d();
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(in.scalar_type(), op, [&] {
    // Two buffers that the blur swaps, each with the zero row M at the end.
    at::Tensor buffers = at::zeros({2, vertices + 1, channels}, in.options());
    scalar_t* current = buffers[0].mutable_data_ptr<scalar_t>();
    scalar_t* spare = buffers[1].mutable_data_ptr<scalar_t>();
    splat(in.const_data_ptr<scalar_t>(), lattice, channels, current);
    const int32_t* neighbor_data = lattice.neighbors.const_data_ptr<int32_t>();
    for (int64_t step = 0; step <= d; ++step) {
      const int64_t direction = reverse ? d - step : step;
      blur(current, neighbor_data + direction * vertices * 2, vertices, channels, spare);
      std::swap(current, spare);
    }
    slice(current, lattice, channels, static_cast<scalar_t>(lattice_scale(static_cast<int>(d))),
          out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg_C, CPU, m) {
  m.impl("permutohedral_lattice", &permutohedral_lattice_cpu);
  m.impl("permutohedral_apply", &permutohedral_apply_cpu);
}

}  // namespace fastseg
