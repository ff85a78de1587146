"""Benchmark the package and report on it:

    python -m fastseg bench [--quick] [--output DIR] [-k EXPR] [-- PYTEST ARGS]
    python -m fastseg bench --report RUN.json [--output DIR]
    python -m fastseg bench --compare OLD.json NEW.json [--output DIR]
    python -m fastseg bench --readme

A run executes the repository's suite (pytest benchmarks/ --benchmark-only;
a clone is needed) and writes <device>-<date>[-N].json, .md and .png to
benchmarks/results/ (or DIR), never overwriting a file. --report makes the
.md and .png of a recorded JSON again; --compare prints the two runs side
by side and exits 1 when a benchmark got slower beyond its noise; --readme
regenerates README.md's results table from benchmarks/results/*.json.

CPU runs are for development: only ratios within one run count.
"""

import argparse
import datetime
import shutil
import sys
import tempfile
from pathlib import Path

from . import chart, compare, readme, report, run
from .records import RunFileError, load_run

LOG_TAIL_LINES = 40


class UsageError(ValueError):
    """Bad arguments or a missing suite: reported by argparse, exit code 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--report", metavar="RUN.json", type=Path,
                        help="write the .md and .png of a recorded run (nothing is run)")
    action.add_argument("--compare", nargs=2, metavar=("OLD.json", "NEW.json"), type=Path,
                        help="compare two recorded runs; exit code 1 when one got slower beyond its noise")
    action.add_argument("--readme", action="store_true",
                        help="regenerate README.md's results table from benchmarks/results/*.json")
    parser.add_argument("--output", metavar="DIR", type=Path, default=None,
                        help="folder for the files written (default: the run's own folder for --report, "
                             "benchmarks/results/ for a run, stdout only for --compare)")
    parser.add_argument("--quick", action="store_true",
                        help=f"the suites' quick shapes and {run.QUICK_BUDGET_S} s of timed calls per benchmark")
    parser.add_argument("-k", dest="keyword", metavar="EXPR", default=None, help="pytest -k selection of the cases")
    parser.add_argument("pytest_args", nargs="*", metavar="PYTEST ARGS",
                        help="more pytest arguments, after --  (e.g. -- --fastseg-device cpu)")


def _output_dir(args, default: Path) -> Path:
    directory = args.output or default
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--output {directory}: not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _print_written(paths) -> None:
    for path in paths:
        print(f"wrote {path}")


def _record(args) -> int:
    root = run.repository_root()
    try:
        run.require_suite(root)
    except run.SuiteMissing as error:
        raise UsageError(str(error)) from error
    chart.require_matplotlib()  # before a long run, not after it
    directory = _output_dir(args, root / "benchmarks" / "results")
    with tempfile.TemporaryDirectory(prefix="fastseg-bench-") as scratch:
        raw, log = Path(scratch) / "run.json", Path(scratch) / "pytest.log"
        code = run.run_suite(root, run.pytest_command(raw, args.quick, args.keyword, args.pytest_args), log)
        if code != 0:
            tail = log.read_text().splitlines()[-LOG_TAIL_LINES:]
            print(f"pytest exited with code {code}; the end of its output:", *tail, sep="\n", file=sys.stderr)
        if not raw.exists():
            raise UsageError("no benchmark ran (nothing selected?), so nothing was recorded"
                             if code == 5 else f"pytest wrote no results (exit code {code})")
        recorded = load_run(raw)
        stem = run.unique_stem(directory, run.device_slug(recorded.machine), datetime.date.today())
        json_path = stem.with_name(stem.name + ".json")
        with raw.open("rb") as source, json_path.open("xb") as target:  # "x": never overwrite
            shutil.copyfileobj(source, target)
    _print_written([json_path, *report.write_report(load_run(json_path), stem)])
    return 0 if code == 0 else 1


def _report(args) -> int:
    recorded = load_run(args.report)
    directory = _output_dir(args, args.report.parent)
    _print_written(report.write_report(recorded, directory / args.report.stem))
    return 0


def _compare(args) -> int:
    old, new = (load_run(path) for path in args.compare)
    comparison = compare.compare(old, new)
    text = compare.markdown(comparison)
    print(text, end="")
    if args.output:
        path = _output_dir(args, args.output) / f"{old.path.stem}-vs-{new.path.stem}.md"
        path.write_text(text)
        print(f"wrote {path}", file=sys.stderr)
    return 1 if comparison.regressions else 0


def _readme(args) -> int:
    root = run.repository_root()
    readme_path = root / "README.md"
    if not readme_path.is_file():
        raise UsageError(f"--readme: no README.md at {root}; run it from a clone")
    changed = readme.update_readme(readme_path, root / "benchmarks" / "results")
    print(f"{'updated' if changed else 'unchanged'}: {readme_path}")
    return 0


def main(args) -> int:
    """The exit code; UsageError for bad arguments (argparse reports it)."""
    selected = [args.report, args.compare, args.readme]
    if any(selected) and (args.quick or args.keyword or args.pytest_args):
        raise UsageError("--quick, -k and pytest arguments select what a run measures; "
                         "--report, --compare and --readme run nothing")
    if args.readme and args.output:
        raise UsageError("--output does not apply to --readme (it writes README.md)")
    try:
        if args.report:
            return _report(args)
        if args.compare:
            return _compare(args)
        if args.readme:
            return _readme(args)
        return _record(args)
    except (RunFileError, readme.ReadmeError, chart.ChartUnavailable) as error:
        raise UsageError(str(error)) from error
