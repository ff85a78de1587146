"""torchvision for the tests that compare fastseg's models with its own.

The torchvision wheel on PyPI is a CUDA build. Beside a CPU build of torch
its compiled ops (nms, roi_align, ...) do not load, and its import then
fails where it registers their fake kernels. Its models are plain Python
and use none of those ops, so where the plain import fails the import is
retried with those registrations skipped.
"""

import importlib
import sys

import torch.library


def import_torchvision():
    """(torchvision, "") or (None, why it does not import)."""
    try:
        return importlib.import_module("torchvision"), ""
    except ImportError as error:
        return None, f"torchvision is not installed: {error}"
    except Exception:  # noqa: BLE001 - the CUDA build's missing ops, retried below
        pass
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    register_fake = torch.library.register_fake

    def skipping_torchvision_ops(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return lambda fn: fn
        return register_fake(op, *args, **kwargs)

    torch.library.register_fake = skipping_torchvision_ops
    try:
        return importlib.import_module("torchvision"), ""
    except Exception as error:  # noqa: BLE001 - any failure is a reason to skip
        return None, f"torchvision does not import: {error!r}"
    finally:
        torch.library.register_fake = register_fake
