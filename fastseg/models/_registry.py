"""The model registry: ``create(name, **kwargs)`` and ``list_models()``.

A builder registers itself under its function name with ``@register_model``;
``fastseg.models`` imports every module that holds builders, so the registry
is complete once the package is imported.
"""

from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: registers ``builder`` under its ``__name__``."""
    name = builder.__name__
    if name in _BUILDERS:
        raise RuntimeError(f"a model named {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder


def list_models() -> list[str]:
    """The names ``create`` accepts, sorted."""
    return sorted(_BUILDERS)


def create(name: str, **kwargs) -> nn.Module:
    """The model ``name`` built with the builder's keyword arguments."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in _BUILDERS:
        raise ValueError(f"name: no model {name!r}; the models are {', '.join(list_models())}")
    return _BUILDERS[name](**kwargs)
