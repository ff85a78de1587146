// The loops of fastseg_C::dense_crf_mean_field on the CPU, written once for
// vectors of kVectorBytes bytes. dense_crf.cpp includes this file twice, each
// time inside a namespace that defines kVectorBytes (16: SSE2 or NEON, 32:
// AVX2 with FMA, under `#pragma GCC target`), and picks one at run time; so
// no include guard, and no includes of its own (they would land inside the
// namespace): dense_crf.cpp includes what it needs first.
//
// Rows of `width` scalars (the labels, padded to a whole number of 32-byte
// vectors) are processed in blocks of at most four vectors whose count is a
// compile-time constant, so a block's accumulators stay in registers across
// the loop over corners; the number of labels itself stays a run-time value.
// GCC/Clang vector extensions (the build's flags are GCC/Clang's already).

template <typename scalar_t>
struct Simd {
  typedef scalar_t vec __attribute__((vector_size(kVectorBytes)));
  // The same, at any address a scalar may have: rows are not vector-aligned.
  typedef scalar_t unaligned __attribute__((vector_size(kVectorBytes), aligned(sizeof(scalar_t)), may_alias));
  static constexpr int lanes = kVectorBytes / sizeof(scalar_t);

  static vec load(const scalar_t* p) { return *reinterpret_cast<const unaligned*>(p); }
  static void store(scalar_t* p, vec v) { *reinterpret_cast<unaligned*>(p) = v; }
  // A scalar in an operation with a vector is broadcast: one vbroadcastss
  // (from memory where x is loaded), where a loop over the lanes compiles to
  // a chain of inserts. x - 0 is x for every x, -0 included, so the
  // subtraction goes; 0 + x is not (0 + -0 = +0), and stayed, an add on
  // every corner's weight: 4% of an iteration.
  static vec broadcast(scalar_t x) { return x - vec{}; }
};

// Calls body(Block<N>{first}) for consecutive blocks of at most four vectors
// that cover vectors [0, count) of a row.
template <int N>
struct Block {
  static constexpr int size = N;
  int first;
};

template <typename Body>
inline void for_each_block(int count, const Body& body) {
  int first = 0;
  for (; count - first >= 4; first += 4) body(Block<4>{first});
  switch (count - first) {
    case 3: return body(Block<3>{first});
    case 2: return body(Block<2>{first});
    case 1: return body(Block<1>{first});
  }
}

// exp(-y) lane by lane, for y >= 0 (+inf included: the padding's energy).
// float: Cephes' expf (range reduction by ln 2 split in two parts, a
// degree-6 polynomial, ~1 ulp), vectorised where std::exp would be called
// once per lane. y is clamped to 87 first: exp(-87) ~ 1.6e-38 is about the
// least normal float, and anything below is 0 to every sum it enters.
// double: std::exp per lane, for the precision double is asked for.
template <typename scalar_t>
__attribute__((always_inline)) inline typename Simd<scalar_t>::vec exp_negative(typename Simd<scalar_t>::vec y) {
  using vec = typename Simd<scalar_t>::vec;
  if constexpr (std::is_same_v<scalar_t, float>) {
    typedef int32_t ivec __attribute__((vector_size(kVectorBytes)));
    const vec limit = Simd<float>::broadcast(87.0f);
    const vec x = -(y < limit ? y : limit);
    const vec n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln 2): 1.5 * 2^23 trick
    const vec r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vec p = Simd<float>::broadcast(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    // times 2^n, n in [-126, 0], added to the exponent bits
    return (vec)((ivec)p + (__builtin_convertvector(n, ivec) << 23));
  } else {
    vec out;
    for (int i = 0; i < Simd<scalar_t>::lanes; ++i) out[i] = std::exp(-y[i]);
    return out;
  }
}

