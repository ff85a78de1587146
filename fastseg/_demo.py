"""``python -m fastseg demo``: SegNet's pooling round trip on an embedded
image, through every backend available here, checked against the reference.

The image is drawn by code (no data file, no download): a 3x360x480 scene
of smooth gradients and discs, lifted to VGG16's channel counts by a fixed
random 1x1 projection. Each of the five 2x2/2 encoder stages pools with
indices; the decoder unpools with them in reverse, as SegNet does.
"""

import time

import torch

from . import _backend
from .ops import max_pool2d as _pool_module
from .ops import max_pool2d_with_indices, max_unpool2d
from .ops.max_unpool2d import BACKENDS as UNPOOL_BACKENDS

VGG16_STAGE_CHANNELS = (64, 128, 256, 512, 512)


def embedded_image(height: int = 360, width: int = 480) -> torch.Tensor:
    """A deterministic [3, H, W] test scene in [0, 1]."""
    ys = torch.linspace(0, 1, height).view(height, 1)
    xs = torch.linspace(0, 1, width).view(1, width)
    image = torch.stack([ys.expand(height, width), xs.expand(height, width), (ys * xs) ** 0.5])
    for cy, cx, radius, colour in ((0.3, 0.25, 0.15, (1.0, 0.2, 0.1)), (0.65, 0.7, 0.22, (0.1, 0.8, 0.3)),
                                   (0.5, 0.5, 0.08, (0.2, 0.3, 1.0))):
        disc = ((ys - cy) ** 2 + (xs - cx) ** 2) < radius ** 2
        for channel, value in enumerate(colour):
            image[channel][disc] = value
    return image


def _encoder_features(image: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """Per stage, a [1, C, h, w] feature map: the image at that stage's
    resolution projected to C channels (what a conv stack would feed the pool)."""
    features, level = [], image.unsqueeze(0)
    for channels in VGG16_STAGE_CHANNELS:
        projection = torch.randn(channels, 3, generator=generator)
        features.append(torch.einsum("oc,nchw->nohw", projection, level).contiguous())
        level = torch.nn.functional.avg_pool2d(level, 2, ceil_mode=True)
    return features


def _round_trip(features, compact: bool, backend: str | None, channels_last: bool):
    outputs, index_bytes = [], 0
    for x in features:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pooled, indices = max_pool2d_with_indices(x, 2, compact=compact, backend=_pool_backend(backend))
        index_bytes += indices.numel() * indices.element_size()
        outputs.append(max_unpool2d(pooled, indices, 2, output_size=x.shape[-2:], backend=backend))
    return outputs, index_bytes


def _pool_backend(unpool_backend: str | None) -> str | None:
    """The pool runs on the same backend where it has it, else its default."""
    return unpool_backend if unpool_backend in _pool_module.BACKENDS.implemented else None


def run(device: str = "cpu") -> bool:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    features = [f.to(device) for f in _encoder_features(embedded_image(), generator)]
    expected, flat_bytes = _round_trip(features, compact=False, backend="reference", channels_last=False)
    _, compact_bytes = _round_trip(features, compact=True, backend="reference", channels_last=False)
    print(f"SegNet pooling round trip on the embedded 360x480 image, {device}; VGG16 stages {VGG16_STAGE_CHANNELS}")
    print(f"index memory: flat int64 {flat_bytes / 2**20:.2f} MiB, compact uint8 {compact_bytes / 2**20:.2f} MiB "
          f"({flat_bytes / compact_bytes:.0f}x less)\n")
    print(f"{'backend':<10} {'indices':<8} {'layout':<14} {'matches reference':<18} {'ms, one run':>12}")
    all_match = True
    for backend in UNPOOL_BACKENDS.implemented:
        status = _backend._backend_on(backend, device)
        if not status.available:
            print(f"{backend:<10} skipped: {status.reason}")
            continue
        for compact in (False, True):
            for channels_last in (False, True):
                start = time.perf_counter()
                outputs, _ = _round_trip(features, compact, backend, channels_last)
                if device == "cuda":
                    torch.cuda.synchronize()
                elapsed_ms = (time.perf_counter() - start) * 1e3
                match = all(torch.equal(o, e) for o, e in zip(outputs, expected))
                all_match &= match
                timing = "interpreter" if backend == "triton" and device == "cpu" else f"{elapsed_ms:.1f}"
                print(f"{backend:<10} {'uint8' if compact else 'int64':<8} "
                      f"{'channels_last' if channels_last else 'NCHW':<14} {'yes' if match else 'NO':<18} {timing:>12}")
    print("\nall backends agree with the reference" if all_match else "\nMISMATCH against the reference")
    return all_match
