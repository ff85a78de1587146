"""The embedded shapes model: a DeepLabV3+ on a narrow MobileNetV2 trained
on ``fastseg.shapes`` by ``python -m fastseg train`` and shipped in the
package (``fastseg/data/shapes_deeplabv3plus.pt``, loaded from the package
folder: no download); how it is built, saved, loaded and scored, mIoU
without and with dense-CRF refinement.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .metrics import confusion_matrix, mean_iou
from .models import deeplabv3plus
from .models._weights import load_weights
from .ops import dense_crf
from .shapes import CLASSES, ShapesDataset

# MobileNetV2 at a quarter width: 0.72 M parameters, most of them in the
# head's 256-channel ASPP and decoder; one training step on 8 96x96 images
# takes about 0.3 s on one CPU core.
WIDTH_MULT = 0.25
CHECKPOINT = Path(__file__).parent / "data" / "shapes_deeplabv3plus.pt"

# Mean-field iterations and kernels: pydensecrf's defaults.
CRF_PARAMS = {"iterations": 5, "gaussian_sxy": 3.0, "gaussian_compat": 3.0, "bilateral_sxy": 80.0,
              "bilateral_srgb": 13.0, "bilateral_compat": 10.0}


def build_model() -> nn.Module:
    """The untrained architecture of the embedded checkpoint."""
    return deeplabv3plus(len(CLASSES), backbone="mobilenet_v2", width_mult=WIDTH_MULT)


def save_checkpoint(model: nn.Module, path) -> None:
    """Saves ``model``'s state_dict with float tensors in float16: half the
    bytes, and the model's predictions do not change measurably."""
    state = {key: value.half() if value.is_floating_point() else value for key, value in model.state_dict().items()}
    torch.save(state, path)


def load_model(path=CHECKPOINT) -> nn.Module:
    """The model with the checkpoint at ``path`` (by default the embedded
    one) loaded strictly, in float32 and eval mode."""
    model = build_model()
    load_weights(model, path, "path")
    return model.eval()


def refine(logits: Tensor, images: Tensor) -> Tensor:
    """Dense-CRF label probabilities [B, L, H, W] for ``logits`` [B, L, H, W]
    and their ``images`` [B, 3, H, W] in [0, 1]."""
    pixels = (images * 255).round().to(torch.uint8)  # the colour units of CRF_PARAMS' bilateral_srgb
    return dense_crf(logits, pixels, **CRF_PARAMS)


@dataclass
class Scores:
    """mIoU over a dataset, of the network's labels and of the CRF's."""
    miou: float
    miou_crf: float


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ShapesDataset, batch_size: int = 16, device: str = "cpu") -> Scores:
    """``model``'s mIoU on ``dataset``, without and with dense-CRF
    refinement; ``model`` (on ``device``) is put in eval mode and left there."""
    model.eval()
    confusion = torch.zeros(len(CLASSES), len(CLASSES), dtype=torch.int64)
    confusion_crf = torch.zeros_like(confusion)
    for start in range(0, len(dataset), batch_size):
        images, labels = (t.to(device) for t in dataset.batch(start, min(batch_size, len(dataset) - start)))
        logits = model(images)["out"]
        confusion += confusion_matrix(logits.argmax(1), labels, len(CLASSES))
        confusion_crf += confusion_matrix(refine(logits, images).argmax(1), labels, len(CLASSES))
    return Scores(mean_iou(confusion), mean_iou(confusion_crf))