// ln x lane by lane, for normal x > 0 (the probabilities' unary: they are
// clipped to kProbabilityClip first). float: Cephes' logf (x = m 2^e with m
// in [sqrt(1/2), sqrt(2)), a degree-9 polynomial in m - 1, ~1 ulp),
// vectorised as exp_negative is; double: std::log per lane.
template <typename scalar_t>
__attribute__((always_inline)) inline typename Simd<scalar_t>::vec log_positive(typename Simd<scalar_t>::vec x) {
  using vec = typename Simd<scalar_t>::vec;
  if constexpr (std::is_same_v<scalar_t, float>) {
    typedef int32_t ivec __attribute__((vector_size(kVectorBytes)));
    const ivec bits = (ivec)x;
    vec e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, vec);
    vec m = (vec)((bits & 0x007fffff) | 0x3f000000);  // in [1/2, 1)
    const auto small = m < 0.707106781186547524f;      // lanes of all ones where true
    e -= (vec)((ivec)Simd<float>::broadcast(1.0f) & (ivec)small);
    m = m + (vec)((ivec)m & (ivec)small) - 1.0f;        // m - 1, or 2m - 1 where m was small
    const vec z = m * m;
    vec y = Simd<float>::broadcast(7.0376836292e-2f);
    y = y * m - 1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m - 1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m - 1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m - 2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
    return m + y + 0.693359375f * e;
  } else {
    vec out;
    for (int i = 0; i < Simd<scalar_t>::lanes; ++i) out[i] = std::log(x[i]);
    return out;
  }
}

// Splat vertices [begin, end) of a kernel: each vertex's row is the sum of
// its corners' weights times their pixels' rows of q, read in splat order
// (a gather: no two tasks write one row, and the sum's order is fixed).
template <typename scalar_t>
void splat(const KernelLattice<scalar_t>& kernel, const scalar_t* q, int width, int64_t begin, int64_t end,
           scalar_t* out) {
  using S = Simd<scalar_t>;
  for (int64_t v = begin; v < end; ++v) {
    const int32_t first = kernel.vertex_start[v], last = kernel.vertex_start[v + 1];
    for_each_block(width / S::lanes, [&](auto block) {
      constexpr int n = decltype(block)::size;
      auto add = [&](int32_t e, typename S::vec* sum) {
        // The row kSplatLookahead corners ahead is fetched while this one is
        // summed: a vertex's pixels are scattered over the image, and
        // waiting for each row in turn would cost more than the arithmetic.
        if (block.first == 0) {
          const scalar_t* ahead = q + static_cast<int64_t>(kernel.splat_pixel[e + kSplatLookahead]) * width;
          __builtin_prefetch(ahead);
          __builtin_prefetch(ahead + width - 1);  // a row may end in the next cache line
        }
        const typename S::vec w = S::broadcast(kernel.splat_weight[e]);
        const scalar_t* row = q + static_cast<int64_t>(kernel.splat_pixel[e]) * width + block.first * S::lanes;
        for (int i = 0; i < n; ++i) sum[i] += w * S::load(row + i * S::lanes);
      };
      // Two sums, of the even and of the odd corners: with one, each corner
      // would wait for the previous one's multiply-add (a vertex of a
      // photograph's bilateral lattice gathers ~70 corners).
      typename S::vec even[n] = {}, odd[n] = {};
      int32_t e = first;
      for (; e + 1 < last; e += 2) {
        add(e, even);
        add(e + 1, odd);
      }
      if (e < last) add(e, even);
      for (int i = 0; i < n; ++i) S::store(out + v * width + (block.first + i) * S::lanes, even[i] + odd[i]);
    });
  }
}

// [1/4 1/2 1/4] along one lattice direction, times `factor`, for vertices
// [begin, end); row M of `in` is the zero that absent neighbours (-1) read.
template <typename scalar_t>
void blur(const scalar_t* in, const int32_t* neighbors, int64_t vertices, int width, scalar_t factor,
          int64_t begin, int64_t end, scalar_t* out) {
  using S = Simd<scalar_t>;
  const typename S::vec half = S::broadcast(factor / 2), quarter = S::broadcast(factor / 4);
  for (int64_t v = begin; v < end; ++v) {
    const int32_t before = neighbors[2 * v], after = neighbors[2 * v + 1];
    const scalar_t* a = in + (before < 0 ? vertices : before) * width;
    const scalar_t* b = in + (after < 0 ? vertices : after) * width;
    const scalar_t* self = in + v * width;
    for (int at = 0; at < width; at += S::lanes) {
      S::store(out + v * width + at, half * S::load(self + at) + quarter * (S::load(a + at) + S::load(b + at)));
    }
  }
}

