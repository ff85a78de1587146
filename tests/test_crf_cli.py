"""End-to-end tests of ``python -m fastseg crf`` through ``fastseg.__main__.main``.

The scenes are drawn here: three flat colour regions (a band, a field and a
disc) with pixel noise, and scores that a weak network would give them:
the true labels shifted a few pixels sideways, with noise, so that their
argmax is wrong along the region borders. The CRF's bilateral kernel pulls
the labels back onto the colour edges.
"""

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastseg import _crf_cli
from fastseg.__main__ import main

H, W = 40, 56
# Distinct in every channel and in luminance (94, 151, 43), so greyscale copies keep the edges.
COLOURS = np.array([[220, 40, 40], [60, 210, 90], [30, 30, 150]], np.uint8)


def scene(seed: int, height: int = H, width: int = W) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image [H, W, 3] uint8 and its true labels [H, W]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    truth = np.where(x < 0.4 * width, 0, 1)
    truth[(y - 0.5 * height) ** 2 + (x - 0.65 * width) ** 2 < (0.3 * min(height, width)) ** 2] = 2
    image = COLOURS[truth].astype(np.int16) + rng.integers(-8, 9, (height, width, 3))
    return image.clip(0, 255).astype(np.uint8), truth


def noisy_probabilities(truth: np.ndarray, seed: int) -> np.ndarray:
    """float32 [3, H, W] whose argmax is wrong along the borders (and here and there)."""
    rng = np.random.default_rng(seed + 1000)
    logits = 2.0 * np.eye(3)[np.roll(truth, 3, axis=1)].transpose(2, 0, 1) + rng.normal(0, 1, (3, *truth.shape))
    probabilities = np.exp(logits)
    return (probabilities / probabilities.sum(0)).astype(np.float32)


def write_case(root: Path, sizes: dict[str, tuple[int, int]]) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """images/<stem>.png and scores/<stem>.npy for each stem; returns the folders and the true labels."""
    images, scores = root / "images", root / "scores"
    images.mkdir(exist_ok=True)
    scores.mkdir(exist_ok=True)
    truths = {}
    for seed, (stem, size) in enumerate(sizes.items()):
        image, truths[stem] = scene(seed, *size)
        Image.fromarray(image).save(images / f"{stem}.png")
        np.save(scores / f"{stem}.npy", noisy_probabilities(truths[stem], seed))
    return images, scores, truths


def crf(*args, device: str = "cpu") -> int:
    return main(["crf", *map(str, args), "--device", device])


