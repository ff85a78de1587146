"""``python -m fastseg demo``: SegNet's pooling round trip, a DeepLabV3+
block (separable convs, ASPP dilated convs) and dense-CRF refinement of a
coarse segmentation on an embedded image, through every backend available
here, each checked against the reference; then the embedded shapes model
(``fastseg.shapes_model``) segments generated validation images, without
and with the dense CRF.

The image is drawn by code (no data file, no download): a 3x360x480 scene
of smooth gradients and discs, lifted to VGG16's channel counts by a fixed
random 1x1 projection. Each of the five 2x2/2 encoder stages pools with
indices; the decoder unpools with them in reverse, as SegNet does.
"""

import time

import torch

from . import _backend, shapes_model
from .ops import DepthwiseSeparableConv2d, conv2d, dense_crf
from .ops import max_pool2d as _pool_module
from .ops import max_pool2d_with_indices, max_unpool2d
from .ops.conv2d import BACKENDS as CONV_BACKENDS
from .ops.max_unpool2d import BACKENDS as UNPOOL_BACKENDS
from .ops.permutohedral_filter import BACKENDS as CRF_BACKENDS
from .shapes import validation_split

VGG16_STAGE_CHANNELS = (64, 128, 256, 512, 512)


DISCS = ((0.3, 0.25, 0.15, (1.0, 0.2, 0.1)), (0.65, 0.7, 0.22, (0.1, 0.8, 0.3)), (0.5, 0.5, 0.08, (0.2, 0.3, 1.0)))


def embedded_image(height: int = 360, width: int = 480) -> torch.Tensor:
    """A deterministic [3, H, W] test scene in [0, 1]."""
    return _scene(height, width)[0]


def _scene(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scene's image and its true segmentation [H, W] (0: background,
    k: the k-th disc, later discs drawn over earlier ones)."""
    ys = torch.linspace(0, 1, height).view(height, 1)
    xs = torch.linspace(0, 1, width).view(1, width)
    image = torch.stack([ys.expand(height, width), xs.expand(height, width), (ys * xs) ** 0.5])
    labels = torch.zeros(height, width, dtype=torch.long)
    for label, (cy, cx, radius, colour) in enumerate(DISCS, start=1):
        disc = ((ys - cy) ** 2 + (xs - cx) ** 2) < radius ** 2
        labels[disc] = label
        for channel, value in enumerate(colour):
            image[channel][disc] = value
    return image, labels


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


def _runnable(op_backends, device: str):
    """The op's backends that run on ``device`` here; a line for each that does not."""
    for backend in op_backends.implemented:
        status = _backend._backend_on(backend, device)
        if status.available:
            yield backend
        else:
            print(f"{backend:<10} skipped: {status.reason}")


def _segnet_pooling(image: torch.Tensor, device: str, generator: torch.Generator) -> bool:
    features = [f.to(device) for f in _encoder_features(image, generator)]
    expected, flat_bytes = _round_trip(features, compact=False, backend="reference", channels_last=False)
    _, compact_bytes = _round_trip(features, compact=True, backend="reference", channels_last=False)
    print(f"SegNet pooling round trip on the embedded 360x480 image, {device}; VGG16 stages {VGG16_STAGE_CHANNELS}")
    print(f"index memory: flat int64 {flat_bytes / 2**20:.2f} MiB, compact uint8 {compact_bytes / 2**20:.2f} MiB "
          f"({flat_bytes / compact_bytes:.0f}x less)\n")
    print(f"{'backend':<10} {'indices':<8} {'layout':<14} {'matches reference':<18} {'ms, one run':>12}")
    all_match = True
    for backend in _runnable(UNPOOL_BACKENDS, device):
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
    return all_match


ASPP_RATES = (6, 12, 18)


def _deeplab_block(features: torch.Tensor, backend: str, generator: torch.Generator) -> torch.Tensor:
    """Two Xception-style separable convs (BatchNorm folded, eval mode), then
    ASPP's dilated 3x3 branches summed, as a DeepLab head reads them."""
    channels = features.shape[1]
    x = features
    for _ in range(2):
        layer = DepthwiseSeparableConv2d(channels, channels, 3, padding=1, mid_norm=True, out_norm=True,
                                         out_activation="relu", backend=backend).to(features.device).eval()
        with torch.no_grad():
            for name, parameter in layer.named_parameters():
                noise = torch.randn(parameter.shape, generator=generator) * 0.2
                parameter.copy_(noise + 1 if name.endswith("norm.weight") else noise)  # BatchNorm scales near 1
        x = layer(x)
    branches = []
    for rate in ASPP_RATES:
        weight = (torch.randn(channels, channels, 3, 3, generator=generator) / (3 * channels ** 0.5)).to(x.device)
        branches.append(conv2d(x, weight, padding=rate, dilation=rate, backend=backend))
    return torch.stack(branches).sum(0)


