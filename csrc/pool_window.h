// Pooling-window geometry shared by the CPU and CUDA kernels of max_unpool2d.
//
// Plain C++ with no torch headers, so that .cu files can include it. Every
// helper is templated on the integer type T: the CUDA kernels use int32_t when
// all offsets fit (64-bit integer division is emulated on the GPU and costs
// several times a 32-bit one), the CPU kernels int64_t.
//
// Along one axis a max pool with kernel K, stride S, padding P and dilation D
// gives source position o (a pixel of the pooled map) the window of taps
// k = 0..K-1 at positions o*S - P + k*D. A compact index is the tap number
// r*KW + c of the maximum inside the 2-d window of its pixel (oh, ow).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace fastseg {

// Four sizes or strides of an [N, C, H, W] tensor.
template <typename T>
struct Dims4 {
  T n, c, h, w;

  template <typename U>
  FASTSEG_HOST_DEVICE Dims4<U> cast() const {
    return {static_cast<U>(n), static_cast<U>(c), static_cast<U>(h), static_cast<U>(w)};
  }
};

template <typename T>
struct PoolAxis {
  T kernel, stride, padding, dilation;
  // dilation = dilation_div * stride + dilation_mod: TapWalk steps from one
  // tap to the next with these instead of dividing by the stride.
  T dilation_div, dilation_mod;

  static PoolAxis make(T kernel, T stride, T padding, T dilation) {
    return {kernel, stride, padding, dilation, dilation / stride, dilation % stride};
  }

  template <typename U>
  FASTSEG_HOST_DEVICE PoolAxis<U> cast() const {
    return {static_cast<U>(kernel),   static_cast<U>(stride),       static_cast<U>(padding),
            static_cast<U>(dilation), static_cast<U>(dilation_div), static_cast<U>(dilation_mod)};
  }

  // Each position lies in at most one window, so an output pixel has at most
  // one candidate source and only_window() finds it directly.
  FASTSEG_HOST_DEVICE bool disjoint() const { return stride >= dilation * (kernel - 1) + 1; }

  FASTSEG_HOST_DEVICE T window_start(T o) const { return o * stride - padding; }

  // Window o lies entirely inside [0, out_size).
  FASTSEG_HOST_DEVICE bool window_inside(T o, T out_size) const {
    const T start = window_start(o);
    return start >= 0 && start + (kernel - 1) * dilation < out_size;
  }

  // Some tap of window o lands in [0, out_size). Host only: used once per call
  // to find windows whose indices no output pixel ever examines.
  bool window_reaches(T o, T out_size) const {
    const T start = window_start(o);
    // The first tap at or after position 0 is the one to test: taps ascend.
    const T k = start >= 0 ? 0 : (-start + dilation - 1) / dilation;
    return k < kernel && start + k * dilation < out_size;
  }

  bool every_window_reaches(T in_size, T out_size) const {
    for (T o = 0; o < in_size; ++o) {
      if (!window_reaches(o, out_size)) return false;
    }
    return true;
  }
};

// The windows holding output position pos, visited for taps k = 0, 1, ...,
// K-1 in turn: tap k of window `o` lands on pos iff hit(). The window o falls
// as k grows, so the first hit is the candidate with the largest o.
//
// Invariant: pos + padding - k*dilation == o*stride + rem with 0 <= rem < stride.
// pos + padding >= 0, so the one division below is exact floor division; the
// steps keep rem non-negative instead of dividing negative numbers (C++
// truncates those towards zero, which would put position -1 in window 0).
template <typename T>
struct TapWalk {
  T o, rem;

  FASTSEG_HOST_DEVICE TapWalk(const PoolAxis<T>& axis, T pos) {
    const T t = pos + axis.padding;
    o = t / axis.stride;
    rem = t - o * axis.stride;
  }

  FASTSEG_HOST_DEVICE bool hit(T in_size) const { return rem == 0 && o >= 0 && o < in_size; }

  // Once o < 0 no later tap can hit.
  FASTSEG_HOST_DEVICE bool exhausted() const { return o < 0; }

  FASTSEG_HOST_DEVICE void next(const PoolAxis<T>& axis) {
    rem -= axis.dilation_mod;
    o -= axis.dilation_div;
    if (rem < 0) {
      rem += axis.stride;
      --o;
    }
  }
};

// Disjoint windows only: the one window o (0 <= o < in_size) holding pos and
// the tap k that lands there; false if pos falls between windows or outside.
template <typename T>
FASTSEG_HOST_DEVICE inline bool only_window(const PoolAxis<T>& axis, T pos, T in_size, T& o, T& k) {
  const TapWalk<T> walk(axis, pos);
  const T tap = walk.rem / axis.dilation;
  if (tap * axis.dilation != walk.rem || tap >= axis.kernel || walk.o >= in_size) return false;
  o = walk.o;
  k = tap;
  return true;
}

template <typename T>
struct PoolWindow2d {
  PoolAxis<T> h, w;

  template <typename U>
  FASTSEG_HOST_DEVICE PoolWindow2d<U> cast() const {
    return {h.template cast<U>(), w.template cast<U>()};
  }

  FASTSEG_HOST_DEVICE T taps() const { return h.kernel * w.kernel; }

  FASTSEG_HOST_DEVICE bool disjoint() const { return h.disjoint() && w.disjoint(); }

  // The output position (th, tw) named by compact index v of source pixel
  // (oh, ow); false if v names no tap or the position is outside the output.
  FASTSEG_HOST_DEVICE bool compact_target(T oh, T ow, T v, T out_h, T out_w, T& th, T& tw) const {
    if (v >= taps()) return false;
    const T r = v / w.kernel;
    th = h.window_start(oh) + r * h.dilation;
    tw = w.window_start(ow) + (v - r * w.kernel) * w.dilation;
    return th >= 0 && th < out_h && tw >= 0 && tw < out_w;
  }

  // compact_target's verdict alone. The gather examines every index it passes
  // (almost all name another pixel), so windows wholly inside the output,
  // the common case, skip the division.
  FASTSEG_HOST_DEVICE bool compact_valid(T oh, T ow, T v, T out_h, T out_w) const {
    if (v >= taps()) return false;
    if (h.window_inside(oh, out_h) && w.window_inside(ow, out_w)) return true;
    T th, tw;
    return compact_target(oh, ow, v, out_h, out_w, th, tw);
  }

  // Every source pixel's window overlaps the output, so the gather examines
  // every compact index. Where this fails, the pixels it misses can only hold
  // invalid indices (any tap of theirs lies outside the output).
  bool every_window_reaches(T in_h, T in_w, T out_h, T out_w) const {
    return h.every_window_reaches(in_h, out_h) && w.every_window_reaches(in_w, out_w);
  }
};

}  // namespace fastseg
