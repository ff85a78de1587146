"""``fastseg.convert(model)``: an existing PyTorch model with its layers
swapped for fastseg's where they are equivalent, weights and outputs kept.

- ``nn.Conv2d`` (any stride, padding, dilation, groups, padding mode)
  -> ``fastseg.ops.Conv2d``;
- in an ``nn.Sequential``, a depthwise ``nn.Conv2d`` (groups = in = out
  channels) directly followed by a pointwise one (1x1, stride 1, no
  padding, groups 1), both with a bias or both without: the pair the fused
  layer computes -> one ``fastseg.ops.DepthwiseSeparableConv2d`` in the
  depthwise conv's place, and ``nn.Identity`` in the pointwise's, so the
  other indices stay (the pair's state_dict entries move to
  ``<i>.depthwise.*`` and ``<i>.pointwise.*``);
- ``nn.MaxPool2d`` -> ``fastseg.ops.MaxPool2d`` (PyTorch's int64 indices);
- ``nn.MaxUnpool2d`` -> ``fastseg.ops.MaxUnpool2d``.

Only layers of exactly these classes convert: a subclass may do anything
in its forward. The new layers take the old ones' Parameter objects (tied
weights stay tied) and training mode; hooks registered on a replaced layer
do not carry over.
"""

import copy

from torch import nn

from .. import ops


def _conv(old: nn.Conv2d) -> ops.Conv2d:
    new = ops.Conv2d(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                     old.groups, old.bias is not None, old.padding_mode, device="meta")
    new.weight, new.bias = old.weight, old.bias
    return new


def _max_pool(old: nn.MaxPool2d) -> ops.MaxPool2d:
    return ops.MaxPool2d(old.kernel_size, old.stride, old.padding, old.dilation, old.return_indices, old.ceil_mode)


def _max_unpool(old: nn.MaxUnpool2d) -> ops.MaxUnpool2d:
    return ops.MaxUnpool2d(old.kernel_size, old.stride, old.padding)


_CONVERTERS = {nn.Conv2d: _conv, nn.MaxPool2d: _max_pool, nn.MaxUnpool2d: _max_unpool}


def _is_separable_pair(depthwise: nn.Module, pointwise: nn.Module) -> bool:
    """Whether ``DepthwiseSeparableConv2d`` computes ``pointwise(depthwise(x))``
    exactly: its depthwise conv has one filter per channel, its pointwise
    conv is a plain 1x1 and its ``bias`` flag covers both convs."""
    if type(depthwise) is not nn.Conv2d or type(pointwise) is not nn.Conv2d:
        return False
    return (depthwise.groups == depthwise.in_channels == depthwise.out_channels
            and pointwise.kernel_size == (1, 1) and pointwise.stride == (1, 1)
            and pointwise.padding in ((0, 0), "valid") and pointwise.groups == 1
            and pointwise.in_channels == depthwise.out_channels
            and (depthwise.bias is None) == (pointwise.bias is None)
            and depthwise.weight.dtype == pointwise.weight.dtype
            and depthwise.weight.device == pointwise.weight.device)


def _separable(depthwise: nn.Conv2d, pointwise: nn.Conv2d) -> ops.DepthwiseSeparableConv2d:
    fused = ops.DepthwiseSeparableConv2d(depthwise.in_channels, pointwise.out_channels, depthwise.kernel_size,
                                         depthwise.stride, depthwise.padding, depthwise.dilation,
                                         bias=depthwise.bias is not None, padding_mode=depthwise.padding_mode,
                                         device="meta")
    fused.depthwise, fused.pointwise = _conv(depthwise), _conv(pointwise)
    return fused.train(depthwise.training)


def _fuse_separable_pairs(sequential: nn.Sequential) -> None:
    names = list(sequential._modules)
    i = 0
    while i + 1 < len(names):
        first, second = sequential._modules[names[i]], sequential._modules[names[i + 1]]
        if _is_separable_pair(first, second):
            setattr(sequential, names[i], _separable(first, second))
            setattr(sequential, names[i + 1], nn.Identity())
            i += 1
        i += 1


def _replacement(module: nn.Module, replaced: dict[nn.Module, nn.Module]) -> nn.Module | None:
    """fastseg's layer for ``module`` (the same one each time a shared
    layer is met), or None when it has none."""
    if module not in replaced:
        converter = _CONVERTERS.get(type(module))
        if converter is None:
            return None
        replaced[module] = converter(module).train(module.training)
    return replaced[module]


def _convert_children(module: nn.Module, replaced: dict[nn.Module, nn.Module]) -> None:
    if isinstance(module, nn.Sequential):
        _fuse_separable_pairs(module)
    # Not named_children(): it yields a layer met twice only once.
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        new = _replacement(child, replaced)
        if new is None:
            _convert_children(child, replaced)
        else:
            setattr(module, name, new)


def convert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """``model`` with its PyTorch layers swapped for fastseg's (see the
    module's docstring); outputs and parameters stay the same. Converts a
    deep copy unless ``inplace=True``, which converts ``model`` itself
    (a ``model`` that is itself a convertible layer is returned replaced)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    replaced: dict[nn.Module, nn.Module] = {}
    root = _replacement(model, replaced)
    if root is not None:
        return root
    _convert_children(model, replaced)
    return model
