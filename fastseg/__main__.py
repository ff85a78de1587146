"""Command line: ``python -m fastseg info``, ``demo``, ``crf``, ``train`` and ``bench``."""

import argparse
import sys

from fastseg import _crf_cli, train_shapes
from fastseg._bench import cli as bench_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastseg", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="versions, devices and which backends can run here, and why not")
    demo = commands.add_parser("demo", help="SegNet pool/unpool round trip on an embedded image, every backend; "
                               "the embedded shapes model's segmentations, without and with a dense CRF")
    crf = commands.add_parser("crf", help="refine a folder of images' probability maps (or label images) with a "
                              "dense CRF; write label PNGs", description=_crf_cli.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _crf_cli.add_arguments(crf)
    train = commands.add_parser("train", help="train the shapes model (DeepLabV3+, MobileNetV2) on the CPU; "
                                "report mIoU before and after, without and with a dense CRF",
                                description=train_shapes.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_shapes.add_arguments(train)
    bench = commands.add_parser("bench", help="run the benchmark suite (from a clone) and write a Markdown report "
                                "and a chart; or report on, compare, or tabulate recorded runs",
                                description=bench_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_cli.add_arguments(bench)
    for command in (demo, crf):
        command.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is a GPU)")
    args = parser.parse_args(argv)

    import torch

    import fastseg
    from fastseg import _demo, _info

    if args.command == "info":
        print(_info.format_report(fastseg.backends()))
        return 0
    if args.command == "train":
        return train_shapes.run(args)
    if args.command == "bench":
        try:
            return bench_cli.main(args)
        except bench_cli.UsageError as error:
            bench.error(str(error))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to PyTorch")
    if args.command == "crf":
        try:
            return _crf_cli.run(args, device)
        except _crf_cli.UsageError as error:
            crf.error(str(error))
    return 0 if _demo.run(device) else 1


if __name__ == "__main__":
    sys.exit(main())
