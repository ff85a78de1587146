// CPU kernels of fastseg::max_unpool2d and fastseg::max_unpool2d_backward,
// and their registration for the CPU dispatch key.
//
// Flat (int64) indices follow torch.nn.MaxUnpool2d: a zero-filled output and a
// scatter, planes in parallel, each plane in row-major input order so that
// the last of duplicate indices wins, as in PyTorch's CPU kernel. Compact
// (uint8) indices are unpooled as a dense gather (see pool_window.h), or,
// where the windows tile the output (SegNet's 2x2 pools), as a walk over the
// source writing each window's block; the backward of both as a gather from
// grad_output.
#include "../max_unpool2d.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../pool_window.h"
#include "parallel.h"

namespace fastseg {
namespace {

// Calls body(n, c, h, w, offset) once for every element of a dense [N, C, H, W]
// tensor, in its memory order (NCHW or NHWC), in parallel. body returns true
// when it saw an invalid index; the result is whether any call did.
template <typename Body>
bool parallel_for_dense(Dims4<int64_t> size, bool channels_last, const Body& body) {
  std::atomic<bool> any_bad{false};
  if (!channels_last) {
    const int64_t plane = size.h * size.w;
    at::parallel_for(0, size.n * size.c, grain_for(plane), [&](int64_t begin, int64_t end) {
      bool bad = false;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / size.c, c = p % size.c;
        int64_t offset = p * plane;
        for (int64_t h = 0; h < size.h; ++h) {
          for (int64_t w = 0; w < size.w; ++w) bad |= body(n, c, h, w, offset++);
        }
      }
      if (bad) any_bad.store(true, std::memory_order_relaxed);
    });
  } else {
    const int64_t row = size.w * size.c;
    at::parallel_for(0, size.n * size.h, grain_for(row), [&](int64_t begin, int64_t end) {
      bool bad = false;
      for (int64_t q = begin; q < end; ++q) {
        const int64_t n = q / size.h, h = q % size.h;
        int64_t offset = q * row;
        for (int64_t w = 0; w < size.w; ++w) {
          for (int64_t c = 0; c < size.c; ++c) bad |= body(n, c, h, w, offset++);
        }
      }
      if (bad) any_bad.store(true, std::memory_order_relaxed);
    });
  }
  return any_bad.load(std::memory_order_relaxed);
}

// output: dense and zero-filled, so that element (n, c, y, x) sits at
// n*out_stride.n + c*out_stride.c + (y*Wo + x)*out_stride.w.
template <typename word_t>
bool unpool_flat(const word_t* input,  // [N, C, Hi, Wi]
                 Dims4<int64_t> in_stride,
                 const int64_t* indices,  // [N, C, Hi, Wi]
                 Dims4<int64_t> idx_stride,
                 Dims4<int64_t> size,  // N, C, Hi, Wi
                 word_t* output,       // [N, C, Ho, Wo]
                 Dims4<int64_t> out_stride,
                 int64_t out_plane,
                 bool channels_last) {
  std::atomic<bool> any_bad{false};
  const int64_t plane = size.h * size.w;
  // Source and indices each one run per plane (NCHW).
  const bool dense_planes = in_stride.w == 1 && idx_stride.w == 1 && in_stride.h == size.w && idx_stride.h == size.w;
  at::parallel_for(0, size.n * size.c, grain_for(plane), [&](int64_t begin, int64_t end) {
    bool bad = false;
    // Element i of the runs of source pixels and indices at in, idx into the
    // plane at out.
    const auto scatter = [&](const word_t* in, const int64_t* idx, word_t* out, int64_t i) {
      const int64_t target = idx[i];
      if (target < 0 || target >= out_plane) {
        bad = true;
        return;
      }
      out[target * out_stride.w] = in[i];
    };
    // Element (n, c, h, w) from its four offsets. Dense NCHW planes are
    // walked by pointer instead, as PyTorch's kernel does: this ran at 0.6x
    // its speed there.
    const auto move = [&](int64_t n, int64_t c, int64_t h, int64_t w) {
      scatter(input + n * in_stride.n + c * in_stride.c + h * in_stride.h + w * in_stride.w,
              indices + n * idx_stride.n + c * idx_stride.c + h * idx_stride.h + w * idx_stride.w,
              output + n * out_stride.n + c * out_stride.c, 0);
    };
    // The task's planes as runs of channels of one image. Each plane is
    // visited in row-major (h, w) order either way; channels_last puts the
    // channels innermost so that the reads follow memory.
    for (int64_t p = begin; p < end;) {
      const int64_t n = p / size.c, c_begin = p % size.c;
      const int64_t c_end = std::min(size.c, c_begin + (end - p));
      if (channels_last) {
        for (int64_t h = 0; h < size.h; ++h)
          for (int64_t w = 0; w < size.w; ++w)
            for (int64_t c = c_begin; c < c_end; ++c) move(n, c, h, w);
      } else if (dense_planes) {
        for (int64_t c = c_begin; c < c_end; ++c) {
          const word_t* in = input + n * in_stride.n + c * in_stride.c;
          const int64_t* idx = indices + n * idx_stride.n + c * idx_stride.c;
          word_t* out = output + n * out_stride.n + c * out_stride.c;
          for (int64_t i = 0; i < plane; ++i) scatter(in, idx, out, i);
        }
      } else {
        for (int64_t c = c_begin; c < c_end; ++c)
          for (int64_t h = 0; h < size.h; ++h)
            for (int64_t w = 0; w < size.w; ++w) move(n, c, h, w);
      }
      p += c_end - c_begin;
    }
    if (bad) any_bad.store(true, std::memory_order_relaxed);
  });
  return any_bad.load(std::memory_order_relaxed);
}

// For every output position along one axis, its candidate windows o and their
// taps k, largest o first (CSR: entries first[pos] .. first[pos+1]-1), with
// the windows' offsets in the input and in the indices. Built once per call,
// so that the gather does no division per pixel.
struct AxisCandidates {
  std::vector<int64_t> first, o, tap, in_offset, idx_offset;