def labels_of(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    return float((labels == truth).mean())


def summary(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def assert_refined(labels: np.ndarray, scores: np.ndarray, truth: np.ndarray) -> None:
    before, after = accuracy(scores.argmax(0), truth), accuracy(labels, truth)
    assert before < 0.9 and after > 0.97, (before, after)


def test_refines_probability_maps_of_any_size(tmp_path, capsys, device):
    images, scores, truths = write_case(tmp_path, {"a": (H, W), "b": (33, 47)})
    assert crf(images, scores, tmp_path / "out", device=device) == 0
    for stem, truth in truths.items():
        label_png = Image.open(tmp_path / "out" / f"{stem}.png")
        assert label_png.mode == "L" and label_png.size == truth.shape[::-1]
        assert_refined(np.asarray(label_png), np.load(scores / f"{stem}.npy"), truth)
    assert summary(capsys).startswith("written 2, skipped 0 (outputs already there), failed 0")
    assert sorted(os.listdir(tmp_path / "out")) == ["a.png", "b.png"]


@pytest.mark.parametrize("suffix, mode", [("jpg", "L"), ("png", "RGBA"), ("bmp", "P"), ("tif", "RGB"),
                                          ("png", "I;16")])
def test_image_formats_and_channel_counts(tmp_path, suffix, mode):
    images, scores, truths = write_case(tmp_path, {"a": (H, W)})
    image = Image.open(images / "a.png")
    (images / "a.png").unlink()
    if mode == "I;16":  # 16-bit images keep their values: the colour std is given in their units
        image, srgb = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257), 13 * 257
    else:
        image, srgb = image.convert(mode), 13
    image.save(images / f"a.{suffix}")
    assert crf(images, scores, tmp_path / "out", "--bilateral-srgb", srgb) == 0
    assert_refined(labels_of(tmp_path / "out" / "a.png"), np.load(scores / "a.npy"), truths["a"])


def test_logits_and_channels_last_give_the_same_labels(tmp_path):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    probabilities = np.load(scores / "a.npy")
    for layout, array in (("logits", np.log(probabilities) + 5), ("hwl", probabilities.transpose(1, 2, 0))):
        (tmp_path / layout).mkdir()
        np.save(tmp_path / layout / "a.npy", array)
    assert crf(images, scores, tmp_path / "plain") == 0
    assert crf(images, tmp_path / "logits", tmp_path / "from_logits", "--logits") == 0
    assert crf(images, tmp_path / "hwl", tmp_path / "from_hwl", "--channels-last", "--save-probabilities") == 0
    expected = labels_of(tmp_path / "plain" / "a.png")
    np.testing.assert_array_equal(labels_of(tmp_path / "from_logits" / "a.png"), expected)
    np.testing.assert_array_equal(labels_of(tmp_path / "from_hwl" / "a.png"), expected)
    assert np.load(tmp_path / "from_hwl" / "a.npy").shape == (H, W, 3)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_probabilities(tmp_path, dtype):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    # The flag takes no value: before the folders it leaves them for the positionals.
    dtype_option = ["--probabilities-dtype", dtype] if dtype == "float16" else []
    assert crf("--save-probabilities", images, scores, tmp_path / "out", *dtype_option) == 0
    refined = np.load(tmp_path / "out" / "a.npy")
    assert refined.shape == (3, H, W) and refined.dtype == dtype
    assert refined.min() >= 0
    np.testing.assert_allclose(refined.astype(np.float64).sum(0), 1, atol=2e-3 if dtype == "float16" else 1e-5)
    np.testing.assert_array_equal(refined.argmax(0), labels_of(tmp_path / "out" / "a.png"))


def noisy_label_image(truth: np.ndarray, seed: int, offset: int = 0) -> np.ndarray:
    """The true labels (plus ``offset``) with 30% of the pixels relabelled at random."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(truth.shape) < 0.3
    return (np.where(wrong, rng.integers(0, 3, truth.shape), truth) + offset).astype(np.uint8)


def test_label_images_are_refined(tmp_path):
    images, _, truths = write_case(tmp_path, {"a": (H, W)})
    (tmp_path / "labels").mkdir()
    noisy = noisy_label_image(truths["a"], 0)
    Image.fromarray(noisy).save(tmp_path / "labels" / "a.png")
    assert crf(images, tmp_path / "labels", tmp_path / "out", "--labels", 3) == 0
    refined = labels_of(tmp_path / "out" / "a.png")
    assert accuracy(noisy, truths["a"]) < 0.85 and accuracy(refined, truths["a"]) > 0.97


@pytest.mark.parametrize("zero_unsure", [False, True])
def test_label_images_follow_pydensecrf_unary_from_labels(tmp_path, zero_unsure):
    """With no iteration the output is the unary's own distribution: gt_prob at
    the given label, the rest shared by the other labels, uniform where unsure."""
    images, _, truths = write_case(tmp_path, {"a": (H, W)})
    (tmp_path / "labels").mkdir()
    values = noisy_label_image(truths["a"], 0, offset=int(zero_unsure))
    if zero_unsure:
        values[:, : W // 4] = 0
    Image.fromarray(values).save(tmp_path / "labels" / "a.png")
    flags = ["--labels", 3, "--gt-prob", 0.7, "--iterations", 0, "--save-probabilities"]
    assert crf(images, tmp_path / "labels", tmp_path / "out", *flags, *["--zero-unsure"] * zero_unsure) == 0
    classes = values.astype(np.int64) - int(zero_unsure)
    expected = np.where(np.arange(3)[:, None, None] == classes, 0.7, 0.15)
    if zero_unsure:
        expected[:, values == 0] = 1 / 3
    np.testing.assert_allclose(np.load(tmp_path / "out" / "a.npy"), expected, atol=1e-6)
    sure = values > 0 if zero_unsure else np.ones_like(values, bool)
    np.testing.assert_array_equal(labels_of(tmp_path / "out" / "a.png")[sure], values[sure])


def test_more_than_256_labels_give_a_16_bit_png(tmp_path):
    images, _, _ = write_case(tmp_path, {"a": (6, 5)})
    winners = np.arange(30).reshape(6, 5) * 10  # up to 290
    probabilities = np.full((300, 6, 5), 0.1 / 299, np.float32)
    np.put_along_axis(probabilities, winners[None], 0.9, axis=0)
    (tmp_path / "many").mkdir()
    np.save(tmp_path / "many" / "a.npy", probabilities)
    assert crf(images, tmp_path / "many", tmp_path / "out", "--iterations", 0) == 0
    label_png = Image.open(tmp_path / "out" / "a.png")
    assert label_png.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(label_png), winners)


def test_rerun_skips_written_outputs(tmp_path, capsys):
    images, scores, _ = write_case(tmp_path, {"a": (H, W), "b": (H, W)})
    out = tmp_path / "out"
    assert crf(images, scores, out) == 0
    capsys.readouterr()
    mtimes = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert crf(images, scores, out) == 0
    assert summary(capsys).startswith("written 0, skipped 2 ")
    assert {path.name: path.stat().st_mtime_ns for path in out.iterdir()} == mtimes
    (out / "b.png").unlink()
    assert crf(images, scores, out) == 0
    assert summary(capsys).startswith("written 1, skipped 1 ")
    assert (out / "a.png").stat().st_mtime_ns == mtimes["a.png"]
    # Asking for an output that is missing makes every image incomplete again.
    assert crf(images, scores, out, "--save-probabilities") == 0
    assert summary(capsys).startswith("written 2, skipped 0 ")


def test_bad_files_are_reported_and_the_rest_written(tmp_path, capsys):
    stems = ("good1", "good2", "mismatch", "nan", "range", "missing", "headerless", "garbled", "twice")
    images, scores, _ = write_case(tmp_path, {stem: (H, W) for stem in stems})
    probabilities = np.load(scores / "nan.npy")
    np.save(scores / "mismatch.npy", probabilities[:, :, :-1])
    probabilities[:, 3, 7] = np.nan
    np.save(scores / "nan.npy", probabilities)
    np.save(scores / "range.npy", np.load(scores / "range.npy") * 2)
    (scores / "missing.npy").unlink()
    (scores / "headerless.npy").write_bytes(np.load(scores / "headerless.npy").tobytes())
    (images / "garbled.png").write_bytes((images / "garbled.png").read_bytes()[:200])  # truncated
    (images / "twice.bmp").write_bytes((images / "twice.png").read_bytes())
    (images / "notanimage.jpg").write_bytes(b"not a JPEG")
    np.save(scores / "notanimage.npy", np.load(scores / "good1.npy"))
    assert crf(images, scores, tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("written 2, skipped 0 (outputs already there), failed 8")
    reasons = {"mismatch.png": "have shape (3, 40, 55), but the image is 40x56", "nan.png": "hold 3 NaN",
               "range.png": "must be probabilities in [0, 1]", "missing.png": "no scores file missing.npy",
               "headerless.png": "unreadable scores headerless.npy", "garbled.png": "unreadable image",
               "twice.bmp": "2 images share the stem 'twice'", "notanimage.jpg": "unreadable image"}
    failures = [line for line in captured.err.splitlines() if "failed " in line]
    assert len(failures) == len(reasons)
    for name, reason in reasons.items():
        assert any(f"failed {name}: " in line and reason in line for line in failures), (name, failures)
    assert sorted(os.listdir(tmp_path / "out")) == ["good1.png", "good2.png"]


def write_float_image(path: Path, image: np.ndarray) -> None:
    """A single-channel float32 TIFF (Pillow mode F) of the image's luminance."""
    Image.fromarray(np.asarray(Image.fromarray(image).convert("L"), np.float32)).save(path)


@pytest.mark.parametrize("nan_pixel, flags, reason, failing", [
    (True, [], "image must be finite", ["a.tif"]),  # one float image holds NaN: the other is refined
    (False, ["--bilateral-srgb", "1e-30"], "features reach", ["a.tif", "b.tif"]),  # beyond the lattice's range
])
def test_inputs_the_crf_refuses_are_reported(tmp_path, capsys, nan_pixel, flags, reason, failing):
    images, scores, _ = write_case(tmp_path, {"a": (H, W), "b": (H, W)})
    for stem in ("a", "b"):
        image = np.asarray(Image.open(images / f"{stem}.png"))
        (images / f"{stem}.png").unlink()
        write_float_image(images / f"{stem}.tif", image)
    if nan_pixel:
        values = np.asarray(Image.open(images / "a.tif")).copy()
        values[5, 9] = np.nan
        Image.fromarray(values).save(images / "a.tif")
    assert crf(images, scores, tmp_path / "out", *flags) == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if "failed " in line]
    assert [line.split(":")[0] for line in failures] == [f"failed {name}" for name in failing]
    assert all(f": the CRF refuses its inputs: {reason}" in line for line in failures), failures
    assert sorted(os.listdir(tmp_path / "out")) == (["b.png"] if nan_pixel else [])


