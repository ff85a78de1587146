// CUDA kernels of fastseg::permutohedral_lattice and
// fastseg::permutohedral_apply, and their launchers (declared in
// permutohedral_filter.cuh). Plain CUDA: no torch headers.
//
// The algorithm is Adams, Baek & Davis, "Fast High-Dimensional Filtering
// Using the Permutohedral Lattice", Eurographics 2010; the simplex math is
// shared with the CPU kernels (../permutohedral.h), and the lattice tensors
// are the same as the CPU backend's, vertex numbers included.
//
// Building. The CPU numbers vertices in order of first appearance over the
// flat corners e = (b N + p)(d+1) + r (image b, pixel p, corner r). Here:
//   1. one thread per pixel finds its simplex (rem0 and rank, kept in the
//      workspace) and barycentric weights;
//   2. one thread per corner inserts its key (image b and the corner's d
//      coordinates) into an open-addressing hash table (linear probing,
//      load <= 1/2). A slot holds no key, only a corner index: the key is
//      recomputed from that corner's simplex, which no thread writes any more.
//      The first corner to reach an empty slot claims it with atomicCAS; the
//      others with the same key atomicMin their index into it, so once all
//      have run the slot holds the key's smallest corner, whatever the order
//      the threads ran in. Pixels whose simplex equals the previous pixel's
//      (common: neighbouring pixels share cells) insert nothing, since that
//      pixel's corners come earlier with the same keys;
//   3. one thread per corner looks its key up: owner[e] = the key's smallest
//      corner, and e is the first corner of its vertex iff owner[e] == e;
//   4. an exclusive scan of those first-corner flags numbers the vertices in
//      order of first appearance, as the CPU does: vertex_of[e] =
//      rank[owner[e]], M = the number of first corners;
//   5. (once the host has M) one thread per (direction, vertex, side) looks
//      up the neighbour's key; a stable radix sort of the corners by vertex
//      (CUB's is stable) gives splat_order, and the first position of each
//      vertex in it vertex_start.
// Every result depends on the keys alone, never on the order the threads
// ran in: the lattice is the same on every run.
//
// Applying. Every step is a gather in a fixed order, with no floating-point
// atomics: the splat sums, per (vertex, channel), the vertex's corners in
// CSR order (a vertex with hundreds of corners or more by a block, in a
// fixed order of partial sums); the blur reads each vertex's two
// neighbours (row M of each buffer is the zero that absent neighbours, -1,
// read); the slice sums each pixel's d+1 corners. Products are never fused into FMAs
// (mul_unfused), so the sums round exactly as the CPU kernels' do, but for
// those of the vertices that a block splats.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "../permutohedral.h"
#include "grid.cuh"
#include "permutohedral_filter.cuh"

