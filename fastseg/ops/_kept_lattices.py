"""Lattices that ``dense_crf`` keeps from one call to the next.

The spatial Gaussian's features are positions alone (index * spacing / sxy):
every image of one size has the same ones, so a stream of same-size images
(a video, Cityscapes, a folder of VOC photographs, which come in a few
sizes) needs their lattice built once. Building it again is about a tenth
of a VOC-size call at 5 iterations on two CPU cores.

A kept lattice serves only features equal to the ones it was built from
(``torch.equal``, a pass over two values a pixel): no key can go stale.
The store is bounded by a count and by bytes (features and lattice tensors
together), the least recently used going first; ``FASTSEG_LATTICE_CACHE_MB``
sets the bytes (default 256; 0 keeps none). On a GPU a lattice serves calls
on the stream it was built on, which runs its build before any use, and
whose allocator frees it when it is dropped.
"""

import functools
import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .permutohedral_filter import Lattice

_DEFAULT_MEGABYTES = 256
_MAX_ENTRIES = 4


def _stream_of(device: torch.device) -> int | None:
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else None


def _bytes_of(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class _Kept:
    features: Tensor
    lattice: Lattice
    stream: int | None
    nbytes: int

    def serves(self, features: Tensor, backend: str, stream: int | None) -> bool:
        kept = self.features
        # Tensors made under torch.inference_mode cannot be saved for a
        # backward pass: such a lattice serves only calls in that mode.
        usable = not kept.is_inference() or torch.is_inference_mode_enabled()
        return (usable and kept.shape == features.shape and kept.dtype == features.dtype
                and kept.device == features.device and self.lattice.backend == backend and self.stream == stream
                and torch.equal(kept, features))


class KeptLattices:
    """At most ``max_entries`` lattices of at most ``max_bytes`` bytes in
    all; ``lattice(features, backend, build)`` returns a kept lattice of
    ``features`` or keeps ``build()``'s."""

    def __init__(self, max_bytes: int, max_entries: int = _MAX_ENTRIES):
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._kept: list[_Kept] = []  # least recently used first
        self._lock = threading.Lock()

    def lattice(self, features: Tensor, backend: str, build: Callable[[], Lattice]) -> Lattice:
        if self.max_bytes <= 0 or self.max_entries <= 0:
            return build()
        stream = _stream_of(features.device)
        with self._lock:
            found = self._take(features, backend, stream)
            if found is not None:
                self._kept.append(found)  # now the most recently used
                return found.lattice
        lattice = build()  # outside the lock: other threads' calls go on meanwhile
        kept = _Kept(features, lattice, stream, _bytes_of(features, *lattice.tensors))
        if kept.nbytes > self.max_bytes:
            return lattice
        with self._lock:
            # Another thread may have kept the same one meanwhile.
            kept = self._take(features, backend, stream) or kept
            self._kept.append(kept)
            while len(self._kept) > self.max_entries or self.nbytes > self.max_bytes:
                self._kept.pop(0)
        return kept.lattice

    def _take(self, features: Tensor, backend: str, stream: int | None) -> _Kept | None:
        """Removes and returns the entry that serves these features, if any."""
        for i, kept in enumerate(self._kept):
            if kept.serves(features, backend, stream):
                return self._kept.pop(i)
        return None

    @property
    def nbytes(self) -> int:
        return sum(kept.nbytes for kept in self._kept)

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()


@functools.cache
def kept_lattices() -> KeptLattices:
    """The process's store, sized by FASTSEG_LATTICE_CACHE_MB when first used."""
    return KeptLattices(_megabytes_from_environment() << 20)


def _megabytes_from_environment() -> int:
    text = os.environ.get("FASTSEG_LATTICE_CACHE_MB", str(_DEFAULT_MEGABYTES))
    try:
        megabytes = int(text)
    except ValueError:
        raise ValueError(f"FASTSEG_LATTICE_CACHE_MB must be a whole number of megabytes, got {text!r}") from None
    if megabytes < 0:
        raise ValueError(f"FASTSEG_LATTICE_CACHE_MB must be 0 or more, got {megabytes}")
    return megabytes


def clear_lattice_cache() -> None:
    """Drops the lattices ``dense_crf`` keeps between calls (their memory
    goes back to the allocator)."""
    kept_lattices().clear()
