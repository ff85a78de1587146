"""Train the shapes model on the CPU in a few minutes:

    python -m fastseg train --out PATH [--steps N] [--seed S]

trains ``fastseg.shapes_model``'s DeepLabV3+ (MobileNetV2 at width 0.25,
from scratch) on the generated shapes' training split with AdamW, a linear
warmup and a cosine decay of the learning rate, and the cross-entropy of
``fastseg.models.losses``; reports the validation split's mIoU before and
after training, each without and with dense-CRF refinement, and saves the
trained state_dict (float16) at PATH. The embedded checkpoint
(``fastseg/data/shapes_deeplabv3plus.pt``) is this command's output with
the defaults. A run is deterministic given the seed and the number of
threads (PyTorch's CPU kernels split sums by thread).
"""

import argparse
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models.losses import cross_entropy
from .shapes import train_split, validation_split
from .shapes_model import Scores, build_model, evaluate, save_checkpoint


@dataclass(frozen=True)
class TrainingConfig:
    steps: int = 600
    batch_size: int = 8
    image_size: int = 96
    learning_rate: float = 4e-3  # AdamW's peak, reached at the end of the warmup
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    seed: int = 0
    validation_images: int = 64


def learning_rate_factor(step: int, warmup_steps: int, steps: int) -> float:
    """The peak learning rate's multiplier at ``step`` (0-based): a linear
    rise over ``warmup_steps`` (Goyal et al. 2017: large steps on random
    weights and fresh BatchNorm statistics diverge), then a cosine decay to
    0 at ``steps`` (Loshchilov & Hutter 2017, without restarts)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * progress))


def train(model: nn.Module, config: TrainingConfig, log: Callable[[str], None] = print) -> list[float]:
    """Trains ``model`` in place for ``config.steps`` steps on the training
    split (step s takes samples s*batch_size onwards, each seen once);
    returns the loss of every step."""
    data = train_split(config.steps * config.batch_size, config.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, config.warmup_steps, config.steps))
    model.train()
    losses, start = [], time.perf_counter()
    for step in range(config.steps):
        images, labels = data.batch(step * config.batch_size, config.batch_size)
        loss = cross_entropy(model(images)["out"], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0 or step + 1 == config.steps:
            recent = losses[-50:]
            log(f"step {step + 1:>5}/{config.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.perf_counter() - start:.0f} s")
    return losses


def train_and_evaluate(config: TrainingConfig, log: Callable[[str], None] = print) -> tuple[nn.Module, Scores,
                                                                                               Scores]:
    """A model trained from scratch with ``config``, and its validation
    scores before and after training."""
    torch.manual_seed(config.seed)  # the initial weights and the ASPP's dropout
    model = build_model()
    validation = validation_split(config.validation_images, config.image_size)
    before = evaluate(model, validation)
    log(f"before training: mIoU {before.miou:.3f}, with CRF {before.miou_crf:.3f}")
    train(model, config, log)
    after = evaluate(model, validation)
    log(f"after training:  mIoU {after.miou:.3f}, with CRF {after.miou_crf:.3f}")
    return model, before, after


# --- command line ------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 31:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**31), got {text!r}")
    return value


def _checkpoint_path(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder; give the checkpoint file's path")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: the folder {str(path.parent)!r} does not exist")
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainingConfig()
    parser.add_argument("--out", required=True, type=_checkpoint_path,
                        help="where to save the trained state_dict (a .pt file)")
    parser.add_argument("--steps", type=_positive_int, default=defaults.steps,
                        help=f"optimizer steps (default {defaults.steps})")
    parser.add_argument("--seed", type=_seed, default=defaults.seed,
                        help=f"seed of the initial weights and dropout (default {defaults.seed})")
    parser.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size,
                        help=f"images per step (default {defaults.batch_size})")
    parser.add_argument("--image-size", type=_positive_int, default=defaults.image_size,
                        help=f"side of the square training and validation images (default {defaults.image_size})")
    parser.add_argument("--validation-images", type=_positive_int, default=defaults.validation_images,
                        help=f"validation images scored before and after (default {defaults.validation_images})")


def run(args: argparse.Namespace) -> int:
    config = TrainingConfig(steps=args.steps, batch_size=args.batch_size, image_size=args.image_size,
                            warmup_steps=min(TrainingConfig.warmup_steps, args.steps // 10 + 1), seed=args.seed,
                            validation_images=args.validation_images)
    print(f"training the shapes model on the CPU, torch threads: {torch.get_num_threads()}; {config}")
    start = time.perf_counter()
    model, _, _ = train_and_evaluate(config, functools.partial(print, flush=True))  # progress through pipes too
    save_checkpoint(model, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB) after {time.perf_counter() - start:.0f} s")
    return 0