// out[v] = in[v] @ matrix for vertices [begin, end): a compatibility matrix
// applied on the lattice, where there are fewer rows than pixels (the slice
// is linear, so slicing and multiplying commute).
template <typename scalar_t>
void mix_labels(const scalar_t* in, const scalar_t* matrix, int labels, int width, int64_t begin, int64_t end,
                scalar_t* out) {
  using S = Simd<scalar_t>;
  for (int64_t v = begin; v < end; ++v) {
    for_each_block(width / S::lanes, [&](auto block) {
      constexpr int n = decltype(block)::size;
      typename S::vec sum[n] = {};
      for (int l = 0; l < labels; ++l) {
        const typename S::vec x = S::broadcast(in[v * width + l]);
        const scalar_t* row = matrix + l * width + block.first * S::lanes;
        for (int i = 0; i < n; ++i) sum[i] += x * S::load(row + i * S::lanes);
      }
      for (int i = 0; i < n; ++i) S::store(out + v * width + (block.first + i) * S::lanes, sum[i]);
    });
  }
}

// body(kernel, k, begin, end) over the vertices of every kernel k that
// `which` picks, in one parallel region; work(kernel): scalar operations
// per vertex.
template <typename scalar_t, typename Which, typename Work, typename Body>
void for_vertices(const std::vector<KernelLattice<scalar_t>>& kernels, const Which& which, const Work& work,
                  const Body& body) {
  std::vector<Span> spans;
  for (size_t k = 0; k < kernels.size(); ++k) {
    if (which(k)) add_spans(spans, static_cast<int>(k), kernels[k].vertices, work(kernels[k]));
  }
  parallel_spans(spans, [&](const Span& span) { body(kernels[span.part], span.part, span.begin, span.end); });
}

// Blur pass j of a kernel for vertices [begin, end), from `in` to `out`; a
// Potts weight is a factor on the last pass.
template <typename scalar_t>
void blur_direction(const KernelLattice<scalar_t>& kernel, int j, const scalar_t* in, int width, int64_t begin,
                    int64_t end, scalar_t* out) {
  const bool potts_now = j == kernel.corners - 1 && kernel.matrix == nullptr;
  blur(in, kernel.neighbors + j * kernel.vertices * 2, kernel.vertices, width,
       potts_now ? kernel.potts_factor : scalar_t(1), begin, end, out);
}

// The kernels each thread blurs, every kernel whole on one thread (the
// largest first, each to the thread with the least work so far), or nothing
// where that would be uneven: more threads than kernels, or a thread with a
// quarter more than an even share of the work (one lattice far larger than
// the others, as a noise image's bilateral one is; then the passes are split
// among the threads).
template <typename scalar_t>
std::vector<std::vector<int>> blur_owners(const std::vector<KernelLattice<scalar_t>>& kernels) {
  const int threads = at::get_num_threads();
  if (threads > static_cast<int>(kernels.size())) return {};
  std::vector<int> largest_first(kernels.size());
  std::iota(largest_first.begin(), largest_first.end(), 0);
  const auto work = [&](int k) { return kernels[k].corners * kernels[k].vertices; };
  std::stable_sort(largest_first.begin(), largest_first.end(), [&](int a, int b) { return work(a) > work(b); });
  std::vector<std::vector<int>> owners(threads);
  std::vector<int64_t> load(threads, 0);
  int64_t total = 0;
  for (const int k : largest_first) {
    const int64_t t = std::min_element(load.begin(), load.end()) - load.begin();
    owners[t].push_back(k);
    load[t] += work(k);
    total += work(k);
  }
  if (4 * threads * *std::max_element(load.begin(), load.end()) > 5 * total) return {};
  return owners;
}

