"""Why a benchmark cannot run here, in one line: what is missing and how to
get it. The suite skips with these reasons instead of failing where a GPU,
a backend or an optional baseline is absent."""

import importlib

import pytest


def backend_reason(name: str, device_type: str, triton_interpret: bool, status: dict) -> str | None:
    """Why fastseg's backend ``name`` is not benchmarked on ``device_type``,
    or None; ``status`` is ``fastseg.backends()``'s entry for it there
    (``available``, ``reason``)."""
    if name == "triton":
        if device_type != "cuda":
            return f"triton on {device_type}: benchmarked on CUDA only (Triton interpreter timings are never recorded)"
        if triton_interpret:
            return "triton: TRITON_INTERPRET=1 runs Triton's interpreter, whose timings are never recorded; unset it"
    if not status["available"]:
        return f"{name} backend on {device_type}: {status['reason']}"
    return None


def compile_reason(device_type: str, triton_version: str | None, compile_mode: str) -> str | None:
    """Why a torch.compile baseline is not benchmarked here, or None."""
    if device_type != "cuda":
        return (f"torch.compile(mode={compile_mode!r}): benchmarked on CUDA only (on the CPU it would compile "
                "C++ for minutes per shape, for a timing that is never recorded)")
    if triton_version is None:
        return "torch.compile on CUDA needs Triton: pip install triton"
    return None


def import_or_skip(module: str, install: str):
    """``module`` imported, or the test skipped naming the import's error and
    ``install`` (how to get it). Unlike ``pytest.importorskip``, a module that
    is installed but fails to import (a binary built against another numpy)
    skips too, with its error rather than a claim that it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        message = str(error).strip().splitlines()
        pytest.skip(f"{module} cannot be imported ({type(error).__name__}: {message[0] if message else ''}); "
                    f"{install}")


PYDENSECRF_INSTALL = "pip install pydensecrf2 (the dense CRF's baseline)"
SKIMAGE_INSTALL = "pip install scikit-image (the dense-CRF scenes' photographs come with it)"
