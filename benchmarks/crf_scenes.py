"""The inputs of the dense-CRF and permutohedral-filter benchmarks.

BENCHMARKING.md's scenes: a Pascal VOC-size photograph (500x375, 21
labels), the same size with a noise image (every pixel its own colour: the
lattice's worst case, with about as many vertices as pixel corners), a
Cityscapes-size photograph (2048x1024, 19 labels) and a 128^3 volume (4
labels). Photographs are scikit-image's (astronaut and coffee, bundled with
the package, no download); a scene without them is skipped with the reason.

The scores are what a segmentation net hands the CRF: softmax probabilities
that are smooth at a sixteenth of the resolution (output stride 16,
bilinearly upsampled) and confident, but blind to the image's edges, which
the CRF's bilateral kernel then snaps the labels to.
"""

import math
from dataclasses import dataclass

import skips
import torch
import torch.nn.functional as F

# pydensecrf's defaults, which BENCHMARKING.md asks for.
DEFAULTS = dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0)
# A volume's bilateral kernel: 20 voxels, 13 grey levels (of 255).
VOLUME_PARAMS = dict(DEFAULTS, bilateral_sxy=20.0)


@dataclass(frozen=True)
class Scene:
    name: str  # photo, noise, cityscapes, volume
    spatial: tuple[int, ...]
    labels: int

    @property
    def params(self) -> dict:
        return VOLUME_PARAMS if self.name == "volume" else DEFAULTS

    @property
    def pixels(self) -> int:
        return math.prod(self.spatial)

    @property
    def id(self) -> str:
        return f"{self.name}-{'x'.join(map(str, self.spatial))}-L{self.labels}"


VOC = (375, 500)
SCENES = {
    "photo": Scene("photo", VOC, 21),
    "noise": Scene("noise", VOC, 21),
    "cityscapes": Scene("cityscapes", (1024, 2048), 19),
    "volume": Scene("volume", (128, 128, 128), 4),
}


def _photograph(which: str, size: tuple[int, int]) -> torch.Tensor:
    """[3, H, W] uint8: a scikit-image photograph resized to ``size``."""
    data = skips.import_or_skip("skimage.data", skips.SKIMAGE_INSTALL)
    image = torch.from_numpy(getattr(data, which)()).permute(2, 0, 1).float().unsqueeze(0)
    resized = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)[0]


def image(scene: Scene, generator: torch.Generator) -> torch.Tensor:
    """[C, *spatial] uint8: the scene's image."""
    if scene.name == "photo":
        return _photograph("astronaut", scene.spatial)
    if scene.name == "cityscapes":
        return _photograph("coffee", scene.spatial)
    if scene.name == "noise":
        return torch.randint(0, 256, (3, *scene.spatial), dtype=torch.uint8, generator=generator)
    # Volume: grey blobs of a few levels and mild noise, one channel.
    coarse = torch.randint(0, 4, (1, 1, *(s // 16 for s in scene.spatial)), generator=generator).float() * 60
    smooth = F.interpolate(coarse, size=scene.spatial, mode="nearest")[0]
    noise = torch.randn(smooth.shape, generator=generator) * 8
    return (smooth + noise + 40).round().clamp(0, 255).to(torch.uint8)


def probabilities(scene: Scene, generator: torch.Generator) -> torch.Tensor:
    """[L, *spatial] float32 softmax scores, smooth at output stride 16."""
    coarse = torch.randn((1, scene.labels, *(math.ceil(s / 16) + 1 for s in scene.spatial)), generator=generator)
    mode = "bilinear" if len(scene.spatial) == 2 else "trilinear"
    logits = F.interpolate(coarse * 3, size=scene.spatial, mode=mode, align_corners=False)[0]
    return torch.softmax(logits, dim=0)


def bilateral_features(scene_image: torch.Tensor, sxy: float, srgb: float) -> torch.Tensor:
    """[d, *spatial] float32: positions / sxy and colours / srgb, the
    bilateral kernel's features."""
    spatial = scene_image.shape[1:]
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) / sxy for n in spatial], indexing="ij")
    return torch.cat([torch.stack(axes), scene_image.float() / srgb])


def label_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of pixels where probabilities [L, ...] pick one label."""
    return float((a.argmax(0) == b.argmax(0)).double().mean())