// Every kernel's messages, ready to slice: splat q, blur along every
// direction, and fold in the compatibility (and the lattice's scale) on the
// way out. The kernels go through each step together, one parallel region
// per step (or, for the blur, one for all its passes: see blur_owners()).
// Returns the buffers that hold the messages.
template <typename scalar_t>
std::vector<const scalar_t*> messages(const std::vector<KernelLattice<scalar_t>>& kernels, const scalar_t* q,
                                      int labels, int width) {
  const auto every = [](size_t) { return true; };
  std::vector<scalar_t*> current, spare;
  int directions = 0;
  for (const KernelLattice<scalar_t>& kernel : kernels) {
    current.push_back(kernel.values);
    spare.push_back(kernel.spare);
    directions = std::max(directions, kernel.corners);
  }
  const auto splat_work = [&](const auto& kernel) {
    return kernel.corners * kernel.pixels / std::max<int64_t>(1, kernel.vertices) * width;
  };
  for_vertices(kernels, every, splat_work, [&](const auto& kernel, int k, int64_t begin, int64_t end) {
    splat(kernel, q, width, begin, end, current[k]);
  });
  const std::vector<std::vector<int>> owners = blur_owners(kernels);
  if (!owners.empty()) {
    // Each kernel's passes run on one thread from first to last, so its
    // rows stay in one core's cache. Split among the threads, each pass's
    // rows moved from core to core (the writes waited for lines the other
    // core held), and two threads blurred a VOC photograph's lattices no
    // faster than one.
    at::parallel_for(0, static_cast<int64_t>(owners.size()), 1, [&](int64_t first, int64_t last) {
      for (int64_t t = first; t < last; ++t) {
        for (const int k : owners[t]) {
          for (int j = 0; j < kernels[k].corners; ++j) {
            blur_direction(kernels[k], j, current[k], width, 0, kernels[k].vertices, spare[k]);
            std::swap(current[k], spare[k]);
          }
        }
      }
    });
  } else {
    for (int j = 0; j < directions; ++j) {
      const auto has_direction = [&](size_t k) { return j < kernels[k].corners; };
      const auto blur_work = [&](const auto&) { return 3 * width; };
      for_vertices(kernels, has_direction, blur_work, [&](const auto& kernel, int k, int64_t begin, int64_t end) {
        blur_direction(kernel, j, current[k], width, begin, end, spare[k]);
      });
      for (size_t k = 0; k < kernels.size(); ++k) {
        if (has_direction(k)) std::swap(current[k], spare[k]);
      }
    }
  }
  const auto has_matrix = [&](size_t k) { return kernels[k].matrix != nullptr; };
  const auto mix_work = [&](const auto&) { return labels * width; };
  for_vertices(kernels, has_matrix, mix_work, [&](const auto& kernel, int k, int64_t begin, int64_t end) {
    mix_labels(current[k], kernel.matrix, labels, width, begin, end, spare[k]);
  });
  for (size_t k = 0; k < kernels.size(); ++k) {
    if (has_matrix(k)) std::swap(current[k], spare[k]);
  }
  return {current.begin(), current.end()};
}

// The sum, or the minimum, of a vector's lanes, as a tree: log2(lanes) steps
// in a row instead of lanes - 1 (this ends a chain that every pixel waits on).
template <typename scalar_t>
inline scalar_t reduce_lanes(typename Simd<scalar_t>::vec v, bool minimum) {
  for (int half = Simd<scalar_t>::lanes / 2; half >= 1; half /= 2) {
    for (int i = 0; i < half; ++i) v[i] = minimum ? std::min(v[i], v[i + half]) : v[i] + v[i + half];
  }
  return v[0];
}

// e[0, count): one row of energies, replaced by softmax(-e) =
// exp(-(e - min)) / sum over the labels. Padding lanes hold +inf energy
// (never the minimum) and get weight 0 from the mask. count is a
// compile-time constant where the row is one block (then e is in registers).
template <typename scalar_t, typename Count>
inline void softmax_negative(typename Simd<scalar_t>::vec* e, Count count, const scalar_t* mask) {
  using S = Simd<scalar_t>;
  typename S::vec low = e[0];
  for (int i = 1; i < count; ++i) low = e[i] < low ? e[i] : low;
  const scalar_t minimum = reduce_lanes<scalar_t>(low, true);
  typename S::vec total = {};
  for (int i = 0; i < count; ++i) {
    e[i] = exp_negative<scalar_t>(e[i] - minimum) * S::load(mask + i * S::lanes);
    total += e[i];
  }
  const scalar_t inverse = 1 / reduce_lanes<scalar_t>(total, false);
  for (int i = 0; i < count; ++i) e[i] *= inverse;
}

