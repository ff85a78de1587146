"""``set_backend``: one backend for every fastseg layer of a model."""

from torch import nn

from .. import ops

# The layers that take a ``backend`` (each picks per call when it is None).
_LAYERS = (ops.Conv2d, ops.DepthwiseSeparableConv2d, ops.MaxPool2d, ops.MaxUnpool2d, ops.DenseCRF)


def set_backend(model: nn.Module, backend: str | None) -> nn.Module:
    """Sets ``backend`` (a name such as ``"reference"``, or None for the
    fastest per call) on every fastseg layer of ``model``; returns ``model``.
    The name is checked by the layers when they run, as for a single layer."""
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a str or None, got {type(backend).__name__}")
    for module in model.modules():
        if isinstance(module, _LAYERS):
            module.backend = backend
    return model
