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
else RGB (alpha dropped, palettes expanded). 16-bit greyscale and float
images keep their values, so give --bilateral-srgb in their units; colour
is read at 8 bits per channel, as Pillow reads it: a PNG with 16 bits per
channel loses its low byte (with a warning). Pixels are read as stored
(EXIF orientation is not applied), as np.asarray(Image.open(path)).

Runs are resumable: an image whose outputs all exist is skipped. Each
output is written to a hidden temporary file and renamed into place, so a
killed run leaves no half-written output (at most a hidden .tmp file). A bad
input (unreadable, missing scores, size mismatch, NaN or out-of-range
values, more than the memory holds) is reported in one line and the run
goes on; scores files that no image reads are named in a warning. Exit
code 0 when nothing failed, 1 when some image failed, 2 for bad arguments,
130 when interrupted (Ctrl-C).
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
LARGEST_PNG_LABEL = int(np.iinfo(np.uint16).max)
# read_array_header_1_0 and _2_0 are numpy's public header readers; version
# 3.0 differs only in allowing UTF-8 field names, which no float array has.
NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# Running out of memory surfaces as MemoryError (numpy; a C++ std::bad_alloc
# through pybind11), torch.OutOfMemoryError (CUDA), or a RuntimeError whose
# message names PyTorch's CPU allocator or a C++ std::bad_alloc.
OUT_OF_MEMORY_MESSAGES = ("DefaultCPUAllocator", "bad_alloc")
UNMATCHED_SCORES_SHOWN = 5  # names listed in the warning about scores no image reads


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
                        help="the scores are label PNGs with N labels (0..N-1, or 1..N with --zero-unsure; at most "
                        "what a 16-bit PNG holds)")
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
    # A flag, not an option with an optional value: that would take the next word, an IMAGES folder placed
    # after it, for its value.
    out.add_argument("--save-probabilities", action="store_true", help="also write <stem>.npy, the refined "
                     "probabilities in the layout of the scores")
    out.add_argument("--probabilities-dtype", choices=PROBABILITY_DTYPES, help="the dtype of those .npy files "
                     "(default float32)")


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
    """Refine every image of ``args.images``; 0 when none failed, 1 when some did, 130 when interrupted."""
    _check_arguments(args, device)
    jobs = _plan(args)
    _warn_about_unmatched_scores(args, jobs)
    _make_output_folder(args.output)
    written = skipped = failed = 0
    try:
        # Closed (the bar's last line drawn) before the interruption is reported.
        with tqdm(jobs, desc="crf", unit="image", file=sys.stderr) as progress:
            for job in progress:
                if len(job.images) == 1 and all(path.exists() for path in job.outputs):
                    skipped += 1
                    continue
                try:
                    _refine(job, args, device)
                    written += 1
                except FileError as error:
                    failed += 1
                    tqdm.write(f"failed {job.images[0].name}: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        # Every output is complete or absent (see _write_atomically): a rerun goes on from here.
        print(f"interrupted: {written} of {len(jobs)} written, {skipped} skipped, {failed} failed", file=sys.stderr)
        return 130
    print(f"written {written}, skipped {skipped} (outputs already there), failed {failed}; "
          f"{len(jobs)} images, outputs in {args.output}")
    return 1 if failed else 0


def _warn(message: str) -> None:
    tqdm.write(f"warning: {message}", file=sys.stderr)


def _check_arguments(args: argparse.Namespace, device: str) -> None:
    if args.labels is None:
        if args.gt_prob is not None or args.zero_unsure:
            raise UsageError("--gt-prob and --zero-unsure apply to label images: add --labels N")
    elif args.logits or args.channels_last:
        raise UsageError("--logits and --channels-last apply to .npy probability maps, not to --labels")
    elif args.labels - 1 + args.zero_unsure > LARGEST_PNG_LABEL:
        raise UsageError(f"--labels {args.labels}{' --zero-unsure' * args.zero_unsure}: label values up to "
                         f"{args.labels - 1 + args.zero_unsure} do not fit a 16-bit PNG (at most "
                         f"{LARGEST_PNG_LABEL + 1} labels, {LARGEST_PNG_LABEL} with --zero-unsure)")
    if args.probabilities_dtype is not None and not args.save_probabilities:
        raise UsageError("--probabilities-dtype applies to --save-probabilities: add it")
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
        # A dangling link (path.exists() is False) too: reported as unreadable rather than skipped unseen.
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and (
                path.is_file() or not path.exists()):
            by_stem.setdefault(path.stem, []).append(path)
    if not by_stem:
        raise UsageError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in {str(args.images)!r}")
    scores_suffix = _scores_suffix(args)
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


def _scores_suffix(args: argparse.Namespace) -> str:
    return ".npy" if args.labels is None else ".png"


def _warn_about_unmatched_scores(args: argparse.Namespace, jobs: list[Job]) -> None:
    """Name the scores files that no image reads: a misnamed image would otherwise go unnoticed."""
    read = {job.scores.name for job in jobs}
    unmatched = [path.name for path in sorted(args.scores.iterdir()) if path.suffix == _scores_suffix(args)
                 and not path.name.startswith(".") and path.name not in read]
    if unmatched:
        shown = ", ".join(unmatched[:UNMATCHED_SCORES_SHOWN]) + ", ..." * (len(unmatched) > UNMATCHED_SCORES_SHOWN)
        _warn(f"{len(unmatched)} file(s) in {str(args.scores)!r} match no image and are not read: {shown}")


def _make_output_folder(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # "File exists" or "Not a directory" where a file is in the way, as mkdir -p words it.
        raise UsageError(f"cannot create the output folder {str(output)!r}: {error.strerror or _one_line(error)}"
                         ) from None


def _refine(job: Job, args: argparse.Namespace, device: str) -> None:
    """Refine one image and write its outputs; a FileError says why that could not be done."""
    if len(job.images) > 1:
        raise FileError(f"{len(job.images)} images share the stem {job.stem!r} and would share its outputs: "
                        f"{', '.join(path.name for path in job.images)}")
    try:
        _refine_image(job, args, device)
    except (MemoryError, RuntimeError) as error:
        # Any step can run out (reading, the unary, the CRF, writing); other RuntimeErrors are bugs.
        if not _out_of_memory(error):
            raise
        raise FileError(f"out of memory: {_one_line(error)}") from None


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, (MemoryError, torch.OutOfMemoryError)) or any(
        text in str(error) for text in OUT_OF_MEMORY_MESSAGES)


def _refine_image(job: Job, args: argparse.Namespace, device: str) -> None:
    image = _read_image(job.images[0])
    size = tuple(image.shape[1:])
    scores, probabilities, first_label = _read_scores(job.scores, size, args)
    # The PNG's width follows the label count, not the labels this image happens to use.
    top_label = scores.shape[0] - 1 + first_label
    if top_label > LARGEST_PNG_LABEL:
        raise FileError(f"{scores.shape[0]} labels do not fit a 16-bit PNG")
    try:
        refined = dense_crf(scores[None].to(device), torch.from_numpy(image)[None].to(device), args.iterations,
                            probabilities=probabilities, gaussian_sxy=args.gaussian_sxy,
                            gaussian_compat=args.gaussian_compat, bilateral_sxy=args.bilateral_sxy,
                            bilateral_srgb=args.bilateral_srgb, bilateral_compat=args.bilateral_compat,
                            backend=args.backend)[0].cpu()
    except ValueError as error:
        # Inputs it cannot take: NaN in a float image, features (values over their standard deviations)
        # beyond the lattice's range. The arguments themselves were checked on the command line.
        raise FileError(f"the CRF refuses its inputs: {_one_line(error)}") from None
    dtype = np.uint8 if top_label <= np.iinfo(np.uint8).max else np.uint16
    label_map = Image.fromarray((refined.argmax(0).numpy() + first_label).astype(dtype))
    if job.probabilities is not None:
        array = refined.numpy().astype(args.probabilities_dtype or "float32")
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
                if image.format == "PNG" and _png_bit_depth(path) == 16:
                    _warn(f"{path.name} has 16 bits per channel: read at 8 (Pillow's limit for colour), so "
                          "--bilateral-srgb is in 8-bit units for it")
                array = np.asarray(image.convert("L" if image.mode in GREY_MODES else "RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise FileError(f"unreadable image: {_one_line(error)}") from None
    # A copy: Pillow's arrays are read-only, which torch.from_numpy warns about.
    return array.reshape(*array.shape[:2], -1).transpose(2, 0, 1).copy()


def _png_bit_depth(path: Path) -> int:
    """Bits per channel, from the IHDR chunk that starts every PNG (Pillow has checked it is there): after the
    8-byte signature, its length, type, width and height (4 bytes each) come the bit depth's byte."""
    with open(path, "rb") as handle:
        return handle.read(25)[24]


def _size_mismatch(path: Path, shape: tuple[int, ...], size: tuple[int, ...], expected: str) -> FileError:
    return FileError(f"scores {path.name} have shape {shape}, but the image is {size[0]}x{size[1]} (HxW) and "
                     f"the scores must be {expected}")


def _read_probability_map(path: Path, size: tuple[int, int], logits: bool, channels_last: bool) -> torch.Tensor:
    """float32 [L, H, W] from a .npy file; its header is checked against the image's (H, W) and the file's
    length before the data is read, so a corrupt header cannot make it allocate what it claims."""
    if not path.is_file():
        raise FileError(f"no scores file {path.name} in {str(path.parent)!r}")
    try:
        with open(path, "rb") as handle:
            shape, dtype = _read_npy_header(handle)
            _check_npy_layout(path, shape, dtype, size, channels_last)
            _check_npy_length(handle, shape, dtype)
            handle.seek(0)
            # read_array reads .npy only (np.load would also open .npz and pickles).
            array = np.lib.format.read_array(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise FileError(f"unreadable scores {path.name}: {_one_line(error)}") from None
    if channels_last:
        array = array.transpose(2, 0, 1)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, reported below
        array = np.ascontiguousarray(array, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise FileError(f"scores {path.name} hold {bad} NaN or Inf values (as float32, the CRF's precision)")
    if not logits and (array.min() < 0 or array.max() > 1):
        raise FileError(f"scores {path.name} must be probabilities in [0, 1], got values in "
                        f"[{float(array.min()):.4g}, {float(array.max()):.4g}] (logits? pass --logits)")
    return torch.from_numpy(array)


def _read_npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of a .npy file, leaving ``handle`` at the start of its data."""
    version = np.lib.format.read_magic(handle)
    if version not in NPY_HEADER_READERS:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
    shape, _, dtype = NPY_HEADER_READERS[version](handle)
    return shape, dtype


def _check_npy_layout(path: Path, shape: tuple[int, ...], dtype: np.dtype, size: tuple[int, int],
                      channels_last: bool) -> None:
    if not np.issubdtype(dtype, np.floating):
        raise FileError(f"scores {path.name} must be a float array, got {dtype}")
    labels_first = (shape[2], *shape[:2]) if channels_last and len(shape) == 3 else shape
    if len(labels_first) != 3 or labels_first[1:] != size or labels_first[0] < 1:
        if not channels_last and len(shape) == 3 and shape[:2] == size and shape[2] > 0:
            raise FileError(f"scores {path.name} have shape {shape}: [H, W, L]? pass --channels-last")
        raise _size_mismatch(path, shape, size, "[H, W, L]" if channels_last else "[L, H, W]")


def _check_npy_length(handle: BinaryIO, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a header that promises more data than the file holds (a corrupt or truncated file)."""
    promised = math.prod(shape) * dtype.itemsize
    held = os.fstat(handle.fileno()).st_size - handle.tell()
    if promised > held:
        raise ValueError(f"the header promises {shape} {dtype} ({promised} bytes), but the file holds {held} "
                         "bytes of data")


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
