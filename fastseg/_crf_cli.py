"""Refine segmentations with a dense CRF, a folder at a time:

    python -m fastseg crf IMAGES SCORES OUTPUT [options]

For every image in IMAGES (.png .jpg .jpeg .bmp .tif .tiff; hidden files
and subfolders are not read) the scores file of the same stem in SCORES is
refined by mean-field inference of the fully connected CRF (the kernels
and defaults of pydensecrf) and OUTPUT/<stem>.png receives the label map:
8-bit when the labels fit, 16-bit otherwise.

Scores, one file per image:
  <stem>.npy  a float array [L, H, W] of probabilities in [0, 1] (logits
              with --logits; [H, W, L] with --channels-last);
  <stem>.png  with --labels N: a single-channel label image (8- or 16-bit,
              greyscale or palette) read as pydensecrf's unary_from_labels
              does: the pixel's label has probability --gt-prob, the other
              labels share the rest. With --zero-unsure, 0 means "unsure"
              (all N labels equally likely) and the labels are 1..N, as in
              the input's values; the output keeps those values.

Images: greyscale gives the bilateral kernel one colour channel, anything
else RGB (alpha dropped, palettes expanded); 16-bit and float images keep
their values, so give --bilateral-srgb in their units. Pixels are read as
stored (EXIF orientation is not applied), as np.asarray(Image.open(path)).

Runs are resumable: an image whose outputs all exist is skipped. Each
output is written to a hidden temporary file and renamed into place, so a
killed run leaves no half-written output (at most a hidden .tmp file). A bad
input (unreadable, missing scores, size mismatch, NaN or out-of-range
values) is reported in one line and the run goes on. Exit code 0 when
nothing failed, 1 when some image failed, 2 for bad arguments.
"""

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from . import _backend
from .crf.utils import unary_from_labels
from .ops import dense_crf
from .ops.permutohedral_filter import BACKENDS as FILTER_BACKENDS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Pillow modes whose values are not 8-bit: passed to the CRF as float, unscaled.
WIDE_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
GREY_MODES = frozenset({"1", "L", "LA", "La"})
LABEL_MODES = frozenset({"1", "L", "P", "I;16", "I;16L", "I;16B", "I;16N", "I"})
PROBABILITY_DTYPES = ("float32", "float16")


class UsageError(Exception):
    """Arguments that cannot work together; the caller reports it as argparse does (exit code 2)."""


