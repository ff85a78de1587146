"""Loading the compiled extension ``fastseg._C``.

The ahead-of-time build from ``setup.py`` is used when it matches the sources
on disk. Where there was no build, or it is stale (its compiled-in source
hash differs from ``csrc/``), the extension is compiled on first use with
``torch.utils.cpp_extension.load`` and ninja into a cache folder keyed by the
source hash. A file lock (the ``filelock`` package, already a torch
dependency) makes concurrent first uses build once: the others wait, then load
the finished build.

Nothing here runs at ``import fastseg``; the first backend query does it, and a
failure is remembered and reported as the reason the ``cpp``/``cuda`` backends
are unavailable, never raised from import.
"""

import importlib
import importlib.util
import os
import re
import threading
from dataclasses import dataclass
from types import ModuleType

from . import _sources

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_REPO_ROOT = os.path.dirname(_PACKAGE_DIR)


@dataclass(frozen=True)
class ExtensionState:
    module: ModuleType | None
    origin: str  # "prebuilt", "jit" or "unavailable"
    with_cuda: bool
    error: str | None


_state: ExtensionState | None = None
_state_lock = threading.Lock()


def _sources_on_disk() -> bool:
    return os.path.isdir(_sources.csrc_dir(_REPO_ROOT))


def _cache_root() -> str:
    default = os.path.join(os.path.expanduser("~"), ".cache", "fastseg")
    return os.environ.get("FASTSEG_CACHE_DIR", default)


# The build's source hash is compiled into the binary behind this tag, so a
# stale build is recognised without importing it: importing registers its
# ops, after which a fresh build could not register the same names.
_HASH_TAG = re.compile(rb"fastseg-source-hash:([0-9a-f]{16})")


def _prebuilt_path() -> str | None:
    spec = importlib.util.find_spec("fastseg._C")
    return spec.origin if spec is not None else None


def _hash_compiled_into(path: str) -> str | None:
    with open(path, "rb") as f:
        found = _HASH_TAG.search(f.read())
    return found.group(1).decode() if found else None


def _jit_build(source_hash: str) -> ModuleType:
    import torch
    from filelock import FileLock
    from torch.utils.cpp_extension import CUDA_HOME, load

    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    build_dir = os.path.join(_cache_root(), f"ext-{source_hash}-{'cuda' if with_cuda else 'cpu'}")
    os.makedirs(build_dir, exist_ok=True)
    flags = _sources.compile_flags(_REPO_ROOT, with_cuda)
    with FileLock(os.path.join(build_dir, "build.lock")):
        return load(
            name="_C",
            sources=_sources.extension_sources(_REPO_ROOT, with_cuda),
            extra_cflags=flags["cxx"],
            extra_cuda_cflags=flags.get("nvcc"),
            extra_ldflags=flags["ld"],
            build_directory=build_dir,
            verbose=os.environ.get("FASTSEG_VERBOSE_BUILD") == "1",
        )


def _load() -> ExtensionState:
    prebuilt = _prebuilt_path()
    wanted_hash = _sources.source_hash(_REPO_ROOT) if _sources_on_disk() else None
    if prebuilt is not None and (wanted_hash is None or _hash_compiled_into(prebuilt) == wanted_hash):
        try:
            module = importlib.import_module("fastseg._C")
        except ImportError as exc:
            return ExtensionState(None, "unavailable", False, f"importing fastseg._C failed: {exc}")
        return ExtensionState(module, "prebuilt", bool(module.with_cuda), None)
    if wanted_hash is None:
        return ExtensionState(None, "unavailable", False,
                              "fastseg._C is not built and the csrc/ sources are not present to build it")
    if os.environ.get("FASTSEG_NO_JIT") == "1":
        why = "stale (csrc/ changed since it was built)" if prebuilt is not None else "not built"
        return ExtensionState(None, "unavailable", False,
                              f"fastseg._C is {why} and FASTSEG_NO_JIT=1 forbids compiling it now")
    try:
        module = _jit_build(wanted_hash)
    except Exception as exc:  # a failed compile must not break `import fastseg`
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ExtensionState(None, "unavailable", False, f"compiling fastseg._C failed: {first_line}")
    return ExtensionState(module, "jit", bool(module.with_cuda), None)


def extension() -> ExtensionState:
    """The extension's load state, loading (or building) it on first call."""
    global _state
    with _state_lock:
        if _state is None:
            _state = _load()
        return _state
