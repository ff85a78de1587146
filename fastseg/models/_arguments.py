"""Checks of the builders' arguments: a ``TypeError``/``ValueError`` naming
the argument and what was expected, raised before any layer is built."""

from collections.abc import Collection

OUTPUT_STRIDES = (8, 16, 32)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_num_classes(num_classes) -> int:
    if not _is_int(num_classes):
        raise TypeError(f"num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def positive_int(value, name: str) -> int:
    """``value``, or a ValueError naming ``name`` when it is not an int >= 1."""
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_choice(value, name: str, choices: Collection):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_output_stride(output_stride, choices: Collection[int] = OUTPUT_STRIDES) -> int:
    if not _is_int(output_stride):
        raise TypeError(f"output_stride must be an int, got {output_stride!r}")
    return check_choice(output_stride, "output_stride", choices)


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value
