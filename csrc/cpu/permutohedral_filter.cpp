// CPU kernels of fastseg::permutohedral_lattice (build a lattice once per
// batch of feature maps) and fastseg::permutohedral_apply (splat, blur,
// slice any number of value channels with it), and their registration for
// the CPU dispatch key.
//
// Building, per image: each thread takes a chunk of pixels, finds their
// simplices (64 pixels at a time, in loops the compiler vectorises) and
// numbers their vertices in a hash table of its own; the chunks' tables are
// then merged in pixel order, so vertices are numbered in order of first
// appearance in pixel order, the same numbering on every run and thread
// count. Neighbouring pixels often share a simplex, and then the previous
// pixel's vertices are reused without hashing. The neighbours of every
// vertex and the corners of every vertex (a counting sort) follow in
// parallel. The common feature counts (d = 2..5) are compile-time constants.
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
#include "huge_pages.h"
#include "parallel.h"

namespace fastseg {
namespace {

using namespace permutohedral;

// The feature count d as a compile-time constant for the common small values
// (2: positions; 3: positions and grey, or a volume; 4: a volume and grey;
// 5: positions and RGB), so that the per-pixel loops over coordinates unroll
// and the simplex and hashing cost a third; any other d at run time.
template <int D>
struct FixedDim {
  constexpr operator int() const { return D; }
};
struct AnyDim {
  int d;
  operator int() const { return d; }
};

template <typename Fn>
void with_dim(int d, const Fn& fn) {
  switch (d) {
    case 2: return fn(FixedDim<2>{});
    case 3: return fn(FixedDim<3>{});
    case 4: return fn(FixedDim<4>{});
    case 5: return fn(FixedDim<5>{});
    default: return fn(AnyDim{d});
  }
}

// Open addressing with linear probing from d-coordinate keys to vertex
// numbers 0, 1, ... in order of insertion; the keys are kept contiguously.
// A slot holds the vertex and the high half of its key's hash, so probing
// past other keys compares the hashes without fetching those keys. The table
// starts small and doubles: a photograph has far fewer vertices than pixels,
// and a table sized for the pixels would not stay in cache.
template <typename Dim>
class VertexTable {
 public:
  explicit VertexTable(Dim d) : d_(d) { rehash(1024); }

  int32_t size() const { return static_cast<int32_t>(keys_.size() / d_); }
  const int32_t* key(int32_t vertex) const { return keys_.data() + static_cast<int64_t>(vertex) * d_; }

  // The vertex of `key`, -1 if absent; hash: hash_key(key, d).
  int32_t find(const int32_t* key, uint64_t hash) const { return slots_[probe(key, hash)].vertex; }

  // Where a lookup of a key with this hash will start: fetching it early
  // lets the cache misses of several lookups overlap.
  void prefetch(uint64_t hash) const { __builtin_prefetch(&slots_[hash & mask_]); }

  // hash: hash_key(key, d)
  int32_t find_or_insert(const int32_t* key, uint64_t hash) {
    Slot& slot = slots_[probe(key, hash)];
    if (slot.vertex >= 0) return slot.vertex;
    const int32_t vertex = size();
    slot = {vertex, static_cast<uint32_t>(hash >> 32)};
    keys_.insert(keys_.end(), key, key + d_);
    if (2 * static_cast<uint64_t>(size()) > slots_.size()) rehash(2 * slots_.size());  // load <= 1/2
    return vertex;
  }

 private:
  struct Slot {
    int32_t vertex;  // -1 where empty
    uint32_t tag;    // hash >> 32 of the vertex's key
  };

  // The slot holding `key`, or the empty slot where it would go.
  uint64_t probe(const int32_t* key, uint64_t hash) const {
    const uint32_t tag = static_cast<uint32_t>(hash >> 32);
    for (uint64_t slot = hash & mask_;; slot = (slot + 1) & mask_) {
      const Slot& s = slots_[slot];
      if (s.vertex < 0 || (s.tag == tag && same(s.vertex, key))) return slot;
    }
  }

  // A plain loop: the keys are a few ints, too short for a memcmp call to pay.
  bool same(int32_t vertex, const int32_t* key) const {
    const int32_t* stored = this->key(vertex);
    for (int i = 0; i < d_; ++i) {
      if (stored[i] != key[i]) return false;
    }
    return true;
  }

