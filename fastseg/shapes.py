"""A generated dataset of shapes for training and checking segmentation
models on the CPU in minutes, with nothing to download.

Each sample is a scene drawn by code from its own seed: a greyish
background (a faintly tinted gradient with a faint random texture), and one
to four discs, rectangles and triangles of saturated colour and random size,
position and rotation (later shapes drawn over earlier ones), with pixel
noise. Saturation tells shapes from background pixel by pixel; each class
has its own band of hues (reds, greens, blues) besides its shape. (With
colours drawn independently of the class, the narrow DeepLabV3+ of
``fastseg.shapes_model`` reached only 0.39 mIoU in the same few minutes'
training: telling shapes apart by shape alone takes far more samples.)

Sample ``index`` of a split with seed ``seed`` is the same on every run and
machine (a CPU ``torch.Generator`` seeded from both); the training and
validation splits use different seeds, so they share no scene.
"""

import math

import torch
from torch import Tensor

from .models._arguments import positive_int

CLASSES = ("background", "disc", "rectangle", "triangle")
TRAIN_SEED = 0
VALIDATION_SEED = 1

_MAX_SHAPES = 4
_SIZE_RANGE = (0.12, 0.28)  # a shape's radius, as a fraction of the image's shorter side
_BACKGROUND_TINT = 0.05  # most departure of a background channel from grey
_GRADIENT_RANGE = 0.2  # most change of a background channel across the image
_HUE_SPREAD = 0.15  # of a shape's hue around its class's (hues in [0, 1), classes 1/3 apart)
_TEXTURE_AMPLITUDE = 0.08  # of the background's sinusoidal texture
_NOISE_STD = 0.03  # per-pixel Gaussian noise


# torch's CPU generator (mt19937) keeps only the low 32 bits of its seed:
# the split's seed takes the top 8 of them, the sample's index the other 24,
# so that distinct (seed, index) pairs never share a stream.
MAX_SEED = 2 ** 8
MAX_INDEX = 2 ** 24


def _generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * MAX_INDEX + index)


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0, size=()) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _background(ys: Tensor, xs: Tensor, generator: torch.Generator) -> Tensor:
    """[3, H, W]: a gradient between two near greyish colours along a random
    direction, plus a faint sinusoidal texture of random frequency."""
    grey = _uniform(generator, 0.2, 0.8)
    start = grey + _uniform(generator, -_BACKGROUND_TINT, _BACKGROUND_TINT, size=(3, 1, 1))
    end = start + _uniform(generator, -_GRADIENT_RANGE, _GRADIENT_RANGE, size=(3, 1, 1))
    angle = _uniform(generator, 0, 2 * math.pi)
    along = (ys * torch.sin(angle) + xs * torch.cos(angle) + 1) / 2  # [H, W] in [0, 1]
    frequency = _uniform(generator, 4, 16, size=(2,))
    phase = _uniform(generator, 0, 2 * math.pi)
    texture = torch.sin(frequency[0] * ys + phase) * torch.sin(frequency[1] * xs)
    return start + (end - start) * along + _TEXTURE_AMPLITUDE * texture


def _class_colour(label: int, generator: torch.Generator) -> Tensor:
    """[3, 1, 1]: a saturated colour (saturation in [0.6, 1], value in
    [0.5, 1]) of a hue within 0.15 of the class's own: red, green or blue,
    so that a small model learns the classes in minutes; each class's shape
    tells it from the others too. HSV to RGB as in Wikipedia's "HSL and HSV"."""
    hue = (label - 1) / 3 + _uniform(generator, -_HUE_SPREAD, _HUE_SPREAD)
    saturation, value = _uniform(generator, 0.6, 1), _uniform(generator, 0.5, 1)
    k = (torch.tensor([5.0, 3.0, 1.0]) + hue * 6) % 6
    return (value * (1 - saturation * torch.minimum(k, 4 - k).clamp(0, 1))).view(3, 1, 1)


