// How the CPU kernels split their loops among threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace fastseg {

constexpr int64_t GRAIN_SIZE = 32768;  // scalar operations per task, as at::internal::GRAIN_SIZE

// The grain, in items, for items of `work_per_item` scalar operations each.
inline int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, GRAIN_SIZE / std::max<int64_t>(1, work_per_item));
}

// body(begin, end) over [0, count) in blocks of about `work_per_block`
// scalar operations, handed to the threads as they come free. at::parallel_for
// cuts the range into one piece per thread in advance, which leaves threads
// idle where the cost per item varies across the range (the pixels of a
// photograph's busy half against its sky). The blocks run in any order and
// on any thread: each item must be computed independently of the others,
// and then the results do not depend on the schedule.
template <typename Body>
void parallel_blocks(int64_t count, int64_t work_per_item, const Body& body) {
  constexpr int64_t work_per_block = 8 * GRAIN_SIZE;
  const int64_t block = std::max<int64_t>(1, work_per_block / std::max<int64_t>(1, work_per_item));
  const int64_t blocks = (count + block - 1) / block;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(blocks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    for (int64_t b = next++; b < blocks; b = next++) body(b * block, std::min(count, (b + 1) * block));
  });
}

}  // namespace fastseg