@pytest.mark.parametrize("error", [MemoryError("Unable to allocate 71.3 TiB"), RuntimeError("std::bad_alloc"),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                                "allocate 140737488355328 bytes")])
def test_out_of_memory_fails_that_image_only(tmp_path, capsys, monkeypatch, error):
    images, scores, _ = write_case(tmp_path, {"a": (H, W), "b": (H, W)})
    refine = _crf_cli.dense_crf

    def out_of_memory_once(*args, **kwargs):
        monkeypatch.setattr(_crf_cli, "dense_crf", refine)  # the next image gets the real CRF
        raise error

    monkeypatch.setattr(_crf_cli, "dense_crf", out_of_memory_once)
    assert crf(images, scores, tmp_path / "out") == 1
    assert f"failed a.png: out of memory: {error}" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == ["b.png"]


@pytest.mark.parametrize("error", [TypeError("a bug"), AttributeError("a bug"), RuntimeError("a bug")])
def test_a_bug_is_not_taken_for_a_bad_file(tmp_path, monkeypatch, error):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})

    def buggy(*args, **kwargs):
        raise error

    monkeypatch.setattr(_crf_cli, "dense_crf", buggy)
    with pytest.raises(type(error), match="a bug"):
        crf(images, scores, tmp_path / "out")


