"""Lattices kept from one dense CRF to the next: the spatial kernel's.

The spatial Gaussian's features are positions alone (index * spacing / sxy):
every image of one size has the same ones, so a stream of same-size images
(a video, Cityscapes, a folder of VOC photographs, which come in a few
sizes) needs their lattice built once. Building it again is about a tenth
of a VOC-size call at 5 iterations on two CPU cores. ``dense_crf`` and
``fastseg.crf``'s ``addPairwiseGaussian`` keep theirs here.

A kept lattice serves only features equal to the ones it was built from
(``torch.equal``, a pass over two values a pixel) and of the same spatial
shape, dtype, device and backend. The features are the caller's own
tensor, not a copy: callers make them for the lattice and never write to
them afterwards, so no entry can go stale. On a GPU a lattice serves calls
on the stream it was built on, which runs its build before any use, and
whose allocator reuses its memory only after that stream's work when it is
dropped. A lattice made under ``torch.inference_mode`` serves only calls in
that mode (its tensors cannot be saved for a backward pass).

Bounded by a count and by bytes (features and lattice tensors together,
on whichever device they are), the least recently used dropped first.
``FASTSEG_LATTICE_CACHE_MB``, read when the store is first used, sets the
bytes (default 256; 0 keeps none).
"""

import os
import re
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .permutohedral_filter import Lattice

# A VOC-size spatial lattice (187,500 pixels, 3 corners each) weighs about
# 9 MB, a Cityscapes-size one about 100 MB: the default keeps the common
# sizes of a dataset, or two Cityscapes-size ones.
_DEFAULT_MEGABYTES = 256
# A pipeline alternates between a few sizes (VOC's portrait and landscape);
# more entries would mostly hold memory.
_MAX_ENTRIES = 4


def keepable(features: Tensor) -> bool:
    """Whether a lattice of these features may be kept: not while
    torch.compile traces (the tensors are traced, not values) nor inside a
    torch.func transform (they are the transform's wrappers)."""
    return not torch.compiler.is_compiling() and not torch._C._functorch.is_functorch_wrapped_tensor(features)


def _stream_of(device: torch.device) -> int | None:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


def _bytes_of(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True, eq=False)  # entries are compared by identity, not by their tensors
class _Kept:
    features: Tensor
    lattice: Lattice
    stream: int | None
    nbytes: int

    def may_serve(self, features: Tensor, spatial_shape: tuple[int, ...], backend: str, stream: int | None) -> bool:
        """All but the comparison of values."""
        kept, lattice = self.features, self.lattice
        usable = not kept.is_inference() or torch.is_inference_mode_enabled()
        return (usable and kept.shape == features.shape and kept.dtype == features.dtype
                and kept.device == features.device and lattice.spatial_shape == spatial_shape
                and lattice.backend == backend and self.stream == stream)


class KeptLattices:
    """At most ``max_entries`` lattices of at most ``max_bytes`` bytes in
    all; ``lattice(features, spatial_shape, backend, build)`` returns a kept
    lattice of ``features`` or keeps ``build()``'s. Callers check
    ``keepable(features)`` first."""

    def __init__(self, max_bytes: int, max_entries: int = _MAX_ENTRIES):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._kept: list[_Kept] = []  # least recently used first
        self._lock = threading.Lock()

    def lattice(self, features: Tensor, spatial_shape: tuple[int, ...], backend: str,
                build: Callable[[], Lattice]) -> Lattice:
        if self.max_bytes <= 0 or self.max_entries <= 0:
            return build()
        stream = _stream_of(features.device)
        found = self._find(features, spatial_shape, backend, stream)
        if found is not None:
            return found.lattice
        lattice = build()  # outside the lock: other threads' calls go on meanwhile
        kept = _Kept(features, lattice, stream, _bytes_of(features, *lattice.tensors))
        if kept.nbytes > self.max_bytes:  # would push out everything else and still not fit
            return lattice
        # Another thread may have kept the same one meanwhile: serve that one.
        found = self._find(features, spatial_shape, backend, stream)
        if found is not None:
            return found.lattice
        with self._lock:
            self._kept.append(kept)
            while len(self._kept) > self.max_entries or self.nbytes > self.max_bytes:
                self._kept.pop(0)
        return lattice

    def _find(self, features: Tensor, spatial_shape: tuple[int, ...], backend: str,
              stream: int | None) -> _Kept | None:
        """The entry that serves these features, made the most recently
        used. The values are compared outside the lock: on a GPU
        torch.equal waits for the device, and calls on another must not
        wait for it."""
        with self._lock:
            candidates = [k for k in self._kept if k.may_serve(features, spatial_shape, backend, stream)]
        for kept in candidates:
            if torch.equal(kept.features, features):
                with self._lock:
                    if kept in self._kept:
                        self._kept.remove(kept)
                        self._kept.append(kept)
                return kept
        return None

    @property
    def nbytes(self) -> int:
        return sum(kept.nbytes for kept in self._kept)

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


_store: KeptLattices | None = None
_store_lock = threading.Lock()


def kept_lattices() -> KeptLattices:
    """The process's store, sized by FASTSEG_LATTICE_CACHE_MB when first used."""
    global _store
    with _store_lock:
        if _store is None:
            _store = KeptLattices(_megabytes_from_environment() << 20)
        return _store


def _megabytes_from_environment() -> int:
    text = os.environ.get("FASTSEG_LATTICE_CACHE_MB", "").strip()
    if not text:  # unset or empty: the default, as for the other FASTSEG_ variables
        return _DEFAULT_MEGABYTES
    if re.fullmatch(r"[0-9]+", text) is None:
        raise ValueError(f"FASTSEG_LATTICE_CACHE_MB must be a whole number of megabytes (0 keeps none), "
                         f"got {text!r}")
    return int(text)


def clear_lattice_cache() -> None:
    """Drops the lattices that ``dense_crf`` and ``fastseg.crf``'s
    ``addPairwiseGaussian`` keep between calls; their memory is freed once
    nothing else holds them (a ``DenseCRF2D`` holds its own)."""
    with _store_lock:
        store = _store
    if store is not None:
        store.clear()
