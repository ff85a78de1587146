"""Segmentation losses: cross-entropy with ignored pixels, class weights and
per-pixel weights; U-Net's weight map (Ronneberger et al. 2015, Eq. 2);
the weighted sum over a model's output dict (PSPNet's out + 0.4 aux); and
Gated-SCNN's dual-task loss (Takikawa et al. 2019): boundaries
of a label map, HED's class-balanced binary cross-entropy, the boundary
magnitude of class maps and the two dual-task regularisers.
"""

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import FLOAT_DTYPES, check_tensor, is_number
from ._arguments import check_positive

REDUCTIONS = ("mean", "sum", "none")

# PSPNet (Zhao et al. 2017, Sec. 3.3 and 4.1): the auxiliary loss on
# ResNet's stage 4 weighted 0.4 against the main one.
PSPNET_WEIGHTS = {"out": 1.0, "aux": 0.4}


def _check_target(target, logits: Tensor) -> None:
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.dtype != torch.int64:
        raise TypeError(f"target must hold int64 class indices, got {target.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target must have shape {expected} (the logits' batch and size; crop it with "
                         f"model.crop_to_output for the unpadded U-Net), got {tuple(target.shape)}")


def cross_entropy(logits: Tensor, target: Tensor, *, weight: Tensor | None = None,
                  pixel_weight: Tensor | None = None, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """``F.cross_entropy(logits, target, weight, ignore_index=...,
    reduction=...)`` for logits [B, K, H, W] and target [B, H, W], with an
    optional ``pixel_weight`` [B, H, W] multiplying each pixel's term (such
    as U-Net's ``unet_weight_map``). The mean divides by the summed weights
    of the pixels not ignored, class weight times pixel weight, as
    F.cross_entropy divides by the class weights."""
    check_tensor(logits, "logits", (4,), FLOAT_DTYPES)
    _check_target(target, logits)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if pixel_weight is None:
        return F.cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction=reduction)
    check_tensor(pixel_weight, "pixel_weight", (3,), FLOAT_DTYPES)
    if pixel_weight.shape != target.shape:
        raise ValueError(f"pixel_weight must have the target's shape {tuple(target.shape)}, "
                         f"got {tuple(pixel_weight.shape)}")
    # Per pixel: class weight x -log p (0 where ignored), times the pixel's weight.
    losses = F.cross_entropy(logits, target, weight, ignore_index=ignore_index, reduction="none") * pixel_weight
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    counted = target != ignore_index
    class_weight = 1.0 if weight is None else weight[torch.where(counted, target, 0)]
    return losses.sum() / (class_weight * pixel_weight * counted).sum()


def _differs_from_neighbour(labels: Tensor, valid: Tensor | None = None) -> Tensor:
    """True where a pixel's label differs from that of a 4-neighbour inside
    the image, both pixels ``valid`` when given: both sides of a boundary."""
    differs = torch.zeros_like(labels, dtype=torch.bool)
    for axis in (-2, -1):
        length = labels.shape[axis] - 1
        change = labels.diff(dim=axis) != 0
        if valid is not None:
            change &= valid.narrow(axis, 1, length) & valid.narrow(axis, 0, length)
        differs.narrow(axis, 1, length).logical_or_(change)
        differs.narrow(axis, 0, length).logical_or_(change)
    return differs


def _cell_borders(cells: Tensor) -> Tensor:
    """Pixels of a cell with a 4-neighbour (inside the image) outside it:
    a pixel's nearest point of a cell is always one of these."""
    return _differs_from_neighbour(cells) & (cells != 0)