  AxisCandidates(
      const PoolAxis<int64_t>& axis, int64_t out_size, int64_t in_size, int64_t in_stride, int64_t idx_stride) {
    first.reserve(out_size + 1);
    auto add = [&](int64_t src, int64_t k) {
      o.push_back(src);
      tap.push_back(k);
      in_offset.push_back(src * in_stride);
      idx_offset.push_back(src * idx_stride);
    };
    for (int64_t pos = 0; pos < out_size; ++pos) {
      first.push_back(static_cast<int64_t>(o.size()));
      if (axis.disjoint()) {
        int64_t src, k;
        if (only_window(axis, pos, in_size, src, k)) add(src, k);
      } else {
        TapWalk<int64_t> walk(axis, pos);
        for (int64_t k = 0; k < axis.kernel && !walk.exhausted(); ++k, walk.next(axis)) {
          if (walk.hit(in_size)) add(walk.o, k);
        }
      }
    }
    first.push_back(static_cast<int64_t>(o.size()));
  }
};

// Windows that tile the output along an axis: kernel == stride, no padding,
// no dilation between taps, and the output at least in_size * kernel long.
// Then every window lies inside the output, output position p < in_size *
// kernel has the one window p / kernel, and the positions past them none.
bool tiles(const PoolAxis<int64_t>& axis, int64_t in_size, int64_t out_size) {
  return axis.kernel == axis.stride && axis.padding == 0 && (axis.dilation == 1 || axis.kernel == 1) &&
         out_size >= in_size * axis.kernel;
}

// x where `keep`, else 0, without a branch: which tap of a window holds the
// maximum is data, and a branch on it mispredicted about every other pixel
// (the walk below with a branch was 0.2-0.3x PyTorch's scatter on SegNet's
// pool4; without, 2x).
template <typename word_t>
inline word_t keep_if(word_t x, bool keep) {
  return x & static_cast<word_t>(word_t(0) - static_cast<word_t>(keep));
}

// One output row of one plane (NCHW): source row `in`, `idx` (elements
// in_step, idx_step apart), window row dy; true if an index names no tap.
// UNIT: both steps are 1, KW: the kernel width where it is 2 (SegNet's), so
// that the compiler vectorises the common case; 0: kw at run time. The
// indices stay uint8 and the tests 8-bit, which is what lets it.
template <typename word_t, bool UNIT, int KW>
bool tile_row_planar(const word_t* in, int64_t in_step, const uint8_t* idx, int64_t idx_step, int64_t in_w,
                     int64_t dy, int64_t runtime_kw, int64_t taps, word_t* out) {
  const int64_t kw = KW > 0 ? KW : runtime_kw;
  const uint8_t first_tap = static_cast<uint8_t>(dy * kw), last_valid = static_cast<uint8_t>(taps - 1);
  uint8_t bad = 0;
  for (int64_t iw = 0; iw < in_w; ++iw) {
    const uint8_t v = idx[UNIT ? iw : iw * idx_step];
    const word_t x = in[UNIT ? iw : iw * in_step];
    bad |= v > last_valid;
    for (int64_t dx = 0; dx < kw; ++dx) {
      out[iw * kw + dx] = keep_if(x, v == static_cast<uint8_t>(first_tap + dx));
    }
  }
  return bad != 0;
}

// One output row of an image (NHWC, [Wo, C]) from the source row's pixels
// (channel c of pixel iw at iw * in_stride.w + c * in_stride.c, the same for
// the indices), window row dy. UNIT: channels adjacent in both
// (channels_last sources), so that the loop over channels vectorises. The
// indices are checked once per window, on its first row.
template <typename word_t, bool UNIT>
bool tile_row_channels_last(const word_t* in, Dims4<int64_t> in_stride, const uint8_t* idx,
                            Dims4<int64_t> idx_stride, int64_t in_w, int64_t channels, int64_t dy, int64_t kw,
                            int64_t taps, word_t* out) {
  const uint8_t last_valid = static_cast<uint8_t>(taps - 1);
  uint8_t bad = 0;
  for (int64_t iw = 0; iw < in_w; ++iw) {
    const word_t* in_pixel = in + iw * in_stride.w;
    const uint8_t* idx_pixel = idx + iw * idx_stride.w;
    if (dy == 0) {
      for (int64_t c = 0; c < channels; ++c) bad |= idx_pixel[UNIT ? c : c * idx_stride.c] > last_valid;
    }
    for (int64_t dx = 0; dx < kw; ++dx) {
      word_t* out_pixel = out + (iw * kw + dx) * channels;
      const uint8_t tap = static_cast<uint8_t>(dy * kw + dx);
      for (int64_t c = 0; c < channels; ++c) {
        out_pixel[c] = keep_if(in_pixel[UNIT ? c : c * in_stride.c], idx_pixel[UNIT ? c : c * idx_stride.c] == tap);
      }
    }
  }
  return bad != 0;
}

// unpool_compact() where the windows tile the output along both axes (as
// SegNet's 2x2 pools do): a walk over the source rows, each writing its
// windows' blocks of output (the value where the index names the tap, 0
// elsewhere), then 0 in the rows and columns past the last window. The
// general gather looks its candidates up per output pixel, and ran at
// 0.07-0.08x PyTorch's scatter at SegNet's sizes. An index is valid iff it
// names a tap: every window lies inside the output.
template <typename word_t>
bool unpool_compact_tiles(const word_t* input,  // [N, C, Hi, Wi]
                          Dims4<int64_t> in_stride,
                          const uint8_t* indices,  // [N, C, Hi, Wi]
                          Dims4<int64_t> idx_stride,
                          Dims4<int64_t> in_size,
                          word_t* output,  // [N, C, Ho, Wo]
                          Dims4<int64_t> out_size,
                          bool channels_last,
                          int64_t kh,
                          int64_t kw) {
  const int64_t taps = kh * kw, covered_h = in_size.h * kh, covered_w = in_size.w * kw;
  std::atomic<bool> any_bad{false};
  if (!channels_last) {
    const int64_t plane = out_size.h * out_size.w;
    const bool unit = in_stride.w == 1 && idx_stride.w == 1;
    const auto row = unit && kw == 2 ? tile_row_planar<word_t, true, 2>
                     : unit          ? tile_row_planar<word_t, true, 0>
                                     : tile_row_planar<word_t, false, 0>;
    at::parallel_for(0, out_size.n * out_size.c, grain_for(plane), [&](int64_t begin, int64_t end) {
      bool bad = false;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / out_size.c, c = p % out_size.c;
        const word_t* in = input + n * in_stride.n + c * in_stride.c;
        const uint8_t* idx = indices + n * idx_stride.n + c * idx_stride.c;
        word_t* out = output + p * plane;
        for (int64_t oh = 0; oh < covered_h; ++oh, out += out_size.w) {
          const int64_t ih = oh / kh;
          bad |= row(in + ih * in_stride.h, in_stride.w, idx + ih * idx_stride.h, idx_stride.w, in_size.w, oh - ih * kh,
                     kw, taps, out);
          std::fill(out + covered_w, out + out_size.w, word_t(0));
        }
        std::fill(out, output + (p + 1) * plane, word_t(0));
      }
      if (bad) any_bad.store(true, std::memory_order_relaxed);
    });
  } else {
    const int64_t row_size = out_size.w * out_size.c;
    const bool unit = in_stride.c == 1 && idx_stride.c == 1;
    const auto row = unit ? tile_row_channels_last<word_t, true> : tile_row_channels_last<word_t, false>;
    at::parallel_for(0, out_size.n * out_size.h, grain_for(row_size), [&](int64_t begin, int64_t end) {
      bool bad = false;
      for (int64_t q = begin; q < end; ++q) {
        const int64_t n = q / out_size.h, oh = q % out_size.h, ih = oh / kh;
        word_t* out = output + q * row_size;
        if (oh >= covered_h) {
          std::fill(out, out + row_size, word_t(0));
          continue;
        }
        bad |= row(input + n * in_stride.n + ih * in_stride.h, in_stride, indices + n * idx_stride.n + ih * idx_stride.h,
                   idx_stride, in_size.w, out_size.c, oh - ih * kh, kw, taps, out);
        std::fill(out + covered_w * out_size.c, out + row_size, word_t(0));
      }
      if (bad) any_bad.store(true, std::memory_order_relaxed);
    });
  }
  return any_bad.load(std::memory_order_relaxed);
}