// A square of Simd::lanes vectors transposed in registers: lane j of vector
// i goes to lane i of vector j. Round h swaps the upper-right and lower-left
// h x h blocks inside every 2h x 2h block, for h = lanes/2 down to 1, two
// shuffles per pair of vectors; after all rounds element (i, j) is at (j, i).
// Moving a square between rows and label planes this way takes lanes vector
// loads and lanes vector stores where a scalar at a time took lanes^2 of
// each: in a profile of the first pass, the two scalar transpositions had
// about 60% of its samples. In-process A/B, VOC photo, one thread: the
// unary, Q_0 and the lists 25.1 -> 21.0 ms.
// GCC's own shuffle builtin, which every GCC has (__builtin_shufflevector
// came with GCC 12), or Clang's.
template <typename vec, size_t... lane>
__attribute__((always_inline)) inline vec shuffle(vec a, vec b) {
#if defined(__clang__)
  return __builtin_shufflevector(a, b, lane...);
#else
  typedef std::conditional_t<sizeof(a[0]) == 8, int64_t, int32_t> index_t;
  typedef index_t mask __attribute__((vector_size(sizeof(vec))));
  return __builtin_shuffle(a, b, mask{static_cast<index_t>(lane)...});
#endif
}

template <typename vec, int h, size_t... lane>
__attribute__((always_inline)) inline void swap_blocks(vec& a, vec& b, std::index_sequence<lane...>) {
  constexpr size_t n = sizeof...(lane);
  const vec upper = shuffle<vec, ((lane & h) ? n + lane - h : lane)...>(a, b);
  b = shuffle<vec, ((lane & h) ? n + lane : lane + h)...>(a, b);
  a = upper;
}

template <typename scalar_t, int h = Simd<scalar_t>::lanes / 2>
__attribute__((always_inline)) inline void transpose_square(typename Simd<scalar_t>::vec* square) {
  constexpr int lanes = Simd<scalar_t>::lanes;
  for (int i = 0; i < lanes; ++i) {
    if ((i & h) == 0) {
      swap_blocks<typename Simd<scalar_t>::vec, h>(square[i], square[i + h], std::make_index_sequence<lanes>{});
    }
  }
  if constexpr (h > 1) transpose_square<scalar_t, h / 2>(square);
}

// A square moved between pixel rows and label planes, transposed: lane j of
// source vector i (at src + i * src_stride) goes to lane i of destination
// vector j (at dst + j * dst_stride). Only the first src_vectors source
// vectors are read (the rest count as 0: labels past the last) and the first
// dst_vectors destination vectors written (planes past the last label).
template <typename scalar_t>
__attribute__((always_inline)) inline void move_square(const scalar_t* src, int64_t src_stride, int src_vectors,
                                                       scalar_t* dst, int64_t dst_stride, int dst_vectors) {
  using S = Simd<scalar_t>;
  typename S::vec square[S::lanes];
  for (int i = 0; i < S::lanes; ++i) square[i] = i < src_vectors ? S::load(src + i * src_stride) : typename S::vec{};
  transpose_square<scalar_t>(square);
  for (int i = 0; i < S::lanes && i < dst_vectors; ++i) S::store(dst + i * dst_stride, square[i]);
}

// Pixels [begin, end) in tiles of at most kTilePixels that do not cross an
// image: body(first, last) per tile. A tile's rows fit in the L1 cache, so
// the transposition between rows [pixel, label] and planes [label, pixel]
// goes through it in runs of kTilePixels contiguous values (a pixel at a time,
// it would be one store or load per label plane, a page apart).
template <typename Body>
inline void for_each_tile(int64_t begin, int64_t end, int64_t image_pixels, const Body& body) {
  for (int64_t first = begin; first < end;) {
    const int64_t last = std::min({first + kTilePixels, end, (first / image_pixels + 1) * image_pixels});
    body(first, last);
    first = last;
  }
}

