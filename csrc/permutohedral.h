// Permutohedral-lattice geometry shared by the CPU and CUDA kernels of
// fastseg::permutohedral_lattice and fastseg::permutohedral_apply.
//
// Adams, Baek & Davis, "Fast High-Dimensional Filtering Using the
// Permutohedral Lattice", Eurographics 2010, section 3.1: a feature vector
// f in R^d is lifted onto the hyperplane x . 1 = 0 of R^(d+1), where the
// lattice is the set of integer points whose coordinates are all congruent
// modulo d+1; the simplex that holds the point is found by rounding to the
// nearest remainder-0 point and sorting the residuals, and its d+1 corners
// get the point's barycentric weights. fastseg/reference/permutohedral_filter.py
// is the same algorithm in PyTorch; the two must agree.
//
// Plain C++ with no torch headers, so that .cu files can include it.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace fastseg {
namespace permutohedral {

// a * b, never fused with a following add into one FMA. nvcc fuses by
// default (-fmad=true) and x86-64 host compilers cannot (no FMA in the
// baseline ISA); keeping every product separately rounded on the device
// makes the CUDA lattice bit-identical to the CPU one (same simplices, so
// the same vertices) and its filter outputs identical too.
FASTSEG_HOST_DEVICE inline float mul_unfused(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FASTSEG_HOST_DEVICE inline double mul_unfused(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// The factor that turns the mass-preserving splat/blur/slice into the
// unnormalised Gaussian sum sum_j exp(-|f_i - f_j|^2 / 2) v_j: a unit
// Gaussian integrates to (2 pi)^(d/2) and a lattice cell covers
// (3/2)^(d/2) / sqrt(d+1) units of feature volume (see lattice_scale in the
// reference for the derivation).
inline double lattice_scale(int d) {
  constexpr double pi = 3.14159265358979323846;
  return std::pow(4.0 * pi / 3.0, d / 2.0) * std::sqrt(d + 1.0);
}

// Column j of the lift is (1, ..., 1, -(j+1), 0, ..., 0) / sqrt((j+1)(j+2)),
// orthonormal, times sqrt(2/3)(d+1) so that the lattice's [1/4 1/2 1/4]
// blur along its d+1 directions is a unit Gaussian.
template <typename scalar_t>
FASTSEG_HOST_DEVICE scalar_t lift_scale(int d, int j) {
  return static_cast<scalar_t>(std::sqrt(2.0 / 3.0) * (d + 1) / std::sqrt((j + 1.0) * (j + 2.0)));
}

// The simplex that holds one point: rem0 (the remainder-0 vertex it starts
// from), rank (the order of the point's residuals, a permutation of 0..d)
// and barycentric (the weight of each of the d+1 corners).
//
// elevated, rem0, rank: d+1 entries; barycentric: d+2 entries of scratch,
// the first d+1 of which hold the result.
template <typename scalar_t>
FASTSEG_HOST_DEVICE void lift(const scalar_t* feature, int d, scalar_t* elevated) {
  scalar_t suffix = 0;  // sum of the scaled features after j
  for (int j = d; j >= 1; --j) {
    const scalar_t scaled = mul_unfused(feature[j - 1], lift_scale<scalar_t>(d, j - 1));
    elevated[j] = suffix - mul_unfused(static_cast<scalar_t>(j), scaled);
    suffix += scaled;
  }
  elevated[0] = suffix;
}

// Branch-free where the data decides (which way to round, how residuals
// compare): those branches go either way at random and mispredicting them
// cost more than all the arithmetic. The results are bit for bit those of
// the reference's formulas.
template <typename scalar_t>
FASTSEG_HOST_DEVICE void enclosing_simplex(const scalar_t* elevated, int d, int32_t* rem0, int32_t* rank,
                                           scalar_t* barycentric) {
  const scalar_t step = static_cast<scalar_t>(d + 1);
  int32_t excess = 0;  // (sum of rem0) / (d+1): how far rem0 lies off the hyperplane
  for (int i = 0; i <= d; ++i) {
    // The nearest multiple of d+1, ties down: floor by truncation (the
    // coordinates fit int32, see _MAX_LIFTED), then one step up
    // where that is strictly nearer, as the reference's ceil/floor choice.
    const scalar_t scaled = elevated[i] / step;
    int32_t down = static_cast<int32_t>(scaled);
    down -= scaled < static_cast<scalar_t>(down);
    const int32_t nearest = down + (mul_unfused(static_cast<scalar_t>(down + 1), step) - elevated[i] <
                                     elevated[i] - mul_unfused(static_cast<scalar_t>(down), step));
    rem0[i] = nearest * (d + 1);
    excess += nearest;
    rank[i] = 0;
  }
  // Ties go to the lower index, so that the ranks are a permutation.
  for (int i = 0; i < d; ++i) {
    const scalar_t residual = elevated[i] - rem0[i];
    for (int j = i + 1; j <= d; ++j) {
      const int32_t below = residual < elevated[j] - rem0[j];
      rank[i] += below;
      rank[j] += 1 - below;
    }
  }
  for (int i = 0; i <= d + 1; ++i) barycentric[i] = 0;
  for (int i = 0; i <= d; ++i) {
    // rem0 need not lie on the hyperplane: walk it back, wrapping the ranks
    // that leave 0..d around (by one multiple of d+1 at most).
    const int32_t shifted = rank[i] + excess;
    const int32_t wrap = static_cast<int32_t>(shifted < 0) - static_cast<int32_t>(shifted > d);
    rank[i] = shifted + wrap * (d + 1);
    rem0[i] += wrap * (d + 1);
    const scalar_t residual = (elevated[i] - rem0[i]) / step;
    barycentric[d - rank[i]] += residual;
    barycentric[d - rank[i] + 1] -= residual;
  }
  barycentric[0] += 1 + barycentric[d + 1];
}

// Coordinate i of corner r of the simplex: r added to rem0 where
// rank <= d - r, r - (d+1) elsewhere.
FASTSEG_HOST_DEVICE inline int32_t corner_coordinate(const int32_t* rem0, const int32_t* rank, int d, int r, int i) {
  return rem0[i] + (rank[i] <= d - r ? r : r - (d + 1));
}

// The first d integer coordinates of corner r of the simplex (the last
// follows: they sum to 0).
FASTSEG_HOST_DEVICE inline void corner_key(const int32_t* rem0, const int32_t* rank, int d, int r, int32_t* key) {
  for (int i = 0; i < d; ++i) key[i] = corner_coordinate(rem0, rank, d, r, i);
}

// The key of a neighbour of `key` along lattice direction j: every
// coordinate moves by -sign except j, which moves by sign*d (direction d
// moves the implicit last coordinate by sign*d). Slot 0 of a vertex's
// neighbours is sign +1, slot 1 sign -1, as in the reference.
FASTSEG_HOST_DEVICE inline void neighbor_key(const int32_t* key, int d, int j, int sign, int32_t* out) {
  for (int i = 0; i < d; ++i) out[i] = key[i] + sign * (i == j ? d : -1);
}

// A 64-bit hash of a d-coordinate key for open addressing: each coordinate
// times its own odd constant (independent multiplications that overlap,
// rather than a chain through every coordinate), then splitmix64's finaliser
// to mix the sum into the low bits that pick the slot.
FASTSEG_HOST_DEVICE inline uint64_t hash_key(const int32_t* key, int d) {
  uint64_t h = 0, factor = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < d; ++i) {
    h += static_cast<uint32_t>(key[i]) * factor;
    factor *= 0xBF58476D1CE4E5B9ull;
  }
  h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
  h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
  return h ^ (h >> 31);
}

}  // namespace permutohedral
}  // namespace fastseg