  void rehash(uint64_t capacity) {
    slots_.assign(capacity, Slot{-1, 0});
    mask_ = capacity - 1;
    for (int32_t vertex = 0; vertex < size(); ++vertex) {
      const uint64_t hash = hash_key(key(vertex), d_);
      uint64_t slot = hash & mask_;
      while (slots_[slot].vertex >= 0) slot = (slot + 1) & mask_;
      slots_[slot] = {vertex, static_cast<uint32_t>(hash >> 32)};
    }
  }

  Dim d_;
  std::vector<int32_t> keys_;  // [M, d]
  std::vector<Slot> slots_;
  uint64_t mask_ = 0;
};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Compiled twice, for baseline x86-64 and for AVX2; the loader picks one.
#define FASTSEG_WITH_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define FASTSEG_WITH_AVX2_CLONE
#endif

constexpr int64_t kSimplexBlock = 64;  // pixels per call of find_simplices

// The simplices of count <= kSimplexBlock pixels: rem0 and rank of each side
// by side in `simplex` [count, 2(d+1)], its weights in `barycentric`
// [count, d+1]. This is lift and enclosing_simplex (permutohedral.h) for a
// block of pixels at once, each step a loop over the block's pixels that the
// compiler vectorises, with the same arithmetic in the same order, so the
// same results bit for bit; only the barycentric scatter, which has no
// vector form, becomes a select per slot: a slot gets exactly one residual
// added and one subtracted, and that sum does not depend on their order.
template <typename scalar_t, int D>
FASTSEG_WITH_AVX2_CLONE void find_simplices(const scalar_t* features, int64_t count, FixedDim<D>, int32_t* simplex,
                                            scalar_t* barycentric) {
  constexpr int C = D + 1, B = kSimplexBlock;
  const scalar_t step = C;
  scalar_t scale[D], feature[D][B], elevated[C][B], suffix[B], residual[C][B], by_slot[C][B];
  for (int k = 0; k < D; ++k) scale[k] = lift_scale<scalar_t>(D, k);
  int32_t rem0[C][B], rank[C][B], slot[C][B], excess[B];
  for (int j = 0; j < B; ++j) {
    for (int k = 0; k < D; ++k) feature[k][j] = j < count ? features[j * D + k] : scalar_t(0);
    suffix[j] = 0;
    excess[j] = 0;
  }
  for (int k = D; k >= 1; --k) {  // lift
    for (int j = 0; j < B; ++j) {
      const scalar_t scaled = feature[k - 1][j] * scale[k - 1];
      elevated[k][j] = suffix[j] - k * scaled;
      suffix[j] += scaled;
    }
  }
  for (int j = 0; j < B; ++j) elevated[0][j] = suffix[j];
  for (int i = 0; i < C; ++i) {  // the nearest remainder-0 point
    for (int j = 0; j < B; ++j) {
      const scalar_t scaled = elevated[i][j] / step;
      int32_t down = static_cast<int32_t>(scaled);
      down -= scaled < static_cast<scalar_t>(down);
      const int32_t nearest = down + ((down + 1) * step - elevated[i][j] < elevated[i][j] - down * step);
      rem0[i][j] = nearest * C;
      excess[j] += nearest;
      rank[i][j] = 0;
    }
  }
  for (int i = 0; i < D; ++i) {  // ranks
    for (int k = i + 1; k < C; ++k) {
      for (int j = 0; j < B; ++j) {
        const int32_t below = elevated[i][j] - rem0[i][j] < elevated[k][j] - rem0[k][j];
        rank[i][j] += below;
        rank[k][j] += 1 - below;
      }
    }
  }
  for (int i = 0; i < C; ++i) {  // back onto the hyperplane
    for (int j = 0; j < B; ++j) {
      const int32_t shifted = rank[i][j] + excess[j];
      const int32_t wrap = static_cast<int32_t>(shifted < 0) - static_cast<int32_t>(shifted > D);
      rank[i][j] = shifted + wrap * C;
      rem0[i][j] += wrap * C;
      residual[i][j] = (elevated[i][j] - rem0[i][j]) / step;
      slot[i][j] = D - rank[i][j];
    }
  }
  for (int k = 0; k < C; ++k) {  // by_slot[k]: the residual whose slot d - rank is k
    for (int j = 0; j < B; ++j) by_slot[k][j] = 0;
    for (int i = 0; i < C; ++i) {
      for (int j = 0; j < B; ++j) by_slot[k][j] = slot[i][j] == k ? residual[i][j] : by_slot[k][j];
    }
  }
  for (int j = 0; j < count; ++j) {
    for (int i = 0; i < C; ++i) {
      simplex[j * 2 * C + i] = rem0[i][j];
      simplex[j * 2 * C + C + i] = rank[i][j];
    }
    barycentric[j * C] = by_slot[0][j] + (1 - by_slot[D][j]);
    for (int k = 1; k < C; ++k) barycentric[j * C + k] = by_slot[k][j] - by_slot[k - 1][j];
  }
}

// The same for any d, pixel by pixel.
template <typename scalar_t>
void find_simplices(const scalar_t* features, int64_t count, AnyDim d, int32_t* simplex, scalar_t* barycentric) {
  const int corners = d + 1;
  std::vector<scalar_t> elevated(corners), weights(corners + 1);
  for (int64_t j = 0; j < count; ++j) {
    lift(features + j * d, d, elevated.data());
    enclosing_simplex(elevated.data(), d, simplex + j * 2 * corners, simplex + j * 2 * corners + corners,
                      weights.data());
    std::copy_n(weights.begin(), corners, barycentric + j * corners);
  }
}

// Recently numbered simplices and their vertices, direct-mapped by the
// hash of the simplex. A photograph's pixel shares its simplex with the
// previous pixel a quarter to a third of the time, but with one of the last
// thousand (the row above, say) about two thirds of the time; finding it here
// is one hash and one compare instead of d+1 lookups in the vertex table.
// Only a shortcut: a vertex has the same number either way.
template <typename Dim>
class SimplexCache {
 public:
  explicit SimplexCache(Dim d) : d_(d), entries_(kEntries * entry_size(), -1) {}  // -1: no rem0 or rank

