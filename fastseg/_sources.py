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
    check_object_names(root, sources)
    return sources


def check_object_names(root: str, sources: list[str]) -> None:
    """Raise where two sources would compile to one object file, which
    ninja refuses ("multiple rules generate"). torch's two builds name the
    objects differently: setup.py's by the source's path less its
    extension (so a.cpp and a.cu side by side collide), the JIT build by
    the file name alone, with ``.cuda.o`` for a .cu (so cpu/a.cpp and
    cuda/a.cpp collide). Only a CUDA build compiles csrc/cuda, so only a
    GPU machine would otherwise find out."""
    for build, object_name in (
            ("setup.py", lambda path: os.path.splitext(os.path.relpath(path, root))[0] + ".o"),
            ("JIT", lambda path: os.path.splitext(os.path.basename(path))[0]
             + (".cuda.o" if path.endswith(".cu") else ".o"))):
        seen: dict[str, str] = {}
        for path in sources:
            name = object_name(path)
            if name in seen:
                raise RuntimeError(f"{os.path.relpath(seen[name], root)} and {os.path.relpath(path, root)} would "
                                   f"both compile to {name} in the {build} build: rename one")
            seen[name] = path


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
