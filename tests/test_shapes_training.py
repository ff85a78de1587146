"""The generated shapes dataset, the training example and the embedded
shapes model: deterministic well-formed data, a loss that falls in a few
steps, the shipped checkpoint's strict load and mIoU, the CLI's errors."""

import pytest
import torch

from fastseg.__main__ import main
from fastseg.metrics import confusion_matrix, mean_iou
from fastseg.shapes import CLASSES, MAX_SEED, ShapesDataset, shapes_sample, train_split, validation_split
from fastseg.shapes_model import CHECKPOINT, build_model, evaluate, load_model
from fastseg.train_shapes import TrainingConfig, learning_rate_factor, train

# Measured on the first 32 validation images at 96x96 with the shipped
# checkpoint: mIoU 0.911 without the CRF, 0.990 with it; the floors sit a bit under.
MIOU_FLOOR = 0.88
MIOU_CRF_FLOOR = 0.96


# --- the dataset ---------------------------------------------------------------------------------

def test_samples_are_deterministic_and_well_formed():
    image, labels = shapes_sample(0, 5, 40)
    again, labels_again = shapes_sample(0, 5, 40)
    assert torch.equal(image, again) and torch.equal(labels, labels_again)
    assert image.shape == (3, 40, 40) and image.dtype == torch.float32
    assert labels.shape == (40, 40) and labels.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 1
    assert 0 <= labels.min() and labels.max() < len(CLASSES)


def test_splits_differ_and_cover_every_class():
    train, validation = train_split(8, 48), validation_split(8, 48)
    train_images, train_labels = train.batch(0, 8)
    validation_images, _ = validation.batch(0, 8)
    assert not torch.equal(train_images, validation_images)
    assert not torch.equal(train[0][0], train[1][0])
    assert set(train_labels.unique().tolist()) == set(range(len(CLASSES)))
    assert torch.equal(train[-1][0], train[7][0]) and torch.equal(train.batch(7, 2)[0][1], train[0][0])


@pytest.mark.parametrize("make, match", [
    (lambda: shapes_sample(0, 0, 0), "size must be a positive int"),
    (lambda: shapes_sample(MAX_SEED, 0), "seed must be an int in"),
    (lambda: shapes_sample(0, -1), "index must be an int in"),
    (lambda: ShapesDataset(0), "length must be a positive int"),
    (lambda: ShapesDataset(2, 8, seed=-1), "seed must be an int in"),
], ids=["size", "seed", "index", "length", "dataset-seed"])
def test_bad_dataset_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mean_iou():
    target = torch.tensor([0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0])
    confusion = confusion_matrix(predicted, target, 4)  # class 3: neither true nor predicted, left out
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match=r"labels in \[0, 2\)"):
        confusion_matrix(predicted, target, 2)


# --- training ---------------------------------------------------------------------------------------

def test_learning_rate_warms_up_then_decays_to_zero():
    factors = [learning_rate_factor(step, 10, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(a > b for a, b in zip(factors[10:], factors[11:]))
    assert learning_rate_factor(100, 10, 100) == pytest.approx(0.0)


def test_a_short_run_lowers_the_loss():
    torch.manual_seed(0)
    losses = train(build_model(), TrainingConfig(steps=12, batch_size=4, image_size=48, warmup_steps=2),
                   log=lambda line: None)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


# --- the shipped checkpoint -----------------------------------------------------------------------

def test_checkpoint_is_embedded_small_and_loads_strictly():
    assert CHECKPOINT.is_file() and CHECKPOINT.stat().st_size < 3 * 2**20
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    build_model().load_state_dict(state, strict=True)


def test_checkpoint_segments_the_validation_shapes():
    scores = evaluate(load_model(), validation_split(32))
    assert scores.miou >= MIOU_FLOOR
    assert scores.miou_crf >= MIOU_CRF_FLOOR


# --- the command line -------------------------------------------------------------------------------

def test_train_command_saves_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["train", "--out", str(out), "--steps", "2", "--batch-size", "2", "--image-size", "32",
                 "--validation-images", "2"]) == 0
    assert "before training: mIoU" in capsys.readouterr().out
    load_model(out)


@pytest.mark.parametrize("arguments, message", [
    ([], "the following arguments are required: --out"),
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/missing/model.pt"], "does not exist"),
    (["--out", "{tmp}/model.pt", "--steps", "0"], "--steps: must be a positive integer, got '0'"),
    (["--out", "{tmp}/model.pt", "--batch-size", "two"], "--batch-size: must be a positive integer"),
    (["--out", "{tmp}/model.pt", "--seed", "-1"], "--seed: must be an integer in"),
], ids=["no-out", "out-folder", "out-missing-folder", "steps", "batch-size", "seed"])
def test_train_command_bad_arguments(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *(a.format(tmp=tmp_path) for a in arguments)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
