// How the CPU kernels split their loops among threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace fastseg {

constexpr int64_t GRAIN_SIZE = 32768;  // scalar operations per task, as at::internal::GRAIN_SIZE

// The grain, in items, for items of `work_per_item` scalar operations each.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// Items [begin, end) of part `part` of a loop (one lattice's vertices, say).
struct Span {
  int part;
  int64_t begin, end;
};

// Appends the spans that cut part `part`'s items [0, count) into blocks of
// about eight grains of work each: small enough to balance two threads,
// large enough that handing them out costs nothing.
inline void add_spans(std::vector<Span>& spans, int part, int64_t count, int64_t work_per_item) {
  const int64_t block = std::max<int64_t>(1, 8 * GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
  for (int64_t begin = 0; begin < count; begin += block) spans.push_back({part, begin, std::min(count, begin + block)});
}

// body(span) for every span, the spans handed to the threads as they come
// free. at::parallel_for cuts a range into one piece per thread in advance,
// which leaves threads idle where the cost per item varies across the range
// (the pixels of a photograph's busy half against its sky); and one parallel
// region for the spans of several parts is one barrier instead of several.
// The spans run in any order and on any thread: each item must be computed
// independently of the others, and then the results do not depend on the
// schedule.
template <typename Body>
void parallel_spans(const std::vector<Span>& spans, const Body& body) {
  const int64_t count = static_cast<int64_t>(spans.size());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t i = next++; i < count; i = next++) body(spans[i]);
  });
}

// body(begin, end) over [0, count) as parallel_spans runs spans.
template <typename Body>
void parallel_blocks(int64_t count, int64_t work_per_item, const Body& body) {
  std::vector<Span> spans;
  add_spans(spans, 0, count, work_per_item);
  parallel_spans(spans, [&](const Span& span) { body(span.begin, span.end); });
}

}  // namespace fastseg