  // The entry for a simplex (rem0 then rank, 2(d+1) ints): the simplex it
  // holds, then that simplex's d+1 vertices.
  int32_t* entry(const int32_t* simplex) {
    return &entries_[(hash_key(simplex, 2 * (d_ + 1)) & (kEntries - 1)) * entry_size()];
  }

 private:
  static constexpr int64_t kEntries = 4096;  // fastest of 256 to 65536 on a VOC photograph
  int64_t entry_size() const { return 3 * (d_ + 1); }

  Dim d_;
  std::vector<int32_t> entries_;
};

// Finds the simplex of pixels [begin, end) and numbers their corners' vertices
// in `table` (vertex_of gets the table's numbers). Neighbouring pixels often
// share a simplex, and then the vertices are reused without hashing: the
// previous pixel's, or those in the cache of recent simplices.
template <typename scalar_t, typename Dim>
void number_vertices(const scalar_t* features,  // [N, d]
                     int64_t begin,
                     int64_t end,
                     Dim d,
                     VertexTable<Dim>& table,
                     int32_t* vertex_of,         // [N, d+1]
                     scalar_t* barycentric) {    // [N, d+1]
  const int corners = d + 1;
  // rem0 then rank of each pixel of a block, and of the last pixel hashed.
  std::vector<int32_t> simplices(kSimplexBlock * 2 * corners), previous(2 * corners, 0), keys(corners * d);
  std::vector<uint64_t> hashes(corners);
  SimplexCache<Dim> cache(d);
  for (int64_t first = begin; first < end; first += kSimplexBlock) {
    const int64_t count = std::min(kSimplexBlock, end - first);
    find_simplices(features + first * d, count, d, simplices.data(), barycentric + first * corners);
    for (int64_t p = first; p < first + count; ++p) {
      const int32_t* simplex = &simplices[(p - first) * 2 * corners];
      int32_t* vertices = vertex_of + p * corners;
      if (p > begin && std::equal(simplex, simplex + 2 * corners, previous.begin())) {
        std::copy(vertices - corners, vertices, vertices);
        continue;
      }
      std::copy(simplex, simplex + 2 * corners, previous.begin());
      int32_t* cached = cache.entry(simplex);
      if (std::equal(simplex, simplex + 2 * corners, cached)) {
        std::copy(cached + 2 * corners, cached + 3 * corners, vertices);
        continue;
      }
      // Every corner's key and hash first, then the lookups: their cache
      // misses overlap instead of queueing.
      for (int r = 0; r < corners; ++r) {
        corner_key(simplex, simplex + corners, d, r, &keys[r * d]);
        hashes[r] = hash_key(&keys[r * d], d);
        table.prefetch(hashes[r]);
      }
      for (int r = 0; r < corners; ++r) vertices[r] = table.find_or_insert(&keys[r * d], hashes[r]);
      std::copy(simplex, simplex + 2 * corners, cached);
      std::copy(vertices, vertices + corners, cached + 2 * corners);
    }
  }
}

// One image's part of the lattice: its vertex count and the neighbours of
// its vertices, numbered from `first_vertex`, [d+1][M_image][2].
struct ImageLattice {
  int32_t vertices;
  std::vector<int32_t> neighbors;
};

// The vertices are numbered in order of first appearance in pixel order, the
// same numbering on every run and thread count, built in parallel: each
// chunk of pixels numbers its own vertices in a table of its own (in order of
// first appearance within the chunk), then the chunks' tables are merged in
// pixel order into the first chunk's (its numbers are already final), which
// appends the vertices no earlier chunk has in the order they appear.
template <typename scalar_t, typename Dim>
ImageLattice build_image(const scalar_t* features,  // [N, d]
                         int64_t pixels,
                         Dim d,
                         int32_t first_vertex,
                         int32_t* vertex_of,        // [N, d+1]
                         scalar_t* barycentric) {   // [N, d+1]
  constexpr int64_t min_chunk = 4096;  // pixels: below this a chunk costs more to merge than it saves
  const int corners = d + 1;
  const int64_t chunks = std::clamp<int64_t>(pixels / min_chunk, 1, at::get_num_threads());
  const int64_t chunk_pixels = (pixels + chunks - 1) / chunks;
  std::vector<VertexTable<Dim>> tables(chunks, VertexTable<Dim>(d));
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      number_vertices(features, c * chunk_pixels, std::min(pixels, (c + 1) * chunk_pixels), d, tables[c], vertex_of,
                      barycentric);
    }
  });

  VertexTable<Dim>& table = tables[0];
  std::vector<std::vector<int32_t>> merged(chunks);  // per chunk: its vertex numbers in `table`
  for (int64_t c = 1; c < chunks; ++c) {
    merged[c].resize(tables[c].size());
    for (int32_t v = 0; v < tables[c].size(); ++v) {
      merged[c][v] = table.find_or_insert(tables[c].key(v), hash_key(tables[c].key(v), d));
    }
  }
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t stop = std::min(pixels, (c + 1) * chunk_pixels) * corners;
      for (int64_t e = c * chunk_pixels * corners; e < stop; ++e) {
        vertex_of[e] = first_vertex + (c == 0 ? vertex_of[e] : merged[c][vertex_of[e]]);
      }
    }
  });

  const int32_t count = table.size();
  std::vector<int32_t> neighbors(static_cast<int64_t>(corners) * count * 2);
  at::parallel_for(0, count, grain_for(corners * 2 * d), [&](int64_t begin, int64_t end) {
    // Slot 0 of direction j at 2j, slot 1 at 2j+1; all keys and hashes
    // first, then the lookups, as in number_vertices.
    std::vector<int32_t> moved(2 * corners * d);
    std::vector<uint64_t> hashes(2 * corners);
    for (int64_t v = begin; v < end; ++v) {
      for (int n = 0; n < 2 * corners; ++n) {
        neighbor_key(table.key(static_cast<int32_t>(v)), d, n / 2, n % 2 == 0 ? 1 : -1, &moved[n * d]);
        hashes[n] = hash_key(&moved[n * d], d);
        table.prefetch(hashes[n]);
      }
      for (int n = 0; n < 2 * corners; ++n) {
        const int32_t found = table.find(&moved[n * d], hashes[n]);
        neighbors[((n / 2) * count + v) * 2 + n % 2] = found < 0 ? -1 : first_vertex + found;
      }
    }
  });
  return {count, std::move(neighbors)};
}

