// Large fresh buffers of the CPU kernels, faulted in a huge page at a time.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastseg {

// Memory touched for the first time is faulted in a page at a time, each
// page zeroed by the kernel. At 4 KiB a page, a Cityscapes-size dense CRF
// call (2048x1024, 19 labels) took over 300,000 faults for its lattices,
// scratch and result, and the fused op spent about a fifth of its first
// pass in them. Linux's transparent huge pages (2 MiB) cut the faults
// 512-fold, but where they are enabled only on request (`madvise`, as
// here), or memory is fragmented, a fault falls back to 4 KiB without the
// request. So the large buffers ask. Advice only: where the kernel has no
// huge page to give, or this is not Linux, nothing changes.
inline void advise_huge_pages(void* data, int64_t bytes) {
#if defined(MADV_HUGEPAGE)
  constexpr int64_t kHugePage = int64_t(2) << 20;
  constexpr uintptr_t kPage = 4096;  // madvise takes whole pages
  if (bytes < 2 * kHugePage) return;  // holds at most one whole huge page
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kPage - 1) & ~(kPage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kPage - 1);
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
