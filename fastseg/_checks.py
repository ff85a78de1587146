"""Input validation shared by every op: run before any kernel, raise a
``TypeError``/``ValueError`` that names the argument and what was expected."""

import math
from numbers import Real

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(t, name: str, ndims: tuple[int, ...], dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in ndims:
        wanted = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name} must be {wanted}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {names}; got {str(t.dtype).removeprefix('torch.')}")


def check_nonempty_planes(t: torch.Tensor, name: str) -> None:
    """Pooling needs channels and at least one pixel per plane; only the
    batch may be empty, as in PyTorch."""
    if 0 in t.shape[-3:]:
        raise ValueError(f"{name} must have non-zero channels, height and width, got shape {tuple(t.shape)}")


def int_pair(value, name: str, minimum: int) -> tuple[int, int]:
    if isinstance(value, (bool, float)) or not isinstance(value, (int, tuple, list, torch.Size)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def is_number(value) -> bool:
    """A real number that is not a bool (True is an int to Python)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def as_float(value) -> float:
    """float(value), inf where it is beyond a float (10**400)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def positive_numbers(value, name: str, count: int, *, one_for_all: bool = False) -> list[float]:
    """``count`` positive, finite floats (standard deviations, spacings), from
    one number for all of them or a sequence of ``count`` (a list, tuple,
    torch.Size or 1-D numpy array); where ``one_for_all``, a sequence of
    one number also serves them all."""
    if is_number(value):
        values = [value] * count
    else:
        sequence = isinstance(value, (list, tuple, torch.Size)) or (isinstance(value, np.ndarray) and value.ndim == 1)
        if not sequence or not all(is_number(v) for v in value):
            raise TypeError(f"{name} must be a positive number or a sequence of {count}, got {value!r}")
        if len(value) == 1 and one_for_all:
            values = list(value) * count
        elif len(value) == count:
            values = list(value)
        else:
            raise ValueError(f"{name} must be one positive number or {count} of them, got {value!r}")
    floats = [as_float(v) for v in values]
    if not all(math.isfinite(v) and v > 0 for v in floats):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return floats
