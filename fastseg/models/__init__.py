"""Segmentation models built from ``fastseg.ops`` layers, with builders in
the style of ``torchvision.models.segmentation``; ``create(name, **kwargs)``
builds any of them by name and ``list_models()`` names them all; ``set_backend(model, name)`` runs
every fastseg layer of a model on one backend."""

from . import deeplab_v1, fcn_vgg, losses, segnet, unet, vgg  # noqa: F401 (importing registers the builders)
from ._backends import set_backend
from ._registry import create, list_models, register_model
from .convert import convert
from .tiling import Tiling, tiled_predict

__all__ = ["Tiling", "convert", "create", "list_models", "register_model", "set_backend", "tiled_predict"]
