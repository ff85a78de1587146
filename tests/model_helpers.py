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