class FileError(Exception):
    """Why one image could not be refined, in one line; the run goes on with the next."""


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _checked(convert: Callable, accept: Callable, expected: str) -> Callable:
    """An argparse ``type`` that converts and range-checks a value."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_iterations = _checked(int, lambda v: v >= 0, "an integer >= 0")
_label_count = _checked(int, lambda v: v >= 2, "an integer >= 2")
_probability = _checked(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")
_positive = _checked(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_finite = _checked(float, math.isfinite, "a finite number")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="folder of images")
    parser.add_argument("scores", type=Path, help="folder of <stem>.npy probability maps (or <stem>.png label "
                        "images with --labels)")
    parser.add_argument("output", type=Path, help="folder for <stem>.png label maps; created if missing, "
                        "never equal to or inside an input folder")
    maps = parser.add_argument_group("probability maps (.npy)")
    maps.add_argument("--logits", action="store_true", help="the arrays hold logits, not probabilities")
    maps.add_argument("--channels-last", action="store_true", help="the arrays are [H, W, L], not [L, H, W]")
    labels = parser.add_argument_group("label images (.png)")
    labels.add_argument("--labels", type=_label_count, metavar="N",
                        help="the scores are label PNGs with N labels (0..N-1, or 1..N with --zero-unsure)")
    labels.add_argument("--gt-prob", type=_probability, metavar="P",
                        help="probability of a pixel's given label (default 0.5, as pydensecrf's dense_inference "
                        "example)")
    labels.add_argument("--zero-unsure", action="store_true", help="label 0 means unsure: every label equally "
                        "likely there")
    crf = parser.add_argument_group("CRF (defaults: pydensecrf's)")
    crf.add_argument("--iterations", type=_iterations, default=5, metavar="T",
                     help="mean-field iterations (default 5)")
    crf.add_argument("--gaussian-sxy", type=_positive, default=3.0, metavar="PX",
                     help="smoothness kernel: position std in pixels (default 3)")
    crf.add_argument("--gaussian-compat", type=_finite, default=3.0, metavar="W",
                     help="smoothness kernel weight (default 3; 0 leaves it out)")
    crf.add_argument("--bilateral-sxy", type=_positive, default=80.0, metavar="PX",
                     help="appearance kernel: position std in pixels (default 80)")
    crf.add_argument("--bilateral-srgb", type=_positive, default=13.0, metavar="S",
                     help="appearance kernel: colour std in image values (default 13)")
    crf.add_argument("--bilateral-compat", type=_finite, default=10.0, metavar="W",
                     help="appearance kernel weight (default 10; 0 leaves it out)")
    crf.add_argument("--backend", choices=FILTER_BACKENDS.implemented,
                     help="lattice backend (default: the fastest available; FASTSEG_BACKEND overrides the default)")
    out = parser.add_argument_group("output")
    out.add_argument("--save-probabilities", nargs="?", const="float32", choices=PROBABILITY_DTYPES,
                     metavar="DTYPE", help="also write <stem>.npy, the refined probabilities in the layout of the "
                     "scores: float32 (default) or float16")


@dataclass(frozen=True)
class Job:
    stem: str
    images: tuple[Path, ...]  # more than one: several images share the stem (and would share its outputs)
    scores: Path
    label_png: Path
    probabilities: Path | None  # with --save-probabilities

    @property
    def outputs(self) -> tuple[Path, ...]:
        return (self.label_png,) if self.probabilities is None else (self.probabilities, self.label_png)


def run(args: argparse.Namespace, device: str) -> int:
    """Refine every image of ``args.images``; 0 when none failed, else 1."""
    _check_arguments(args, device)
    jobs = _plan(args)
    args.output.mkdir(parents=True, exist_ok=True)
    written = skipped = failed = 0
    for job in tqdm(jobs, desc="crf", unit="image", file=sys.stderr):
        if len(job.images) == 1 and all(path.exists() for path in job.outputs):
            skipped += 1
            continue
        try:
            _refine(job, args, device)
            written += 1
        except FileError as error:
            failed += 1
            tqdm.write(f"failed {job.images[0].name}: {error}", file=sys.stderr)
    print(f"written {written}, skipped {skipped} (outputs already there), failed {failed}; "
          f"{len(jobs)} images, outputs in {args.output}")
    return 1 if failed else 0


def _check_arguments(args: argparse.Namespace, device: str) -> None:
    if args.labels is None:
        if args.gt_prob is not None or args.zero_unsure:
            raise UsageError("--gt-prob and --zero-unsure apply to label images: add --labels N")
    elif args.logits or args.channels_last:
        raise UsageError("--logits and --channels-last apply to .npy probability maps, not to --labels")
    for name in ("images", "scores"):
        if not getattr(args, name).is_dir():
            raise UsageError(f"{name} folder {str(getattr(args, name))!r} does not exist or is not a folder")
    output = args.output.resolve()
    for name in ("images", "scores"):
        folder = getattr(args, name).resolve()
        if output == folder or folder in output.parents:
            where = "is" if output == folder else "is inside"
            raise UsageError(f"the output folder {str(args.output)!r} {where} the {name} folder: outputs must "
                             "not mix with inputs")
    if args.labels is not None and args.images.resolve() == args.scores.resolve():
        raise UsageError("with --labels the label PNGs need a folder of their own (they would be read as images)")
    try:
        FILTER_BACKENDS.resolve(args.backend, torch.device(device).type)
    except (ValueError, _backend.BackendUnavailable) as error:
        raise UsageError(str(error)) from None


def _plan(args: argparse.Namespace) -> list[Job]:
    """One job per image stem, sorted; refuses outputs that are input files (through symlinks)."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(args.images.iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file():
            by_stem.setdefault(path.stem, []).append(path)
    if not by_stem:
        raise UsageError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {str(args.images)!r}")
    scores_suffix = ".npy" if args.labels is None else ".png"
    jobs = []
    for stem, images in by_stem.items():
        probabilities = args.output / f"{stem}.npy" if args.save_probabilities else None
        jobs.append(Job(stem, tuple(images), args.scores / f"{stem}{scores_suffix}", args.output / f"{stem}.png",
                        probabilities))
    inputs = {path.resolve() for job in jobs for path in (*job.images, job.scores)}
    for job in jobs:
        for path in job.outputs:
            if path.resolve() in inputs:
                raise UsageError(f"output {str(path)!r} is an input file (or a link to one): refusing to "
                                 "overwrite it")
    return jobs