// The corners of each vertex in corner order (splat_order, vertex_start): a
// counting sort, stable, so the same whatever the thread count. In parallel:
// each chunk of corners counts its own, and a chunk's corners of vertex v go
// after those of the chunks before it.
void corners_by_vertex(const int32_t* owner, int64_t total, int64_t vertices, int32_t* start, int32_t* order) {
  const int64_t chunks = std::clamp<int64_t>(total / GRAIN_SIZE, 1, at::get_num_threads());
  const int64_t chunk_size = (total + chunks - 1) / chunks;
  // Each loop below ends at a local value: with the bound computed in the
  // loop condition from total and chunk_size (which the lambdas capture by
  // reference), GCC reloaded them after every int32 store (it could not
  // tell that the store left them alone) and kept the loop's state on the
  // stack. With the local bound a VOC photograph's two lattices are built
  // 2 to 10% faster (four in-process A/Bs).
  const auto chunk_end = [&](int64_t c) -> int64_t { return std::min(total, (c + 1) * chunk_size); };
  std::vector<int32_t> count(chunks * vertices, 0);  // [chunk, vertex]; then each chunk's first slot
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int32_t* mine = count.data() + c * vertices;
      const int64_t stop = chunk_end(c);
      for (int64_t e = c * chunk_size; e < stop; ++e) ++mine[owner[e]];
    }
  });
  start[0] = 0;
  for (int64_t v = 0; v < vertices; ++v) {
    int32_t next = start[v];
    for (int64_t c = 0; c < chunks; ++c) {
      const int32_t n = count[c * vertices + v];
      count[c * vertices + v] = next;
      next += n;
    }
    start[v + 1] = next;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      int32_t* next = count.data() + c * vertices;
      const int64_t stop = chunk_end(c);
      for (int64_t e = c * chunk_size; e < stop; ++e) order[next[owner[e]]++] = static_cast<int32_t>(e);
    }
  });
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

  at::Tensor vertex_of = empty_in_huge_pages({batch, pixels, corners}, feats.options().dtype(at::kInt));
  at::Tensor barycentric = empty_in_huge_pages({batch, pixels, corners}, feats.options());
  std::vector<ImageLattice> images;
  int64_t vertices = 0;
  AT_DISPATCH_FLOATING_TYPES(feats.scalar_type(), op, [&] {
    with_dim(d, [&](auto dim) {
      for (int64_t b = 0; b < batch; ++b) {
        images.push_back(build_image(feats.const_data_ptr<scalar_t>() + b * pixels * d, pixels, dim,
                                     static_cast<int32_t>(vertices),
                                     vertex_of.mutable_data_ptr<int32_t>() + b * pixels * corners,
                                     barycentric.mutable_data_ptr<scalar_t>() + b * pixels * corners));
        vertices += images.back().vertices;
      }
    });
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

  const int64_t total = batch * pixels * corners;
  at::Tensor vertex_start = at::empty({vertices + 1}, vertex_of.options());
  at::Tensor splat_order = empty_in_huge_pages({total}, vertex_of.options());
  corners_by_vertex(vertex_of.const_data_ptr<int32_t>(), total, vertices, vertex_start.mutable_data_ptr<int32_t>(),
                    splat_order.mutable_data_ptr<int32_t>());
  return {vertex_of, barycentric, neighbors, splat_order, vertex_start};
}

template <typename scalar_t>
void splat(const scalar_t* values, const LatticeArgs& lattice, int64_t channels, scalar_t* lattice_values) {
  const int64_t corners = lattice.d() + 1;
  const int32_t* order = lattice.splat_order.const_data_ptr<int32_t>();
  const int32_t* start = lattice.vertex_start.const_data_ptr<int32_t>();
  const scalar_t* weight = lattice.barycentric.const_data_ptr<scalar_t>();
  const int64_t mean_corners = lattice.splat_order.numel() / std::max<int64_t>(1, lattice.vertices());
  // Vertices gather unequal numbers of corners: blocks handed out as threads come free.
  parallel_blocks(lattice.vertices(), mean_corners * channels, [&](int64_t begin, int64_t end) {
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
  at::Tensor out = empty_in_huge_pages(in.sizes(), in.options());
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