// The unary rows of pixels [first, last) (one tile of one image) from the
// scores (the unary itself, -log max(p, clip) of probabilities, or
// -log softmax of logits; +inf in the padding), and Q_0 = softmax(-unary)
// in the same rows of q. For logits and probabilities Q_0 comes on the way,
// without an exp of its own: softmax(-unary) is softmax of the logits, whose
// exps the unary's log-sum-exp makes, or the clipped probabilities
// normalised.
template <typename scalar_t>
void first_rows(const MeanFieldArgs<scalar_t>& args, int64_t first, int64_t last, scalar_t* q) {
  using S = Simd<scalar_t>;
  using vec = typename S::vec;
  const MeanFieldScores<scalar_t>& scores = args.scores;
  const int width = args.width, labels = args.labels;
  const int64_t image = first / args.image_pixels;
  const scalar_t* in =
      scores.data + image * scores.image_stride + (first - image * args.image_pixels) * scores.pixel_stride;
  scalar_t* rows = args.unary + first * width;
  const int64_t count = last - first;
  int64_t squared = 0;  // pixels moved a square at a time
  if (scores.pixel_stride == 1) {  // label planes (the logits' own layout)
    for (; squared + S::lanes <= count; squared += S::lanes) {
      for (int l = 0; l < labels; l += S::lanes) {  // the padding is filled below
        move_square(in + l * scores.label_stride + squared, scores.label_stride, labels - l,
                    rows + squared * width + l, width, S::lanes);
      }
    }
  }
  for (int l = 0; l < labels; ++l) {
    for (int64_t p = squared; p < count; ++p) {
      rows[p * width + l] = in[p * scores.pixel_stride + l * scores.label_stride];
    }
  }
  constexpr scalar_t infinity = std::numeric_limits<scalar_t>::infinity();
  for (int64_t p = 0; p < count; ++p) {
    scalar_t* row = rows + p * width;
    scalar_t* q_row = q + (first + p) * width;
    vec total = {};
    if (scores.kind == ScoreKind::kProbabilities) {
      std::fill(row + labels, row + width, scalar_t(1));  // finite, for the mask to zero
      const vec clip = S::broadcast(static_cast<scalar_t>(kProbabilityClip));
      for (int at = 0; at < width; at += S::lanes) {
        const vec x = S::load(row + at), clipped = x > clip ? x : clip;
        S::store(row + at, -log_positive<scalar_t>(clipped));
        S::store(q_row + at, clipped * S::load(args.mask + at));
        total += S::load(q_row + at);
      }
    } else if (scores.kind == ScoreKind::kLogits) {
      // -log softmax = log sum exp(x - max) + max - x; padding lanes are -inf
      // here, so they are never the maximum, and the mask zeroes their terms.
      std::fill(row + labels, row + width, -infinity);
      vec high = S::load(row);
      for (int at = S::lanes; at < width; at += S::lanes) high = S::load(row + at) > high ? S::load(row + at) : high;
      const scalar_t maximum = -reduce_lanes<scalar_t>(-high, true);
      for (int at = 0; at < width; at += S::lanes) {
        S::store(q_row + at, exp_negative<scalar_t>(maximum - S::load(row + at)) * S::load(args.mask + at));
        total += S::load(q_row + at);
      }
      const scalar_t shift = std::log(reduce_lanes<scalar_t>(total, false)) + maximum;
      for (int at = 0; at < width; at += S::lanes) S::store(row + at, shift - S::load(row + at));
    } else {
      // exp(-(u - min)): padding lanes are +inf, never the minimum, and get
      // weight 0 from the mask.
      std::fill(row + labels, row + width, infinity);
      vec low = S::load(row);
      for (int at = S::lanes; at < width; at += S::lanes) low = S::load(row + at) < low ? S::load(row + at) : low;
      const scalar_t minimum = reduce_lanes<scalar_t>(low, true);
      for (int at = 0; at < width; at += S::lanes) {
        S::store(q_row + at, exp_negative<scalar_t>(S::load(row + at) - minimum) * S::load(args.mask + at));
        total += S::load(q_row + at);
      }
    }
    const vec inverse = S::broadcast(1 / reduce_lanes<scalar_t>(total, false));
    for (int at = 0; at < width; at += S::lanes) S::store(q_row + at, S::load(q_row + at) * inverse);
    std::fill(row + labels, row + width, infinity);
  }
}

// Rows of q [first, last) (one tile of one image) to the result's label planes.
template <typename scalar_t>
void write_planes(const MeanFieldArgs<scalar_t>& args, const scalar_t* q, int64_t first, int64_t last) {
  const int64_t image = first / args.image_pixels;
  scalar_t* out = args.result + image * args.labels * args.image_pixels + (first - image * args.image_pixels);
  using S = Simd<scalar_t>;
  int64_t p = first;
  for (; p + S::lanes <= last; p += S::lanes) {
    for (int l = 0; l < args.labels; l += S::lanes) {
      move_square(q + p * args.width + l, args.width, S::lanes, out + l * args.image_pixels + (p - first),
                  args.image_pixels, args.labels - l);
    }
  }
  for (int l = 0; l < args.labels; ++l) {
    for (int64_t rest = p; rest < last; ++rest) out[l * args.image_pixels + (rest - first)] = q[rest * args.width + l];
  }
}