def _inside_polygon(ys: Tensor, xs: Tensor, vertices: Tensor) -> Tensor:
    """[H, W] bool: inside the convex polygon of ``vertices`` [K, 2] (y, x),
    in counter-clockwise order in (x, y): left of every edge."""
    inside = torch.ones_like(ys, dtype=torch.bool)
    for (y0, x0), (y1, x1) in zip(vertices, vertices.roll(-1, dims=0)):
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _shape_mask(kind: str, ys: Tensor, xs: Tensor, centre: Tensor, radius: Tensor,
                generator: torch.Generator) -> Tensor:
    """[H, W] bool: a disc, rectangle or triangle of about ``radius``
    around ``centre`` (y, x), rotated at random."""
    if kind == "disc":
        return (ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius ** 2
    rotation = _uniform(generator, 0, 2 * math.pi)
    if kind == "rectangle":
        aspect = _uniform(generator, 0.4, 1.0)  # half-height over half-width
        half = torch.stack([radius * aspect, radius])
        corners = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, -1.0]]) * half
        angles = torch.atan2(corners[:, 0], corners[:, 1]) + rotation
        distances = corners.norm(dim=1)
    else:  # a triangle with jittered corners, so that not all are equilateral
        angles = rotation + 2 * math.pi * torch.arange(3) / 3 + _uniform(generator, -0.3, 0.3, size=(3,))
        # Corners farther out than the disc's radius give the three classes about the same area.
        distances = radius * _uniform(generator, 1.3, 1.6, size=(3,))
    vertices = centre + distances.unsqueeze(1) * torch.stack([torch.sin(angles), torch.cos(angles)], dim=1)
    return _inside_polygon(ys, xs, vertices)


def shapes_sample(seed: int, index: int, size: int = 96) -> tuple[Tensor, Tensor]:
    """Sample ``index`` of the split ``seed``: the image [3, size, size]
    float32 in [0, 1] and its labels [size, size] int64, an index into
    ``CLASSES``."""
    positive_int(size, "size")
    if not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be an int in [0, {MAX_SEED}), got {seed!r}")
    if not isinstance(index, int) or not 0 <= index < MAX_INDEX:
        raise ValueError(f"index must be an int in [0, {MAX_INDEX}), got {index!r}")
    generator = _generator(seed, index)
    # Pixel centres in [-1, 1] (y down, x right); shape sizes scale with the image.
    coordinates = (torch.arange(size) + 0.5) / size * 2 - 1
    ys, xs = coordinates.view(size, 1).expand(size, size), coordinates.view(1, size).expand(size, size)
    image = _background(ys, xs, generator)
    labels = torch.zeros(size, size, dtype=torch.int64)
    count = int(torch.randint(1, _MAX_SHAPES + 1, (), generator=generator))
    for _ in range(count):
        label = int(torch.randint(1, len(CLASSES), (), generator=generator))
        radius = _uniform(generator, *_SIZE_RANGE) * 2  # coordinates span 2
        centre = _uniform(generator, -1 + radius.item() / 2, 1 - radius.item() / 2, size=(2,))
        mask = _shape_mask(CLASSES[label], ys, xs, centre, radius, generator)
        labels[mask] = label
        image = torch.where(mask, _class_colour(label, generator), image)
    image = image + _NOISE_STD * torch.randn(image.shape, generator=generator)
    return image.clamp(0, 1), labels


class ShapesDataset(torch.utils.data.Dataset):
    """``length`` samples of the split ``seed`` at ``size`` x ``size``:
    ``dataset[i]`` is ``shapes_sample(seed, i, size)``; ``batch(start,
    count)`` stacks samples start..start+count-1 (wrapping around)."""

    def __init__(self, length: int, size: int = 96, seed: int = TRAIN_SEED):
        self.length = positive_int(length, "length")
        if length > MAX_INDEX:
            raise ValueError(f"length must be <= {MAX_INDEX}, got {length}")
        self.size = positive_int(size, "size")
        self.seed = seed
        shapes_sample(seed, 0, 1)  # checks the seed now, not at the first sample

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not isinstance(index, int) or not -self.length <= index < self.length:
            raise IndexError(f"index must be an int in [-{self.length}, {self.length}), got {index!r}")
        return shapes_sample(self.seed, index % self.length, self.size)

    def batch(self, start: int, count: int) -> tuple[Tensor, Tensor]:
        """Images [count, 3, size, size] and labels [count, size, size]."""
        images, labels = zip(*(self[(start + i) % self.length] for i in range(count)))
        return torch.stack(images), torch.stack(labels)


def train_split(length: int, size: int = 96) -> ShapesDataset:
    return ShapesDataset(length, size, TRAIN_SEED)


def validation_split(length: int, size: int = 96) -> ShapesDataset:
    return ShapesDataset(length, size, VALIDATION_SEED)
