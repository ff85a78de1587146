"""fastseg's layers: one-for-one replacements of torch.nn layers, each with a
functional form, a pure-PyTorch reference (``fastseg.reference``) and fast
backends picked per call (see ``fastseg.backends()``)."""

from ._kept_lattices import clear_lattice_cache
from .conv2d import Conv2d, ConvPath, conv2d, conv2d_path
from .dense_crf import DenseCRF, dense_crf
from .depthwise_separable_conv2d import DepthwiseSeparableConv2d, depthwise_separable_conv2d
from .max_pool2d import MaxPool2d, max_pool2d_with_indices
from .max_unpool2d import MaxUnpool2d, max_unpool2d
from .permutohedral_filter import Lattice, permutohedral_filter, permutohedral_lattice

__all__ = ["Conv2d", "ConvPath", "DenseCRF", "DepthwiseSeparableConv2d", "Lattice", "MaxPool2d", "MaxUnpool2d",
           "clear_lattice_cache", "conv2d", "conv2d_path", "dense_crf", "depthwise_separable_conv2d",
           "max_pool2d_with_indices", "max_unpool2d", "permutohedral_filter", "permutohedral_lattice"]
