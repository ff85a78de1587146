// Large fresh buffers of the CPU kernels, faulted in a huge page at a time.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fastseg {

// Memory touched for the first time is faulted in a page at a time, each
// page zeroed by the kernel: at 4 KiB a page, a Cityscapes-size dense CRF
// call (2048x1024, 19 labels) took 326,000 faults. Linux gives 2 MiB
// transparent huge pages unasked only where it has a free one at hand (with
// defrag set to anything but "always", as on this project's machines);
// a range advised with MADV_HUGEPAGE gets them where the kernel can compact
// memory into them at the fault. That pays for the lattices' outputs, the
// filter's and the mean field's results: the two lattices of a
// Cityscapes-size photograph, right after a pydensecrf call, 271 -> 208 ms
// (medians of 10 rounds, interleaved in one process). But compaction costs
// time at the fault: it did not pay for the fused op's scratch (see
// ScratchPool in dense_crf.cpp). Advice only: where the kernel has no huge
// page to give, or this is not Linux, nothing changes.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(MADV_HUGEPAGE)
  constexpr int64_t kHugePage = int64_t(2) << 20;
  if (bytes < 2 * kHugePage) return;  // holds at most one whole huge page
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));  // madvise takes whole pages
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) & ~(page - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(page - 1);
  madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// at::empty for a large output, advised as above before anything touches it.
inline at::Tensor empty_in_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor tensor = at::empty(sizes, options);
  advise_huge_pages(tensor.data_ptr(), static_cast<int64_t>(tensor.nbytes()));
  return tensor;
}

}  // namespace fastseg