def _deeplab(image: torch.Tensor, device: str) -> bool:
    # The output-stride-16 feature map of a 360x480 image: 23x30, 64 channels.
    features = torch.nn.functional.adaptive_avg_pool2d(image.unsqueeze(0), (23, 30))
    features = torch.einsum("oc,nchw->nohw", torch.randn(64, 3, generator=torch.Generator().manual_seed(1)),
                            features).to(device)
    expected = _deeplab_block(features, "reference", torch.Generator().manual_seed(2))
    # tf32 tensor cores (PyTorch's default for float32 convs on a GPU) round inputs to 10 mantissa bits.
    tolerance = 1e-2 if device == "cuda" and torch.backends.cudnn.allow_tf32 else 1e-4
    print(f"\nDeepLabV3+ block on its 23x30x64 feature map, {device}: 2 separable convs, ASPP rates {ASPP_RATES}")
    print(f"{'backend':<10} {'layout':<14} {'max rel. error':<18} {'ms, one run':>12}")
    all_match = True
    for backend in _runnable(CONV_BACKENDS, device):
        for channels_last in (False, True):
            x = features.contiguous(memory_format=torch.channels_last) if channels_last else features
            start = time.perf_counter()
            with torch.no_grad():
                out = _deeplab_block(x, backend, torch.Generator().manual_seed(2))
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed_ms = (time.perf_counter() - start) * 1e3
            error = ((out - expected).abs().max() / expected.abs().max()).item()
            all_match &= error <= tolerance
            timing = "interpreter" if backend == "triton" and device == "cpu" else f"{elapsed_ms:.1f}"
            print(f"{backend:<10} {'channels_last' if channels_last else 'NCHW':<14} "
                  f"{error:<18.2e} {timing:>12}")
    return all_match


def _coarse_probabilities(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[1, L, H, W]: what a net at output stride 16 gives for ``labels``:
    the one-hot map pooled 16x, noised, upsampled bilinearly (blurred
    borders, wrong near them)."""
    one_hot = torch.nn.functional.one_hot(labels, len(DISCS) + 1).permute(2, 0, 1).float().unsqueeze(0)
    coarse = torch.nn.functional.avg_pool2d(one_hot, 16, ceil_mode=True)
    coarse = coarse * 4 + torch.randn(coarse.shape, generator=generator)
    logits = torch.nn.functional.interpolate(coarse, size=labels.shape, mode="bilinear", align_corners=False)
    return torch.softmax(logits, dim=1)


def _dense_crf(device: str, generator: torch.Generator) -> bool:
    image, labels = _scene(180, 240)
    probabilities = _coarse_probabilities(labels, generator).to(device)
    pixels = (image * 255).round().to(torch.uint8).unsqueeze(0).to(device)
    labels = labels.to(device)
    expected = dense_crf(probabilities, pixels, 5, probabilities=True, backend="reference")
    before = (probabilities.argmax(1) == labels).float().mean().item()
    print(f"\nDense CRF (5 iterations, pydensecrf's default kernels) on the embedded scene at 180x240, {device}")
    print(f"pixel accuracy of the coarse (output stride 16) segmentation: {before:.2%}\n")
    print(f"{'backend':<10} {'pixel accuracy':<16} {'max |Q - reference|':<21} {'ms, one run':>12}")
    all_match = True
    for backend in _runnable(CRF_BACKENDS, device):
        start = time.perf_counter()
        refined = dense_crf(probabilities, pixels, 5, probabilities=True, backend=backend)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed_ms = (time.perf_counter() - start) * 1e3
        error = (refined - expected).abs().max().item()
        accuracy = (refined.argmax(1) == labels).float().mean().item()
        # The CRF must both agree with the reference and do its job.
        all_match &= error <= 1e-3 and accuracy > before
        print(f"{backend:<10} {accuracy:<16.2%} {error:<21.2e} {elapsed_ms:>12.1f}")
    return all_match


SHAPES_IMAGES = 16


def _shapes_segmentation(device: str) -> None:
    model = shapes_model.load_model().to(device)
    size_kib = shapes_model.CHECKPOINT.stat().st_size / 2**10
    start = time.perf_counter()
    scores = shapes_model.evaluate(model, validation_split(SHAPES_IMAGES), device=device)
    elapsed = time.perf_counter() - start
    print(f"\nEmbedded shapes model (DeepLabV3+, MobileNetV2 x{shapes_model.WIDTH_MULT}, {size_kib:.0f} KiB "
          f"checkpoint) on {SHAPES_IMAGES} generated validation images, 96x96, {device}, {elapsed:.1f} s")
    print(f"mIoU {scores.miou:.3f}; with dense-CRF refinement {scores.miou_crf:.3f}")


def run(device: str = "cpu") -> bool:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    image = embedded_image()
    all_match = _segnet_pooling(image, device, generator)
    all_match &= _deeplab(image, device)
    all_match &= _dense_crf(device, generator)
    _shapes_segmentation(device)
    print("\nall backends agree with the reference" if all_match else "\nMISMATCH against the reference")
    return all_match