// output: dense (NCHW or NHWC), every element written once.
// DISJOINT: at most one candidate per position (PoolAxis::disjoint).
template <typename word_t, bool DISJOINT>
bool unpool_compact(const word_t* input,  // [N, C, Hi, Wi]
                    Dims4<int64_t> in_stride,
                    const uint8_t* indices,  // [N, C, Hi, Wi]
                    Dims4<int64_t> idx_stride,
                    int64_t in_h,
                    int64_t in_w,
                    word_t* output,  // [N, C, Ho, Wo]
                    Dims4<int64_t> out_size,
                    bool channels_last,
                    const PoolWindow2d<int64_t>& window) {
  const AxisCandidates rows(window.h, out_size.h, in_h, in_stride.h, idx_stride.h);
  const AxisCandidates cols(window.w, out_size.w, in_w, in_stride.w, idx_stride.w);
  const int64_t kw = window.w.kernel;

  // Output pixel (h, w) of the plane whose input and indices start at in, idx.
  const auto pixel = [&](const word_t* in, const uint8_t* idx, int64_t h, int64_t w, bool& bad) -> word_t {
    if constexpr (DISJOINT) {
      const int64_t a = rows.first[h], b = cols.first[w];
      if (a == rows.first[h + 1] || b == cols.first[w + 1]) return 0;
      const int64_t v = idx[rows.idx_offset[a] + cols.idx_offset[b]];
      if (v == rows.tap[a] * kw + cols.tap[b]) return in[rows.in_offset[a] + cols.in_offset[b]];
      if (!window.compact_valid(rows.o[a], cols.o[b], v, out_size.h, out_size.w)) bad = true;
      return 0;
    } else {
      // Candidates in decreasing (oh, ow): the first match is the one that a
      // row-major scatter (PyTorch's CPU kernel) writes last. The loop goes on
      // after it so that every index gets examined.
      word_t value = 0;
      bool found = false;
      for (int64_t a = rows.first[h], a_end = rows.first[h + 1]; a < a_end; ++a) {
        const word_t* in_row = in + rows.in_offset[a];
        const uint8_t* idx_row = idx + rows.idx_offset[a];
        const int64_t row_tap = rows.tap[a] * kw;
        for (int64_t b = cols.first[w], b_end = cols.first[w + 1]; b < b_end; ++b) {
          const int64_t v = idx_row[cols.idx_offset[b]];
          if (v == row_tap + cols.tap[b]) {
            if (!found) {
              found = true;
              value = in_row[cols.in_offset[b]];
            }
          } else if (!window.compact_valid(rows.o[a], cols.o[b], v, out_size.h, out_size.w)) {
            bad = true;
          }
        }
      }
      return value;
    }
  };

  return parallel_for_dense(out_size, channels_last, [&](int64_t n, int64_t c, int64_t h, int64_t w, int64_t offset) {
    bool bad = false;
    output[offset] =
        pixel(input + n * in_stride.n + c * in_stride.c, indices + n * idx_stride.n + c * idx_stride.c, h, w, bad);
    return bad;
  });
}