// For every pixel: the energy, its unary plus each kernel's messages sliced
// with the pixel's weights, then Q = softmax(-energy) over the labels,
// written to the padded rows of q and, after the last iteration, to the
// result's label planes.
template <typename scalar_t>
void update_q(const MeanFieldArgs<scalar_t>& args, const std::vector<const scalar_t*>& messages, bool last,
              scalar_t* q) {
  using S = Simd<scalar_t>;
  using vec = typename S::vec;
  const int width = args.width, vectors = width / S::lanes;
  int64_t work = width;
  for (size_t k = 0; k < messages.size(); ++k) work += args.kernels[k].corners * width;
  parallel_blocks(args.pixels, work, [&](int64_t begin, int64_t end) {
    // The energies of a row longer than one block. Not a std::vector: its
    // members are compiled once, for the baseline CPU, and vec may be wider.
    const std::unique_ptr<vec[]> row(vectors > 4 ? new vec[vectors] : nullptr);
    // One block of pixel p's energy: its unary plus every kernel's slice.
    auto energy = [&](int64_t p, auto block, vec* sum) {
      constexpr int n = decltype(block)::size;
      const int offset = block.first * S::lanes;
      for (int i = 0; i < n; ++i) sum[i] = S::load(args.unary + p * width + offset + i * S::lanes);
      // No prefetching here, unlike splat(): neighbouring pixels slice nearby
      // vertices, whose rows the cache holds (fetching them early cost 5%).
      for (size_t k = 0; k < messages.size(); ++k) {
        const KernelLattice<scalar_t>& kernel = args.kernels[k];
        for (int r = 0; r < kernel.corners; ++r) {
          const int64_t corner = p * kernel.corners + r;
          const vec w = S::broadcast(kernel.slice_weight[corner]);
          const scalar_t* slice = messages[k] + static_cast<int64_t>(kernel.vertex_of[corner]) * width + offset;
          for (int i = 0; i < n; ++i) sum[i] += w * S::load(slice + i * S::lanes);
        }
      }
    };
    auto store = [&](int64_t p, const vec* e, int count) {
      for (int i = 0; i < count; ++i) S::store(q + p * width + i * S::lanes, e[i]);
    };
    for_each_tile(begin, end, args.image_pixels, [&](int64_t first, int64_t stop) {
      for (int64_t p = first; p < stop; ++p) {
        if (vectors <= 4) {  // one block: the row stays in registers
          for_each_block(vectors, [&](auto block) {
            vec sum[decltype(block)::size];
            energy(p, block, sum);
            softmax_negative<scalar_t>(sum, std::integral_constant<int, decltype(block)::size>{}, args.mask);
            store(p, sum, decltype(block)::size);
          });
        } else {
          for_each_block(vectors, [&](auto block) { energy(p, block, row.get() + block.first); });
          softmax_negative<scalar_t>(row.get(), vectors, args.mask);
          store(p, row.get(), vectors);
        }
      }
      if (last) write_planes(args, q, first, stop);
    });
  });
}

// The unary from the scores and Q_0 = softmax(-unary) in one pass, then
// `iterations` times Q <- softmax(-unary - messages(Q)), in the padded rows of
// q; the last Q goes to the result.
template <typename scalar_t>
void mean_field(const MeanFieldArgs<scalar_t>& args, scalar_t* q) {
  parallel_blocks(args.pixels, 4 * args.width, [&](int64_t begin, int64_t end) {
    for_each_tile(begin, end, args.image_pixels, [&](int64_t first, int64_t stop) {
      first_rows(args, first, stop, q);
      if (args.iterations == 0) write_planes(args, q, first, stop);
    });
  });
  for (int64_t it = 0; it < args.iterations; ++it) {
    update_q(args, messages(args.kernels, q, args.labels, args.width), it == args.iterations - 1, q);
  }
}