namespace fastseg {
namespace {

using namespace permutohedral;
using namespace grid;

constexpr int32_t EMPTY = -1;    // a hash-table slot that holds no corner
constexpr size_t ALIGNMENT = 256;  // of every workspace array (cudaMalloc's)
// A vertex with more corners than this is splatted by a whole block (see
// splat_heavy_kernel). Under a wide bilateral kernel the corners pile up on
// few vertices: in the CRF's VOC photograph (sxy 80, srgb 13), 898 of 16293
// vertices have over 256 corners, 62% of all, and one has 8883, which a
// thread would sum alone while the rest of the GPU waited. Not tuned on a
// GPU yet.
constexpr int32_t HEAVY_CORNERS = THREADS;
// Blocks of splat_heavy_kernel: they stride over the vertices, most of which
// are light and cost them one load each.
constexpr int HEAVY_BLOCKS = 1024;

// The sizes of a batch of B images of N pixels with d features.
struct Geometry {
  int d;
  int corners;            // d+1, per pixel
  int64_t pixels;         // N, per image
  int64_t points;         // B*N
  int64_t total_corners;  // E = B*N*(d+1) < 2^31
};

Geometry make_geometry(int64_t batch, int64_t pixels, int d) {
  return {d, d + 1, pixels, batch * pixels, batch * pixels * (d + 1)};
}

// The hash table: slots[i] is EMPTY or a corner index; capacity is a power
// of two, mask = capacity - 1.
struct Table {
  int32_t* slots;
  uint64_t mask;
};

// ---------------------------------------------------------------------------
// Keys. A vertex's key is its image and the first d coordinates of the
// corner (the last follows: they sum to 0); a corner's key is computed from
// its pixel's row of the simplex array, rem0 then rank, [B*N, 2(d+1)].

__device__ __forceinline__ const int32_t* simplex_of(const int32_t* simplex, const Geometry& g, int64_t point) {
  return simplex + point * 2 * g.corners;
}

__device__ __forceinline__ int32_t image_of(const Geometry& g, int64_t corner) {
  return static_cast<int32_t>(corner / g.corners / g.pixels);
}

__device__ __forceinline__ void key_of(const int32_t* simplex, const Geometry& g, int64_t corner, int32_t* key) {
  const int64_t point = corner / g.corners;
  const int32_t* rem0 = simplex_of(simplex, g, point);
  corner_key(rem0, rem0 + g.corners, g.d, static_cast<int>(corner - point * g.corners), key);
}

__device__ bool has_key(const int32_t* simplex, const Geometry& g, int64_t corner, int32_t image,
                        const int32_t* key) {
  if (image_of(g, corner) != image) return false;
  const int64_t point = corner / g.corners;
  const int r = static_cast<int>(corner - point * g.corners);
  const int32_t* rem0 = simplex_of(simplex, g, point);
  for (int i = 0; i < g.d; ++i) {
    if (corner_coordinate(rem0, rem0 + g.corners, g.d, r, i) != key[i]) return false;
  }
  return true;
}

__device__ __forceinline__ uint64_t slot_of(const Table& table, int32_t image, const int32_t* key, int d) {
  uint64_t h = hash_key(key, d) ^ (static_cast<uint64_t>(static_cast<uint32_t>(image)) * 0x9E3779B97F4A7C15ull);
  h ^= h >> 29;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 32;
  return h & table.mask;
}

// The corner a key's slot holds (its smallest corner once insertion is
// over), or EMPTY where the key is absent. Linear probing never empties a
// slot, so a key inserted lies before the first empty slot of its probe.
__device__ int32_t find(const Table& table, const int32_t* simplex, const Geometry& g, int32_t image,
                        const int32_t* key) {
  for (uint64_t slot = slot_of(table, image, key, g.d);; slot = (slot + 1) & table.mask) {
    const int32_t held = table.slots[slot];
    if (held == EMPTY || has_key(simplex, g, held, image, key)) return held;
  }
}

// ---------------------------------------------------------------------------
// Building kernels. MAX_D bounds d: it sizes the per-thread arrays.

template <typename scalar_t, int MAX_D>
__global__ void simplex_kernel(const scalar_t* __restrict__ features,  // [B*N, d]
                               Geometry g,
                               int32_t* __restrict__ simplex,          // [B*N, 2(d+1)]
                               scalar_t* __restrict__ barycentric) {   // [B*N, d+1]
  scalar_t elevated[MAX_D + 1], weights[MAX_D + 2];
  int32_t rem0[MAX_D + 1], rank[MAX_D + 1];
  for (int64_t p = first_index(); p < g.points; p += index_stride()) {
    lift(features + p * g.d, g.d, elevated);
    enclosing_simplex(elevated, g.d, rem0, rank, weights);
    int32_t* row = simplex + p * 2 * g.corners;
    for (int i = 0; i < g.corners; ++i) {
      row[i] = rem0[i];
      row[g.corners + i] = rank[i];
      barycentric[p * g.corners + i] = weights[i];
    }
  }
}

// Whether pixel p (not the first of its image) has the simplex of pixel p-1.
__device__ bool same_simplex_as_previous(const int32_t* simplex, const Geometry& g, int64_t p) {
  const int32_t* row = simplex_of(simplex, g, p);
  const int32_t* previous = row - 2 * g.corners;
  for (int i = 0; i < 2 * g.corners; ++i) {
    if (row[i] != previous[i]) return false;
  }
  return true;
}

template <int MAX_D>
__global__ void insert_kernel(const int32_t* __restrict__ simplex,  // [B*N, 2(d+1)]
                              Geometry g,
                              Table table) {
  int32_t key[MAX_D];
  for (int64_t e = first_index(); e < g.total_corners; e += index_stride()) {
    const int64_t p = e / g.corners;
    if (p % g.pixels != 0 && same_simplex_as_previous(simplex, g, p)) continue;
    key_of(simplex, g, e, key);
    const int32_t image = image_of(g, e), corner = static_cast<int32_t>(e);
    for (uint64_t slot = slot_of(table, image, key, g.d);; slot = (slot + 1) & table.mask) {
      // A stale read is harmless: a slot, once claimed, only ever holds
      // corners of one key, and atomicCAS tells the truth about empty ones.
      int32_t held = *static_cast<volatile int32_t*>(table.slots + slot);
      if (held == EMPTY) {
        held = atomicCAS(table.slots + slot, EMPTY, corner);
        if (held == EMPTY) break;
      }
      if (has_key(simplex, g, held, image, key)) {
        if (corner < held) atomicMin(table.slots + slot, corner);
        break;
      }
    }
  }
}

// owner[e]: the smallest corner with e's key; first[e]: whether that is e.
template <int MAX_D>
__global__ void owner_kernel(const int32_t* __restrict__ simplex,  // [B*N, 2(d+1)]
                             Geometry g,
                             Table table,
                             int32_t* __restrict__ owner,   // [E]
                             int32_t* __restrict__ first) {  // [E]
  int32_t key[MAX_D];
  for (int64_t e = first_index(); e < g.total_corners; e += index_stride()) {
    key_of(simplex, g, e, key);
    const int32_t held = find(table, simplex, g, image_of(g, e), key);  // never EMPTY: e was inserted
    owner[e] = held;
    first[e] = held == e ? 1 : 0;
  }
}

// rank: the exclusive prefix sum of the first-corner flags, i.e. the vertex
// number of each first corner.
__global__ void number_kernel(const int32_t* __restrict__ owner,  // [E]
                              const int32_t* __restrict__ rank,   // [E]
                              int64_t total_corners,
                              int32_t* __restrict__ vertex_of,     // [E]
                              int32_t* __restrict__ vertex_count) {  // [1]
  for (int64_t e = first_index(); e < total_corners; e += index_stride()) {
    vertex_of[e] = rank[owner[e]];
    if (e == total_corners - 1) *vertex_count = rank[e] + (owner[e] == e ? 1 : 0);
  }
}

__global__ void vertex_corner_kernel(const int32_t* __restrict__ owner,  // [E]
                                     const int32_t* __restrict__ rank,   // [E]
                                     int64_t total_corners,
                                     int32_t* __restrict__ vertex_corner) {  // [M]
  for (int64_t e = first_index(); e < total_corners; e += index_stride()) {
    if (owner[e] == e) vertex_corner[rank[e]] = static_cast<int32_t>(e);
  }
}

// Thread t = (j M + v) 2 + side: vertex v's neighbour along direction j,
// side 0 the key + step, side 1 the key - step (neighbor_key's signs).
template <int MAX_D>
__global__ void neighbors_kernel(const int32_t* __restrict__ simplex,  // [B*N, 2(d+1)]
                                 Geometry g,
                                 Table table,
                                 const int32_t* __restrict__ vertex_corner,  // [M]
                                 const int32_t* __restrict__ rank,           // [E]
                                 int32_t vertices,
                                 int32_t* __restrict__ neighbors) {  // [d+1, M, 2]
  int32_t key[MAX_D], moved[MAX_D];
  const int64_t total = static_cast<int64_t>(g.corners) * vertices * 2;
  for (int64_t t = first_index(); t < total; t += index_stride()) {
    const int j = static_cast<int>(t / (2 * static_cast<int64_t>(vertices)));
    const int64_t v = (t / 2) % vertices;
    const int side = static_cast<int>(t % 2);
    const int32_t corner = vertex_corner[v];
    key_of(simplex, g, corner, key);
    neighbor_key(key, g.d, j, side == 0 ? 1 : -1, moved);
    const int32_t held = find(table, simplex, g, image_of(g, corner), moved);
    neighbors[t] = held == EMPTY ? -1 : rank[held];
  }
}

__global__ void iota_kernel(int64_t n, int32_t* __restrict__ out) {
  for (int64_t i = first_index(); i < n; i += index_stride()) out[i] = static_cast<int32_t>(i);
}

// sorted: the vertex of each corner of splat_order (ascending; every vertex
// has at least one corner).
__global__ void vertex_start_kernel(const uint32_t* __restrict__ sorted,  // [E]
                                    int64_t total_corners,
                                    int32_t vertices,
                                    int32_t* __restrict__ vertex_start) {  // [M+1]
  for (int64_t i = first_index(); i < total_corners; i += index_stride()) {
    if (i == 0 || sorted[i - 1] != sorted[i]) vertex_start[sorted[i]] = static_cast<int32_t>(i);
    if (i == 0) vertex_start[vertices] = static_cast<int32_t>(total_corners);
  }
}

// Runs body(std::integral_constant<int, MAX_D>{}) for the smallest MAX_D >= d.
template <typename F>
void with_max_d(int d, F&& body) {
  if (d <= 8) {
    body(std::integral_constant<int, 8>{});
  } else if (d <= 16) {
    body(std::integral_constant<int, 16>{});
  } else if (d <= 32) {
    body(std::integral_constant<int, 32>{});
  } else {
    body(std::integral_constant<int, PERMUTOHEDRAL_CUDA_MAX_D>{});
  }
}

// ---------------------------------------------------------------------------
// The workspace: its arrays, carved from one allocation (base nullptr: only
// the size is computed).

struct Workspace {
  int32_t* simplex;  // [B*N, 2(d+1)]: rem0, rank of each pixel
  Table table;       // [capacity]
  int32_t* owner;    // [E]: the smallest corner with each corner's key; then the sorted vertex of each corner
  int32_t* rank;     // [E]: exclusive sum of the first-corner flags
  int32_t* scratch;  // [E]: the first corner of each vertex; then 0, 1, ..., E-1
  void* cub_temp;    // CUB's scratch for the scan and the sort
  size_t cub_bytes;
  size_t total_bytes;
};

size_t align_up(size_t n) { return (n + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT; }

uint64_t ceil_pow2(uint64_t n) {
  uint64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

// Bits that hold every vertex number 0..vertices-1 (at least 1).
int bits_for(int32_t vertices) {
  int bits = 1;
  while (bits < 31 && (static_cast<int64_t>(1) << bits) < vertices) ++bits;
  return bits;
}

cudaError_t sort_temp_bytes(int total_corners, int end_bit, cudaStream_t stream, size_t* bytes) {
  return cub::DeviceRadixSort::SortPairs(nullptr, *bytes, static_cast<const uint32_t*>(nullptr),
                                         static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                         static_cast<int32_t*>(nullptr), total_corners, 0, end_bit, stream);
}

cudaError_t plan_workspace(const Geometry& g, char* base, cudaStream_t stream, Workspace* ws) {
  const int total = static_cast<int>(g.total_corners);
  size_t scan_bytes = 0, sort_bytes = 0;
  cudaError_t err = cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, static_cast<const int32_t*>(nullptr),
                                                  static_cast<int32_t*>(nullptr), total, stream);
  if (err != cudaSuccess) return err;
  // All 32 bits: the sort's scratch only shrinks with fewer.
  err = sort_temp_bytes(total, 32, stream, &sort_bytes);
  if (err != cudaSuccess) return err;

  const uint64_t capacity = ceil_pow2(std::max<uint64_t>(64, 2 * static_cast<uint64_t>(g.total_corners)));
  size_t offset = 0;
  const auto carve = [&](size_t bytes) {
    char* at = base == nullptr ? nullptr : base + offset;
    offset += align_up(bytes);
    return at;
  };
  const size_t corner_bytes = static_cast<size_t>(g.total_corners) * sizeof(int32_t);
  ws->simplex = reinterpret_cast<int32_t*>(carve(static_cast<size_t>(g.points) * 2 * g.corners * sizeof(int32_t)));
  ws->table = {reinterpret_cast<int32_t*>(carve(capacity * sizeof(int32_t))), capacity - 1};
  ws->owner = reinterpret_cast<int32_t*>(carve(corner_bytes));
  ws->rank = reinterpret_cast<int32_t*>(carve(corner_bytes));
  ws->scratch = reinterpret_cast<int32_t*>(carve(corner_bytes));
  ws->cub_bytes = std::max(scan_bytes, sort_bytes);
  ws->cub_temp = carve(ws->cub_bytes);
  ws->total_bytes = offset;
  return cudaSuccess;
}

// ---------------------------------------------------------------------------
// Applying kernels: one thread per (row, channel) of what they write, in a
// grid-stride loop over the flat index; rows and channels as int64 (M * C
// and B * N * C can exceed 2^31).

template <typename scalar_t>
__global__ void splat_kernel(const scalar_t* __restrict__ values,       // [B*N, C]
                             int64_t channels,
                             int corners,                                // d+1
                             const int32_t* __restrict__ splat_order,    // [E]
                             const int32_t* __restrict__ vertex_start,   // [M+1]
                             const scalar_t* __restrict__ barycentric,   // [E]
                             int32_t vertices,
                             scalar_t* __restrict__ lattice_values) {    // [M+1, C], row M zeroed
  const int64_t total = (static_cast<int64_t>(vertices) + 1) * channels;
  for (int64_t i = first_index(); i < total; i += index_stride()) {
    const int64_t v = i / channels, k = i - v * channels;
    scalar_t sum = 0;
    if (v < vertices) {
      const int32_t begin = vertex_start[v], end = vertex_start[v + 1];
      if (end - begin > HEAVY_CORNERS) continue;  // splat_heavy_kernel's
      for (int32_t e = begin; e < end; ++e) {
        const int32_t corner = splat_order[e];
        sum += mul_unfused(barycentric[corner], values[static_cast<int64_t>(corner / corners) * channels + k]);
      }
    }
    lattice_values[i] = sum;
  }
}

// The rows of the vertices with over HEAVY_CORNERS corners, which
// splat_kernel leaves: one block per vertex, each warp summing every
// (THREADS/32)th corner of the vertex's CSR range, its lanes along the row
// (a coalesced read of each corner's values, its index and weight read
// once), up to 128 channels at a time; then the warps' partial sums are
// added in warp order. A fixed order, so the same result on every run; not
// the CPU's sequential order, so equal to it within rounding (light
// vertices, the rest, are equal bit for bit). Not tuned on a GPU: with few
// channels (the normalisation's one) most lanes idle.
template <typename scalar_t>
__global__ void __launch_bounds__(THREADS) splat_heavy_kernel(const scalar_t* __restrict__ values,  // [B*N, C]
                                                              int64_t channels,
                                                              int corners,                              // d+1
                                                              const int32_t* __restrict__ splat_order,   // [E]
                                                              const int32_t* __restrict__ vertex_start,  // [M+1]
                                                              const scalar_t* __restrict__ barycentric,  // [E]
                                                              int32_t vertices,
                                                              scalar_t* __restrict__ lattice_values) {  // [M+1, C]
  constexpr int WARPS = THREADS / 32, PER_LANE = 4, CHUNK = 32 * PER_LANE;
  __shared__ scalar_t partial[WARPS][CHUNK];
  const int lane = static_cast<int>(threadIdx.x) % 32, warp = static_cast<int>(threadIdx.x) / 32;
  for (int64_t v = blockIdx.x; v < vertices; v += gridDim.x) {
    const int32_t begin = vertex_start[v], end = vertex_start[v + 1];
    if (end - begin <= HEAVY_CORNERS) continue;  // the same for the whole block
    for (int64_t first = 0; first < channels; first += CHUNK) {
      scalar_t sum[PER_LANE] = {};
      // int64: E may come within a block's stride of 2^31.
      for (int64_t e = static_cast<int64_t>(begin) + warp; e < end; e += WARPS) {
        const int32_t corner = splat_order[e];
        const scalar_t w = barycentric[corner];
        const scalar_t* row = values + static_cast<int64_t>(corner / corners) * channels;
        for (int j = 0; j < PER_LANE; ++j) {
          const int64_t k = first + lane + 32 * j;
          if (k < channels) sum[j] += mul_unfused(w, row[k]);
        }
      }
      for (int j = 0; j < PER_LANE; ++j) partial[warp][lane + 32 * j] = sum[j];
      __syncthreads();
      const int64_t k = first + threadIdx.x;
      if (threadIdx.x < CHUNK && k < channels) {
        scalar_t total = partial[0][threadIdx.x];
        for (int w = 1; w < WARPS; ++w) total += partial[w][threadIdx.x];
        lattice_values[v * channels + k] = total;
      }
      __syncthreads();  // partial is written again for the next channels
    }
  }
}

// [1/4 1/2 1/4] along one direction.
template <typename scalar_t>
__global__ void blur_kernel(const scalar_t* __restrict__ in,          // [M+1, C], row M zero
                            const int32_t* __restrict__ neighbors,    // [M, 2] of this direction
                            int32_t vertices,
                            int64_t channels,
                            scalar_t* __restrict__ out) {             // [M+1, C], row M zeroed
  const int64_t total = (static_cast<int64_t>(vertices) + 1) * channels;
  for (int64_t i = first_index(); i < total; i += index_stride()) {
    const int64_t v = i / channels, k = i - v * channels;
    if (v == vertices) {
      out[i] = 0;
      continue;
    }
    const int32_t before = neighbors[2 * v], after = neighbors[2 * v + 1];
    const scalar_t a = in[(before < 0 ? vertices : before) * channels + k];
    const scalar_t b = in[(after < 0 ? vertices : after) * channels + k];
    out[i] = mul_unfused(scalar_t(0.5), in[i]) + mul_unfused(scalar_t(0.25), a + b);
  }
}

template <typename scalar_t>
__global__ void slice_kernel(const scalar_t* __restrict__ lattice_values,  // [M+1, C]
                             const int32_t* __restrict__ vertex_of,        // [B*N, d+1]
                             const scalar_t* __restrict__ barycentric,     // [B*N, d+1]
                             int64_t points,
                             int64_t channels,
                             int corners,
                             scalar_t scale,
                             scalar_t* __restrict__ out) {  // [B*N, C]
  const int64_t total = points * channels;
  for (int64_t i = first_index(); i < total; i += index_stride()) {
    const int64_t p = i / channels, k = i - p * channels;
    scalar_t sum = 0;
    for (int r = 0; r < corners; ++r) {
      const scalar_t w = mul_unfused(scale, barycentric[p * corners + r]);
      sum += mul_unfused(w, lattice_values[static_cast<int64_t>(vertex_of[p * corners + r]) * channels + k]);
    }
    out[i] = sum;
  }
}

}  // namespace

cudaError_t permutohedral_lattice_workspace_bytes(int64_t batch, int64_t pixels, int d, size_t* bytes) {
  Workspace ws{};
  const cudaError_t err = plan_workspace(make_geometry(batch, pixels, d), nullptr, nullptr, &ws);
  *bytes = ws.total_bytes;
  return err;
}

template <typename scalar_t>
cudaError_t launch_permutohedral_lattice_vertices(const scalar_t* features,
                                                  int64_t batch,
                                                  int64_t pixels,
                                                  int d,
                                                  int32_t* vertex_of,
                                                  scalar_t* barycentric,
                                                  void* workspace,
                                                  size_t workspace_bytes,
                                                  int32_t* vertex_count,
                                                  cudaStream_t stream) {
  const Geometry g = make_geometry(batch, pixels, d);
  if (g.total_corners == 0) return cudaSuccess;
  Workspace ws{};
  cudaError_t err = plan_workspace(g, static_cast<char*>(workspace), stream, &ws);
  if (err != cudaSuccess) return err;
  if (ws.total_bytes > workspace_bytes || d > PERMUTOHEDRAL_CUDA_MAX_D) return cudaErrorInvalidValue;

  err = cudaMemsetAsync(ws.table.slots, 0xFF, (ws.table.mask + 1) * sizeof(int32_t), stream);  // all EMPTY (-1)
  if (err != cudaSuccess) return err;
  // vertex_of holds the first-corner flags until number_kernel overwrites them.
  int32_t* first = vertex_of;
  with_max_d(d, [&](auto max_d) {
    constexpr int MAX_D = decltype(max_d)::value;
    simplex_kernel<scalar_t, MAX_D>
        <<<blocks_for(g.points), THREADS, 0, stream>>>(features, g, ws.simplex, barycentric);
    insert_kernel<MAX_D><<<blocks_for(g.total_corners), THREADS, 0, stream>>>(ws.simplex, g, ws.table);
    owner_kernel<MAX_D>
        <<<blocks_for(g.total_corners), THREADS, 0, stream>>>(ws.simplex, g, ws.table, ws.owner, first);
  });
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  size_t cub_bytes = ws.cub_bytes;
  err = cub::DeviceScan::ExclusiveSum(ws.cub_temp, cub_bytes, static_cast<const int32_t*>(first), ws.rank,
                                      static_cast<int>(g.total_corners), stream);
  if (err != cudaSuccess) return err;
  number_kernel<<<blocks_for(g.total_corners), THREADS, 0, stream>>>(ws.owner, ws.rank, g.total_corners, vertex_of,
                                                                      vertex_count);
  return cudaGetLastError();
}

cudaError_t launch_permutohedral_lattice_links(int64_t batch,
                                               int64_t pixels,
                                               int d,
                                               int32_t vertices,
                                               const int32_t* vertex_of,
                                               int32_t* neighbors,
                                               int32_t* splat_order,
                                               int32_t* vertex_start,
                                               void* workspace,
                                               size_t workspace_bytes,
                                               cudaStream_t stream) {
  const Geometry g = make_geometry(batch, pixels, d);
  if (g.total_corners == 0 || vertices <= 0) return cudaSuccess;
  Workspace ws{};
  cudaError_t err = plan_workspace(g, static_cast<char*>(workspace), stream, &ws);
  if (err != cudaSuccess) return err;
  if (ws.total_bytes > workspace_bytes || d > PERMUTOHEDRAL_CUDA_MAX_D) return cudaErrorInvalidValue;

  int32_t* vertex_corner = ws.scratch;
  vertex_corner_kernel<<<blocks_for(g.total_corners), THREADS, 0, stream>>>(ws.owner, ws.rank, g.total_corners,
                                                                             vertex_corner);
  const int64_t links = static_cast<int64_t>(g.corners) * vertices * 2;
  with_max_d(d, [&](auto max_d) {
    constexpr int MAX_D = decltype(max_d)::value;
    neighbors_kernel<MAX_D><<<blocks_for(links), THREADS, 0, stream>>>(ws.simplex, g, ws.table, vertex_corner,
                                                                        ws.rank, vertices, neighbors);
  });
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  // splat_order: the corners sorted stably by vertex, their vertices into
  // owner (no longer needed), corner indices from scratch (idem).
  int32_t* corner_index = ws.scratch;
  auto* sorted_vertex = reinterpret_cast<uint32_t*>(ws.owner);
  iota_kernel<<<blocks_for(g.total_corners), THREADS, 0, stream>>>(g.total_corners, corner_index);
  const int end_bit = bits_for(vertices);
  size_t cub_bytes = 0;
  err = sort_temp_bytes(static_cast<int>(g.total_corners), end_bit, stream, &cub_bytes);
  if (err != cudaSuccess) return err;
  if (cub_bytes > ws.cub_bytes) return cudaErrorInvalidValue;
  cub_bytes = ws.cub_bytes;
  err = cub::DeviceRadixSort::SortPairs(ws.cub_temp, cub_bytes, reinterpret_cast<const uint32_t*>(vertex_of),
                                        sorted_vertex, static_cast<const int32_t*>(corner_index), splat_order,
                                        static_cast<int>(g.total_corners), 0, end_bit, stream);
  if (err != cudaSuccess) return err;
  vertex_start_kernel<<<blocks_for(g.total_corners), THREADS, 0, stream>>>(sorted_vertex, g.total_corners, vertices,
                                                                           vertex_start);
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_permutohedral_splat_blur(const scalar_t* values,
                                            int64_t points,
                                            int64_t channels,
                                            int d,
                                            int32_t vertices,
                                            const scalar_t* barycentric,
                                            const int32_t* neighbors,
                                            const int32_t* splat_order,
                                            const int32_t* vertex_start,
                                            bool reverse,
                                            scalar_t* lattice_values,
                                            scalar_t** blurred,
                                            cudaStream_t stream) {
  const int corners = d + 1;
  const int64_t lattice_numel = (static_cast<int64_t>(vertices) + 1) * channels;
  scalar_t* current = lattice_values;
  scalar_t* spare = lattice_values + lattice_numel;
  splat_kernel<scalar_t><<<blocks_for(lattice_numel), THREADS, 0, stream>>>(
      values, channels, corners, splat_order, vertex_start, barycentric, vertices, current);
  if (points * corners > HEAVY_CORNERS) {  // else no vertex can be heavy
    splat_heavy_kernel<scalar_t><<<std::min<int64_t>(vertices, HEAVY_BLOCKS), THREADS, 0, stream>>>(
        values, channels, corners, splat_order, vertex_start, barycentric, vertices, current);
  }
  for (int step = 0; step < corners; ++step) {
    const int direction = reverse ? d - step : step;
    blur_kernel<scalar_t><<<blocks_for(lattice_numel), THREADS, 0, stream>>>(
        current, neighbors + static_cast<int64_t>(direction) * vertices * 2, vertices, channels, spare);
    std::swap(current, spare);
  }
  *blurred = current;
  return cudaGetLastError();
}

template <typename scalar_t>
cudaError_t launch_permutohedral_apply(const scalar_t* values,
                                       int64_t points,
                                       int64_t channels,
                                       int d,
                                       int32_t vertices,
                                       const int32_t* vertex_of,
                                       const scalar_t* barycentric,
                                       const int32_t* neighbors,
                                       const int32_t* splat_order,
                                       const int32_t* vertex_start,
                                       bool reverse,
                                       scalar_t scale,
                                       scalar_t* lattice_values,
                                       scalar_t* out,
                                       cudaStream_t stream) {
  if (points == 0 || channels == 0) return cudaSuccess;
  scalar_t* blurred = nullptr;
  const cudaError_t err =
      launch_permutohedral_splat_blur(values, points, channels, d, vertices, barycentric, neighbors, splat_order,
                                      vertex_start, reverse, lattice_values, &blurred, stream);
  if (err != cudaSuccess) return err;
  slice_kernel<scalar_t><<<blocks_for(points * channels), THREADS, 0, stream>>>(
      blurred, vertex_of, barycentric, points, channels, d + 1, scale, out);
  return cudaGetLastError();
}

#define FASTSEG_INSTANTIATE(scalar_t)                                                                               \
  template cudaError_t launch_permutohedral_lattice_vertices<scalar_t>(const scalar_t*, int64_t, int64_t, int,      \
                                                                       int32_t*, scalar_t*, void*, size_t,          \
                                                                       int32_t*, cudaStream_t);                     \
  template cudaError_t launch_permutohedral_apply<scalar_t>(const scalar_t*, int64_t, int64_t, int, int32_t,        \
                                                            const int32_t*, const scalar_t*, const int32_t*,        \
                                                            const int32_t*, const int32_t*, bool, scalar_t,         \
                                                            scalar_t*, scalar_t*, cudaStream_t);                    \
  template cudaError_t launch_permutohedral_splat_blur<scalar_t>(const scalar_t*, int64_t, int64_t, int, int32_t,   \
                                                                 const scalar_t*, const int32_t*, const int32_t*,   \
                                                                 const int32_t*, bool, scalar_t*, scalar_t**,       \
                                                                 cudaStream_t);

FASTSEG_INSTANTIATE(float)
FASTSEG_INSTANTIATE(double)

#undef FASTSEG_INSTANTIATE

}  // namespace fastseg