// grad_input: dense (NCHW or NHWC), the shape of indices.
template <typename word_t, typename index_t>
void unpool_backward(const word_t* grad_output,  // [N, C, Ho, Wo]
                     Dims4<int64_t> go_stride,
                     int64_t out_h,
                     int64_t out_w,
                     const index_t* indices,  // [N, C, Hi, Wi]
                     Dims4<int64_t> idx_stride,
                     word_t* grad_input,  // [N, C, Hi, Wi]
                     Dims4<int64_t> in_size,
                     bool channels_last,
                     const PoolWindow2d<int64_t>& window) {
  constexpr bool COMPACT = std::is_same<index_t, uint8_t>::value;
  const int64_t out_plane = out_h * out_w;
  // Dense rows turn a flat index into an offset without a division.
  const bool flat_rows = go_stride.h == out_w * go_stride.w;
  parallel_for_dense(in_size, channels_last, [&](int64_t n, int64_t c, int64_t h, int64_t w, int64_t offset) {
    const int64_t v = indices[n * idx_stride.n + c * idx_stride.c + h * idx_stride.h + w * idx_stride.w];
    int64_t target;  // offset of (y, x) inside grad_output[n, c]
    if constexpr (COMPACT) {
      int64_t y, x;
      if (!window.compact_target(h, w, v, out_h, out_w, y, x)) {
        grad_input[offset] = 0;
        return false;
      }
      target = y * go_stride.h + x * go_stride.w;
    } else {
      if (v < 0 || v >= out_plane) {
        grad_input[offset] = 0;
        return false;
      }
      target = flat_rows ? v * go_stride.w : (v / out_w) * go_stride.h + (v % out_w) * go_stride.w;
    }
    grad_input[offset] = grad_output[n * go_stride.n + c * go_stride.c + target];
    return false;
  });
}

