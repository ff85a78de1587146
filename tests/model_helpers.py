"""Models shared by the tests of one module: building a ResNet takes a
second on 2 cores, so each is built once and handed back as the tests left
it, except for what ``reset`` restores."""

from collections.abc import Callable

import torch
from torch import nn

from fastseg.models import set_backend


class BuiltModels:
    """Models built on first use, by key; tests set the mode they need."""

    def __init__(self):
        self._models: dict[str, nn.Module] = {}

    def get(self, key: str, build: Callable[[], nn.Module]) -> nn.Module:
        if key not in self._models:
            torch.manual_seed(0)
            self._models[key] = build()
        return self._models[key]

    def reset(self) -> None:
        """Every model back on the default backend, without gradients
        (a module's autouse fixture calls this after each test)."""
        for net in self._models.values():
            set_backend(net, None)
            net.zero_grad(set_to_none=True)


def image(batch: int, size, gen: torch.Generator, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A random RGB batch [batch, 3, *size]."""
    return torch.randn(batch, 3, *size, generator=gen).contiguous(memory_format=memory_format)


# Relative to the largest |logit|: float32 reassociation through ~100 layers; bf16's 8 bits.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str) -> None:
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= TOLERANCE[dtype] * scale, f"{name}: max error {error:.3g} > {TOLERANCE[dtype]} * {scale:.3g}"


def assert_reference_backend_matches(net: nn.Module, x: torch.Tensor, device: str) -> None:
    """Every output of ``net`` (eval mode) on ``device`` on its default
    backends agrees with the reference backend's; the net goes back to the
    CPU (the default backend is restored by ``BuiltModels.reset``)."""
    net = net.eval().to(device)
    x = x.to(device)
    try:
        with torch.no_grad():
            default = net(x)
            reference = set_backend(net, "reference")(x)
        for key in default:
            assert_close_relative(default[key], reference[key], torch.float32, key)
    finally:
        net.to("cpu")
