"""Segmentation metrics: the confusion matrix and the mean intersection over
union (mIoU) of the PASCAL VOC and Cityscapes benchmarks, accumulated over a
dataset before dividing (not averaged per image)."""

import torch
from torch import Tensor


def confusion_matrix(predicted: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[num_classes, num_classes] int64: entry [t, p] counts the pixels of
    true class t predicted as p. ``predicted`` and ``target``: label maps of
    the same shape, values in [0, num_classes)."""
    for name, labels in (("predicted", predicted), ("target", target)):
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64:
            raise TypeError(f"{name} must be an int64 label map tensor")
    if predicted.shape != target.shape:
        raise ValueError(f"predicted and target must have the same shape, got {tuple(predicted.shape)} "
                         f"and {tuple(target.shape)}")
    if predicted.numel() and (min(predicted.min(), target.min()) < 0
                              or max(predicted.max(), target.max()) >= num_classes):
        raise ValueError(f"predicted and target must hold labels in [0, {num_classes})")
    pairs = target.flatten() * num_classes + predicted.flatten()
    return torch.bincount(pairs, minlength=num_classes ** 2).view(num_classes, num_classes).cpu()


def mean_iou(confusion: Tensor) -> float:
    """The mean over classes of TP / (TP + FP + FN), from a confusion
    matrix; classes that neither occur nor are predicted are left out."""
    true_positives = confusion.diag().double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    present = union > 0
    if not present.any():
        raise ValueError("confusion holds no pixels")
    return (true_positives[present] / union[present]).mean().item()
