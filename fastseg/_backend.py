"""Which backend runs an op, and why the others cannot.

Backends: ``triton`` (Triton kernels: CUDA tensors, or CPU tensors under
Triton's interpreter, ``TRITON_INTERPRET=1``), ``cuda`` and ``cpp`` (the
compiled extension, for CUDA and CPU tensors) and ``reference`` (plain
PyTorch, always there).

``backend=None`` means the fastest available for the tensors: each op lists
its backends per device in order of measured speed. ``FASTSEG_BACKEND``
replaces that default; an explicit ``backend=`` argument overrides both. A
backend asked for by name that cannot run raises ``BackendUnavailable`` with
the reason, never falls back silently.
"""

import os
from dataclasses import dataclass

import torch

from ._extension import extension

BACKEND_NAMES = ("triton", "cuda", "cpp", "reference")


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run for the given tensors."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str  # what it runs on when available, why not otherwise


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _backend_on(name: str, device_type: str) -> Availability:
    """Can backend ``name`` run ops on tensors of ``device_type`` here?"""
    if name == "reference":
        return Availability(True, "plain PyTorch, any device")
    if name == "triton":
        if _triton_version() is None:
            return Availability(False, "Triton is not installed (pip install triton)")
        if device_type == "cuda":
            if not torch.cuda.is_available():
                return Availability(False, "no CUDA GPU is visible to PyTorch")
            if triton_interpreting():
                return Availability(False, "TRITON_INTERPRET=1 makes Triton run on the CPU only")
            return Availability(True, f"Triton {_triton_version()} on the GPU")
        if device_type == "cpu":
            if triton_interpreting():
                return Availability(True, f"Triton {_triton_version()} interpreter on the CPU")
            return Availability(False, "Triton runs on CPU tensors only under TRITON_INTERPRET=1")
        return Availability(False, f"Triton does not run on {device_type} tensors")
    if name in ("cpp", "cuda"):
        wanted = "cpu" if name == "cpp" else "cuda"
        if device_type != wanted:
            return Availability(False, f"the {name} backend takes {wanted.upper()} tensors, not {device_type}")
        ext = extension()
        if ext.module is None:
            return Availability(False, ext.error or "fastseg._C is not available")
        if name == "cuda" and not ext.with_cuda:
            return Availability(False, "fastseg._C was built without CUDA (no CUDA PyTorch or no nvcc at build time)")
        if name == "cuda" and not torch.cuda.is_available():
            return Availability(False, "no CUDA GPU is visible to PyTorch")
        return Availability(True, f"fastseg._C ({ext.origin} build)")
    raise ValueError(f"backend must be one of {BACKEND_NAMES} or None, got {name!r}")


def device_type_of(*tensors: torch.Tensor) -> str:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    return next(iter(devices)).type


@dataclass(frozen=True)
class OpBackends:
    """The backends an op implements and the order ``backend=None`` tries them.

    ``fastest_first`` maps a device type to backends in order of measured
    speed on it; ``reference`` is implicit, last everywhere. An implemented
    backend missing from a device's list still runs there when asked for by
    name (Triton's interpreter on CPU tensors is correct but slow, so it is
    never a default).
    """

    op: str
    fastest_first: dict[str, tuple[str, ...]]
    coverage: str = ""  # what the fast backends cover when not every call

    @property
    def implemented(self) -> tuple[str, ...]:
        names = {name for order in self.fastest_first.values() for name in order}
        return tuple(n for n in BACKEND_NAMES if n in names or n == "reference")

    def resolve(self, requested: str | None, device_type: str, uncovered: tuple[tuple[str, str], ...] = ()) -> str:
        """The backend that runs this op on tensors of ``device_type``.

        ``uncovered`` pairs a backend with the reason it cannot run this
        particular call (an argument outside its kernels' range): the
        default passes over it, asking for it by name raises that reason.
        """
        source = "backend"
        if requested is None and os.environ.get("FASTSEG_BACKEND"):
            requested, source = os.environ["FASTSEG_BACKEND"], "FASTSEG_BACKEND"
        gaps = dict(uncovered)
        if requested is None:
            for name in self.fastest_first.get(device_type, ()):
                if name not in gaps and _backend_on(name, device_type).available:
                    return name
            return "reference"
        if requested not in BACKEND_NAMES:
            raise ValueError(f"{source} must be one of {BACKEND_NAMES} or None, got {requested!r}")
        if requested not in self.implemented:
            raise BackendUnavailable(f"{self.op} has no {requested!r} backend "
                                     f"(it has {', '.join(self.implemented)}; asked for by {source})")
        status = _backend_on(requested, device_type)
        if not status.available:
            raise BackendUnavailable(f"{self.op}: backend {requested!r} (asked for by {source}) "
                                     f"cannot run on {device_type} tensors here: {status.reason}")
        if requested in gaps:
            raise BackendUnavailable(f"{self.op}: backend {requested!r} (asked for by {source}) "
                                     f"does not cover this call: {gaps[requested]}")
        return requested


_REGISTRY: dict[str, OpBackends] = {}


def register(op: str, fastest_first: dict[str, tuple[str, ...]], coverage: str = "") -> OpBackends:
    entry = OpBackends(op, fastest_first, coverage)
    _REGISTRY[op] = entry
    return entry


def registered_ops() -> dict[str, OpBackends]:
    return dict(_REGISTRY)


# torch.compile evaluates this once while tracing and bakes the answer into
# the graph: the choice depends on the environment, not on tensor values, and
# tracing through it (locks, os.environ, extension loading) would break the graph.
@torch.compiler.assume_constant_result
def _resolve_by_name(op: str, requested: str | None, device_type: str,
                     uncovered: tuple[tuple[str, str], ...]) -> str:
    return _REGISTRY[op].resolve(requested, device_type, uncovered)


def resolve_backend(entry: OpBackends, requested: str | None, *tensors: torch.Tensor,
                    uncovered: tuple[tuple[str, str], ...] = ()) -> str:
    """The backend that runs ``entry``'s op on ``tensors``; ``uncovered`` as
    in ``OpBackends.resolve``."""
    return _resolve_by_name(entry.op, requested, device_type_of(*tensors), uncovered)
