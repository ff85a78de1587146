"""Segmentation models built from ``fastseg.ops`` layers, with builders in
the style of ``torchvision.models.segmentation``; ``create(name, **kwargs)``
builds any of them by name and ``list_models()`` names them all; ``set_backend(model, name)`` runs
every fastseg layer of a model on one backend."""

from . import deeplab_v1, fcn_vgg, losses, segnet, unet, vgg  # noqa: F401 (importing registers the builders)
from ._backends import set_backend
from ._registry import create, list_models, register_model
from .backbones import BACKBONES, build_backbone
from .convert import convert
from .deeplab import deeplabv2, deeplabv3, deeplabv3_resnet50, deeplabv3_resnet101, deeplabv3plus
from .fcn_resnet import fcn_resnet50, fcn_resnet101
from .gated_scnn import gated_scnn
from .mobilenetv2 import mobilenet_v2
from .pspnet import pspnet
from .resnet import resnet50, resnet101
from .tiling import Tiling, tiled_predict
from .xception import xception65

__all__ = ["Tiling", "convert", "create", "list_models", "register_model", "set_backend", "tiled_predict"]
__all__ += ["BACKBONES", "build_backbone", "deeplabv2", "deeplabv3", "deeplabv3_resnet50", "deeplabv3_resnet101",
            "deeplabv3plus", "fcn_resnet50", "fcn_resnet101", "gated_scnn", "mobilenet_v2", "pspnet", "resnet50",
            "resnet101", "xception65"]
