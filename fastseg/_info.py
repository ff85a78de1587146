"""What this machine can run: versions, devices, the extension build, and
per backend whether it is available and why not."""

import platform

import torch

from . import _backend
from ._extension import extension


def backends() -> dict:
    """A report of the environment and every backend, per device type.

    ``report["backends"][name][device]`` is ``{"available": bool, "reason": str}``;
    ``report["ops"][op]`` gives each registered op's backends and its default
    per device here.
    """
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ext = extension()
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    report = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "triton_interpret": _backend.triton_interpreting(),
        "cuda_runtime": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension": {"origin": ext.origin, "with_cuda": ext.with_cuda, "error": ext.error},
        "backends": {},
        "ops": {},
    }
    for name in _backend.BACKEND_NAMES:
        report["backends"][name] = {}
        for device in ("cpu", "cuda"):
            status = _backend._backend_on(name, device)
            report["backends"][name][device] = {"available": status.available, "reason": status.reason}
    for op, entry in _backend.registered_ops().items():
        report["ops"][op] = {
            "implemented": list(entry.implemented),
            "default": {device: entry.resolve(None, device) for device in devices},
            "coverage": entry.coverage,
        }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"python {report['python']}, torch {report['torch']}, triton {report['triton'] or 'not installed'}"
        + (" (TRITON_INTERPRET=1)" if report["triton_interpret"] else ""),
        f"CUDA runtime: {report['cuda_runtime'] or 'none (CPU build of PyTorch)'}; GPU: {report['gpu'] or 'none'}",
        f"extension fastseg._C: {report['extension']['origin']}"
        + (", with CUDA" if report["extension"]["with_cuda"] else ", CPU only")
        + (f" ({report['extension']['error']})" if report["extension"]["error"] else ""),
        "",
        "backend     device  available  why",
    ]
    for name, per_device in report["backends"].items():
        for device, status in per_device.items():
            mark = "yes" if status["available"] else "no"
            lines.append(f"{name:<11} {device:<7} {mark:<10} {status['reason']}")
    lines += ["", "op                         implemented                      default here"]
    for op, info in report["ops"].items():
        defaults = ", ".join(f"{d}: {b}" for d, b in info["default"].items())
        lines.append(f"{op:<26} {', '.join(info['implemented']):<32} {defaults}")
        if info["coverage"]:
            lines.append(f"{'':<26} {info['coverage']}")
    return "\n".join(lines)