def _refine(job: Job, args: argparse.Namespace, device: str) -> None:
    if len(job.images) > 1:
        raise FileError(f"{len(job.images)} images share the stem {job.stem!r} and would share its outputs: "
                        f"{', '.join(path.name for path in job.images)}")
    image = _read_image(job.images[0])
    size = tuple(image.shape[1:])
    scores, probabilities, first_label = _read_scores(job.scores, size, args)
    # The PNG's width follows the label count, not the labels this image happens to use.
    top_label = scores.shape[0] - 1 + first_label
    if top_label > np.iinfo(np.uint16).max:
        raise FileError(f"{scores.shape[0]} labels do not fit a 16-bit PNG")
    try:
        refined = dense_crf(scores[None].to(device), torch.from_numpy(image)[None].to(device), args.iterations,
                            probabilities=probabilities, gaussian_sxy=args.gaussian_sxy,
                            gaussian_compat=args.gaussian_compat, bilateral_sxy=args.bilateral_sxy,
                            bilateral_srgb=args.bilateral_srgb, bilateral_compat=args.bilateral_compat,
                            backend=args.backend)[0].cpu()
    except torch.OutOfMemoryError as error:
        raise FileError(f"out of memory on {device} ({scores.shape[0]} labels, {size[0]}x{size[1]} pixels): "
                        f"{_one_line(error)}") from None
    dtype = np.uint8 if top_label <= np.iinfo(np.uint8).max else np.uint16
    label_map = Image.fromarray((refined.argmax(0).numpy() + first_label).astype(dtype))
    if job.probabilities is not None:
        array = refined.numpy().astype(args.save_probabilities)
        array = array.transpose(1, 2, 0) if args.channels_last else array
        _write_atomically(job.probabilities, lambda handle: np.save(handle, array))
    # Last: an existing label PNG marks the image done when no other output is asked for.
    _write_atomically(job.label_png, lambda handle: label_map.save(handle, format="PNG"))


def _read_scores(path: Path, size: tuple[int, int], args: argparse.Namespace) -> tuple[torch.Tensor, bool, int]:
    """float32 [L, H, W] scores for ``dense_crf``, whether they are probabilities
    (not logits), and the label value of the first channel."""
    if args.labels is None:
        return _read_probability_map(path, size, args.logits, args.channels_last), not args.logits, 0
    values = _read_label_image(path, size, args.labels, args.zero_unsure)
    gt_prob = 0.5 if args.gt_prob is None else args.gt_prob
    # Log-probabilities as logits: -log_softmax gives back exactly pydensecrf's
    # unary, where probabilities=True would clip small ones at 1e-5.
    return _label_log_probabilities(values, args.labels, gt_prob, args.zero_unsure), False, int(args.zero_unsure)