def _two_nearest_cells(cells: Tensor, pixels: Tensor) -> tuple[Tensor, Tensor]:
    """The distances [P] from ``pixels`` [P, 2] (row, col) to the nearest
    and the second nearest cell of the label map ``cells`` [H, W]."""
    ids = cells.unique()
    ids = ids[ids != 0]
    border = _cell_borders(cells)
    points = border.nonzero().double()  # [Q, 2]
    owner = torch.searchsorted(ids, cells[border])  # [Q]: which of ``ids`` each border pixel belongs to
    nearest = []
    # Chunks of pixels keep the [chunk, Q] distance matrix near 16 M entries.
    for chunk in pixels.double().split(max(1, (1 << 24) // max(len(points), 1))):
        distances = torch.cdist(chunk, points, compute_mode="donot_use_mm_for_euclid_dist")
        per_cell = distances.new_full((len(chunk), len(ids)), math.inf)
        per_cell.scatter_reduce_(1, owner.expand(len(chunk), -1), distances, "amin")
        nearest.append(per_cell.topk(2, dim=1, largest=False).values)
    d1, d2 = torch.cat(nearest).unbind(1)
    return d1, d2


def unet_weight_map(cells: Tensor, *, w0: float = 10.0, sigma: float = 5.0,
                    class_weights: tuple[float, float] | None = None) -> Tensor:
    """U-Net's weight map (Eq. 2), float32 of the shape of ``cells``:

        w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

    ``cells`` [H, W] or [B, H, W]: an instance label map, 0 for background
    and one id per cell. d1 and d2 are the Euclidean distances (between
    pixel centres) to the nearest and second nearest cell; the border term
    is given to background pixels, which it weights where they separate
    touching cells, and is 0 where an image has fewer than two cells.
    w_c balances the class frequencies: ``class_weights`` (background,
    foreground), or by default n / (k n_c) per image (n pixels, k classes
    present, n_c pixels of the pixel's class). The paper uses w0=10, sigma=5.
    """
    if not isinstance(cells, Tensor):
        raise TypeError(f"cells must be a torch.Tensor, got {type(cells).__name__}")
    if cells.dtype.is_floating_point or cells.dtype.is_complex or cells.dtype == torch.bool:
        raise TypeError(f"cells must hold integer cell ids, got {cells.dtype}")
    if cells.dim() not in (2, 3) or cells.numel() == 0:
        raise ValueError(f"cells must be a non-empty [H, W] or [B, H, W] label map, got shape {tuple(cells.shape)}")
    if (cells < 0).any():
        raise ValueError("cells must hold ids >= 0 (0: background)")
    for name, value in (("w0", w0), ("sigma", sigma)):
        if not is_number(value) or not math.isfinite(value) or value < 0 or (name == "sigma" and value == 0):
            raise ValueError(f"{name} must be a finite number {'> 0' if name == 'sigma' else '>= 0'}, got {value!r}")
    if class_weights is not None and (len(class_weights) != 2 or not all(is_number(w) for w in class_weights)):
        raise ValueError(f"class_weights must be (background, foreground) numbers, got {class_weights!r}")
    if cells.dim() == 3:
        return torch.stack([unet_weight_map(c, w0=w0, sigma=sigma, class_weights=class_weights) for c in cells])
    foreground = cells != 0
    if class_weights is None:
        counts = torch.stack([(~foreground).sum(), foreground.sum()]).double()
        class_weights = cells.numel() / (counts * (counts > 0).sum())
    weights = torch.as_tensor(class_weights, dtype=torch.float64)[foreground.long()]
    background = (~foreground).nonzero()
    if (cells.unique() != 0).sum() >= 2 and len(background):
        d1, d2 = _two_nearest_cells(cells, background)
        weights[~foreground] += w0 * torch.exp(-(d1 + d2) ** 2 / (2 * sigma ** 2))
    return weights.float()


def output_dict_loss(outputs: Mapping[str, Tensor], target: Tensor, *, weights: Mapping[str, float] | None = None,
                     loss: Callable[..., Tensor] = cross_entropy, **loss_kwargs) -> Tensor:
    """Sum of ``weights[key] * loss(outputs[key], target, **loss_kwargs)``
    over the keys of ``weights`` in ``outputs`` (default ``PSPNET_WEIGHTS``:
    out + 0.4 aux; "aux" counts only when the model returns it). Keys the
    weights do not name (such as DeepLab v1's "unary") are not losses."""
    weights = PSPNET_WEIGHTS if weights is None else weights
    if not isinstance(outputs, Mapping) or "out" not in outputs:
        raise TypeError(f"outputs must be a model's output dict with an 'out' entry, got {type(outputs).__name__}")
    if not isinstance(weights, Mapping) or not all(is_number(w) for w in weights.values()):
        raise TypeError(f"weights must map output names to numbers, got {weights!r}")
    terms = [w * loss(outputs[key], target, **loss_kwargs) for key, w in weights.items() if key in outputs]
    if not terms:
        raise ValueError(f"weights names none of the outputs {sorted(outputs)}: {sorted(weights)}")
    return sum(terms[1:], terms[0])


def pspnet_loss(outputs: Mapping[str, Tensor], target: Tensor, **loss_kwargs) -> Tensor:
    """PSPNet's training loss: cross-entropy of ``out`` plus 0.4 times that
    of ``aux`` (``loss_kwargs``: ``cross_entropy``'s)."""
    return output_dict_loss(outputs, target, weights=PSPNET_WEIGHTS, **loss_kwargs)


# --- Gated-SCNN ---------------------------------------------------------------------

# Gated-SCNN's loss weights lambda_1..lambda_4 by the term they weigh: the
# edge BCE (lambda_1 = 20, the authors' training setting), the segmentation
# CE (lambda_2), and the two dual-task regularisers (lambda_3, lambda_4), 1 each.
GATED_SCNN_WEIGHTS = {"edge": 20.0, "out": 1.0, "boundary": 1.0, "edge_consistency": 1.0}


def semantic_boundaries(target: Tensor, ignore_index: int = -100) -> Tensor:
    """Ground-truth boundaries [B, H, W] (bool) of a label map ``target``
    [B, H, W]: pixels with a 4-neighbour of another class, neither pixel
    ``ignore_index``; both sides of a boundary are marked."""
    return _differs_from_neighbour(target, target != ignore_index)


def balanced_binary_cross_entropy(logits: Tensor, edges: Tensor, valid: Tensor | None = None) -> Tensor:
    """HED's class-balanced binary cross-entropy (Xie & Tu 2015, Eq. 2),
    Gated-SCNN's boundary loss, of boundary ``logits`` [B, 1, H, W] against
    ``edges`` [B, H, W] (bool). Per image, boundary pixels weigh beta, the
    fraction of non-boundary pixels among the ``valid`` ones (all when None),
    and the others 1 - beta, so that the rare boundaries count as much as
    the rest; the sum is divided by the batch's valid pixels. An image
    without boundaries has beta = 1: its pixels add nothing."""
    x = logits.squeeze(1)  # [B, H, W]
    valid = torch.ones_like(edges) if valid is None else valid
    counted = valid.to(x.dtype)
    target = edges.to(x.dtype)
    pixels = counted.sum(dim=(1, 2), keepdim=True)
    beta = (pixels - (target * counted).sum(dim=(1, 2), keepdim=True)) / pixels.clamp_min(1)
    weight = torch.where(edges, beta, 1 - beta) * counted
    losses = F.binary_cross_entropy_with_logits(x, target, weight=weight, reduction="none")
    return losses.sum() / counted.sum().clamp_min(1)


def boundary_magnitude(maps: Tensor, valid: Tensor | None = None) -> Tensor:
    """zeta of Gated-SCNN's dual-task regulariser for class maps [B, K, H, W] (probabilities
    or one-hot): the norm over classes of the spatial gradient, over sqrt(2),
    per pixel [B, H, W]. The gradient is the forward difference to the next
    column and row (0 beyond the last, and where either pixel is not
    ``valid``), so a one-hot map has zeta = 1 on the pixel before each change
    of class along a row or column, and 0 inside regions. No smoothing
    before the differences: the softmax's temperature is the relaxation."""
    squared = maps.new_zeros(maps.shape[0], *maps.shape[2:])
    for axis, padding in ((-1, (0, 1)), (-2, (0, 0, 0, 1))):
        steps = maps.diff(dim=axis).square().sum(1)  # [B, H, W-1] or [B, H-1, W]
        if valid is not None:
            length = valid.shape[axis] - 1
            steps = steps * (valid.narrow(axis, 1, length) & valid.narrow(axis, 0, length))
        squared = squared + F.pad(steps, padding)
    # The square root has no gradient at 0: clamped there, and the zeros put back.
    return torch.where(squared > 0, (squared / 2).clamp_min(torch.finfo(squared.dtype).tiny).sqrt(), 0)


def _check_gated_scnn_outputs(outputs) -> tuple[Tensor, Tensor]:
    if not isinstance(outputs, Mapping) or "out" not in outputs or "edge" not in outputs:
        raise TypeError("outputs must be Gated-SCNN's output dict with 'out' and 'edge' entries, "
                        f"got {type(outputs).__name__}")
    logits, edge = outputs["out"], outputs["edge"]
    check_tensor(logits, "outputs['out']", (4,), FLOAT_DTYPES)
    check_tensor(edge, "outputs['edge']", (4,), FLOAT_DTYPES)
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(edge.shape) != expected:
        raise ValueError(f"outputs['edge'] must have shape {expected} (one boundary map at the logits' size), "
                         f"got {tuple(edge.shape)}")
    return logits, edge


def _check_gated_scnn_weights(weights) -> dict[str, float]:
    if weights is None:
        return dict(GATED_SCNN_WEIGHTS)
    if not isinstance(weights, Mapping) or not all(is_number(w) for w in weights.values()):
        raise TypeError(f"weights must map term names to numbers, got {weights!r}")
    unknown = sorted(set(weights) - set(GATED_SCNN_WEIGHTS))
    if unknown:
        raise ValueError(f"weights: no terms {unknown}; the terms are {sorted(GATED_SCNN_WEIGHTS)}")
    return {**GATED_SCNN_WEIGHTS, **weights}


def gated_scnn_loss(outputs: Mapping[str, Tensor], target: Tensor, *, weights: Mapping[str, float] | None = None,
                    ignore_index: int = -100, temperature: float = 1.0, edge_threshold: float = 0.8) -> Tensor:
    """Gated-SCNN's dual-task loss of a model's ``outputs``
    (``"out"``: logits [B, K, H, W], ``"edge"``: boundary logits
    [B, 1, H, W]) against the label map ``target`` [B, H, W]:

        lambda_1 * balanced_binary_cross_entropy(edge, semantic_boundaries(target))
      + lambda_2 * cross_entropy(out, target)
      + lambda_3 * mean |zeta(softmax(out / temperature)) - zeta(one_hot(target))|
      + lambda_4 * cross_entropy(out, target) where sigmoid(edge) > edge_threshold

    The third term asks the boundaries of the predicted segmentation to be the
    ground truth's (``boundary_magnitude``; the softmax at ``temperature``
    stands in for the argmax, as the paper's Gumbel softmax does, without
    its noise); the fourth asks the segmentation to be right where the shape
    stream sees a boundary (no gradient flows through that mask). The means
    run over the pixels that are not ``ignore_index`` (the fourth's over those
    inside the mask; 0 when it is empty). ``weights`` maps term names
    ("edge", "out", "boundary", "edge_consistency") to the lambdas,
    overriding ``GATED_SCNN_WEIGHTS``."""
    logits, edge = _check_gated_scnn_outputs(outputs)
    _check_target(target, logits)
    weights = _check_gated_scnn_weights(weights)
    check_positive(temperature, "temperature")
    if not is_number(edge_threshold) or not 0 <= edge_threshold < 1:
        raise ValueError(f"edge_threshold must be a number in [0, 1), got {edge_threshold!r}")
    valid = target != ignore_index
    counted = valid.to(logits.dtype)
    pixel_ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # 0 where ignored

    one_hot = F.one_hot(torch.where(valid, target, 0), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
    predicted = boundary_magnitude(torch.softmax(logits / temperature, dim=1), valid)
    boundary = ((predicted - boundary_magnitude(one_hot, valid)).abs() * counted).sum() / counted.sum().clamp_min(1)

    on_edge = (torch.sigmoid(edge.detach().squeeze(1)) > edge_threshold).to(logits.dtype) * counted
    edge_consistency = (pixel_ce * on_edge).sum() / on_edge.sum().clamp_min(1)

    terms = {"edge": balanced_binary_cross_entropy(edge, semantic_boundaries(target, ignore_index), valid),
             "out": pixel_ce.sum() / counted.sum().clamp_min(1),
             "boundary": boundary, "edge_consistency": edge_consistency}
    return sum(weights[name] * term for name, term in terms.items())