std::tuple<at::Tensor, at::Tensor> max_unpool2d_cpu(const at::Tensor& input,
                                                    const at::Tensor& indices,
                                                    at::IntArrayRef output_size,
                                                    at::IntArrayRef kernel_size,
                                                    at::IntArrayRef stride,
                                                    at::IntArrayRef padding,
                                                    at::IntArrayRef dilation) {
  constexpr const char* op = "fastseg::max_unpool2d";
  check_forward(input, indices, output_size, op);
  TORCH_CHECK(input.device().is_cpu(), op, ": expected CPU tensors, got ", input.device());
  const bool compact = is_compact(indices);
  const auto window = make_window(kernel_size, stride, padding, dilation, compact, op);

  const bool channels_last = prefers_channels_last(input);
  at::Tensor output =
      empty_dense({input.size(0), input.size(1), output_size[0], output_size[1]}, input.options(), channels_last);
  bool bad = invalid_by_shape(input, output, compact, window);
  if (output.numel() == 0 || input.numel() == 0) {
    output.zero_();
  } else {
    dispatch_word(input.scalar_type(), op, [&](auto word) {
      using word_t = decltype(word);
      const auto* in = static_cast<const word_t*>(input.const_data_ptr());
      auto* out = static_cast<word_t*>(output.mutable_data_ptr());
      if (compact && tiles(window.h, input.size(2), output.size(2)) && tiles(window.w, input.size(3), output.size(3))) {
        bad |= unpool_compact_tiles(in, strides4(input), indices.const_data_ptr<uint8_t>(), strides4(indices),
                                    sizes4(input), out, sizes4(output), channels_last, window.h.kernel,
                                    window.w.kernel);
      } else if (compact) {
        const auto* idx = indices.const_data_ptr<uint8_t>();
        bad |= window.disjoint()
                   ? unpool_compact<word_t, true>(in, strides4(input), idx, strides4(indices), input.size(2),
                                                  input.size(3), out, sizes4(output), channels_last, window)
                   : unpool_compact<word_t, false>(in, strides4(input), idx, strides4(indices), input.size(2),
                                                   input.size(3), out, sizes4(output), channels_last, window);
      } else {
        output.zero_();
        TORCH_INTERNAL_ASSERT(output.stride(2) == output.size(3) * output.stride(3));
        bad |= unpool_flat(in, strides4(input), indices.const_data_ptr<int64_t>(), strides4(indices), sizes4(input),
                           out, strides4(output), output.size(2) * output.size(3), channels_last);
      }
    });
  }
  at::Tensor invalid = at::full({1}, bad ? 1 : 0, input.options().dtype(at::kInt));
  return {output, invalid};
}

