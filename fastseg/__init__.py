"""fastseg: fast kernels and drop-in layers for semantic segmentation.

Importing fastseg never fails for want of Triton, a GPU or the compiled
extension; asking for a backend that cannot run raises an error saying why.
"""

from . import models, ops, reference
from ._backend import BackendUnavailable
from ._info import backends
from .models import convert

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "__version__", "backends", "convert", "models", "ops", "reference"]
