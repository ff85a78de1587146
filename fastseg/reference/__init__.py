"""Pure-PyTorch references of every fastseg op: the ground truth of the tests
and the fallback where no faster backend can run. Plain over fast."""

from .conv2d import conv2d
from .dense_crf import dense_crf
from .depthwise_separable_conv2d import depthwise_separable_conv2d
from .max_pool2d import max_pool2d_with_indices
from .max_unpool2d import max_unpool2d
from .permutohedral_filter import exact_gaussian_filter, permutohedral_filter

__all__ = ["conv2d", "dense_crf", "depthwise_separable_conv2d", "exact_gaussian_filter", "max_pool2d_with_indices",
           "max_unpool2d", "permutohedral_filter"]