at::Tensor max_unpool2d_backward_cpu(const at::Tensor& grad_output,
                                     const at::Tensor& indices,
                                     at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride,
                                     at::IntArrayRef padding,
                                     at::IntArrayRef dilation) {
  constexpr const char* op = "fastseg::max_unpool2d_backward";
  check_backward(grad_output, indices, op);
  TORCH_CHECK(grad_output.device().is_cpu(), op, ": expected CPU tensors, got ", grad_output.device());
  const bool compact = is_compact(indices);
  const auto window = make_window(kernel_size, stride, padding, dilation, compact, op);

  const bool channels_last = prefers_channels_last(indices);
  at::Tensor grad_input = empty_dense(indices.sizes(), grad_output.options(), channels_last);
  if (grad_input.numel() == 0) return grad_input;
  dispatch_word(grad_output.scalar_type(), op, [&](auto word) {
    using word_t = decltype(word);
    const auto* go = static_cast<const word_t*>(grad_output.const_data_ptr());
    auto* gi = static_cast<word_t*>(grad_input.mutable_data_ptr());
    const int64_t out_h = grad_output.size(2), out_w = grad_output.size(3);
    if (compact) {
      unpool_backward(go, strides4(grad_output), out_h, out_w, indices.const_data_ptr<uint8_t>(), strides4(indices), gi,
                      sizes4(grad_input), channels_last, window);
    } else {
      unpool_backward(go, strides4(grad_output), out_h, out_w, indices.const_data_ptr<int64_t>(), strides4(indices), gi,
                      sizes4(grad_input), channels_last, window);
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastseg_C, CPU, m) {
  m.impl("max_unpool2d", &max_unpool2d_cpu);
  m.impl("max_unpool2d_backward", &max_unpool2d_backward_cpu);
}

}  // namespace fastseg
