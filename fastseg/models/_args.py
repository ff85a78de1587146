"""Argument checks shared by the model builders."""


def positive_int(value, name: str) -> int:
    """``value``, or a ValueError naming ``name`` when it is not an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value
