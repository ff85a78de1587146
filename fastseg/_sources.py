"""The sources of the extension ``fastseg._C`` and how they are compiled.

One list, read by ``setup.py`` (ahead-of-time build) and by
``fastseg._extension`` (JIT build on first use), so the two builds never
drift apart. The source hash is compiled into the extension; a build whose
hash differs from the sources on disk is stale and gets rebuilt.

This module imports nothing beyond the standard library: setup.py loads it
before torch's build helpers.
"""

import glob
import hashlib
import os
import sys


def csrc_dir(root: str) -> str:
    return os.path.join(root, "csrc")


def extension_sources(root: str, with_cuda: bool) -> list[str]:
    """C++ sources always; ``.cu`` kernels and their CUDA bindings
    (``csrc/cuda/*.cpp``) only when building with CUDA."""
    csrc = csrc_dir(root)
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    return sources


def source_hash(root: str) -> str:
    """A short hash over every file under csrc/ (headers included)."""
    digest = hashlib.sha256()
    csrc = csrc_dir(root)
    for path in sorted(glob.glob(os.path.join(csrc, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            digest.update(os.path.relpath(path, csrc).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


def openmp_flags() -> list[str]:
    """``at::parallel_for`` runs its loop in parallel only where ``_OPENMP``
    is defined when the extension is compiled (ATen's OpenMP backend is
    inline in its headers); without ``-fopenmp`` the CPU kernels run on one
    thread. Linked with it too, the extension needs ``libgomp.so.1``, which
    resolves to the copy torch has already loaded. GCC on Linux only: Apple's
    clang has no ``-fopenmp``, and there the kernels stay serial."""
    return ["-fopenmp"] if sys.platform.startswith("linux") else []


def compile_flags(root: str, with_cuda: bool, debug: bool = False) -> dict[str, list[str]]:
    """Flags per tool: ``cxx`` and ``nvcc`` (compilers), ``ld`` (the linker)."""
    opt = ["-O0", "-g"] if debug else ["-O3"]
    defines = [f"-DFASTSEG_SOURCE_HASH={source_hash(root)}"]  # a bare token: no shell quoting
    if with_cuda:
        defines.append("-DFASTSEG_WITH_CUDA")
    flags = {"cxx": opt + defines + ["-std=c++20"] + openmp_flags(), "ld": openmp_flags()}
    if with_cuda:
        flags["nvcc"] = opt + defines + ["-std=c++20", "--expt-relaxed-constexpr"]
    return flags
