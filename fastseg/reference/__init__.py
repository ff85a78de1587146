"""Pure-PyTorch references of every fastseg op: the ground truth of the tests
and the fallback where no faster backend can run. Plain over fast."""

from .max_pool2d import max_pool2d_with_indices
from .max_unpool2d import max_unpool2d

__all__ = ["max_pool2d_with_indices", "max_unpool2d"]
