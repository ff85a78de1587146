"""pydensecrf's ``utils``: unaries from labels or probabilities, and the
feature maps of Gaussian and bilateral kernels of any dimension, for
``DenseCRF.setUnaryEnergy`` and ``DenseCRF.addPairwiseEnergy``.

Same arguments and results (float32 numpy arrays, pixels flattened in C
order) as ``pydensecrf.utils``, so that ``import fastseg.crf.utils`` replaces
``import pydensecrf.utils`` unchanged.
"""

import warnings
from numbers import Number

import numpy as np


def unary_from_labels(labels, n_labels, gt_prob, zero_unsure=True):
    """-log p [n_labels, N] of a classifier that is right with probability
    ``gt_prob`` about the label map ``labels`` (any shape, N pixels) and
    spreads the rest evenly over the other labels.

    With ``zero_unsure`` the value 0 means "unknown" (a uniform unary) and
    the labels are 1..n_labels; without it they are 0..n_labels-1.
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob must lie in (0, 1), got {gt_prob!r}")
    labels = np.asarray(labels).ravel()
    label_rows = labels - 1 if zero_unsure else labels
    known = labels != 0 if zero_unsure else np.ones(labels.shape, bool)
    if np.any(known & ((label_rows < 0) | (label_rows >= n_labels))):
        wanted = f"1..{n_labels} (0: unsure)" if zero_unsure else f"0..{n_labels - 1}"
        raise ValueError(f"labels must lie in {wanted}, got values in [{labels.min()}, {labels.max()}]")

    unary = np.full((n_labels, labels.size), -np.log((1.0 - gt_prob) / (n_labels - 1)), dtype=np.float32)
    pixels = np.flatnonzero(known)
    unary[label_rows[pixels], pixels] = -np.log(gt_prob)
    unary[:, ~known] = -np.log(1.0 / n_labels)
    return unary


def unary_from_softmax(sm, scale=None, clip=1e-5):
    """-log p [C, N] of class probabilities ``sm`` [C, *spatial].

    ``scale`` in (0, 1] blends them with the uniform distribution (p ->
    scale p + (1 - scale) / C: a probability of 1 becomes ``scale``);
    ``clip`` is the least probability kept, so that log 0 never happens
    (None: no clipping).
    """
    classes = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
        sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / classes)
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    return -np.log(sm).reshape(classes, -1).astype(np.float32)


def compute_unary(labels, M, GT_PROB=0.5):
    """Deprecated: ``unary_from_labels(labels, M, GT_PROB)``."""
    warnings.warn("compute_unary is deprecated, use unary_from_labels instead", DeprecationWarning, stacklevel=2)
    return unary_from_labels(labels, M, GT_PROB)


def softmax_to_unary(sm, GT_PROB=1):
    """Deprecated: ``unary_from_softmax`` without clipping, ``GT_PROB`` its
    ``scale`` (1: none)."""
    warnings.warn("softmax_to_unary is deprecated, use unary_from_softmax instead", DeprecationWarning,
                  stacklevel=2)
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def _scaled_positions(sdims, shape):
    """[len(shape), *shape] float32: the index along each axis divided by
    that axis's standard deviation in ``sdims``."""
    if len(sdims) != len(shape):
        raise ValueError(f"sdims must hold one standard deviation per axis of {tuple(shape)}, got {sdims!r}")
    mesh = np.array(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), dtype=np.float32)
    for axis, sigma in enumerate(sdims):
        mesh[axis] /= sigma
    return mesh


def create_pairwise_gaussian(sdims, shape):
    """Features [len(shape), N] of a Gaussian kernel over positions: the
    index along each axis of an array of ``shape`` over its standard
    deviation in ``sdims`` (``DenseCRF2D.addPairwiseGaussian``'s ``sxy``)."""
    return _scaled_positions(sdims, shape).reshape(len(sdims), -1)


def create_pairwise_bilateral(sdims, schan, img, chdim=-1):
    """Features [len(sdims) + C, N] of a bilateral kernel: positions over
    ``sdims`` (as ``create_pairwise_gaussian``), then the C channels of
    ``img`` over ``schan`` (one number, or one per channel).

    ``chdim`` is the axis of ``img`` that holds the channels (2 for an
    H x W x 3 image), -1 for an image without one (a single channel).
    """
    if chdim == -1:
        channels = img[np.newaxis].astype(np.float32)
    else:
        channels = np.moveaxis(img, chdim, 0).astype(np.float32)
    if isinstance(schan, Number):
        channels /= schan
    else:
        for channel, sigma in enumerate(schan):
            channels[channel] /= sigma
    features = np.concatenate([_scaled_positions(sdims, channels.shape[1:]), channels])
    return features.reshape(features.shape[0], -1)
