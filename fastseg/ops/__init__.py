"""fastseg's layers: one-for-one replacements of torch.nn layers, each with a
functional form, a pure-PyTorch reference (``fastseg.reference``) and fast
backends picked per call (see ``fastseg.backends()``)."""

from .max_pool2d import MaxPool2d, max_pool2d_with_indices
from .max_unpool2d import MaxUnpool2d, max_unpool2d

__all__ = ["MaxPool2d", "MaxUnpool2d", "max_pool2d_with_indices", "max_unpool2d"]
