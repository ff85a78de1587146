"""The activations that sit inside fused layers (ReLU in Xception, ReLU6 in
MobileNetV2): their names, the codes the kernels take, and their
derivatives written in terms of the activation's output, so a backward pass
needs no pre-activation copy."""

import torch

ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2}


def activation_name(name: str | None, argument: str) -> str:
    """``name`` normalised for op schemas (``None`` -> ``"none"``)."""
    name = "none" if name is None else name
    if name not in ACTIVATION_CODES:
        raise ValueError(f"{argument} must be None, 'relu' or 'relu6', got {name!r}")
    return name


def activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return torch.relu(x)
    if name == "relu6":
        return torch.nn.functional.relu6(x)  # hardtanh: zero gradient at 0 and 6, as nn.ReLU6 (clamp passes it)
    return x


def activation_grad(grad: torch.Tensor, activated: torch.Tensor, name: str) -> torch.Tensor:
    """d(loss)/d(pre-activation) from d(loss)/d(activation) and the
    activation's output: ReLU passes where the output is positive, ReLU6
    where it is strictly inside (0, 6) (PyTorch's hardtanh convention)."""
    if name == "relu":
        return grad * (activated > 0)
    if name == "relu6":
        return grad * ((activated > 0) & (activated < 6))
    return grad
