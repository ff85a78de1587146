"""Weights from local files: ``weights_backbone=`` and ``weights=`` take the
path of a saved ``state_dict`` (``torch.save(model.state_dict(), path)``).
Nothing is ever downloaded."""

import os
from collections.abc import Callable, Mapping

import torch
from torch import nn


def read_state_dict(path, argument: str) -> dict[str, torch.Tensor]:
    """The state_dict saved at ``path``, on the CPU; ``argument`` names the
    builder argument in errors."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{argument} must be the path of a saved state_dict (str or os.PathLike), "
                        f"got {type(path).__name__}")
    if not os.path.isfile(path):
        raise ValueError(f"{argument}: no file at {os.fspath(path)!r}")
    # weights_only: a checkpoint is data, never code to run.
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{argument}: {os.fspath(path)!r} does not hold a state_dict (a mapping of names to tensors)")
    return dict(state)


def load_weights(module: nn.Module, path, argument: str, *, drop: tuple[str, ...] = (),
                 rename: Callable[[str], str] | None = None) -> None:
    """Loads the state_dict at ``path`` into ``module`` strictly, after
    dropping the keys that start with a prefix in ``drop`` (a classifier
    the module does not have) and renaming the others with ``rename``."""
    state = {key: value for key, value in read_state_dict(path, argument).items() if not key.startswith(drop)}
    if rename is not None:
        state = {rename(key): value for key, value in state.items()}
    load_state(module, state, path, argument)


def _few(items: list[str], what: str) -> str:
    shown = ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")
    return f"{len(items)} {what} ({shown})"


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], path, argument: str) -> None:
    """``module.load_state_dict(state, strict=True)``, after checking that
    ``state`` fits: a ValueError naming ``argument`` lists the first few
    missing and unexpected keys and mismatched shapes (PyTorch's error
    lists every key, hundreds for a backbone)."""
    expected = module.state_dict()
    problems = []
    if missing := [key for key in expected if key not in state]:
        problems.append(_few(missing, "missing keys"))
    if unexpected := [key for key in state if key not in expected]:
        problems.append(_few(unexpected, "unexpected keys"))
    if mismatched := [f"{key} {tuple(state[key].shape)} for {tuple(value.shape)}" for key, value in expected.items()
                      if key in state and state[key].shape != value.shape]:
        problems.append(_few(mismatched, "shapes that differ"))
    if problems:
        raise ValueError(f"{argument}: {os.fspath(path)!r} does not fit {type(module).__name__}: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)