def write_npy_header(path: Path, shape: tuple[int, ...], data: bytes) -> None:
    """A .npy file whose header claims ``shape`` (float32) but holds only ``data``."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": shape})
        handle.write(data)


@pytest.mark.parametrize("shape, reason", [
    ((10 ** 12, H, W), "the header promises (1000000000000, 40, 56) float32"),  # 8.9 PB: never allocated
    ((3, H, W), "the header promises (3, 40, 56) float32"),  # truncated
    ((3, H, W + 1), "have shape (3, 40, 57), but the image is 40x56"),  # checked before the data is read
])
def test_npy_header_is_checked_before_the_data_is_read(tmp_path, capsys, shape, reason):
    images, scores, _ = write_case(tmp_path, {"a": (H, W), "b": (H, W)})
    write_npy_header(scores / "a.npy", shape, np.load(scores / "a.npy")[:, :-1].tobytes())
    assert crf(images, scores, tmp_path / "out") == 1
    failures = [line for line in capsys.readouterr().err.splitlines() if "failed " in line]
    assert len(failures) == 1 and failures[0].startswith("failed a.png: ") and reason in failures[0], failures
    assert os.listdir(tmp_path / "out") == ["b.png"]


def test_float64_logits_beyond_float32_are_reported(tmp_path, capsys):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    logits = np.log(np.load(scores / "a.npy")).astype(np.float64)
    logits[0, 2, 3] = 1e300  # finite in float64, Inf in float32, the CRF's precision
    np.save(scores / "a.npy", logits)
    assert crf(images, scores, tmp_path / "out", "--logits") == 1
    assert "failed a.png: scores a.npy hold 1 NaN or Inf values (as float32" in capsys.readouterr().err


def test_labels_out_of_range_are_reported(tmp_path, capsys):
    images, _, truths = write_case(tmp_path, {"a": (H, W)})
    (tmp_path / "labels").mkdir()
    Image.fromarray(truths["a"].astype(np.uint8) + 1).save(tmp_path / "labels" / "a.png")  # 1..3
    assert crf(images, tmp_path / "labels", tmp_path / "out", "--labels", 3) == 1
    assert "holds values in [1, 3]; with --labels 3 they must lie in [0, 2]" in capsys.readouterr().err
    assert crf(images, tmp_path / "labels", tmp_path / "out", "--labels", 3, "--zero-unsure") == 0


def exit_code(*args) -> int:
    with pytest.raises(SystemExit) as exited:
        crf(*args)
    return exited.value.code


@pytest.mark.parametrize("output", ["images", "images/refined", "scores/refined"])
def test_refuses_an_output_folder_in_an_input_folder(tmp_path, capsys, output):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    before = sorted(tmp_path.rglob("*"))
    assert exit_code(images, scores, tmp_path / output) == 2
    assert "outputs must not mix with inputs" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before


def test_refuses_an_output_that_is_an_input_file(tmp_path, capsys):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    out = tmp_path / "out"
    out.mkdir()
    (images / "a.png").rename(out / "a.png")
    (images / "a.png").symlink_to(out / "a.png")
    image_bytes = (out / "a.png").read_bytes()
    assert exit_code(images, scores, out, "--save-probabilities") == 2
    assert "is an input file (or a link to one)" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == image_bytes and os.listdir(out) == ["a.png"]


@pytest.mark.parametrize("interruption", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_no_partial_file_after_a_failed_write(tmp_path, capsys, monkeypatch, interruption):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})

    def save_half_then_fail(image, handle, *args, **kwargs):
        handle.write(b"\x89PNG half an image")
        raise interruption

    monkeypatch.setattr(Image.Image, "save", save_half_then_fail)
    if isinstance(interruption, OSError):
        assert crf(images, scores, tmp_path / "out") == 1
        assert "failed a.png: cannot write a.png: [Errno 28] No space left on device" in capsys.readouterr().err
    else:  # Ctrl-C: one line, no traceback, and the shell's exit code for SIGINT
        assert crf(images, scores, tmp_path / "out") == 130
        assert capsys.readouterr().err.splitlines()[-1] == "interrupted: 0 of 1 written, 0 skipped, 0 failed"
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("args, message", [
    (["--gt-prob", "0.7"], "apply to label images: add --labels N"),
    (["--labels", "3", "--logits"], "apply to .npy probability maps"),
    (["--labels", "1"], "expected an integer >= 2"),
    (["--labels", "3", "--gt-prob", "1"], "expected a number strictly between 0 and 1"),
    (["--iterations", "-1"], "expected an integer >= 0"),
    (["--bilateral-sxy", "0"], "expected a positive number"),
    (["--gaussian-compat", "nan"], "expected a finite number"),
    (["--labels", "65537"], "--labels 65537: label values up to 65536 do not fit a 16-bit PNG"),
    (["--labels", "65536", "--zero-unsure"], "--labels 65536 --zero-unsure: label values up to 65536 do not fit"),
    (["--save-probabilities", "--probabilities-dtype", "float64"], "invalid choice"),
    (["--probabilities-dtype", "float16"], "--probabilities-dtype applies to --save-probabilities"),
    (["--save-probabilities=float16"], "argument --save-probabilities: "),  # no longer takes the dtype
])
def test_usage_errors(tmp_path, capsys, args, message):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    assert exit_code(images, scores, tmp_path / "out", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_usage_errors_about_folders(tmp_path, capsys):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    assert exit_code(tmp_path / "nowhere", scores, tmp_path / "out") == 2
    assert "images folder" in capsys.readouterr().err
    assert exit_code(scores, scores, tmp_path / "out") == 2
    assert "no images (.png .jpg .jpeg .bmp .tif .tiff) in" in capsys.readouterr().err
    assert exit_code(images, images, tmp_path / "out", "--labels", "3") == 2
    assert "label PNGs need a folder of their own" in capsys.readouterr().err


@pytest.mark.parametrize("output, reason", [("afile", "File exists"), ("afile/out", "Not a directory")])
def test_usage_error_when_a_file_is_in_the_output_path(tmp_path, capsys, output, reason):
    images, scores, _ = write_case(tmp_path, {"a": (H, W)})
    (tmp_path / "afile").write_bytes(b"mine")
    assert exit_code(images, scores, tmp_path / output) == 2
    assert f"cannot create the output folder '{tmp_path / output}': {reason}" in capsys.readouterr().err
    assert (tmp_path / "afile").read_bytes() == b"mine"


def test_a_broken_link_is_an_unreadable_image(tmp_path, capsys):
    images, scores, _ = write_case(tmp_path, {"a": (H, W), "b": (H, W)})
    (images / "b.png").unlink()
    (images / "b.png").symlink_to(tmp_path / "nowhere.png")
    assert crf(images, scores, tmp_path / "out") == 1
    captured = capsys.readouterr()
    assert "failed b.png: unreadable image: [Errno 2] No such file or directory" in captured.err
    assert captured.out.startswith("written 1, skipped 0 (outputs already there), failed 1")


def test_scores_without_an_image_are_warned_about(tmp_path, capsys):
    images, scores, _ = write_case(tmp_path, {"a": (H, W), "b": (H, W), "c": (H, W)})
    (images / "b.png").unlink()
    (images / "c.png").unlink()
    assert crf(images, scores, tmp_path / "out") == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [f"warning: 2 file(s) in {str(scores)!r} match no image and are not read: b.npy, c.npy"]


def png_16_bit_rgb(image: np.ndarray) -> bytes:
    """A PNG of [H, W, 3] uint16 at 16 bits per channel, which Pillow cannot write."""
    height, width, _ = image.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in image)  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_a_16_bit_colour_png_is_read_at_8_bits_with_a_warning(tmp_path, capsys):
    images, scores, truths = write_case(tmp_path, {"a": (H, W)})
    (images / "a.png").write_bytes(png_16_bit_rgb(np.asarray(Image.open(images / "a.png")).astype(np.uint16) * 257))
    assert crf(images, scores, tmp_path / "out") == 0  # --bilateral-srgb in 8-bit units, as Pillow reads it
    assert "warning: a.png has 16 bits per channel: read at 8 " in capsys.readouterr().err
    assert_refined(labels_of(tmp_path / "out" / "a.png"), np.load(scores / "a.npy"), truths["a"])


def test_help_from_a_fresh_process():
    done = subprocess.run([sys.executable, "-m", "fastseg", "crf", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    for text in ("IMAGES SCORES OUTPUT", "--labels N", "--zero-unsure", "--save-probabilities",
                 "--probabilities-dtype", "--channels-last", "--bilateral-srgb", "resumable"):
        assert text in done.stdout