def _read_image(path: Path) -> np.ndarray:
    """[C, H, W]: uint8 (C = 1 for greyscale, 3 otherwise), float32 for 16-bit and float images."""
    try:
        with Image.open(path) as image:
            if image.mode in WIDE_MODES:
                array = np.asarray(image, dtype=np.float32)
            else:
                array = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise FileError(f"unreadable image: {_one_line(error)}") from None
    # A copy: Pillow's arrays are read-only, which torch.from_numpy warns about.
    return array.reshape(*array.shape[:2], -1).transpose(2, 0, 1).copy()


def _size_mismatch(path: Path, shape: tuple[int, ...], size: tuple[int, ...], expected: str) -> FileError:
    return FileError(f"scores {path.name} have shape {shape}, but the image is {size[0]}x{size[1]} (HxW) and "
                     f"the scores must be {expected}")


def _read_probability_map(path: Path, size: tuple[int, int], logits: bool, channels_last: bool) -> torch.Tensor:
    """float32 [L, H, W] from a .npy file, checked against the image's (H, W)."""
    if not path.is_file():
        raise FileError(f"no scores file {path.name} in {str(path.parent)!r}")
    try:
        with open(path, "rb") as handle:
            # read_array reads .npy only (np.load would also open .npz and pickles).
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise FileError(f"unreadable scores {path.name}: {_one_line(error)}") from None
    if not np.issubdtype(array.dtype, np.floating):
        raise FileError(f"scores {path.name} must be a float array, got {array.dtype}")
    shape = array.shape
    if channels_last and array.ndim == 3:
        array = array.transpose(2, 0, 1)
    if array.ndim != 3 or array.shape[1:] != size or array.shape[0] == 0:
        if not channels_last and array.ndim == 3 and shape[:2] == size and shape[2] > 0:
            raise FileError(f"scores {path.name} have shape {shape}: [H, W, L]? pass --channels-last")
        raise _size_mismatch(path, shape, size, "[H, W, L]" if channels_last else "[L, H, W]")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise FileError(f"scores {path.name} hold {bad} NaN or Inf values")
    if not logits and (array.min() < 0 or array.max() > 1):
        raise FileError(f"scores {path.name} must be probabilities in [0, 1], got values in "
                        f"[{float(array.min()):.4g}, {float(array.max()):.4g}] (logits? pass --logits)")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _read_label_image(path: Path, size: tuple[int, int], labels: int, zero_unsure: bool) -> np.ndarray:
    """int64 [H, W] label values from a single-channel PNG, each in range for ``labels``."""
    if not path.is_file():
        raise FileError(f"no label image {path.name} in {str(path.parent)!r}")
    try:
        with Image.open(path) as image:
            if image.mode not in LABEL_MODES:
                raise FileError(f"label image {path.name} must have one channel (mode L, P, 1 or 16-bit), "
                                f"got mode {image.mode}")
            values = np.asarray(image).astype(np.int64)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise FileError(f"unreadable label image {path.name}: {_one_line(error)}") from None
    if values.shape != size:
        raise _size_mismatch(path, values.shape, size, "[H, W]")
    high = labels if zero_unsure else labels - 1
    if values.min() < 0 or values.max() > high:
        raise FileError(f"label image {path.name} holds values in [{values.min()}, {values.max()}]; with "
                        f"--labels {labels}{' --zero-unsure' if zero_unsure else ''} they must lie in "
                        f"[0, {high}]")
    return values


def _label_log_probabilities(values: np.ndarray, labels: int, gt_prob: float, zero_unsure: bool) -> torch.Tensor:
    """float32 [N, H, W]: log p of pydensecrf's unary_from_labels."""
    return -torch.from_numpy(unary_from_labels(values, labels, gt_prob, zero_unsure)).view(labels, *values.shape)


def _write_atomically(path: Path, save: Callable[[BinaryIO], None]) -> None:
    """Write through a hidden temporary file beside ``path``, renamed into place
    once complete: a run killed mid-write leaves no file under the output's name
    that a resumed run would take as done. The process id keeps concurrent runs
    apart; ``open`` (not tempfile) gives the file the umask's permissions."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            save(handle)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise FileError(f"cannot write {path.name}: {_one_line(error)}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
