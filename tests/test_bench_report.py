"""``python -m fastseg bench``: the report, the chart, the comparison and the
README table on small pytest-benchmark documents written here, the naming
and the errors of a run, and one real quick run of a max-pool case.

The documents have the structure of a real run (``machine_info.fastseg``,
records with ``group``, ``name``, ``stats`` and the suite's ``extra_info``);
their medians are chosen so that every expected ratio is exact.
"""

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastseg.__main__ import main
from fastseg._bench import readme, run, tables
from fastseg._bench.records import SKIPPED_KEY, RunFileError, load_run

pytest.importorskip("matplotlib", reason="the bench chart needs matplotlib (pip install matplotlib)")

ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIB = 2**20


def record(group: str, variant: str, implementation: str, median: float, iqr_fraction: float = 0.01,
           **info) -> dict:
    """A pytest-benchmark record of ``median`` seconds whose rounds spread
    over ``iqr_fraction`` of the median."""
    iqr = iqr_fraction * median
    return {
        "group": group, "name": f"test[{variant}-{group.replace(' ', '-')}]",
        "fullname": f"benchmarks/test_x.py::test[{variant}]", "params": None, "param": variant,
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5},
        "stats": {"min": 0.9 * median, "max": 1.2 * median, "mean": median, "stddev": iqr / 1.35,
                  "rounds": 40, "median": median, "iqr": iqr, "q1": median - iqr / 2, "q3": median + iqr / 2,
                  "iterations": 1, "data": [median] * 40},
        "extra_info": {"implementation": implementation, "variant": variant, "triton_interpret": False, **info},
    }


def pool(variant: str, implementation: str, median: float, iqr_fraction: float = 0.01, **info) -> dict:
    shape = [1, 512, 22, 30]
    return record("max_pool2d 1x512x22x30 f32 nchw", variant, implementation, median, iqr_fraction,
                  op="max_pool2d", backend=variant.split("-")[1] if implementation == "fastseg" else "torch",
                  indices="flat", dtype="float32", layout="contiguous", shape=shape, segnet="SegNet 360x480 pool5",
                  gbps=2.0, pct_of_copy_bandwidth=12.5, pct_of_roofline=12.5, **info)


def model(variant: str, median: float, **info) -> dict:
    return record("model deeplabv3plus-mobilenet_v2 256x256 b1", variant,
                  "fastseg" if variant.startswith("fastseg") else variant, median, op="model",
                  model="deeplabv3plus-mobilenet_v2", dtype="float32", layout="contiguous", shape=[1, 3, 256, 256],
                  batch=1, latency_p50_s=median, latency_p99_s=1.5 * median, images_per_s=round(1 / median, 3),
                  **info)


def crf(variant: str, implementation: str, median: float, **info) -> dict:
    """A dense-CRF record of the VOC photo at 5 iterations (CPU)."""
    backend = variant.removeprefix("fastseg-").removesuffix("-fresh")
    return record("dense_crf photo-375x500-L21 it5 b1", variant, implementation, median, op="dense_crf",
                  backend=backend, scene="photo", shape=[375, 500], labels=21, iterations=5, batch=1,
                  dtype="float32", pct_of_copy_bandwidth=20.0, peak_memory_bytes=None, **info)


PAIRED = {"paired_rounds": 5, "paired_baseline_median_s": 0.35, "paired_median_s": 0.1, "paired_speedup": 3.5,
          "paired_speedup_p25": 3.25, "paired_speedup_p75": 3.75}


def document(records: list[dict], device: str = "NVIDIA H100 80GB HBM3", when: str = "2026-11-23T10:00:00+00:00",
             skipped: list[dict] | None = None) -> dict:
    doc = {
        "machine_info": {"node": "gpu-1", "fastseg": {
            "device": device, "device_type": "cpu" if "threads" in device else "cuda", "torch": "2.13.0",
            "triton": "3.9.0", "cuda_runtime": "13.0", "cudnn": 91000, "fastseg": "0.1.0",
            "triton_interpret": False, "copy_bandwidth_gbps": 2890.5, "matmul_tflops": {"bfloat16": 712.4},
            "last_level_cache_bytes": 52428800, "compile_mode": "max-autotune"}},
        "commit_info": {}, "benchmarks": records, "datetime": when, "version": "5.2.3",
    }
    if skipped is not None:
        doc[SKIPPED_KEY] = skipped
    return doc


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def a_run() -> dict:
    """Pooling (2x and 0.5x against PyTorch), a model (1.5x over its
    eager twin, 1.25x over its compiled one), an interpreter record and
    three skipped cases with two reasons."""
    return document([
        pool("torch", "torch", 2e-3),
        pool("fastseg-triton-flat", "fastseg", 1e-3, peak_memory_bytes=64 * MIB),
        pool("fastseg-reference-flat", "fastseg", 4e-3),
        pool("fastseg-interpreted-flat", "fastseg", 9.0, triton_interpret=True),
        model("torch", 30e-3), model("torch.compile", 25e-3),
        model("fastseg", 20e-3), model("fastseg-compile", 20e-3),
    ], skipped=[{"nodeid": "a", "reason": "pip install pydensecrf2"},
                {"nodeid": "b", "reason": "triton: needs a CUDA GPU"},
                {"nodeid": "c", "reason": "triton: needs a CUDA GPU"}])


def table_row(markdown: str, *cells: str) -> str:
    """The one table row holding every one of ``cells``."""
    rows = [line for line in markdown.splitlines() if line.startswith("|") and all(c in line for c in cells)]
    assert len(rows) == 1, f"rows with {cells}: {rows}"
    return rows[0]


def bench(*argv) -> int:
    return main(["bench", *map(str, argv)])


# --- the report and the chart --------------------------------------------------------------------

def test_report_tables_speedups_memory_and_skips(tmp_path, capsys):
    path = write(tmp_path / "nvidia-h100-2026-11-23.json", a_run())
    assert bench("--report", path) == 0
    text = (tmp_path / "nvidia-h100-2026-11-23.md").read_text()

    assert "# Benchmarks on NVIDIA H100 80GB HBM3" in text
    assert "torch 2.13.0, Triton 3.9.0, CUDA runtime 13.0, cuDNN 91000, fastseg 0.1.0" in text
    assert "2890.5 GB/s" in text and "bfloat16 712.4 TFLOP/s" in text and "2026-11-23T10:00" in text
    # speed-ups from the medians; peak memory where the record has it
    triton = table_row(text, "triton, flat")
    assert "| 2.000 | 1.000 | 2.00x |" in triton and triton.endswith("| 64 |")
    reference = table_row(text, "reference, flat")
    assert "| 2.000 | 4.000 | 0.50x |" in reference and reference.endswith("| — |")
    # each model against its own twin: eager 30/20 ms, compiled 25/20 ms
    assert "| torch | 33.33 | 1.50x |" in table_row(text, "1x3x256x256 | fastseg |")
    assert "| 20.00 | 30.00 | 50.00 | torch.compile | 40.00 | 1.25x |" in table_row(text, "| fastseg-compile |")
    # the interpreter's record is left out and counted
    assert "interpreted" not in text and "1 records timed under Triton's interpreter were left out" in text
    skipped = text[text.index("## Not measured in this run"):]
    assert "- 2 cases: triton: needs a CUDA GPU" in skipped and "- 1 case: pip install pydensecrf2" in skipped


def test_report_without_skip_list_or_baseline(tmp_path):
    path = write(tmp_path / "run.json", document([pool("fastseg-triton-flat", "fastseg", 1e-3)]))
    assert bench("--report", path) == 0
    text = (tmp_path / "run.md").read_text()
    assert "| not measured | 1.000 | not measured |" in table_row(text, "triton, flat")
    assert "does not list skipped cases" in text


def test_crf_table_paired_speedup(tmp_path):
    """pydensecrf 320 ms, fastseg's C++ 80 ms (4x from the two medians) with
    paired rounds at 3.5x; the reference backend has none (not measured),
    nor has any record of a run recorded before the pairs."""
    cpu = "AMD EPYC (2 threads)"
    path = write(tmp_path / "crf.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                                  crf("fastseg-cpp", "fastseg", 0.08, **PAIRED),
                                                  crf("fastseg-reference", "fastseg", 1.6)], device=cpu))
    assert bench("--report", path) == 0
    text = (tmp_path / "crf.md").read_text()
    assert "| speed-up | paired speed-up | images/s |" in text
    assert "| cpp | 320.0 | 80.0 | 4.00x | 3.50x (3.25–3.75x) | 12.5 | 20.0 | — |" in table_row(text, "| cpp |")
    assert "| reference | 320.0 | 1600.0 | 0.20x | not measured | 0.6 |" in table_row(text, "| reference |")
    assert "Paired speed-up (dense CRF)" in text

    fresh = crf("fastseg-cpp-fresh", "fastseg", 0.1, fresh_lattices=True, **PAIRED)
    path = write(tmp_path / "fresh.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                                    crf("fastseg-cpp", "fastseg", 0.08, fresh_lattices=False),
                                                    fresh], device=cpu))
    assert bench("--report", path) == 0
    text = (tmp_path / "fresh.md").read_text()
    assert "| cpp, lattices built each call | 320.0 | 100.0 | 3.20x | 3.50x" in text
    assert "| cpp, spatial lattice kept | 320.0 | 80.0 | 4.00x |" in text

    old = write(tmp_path / "old.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                                 crf("fastseg-cpp", "fastseg", 0.08)], device=cpu))
    assert bench("--report", old) == 0
    assert "| 4.00x | not measured | 12.5 |" in table_row((tmp_path / "old.md").read_text(), "| cpp |")

    # null figures (JSON's null) are figures not measured, as an absent key
    nulls = write(tmp_path / "nulls.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                                     crf("fastseg-cpp", "fastseg", 0.08, paired_speedup=None,
                                                         paired_speedup_p25=None, paired_speedup_p75=None)],
                                                    device=cpu))
    assert bench("--report", nulls) == 0
    assert "| 4.00x | not measured | 12.5 |" in table_row((tmp_path / "nulls.md").read_text(), "| cpp |")


def test_summary_lines_show_paired_speedup_where_recorded():
    lines = tables.summary_lines([crf("pydensecrf", "pydensecrf", 0.32), crf("fastseg-cpp", "fastseg", 0.08, **PAIRED)])
    assert lines[0].split()[-1] == "paired"
    assert lines[1].split()[-2:] == ["1.00x", "-"] and lines[2].split()[-2:] == ["4.00x", "3.50x"]
    assert "paired" not in tables.summary_lines([crf("fastseg-cpp", "fastseg", 0.08)])[0]


@pytest.mark.parametrize("key, value", [("paired_speedup", "fast"), ("paired_speedup_p25", -1.0),
                                        ("paired_speedup_p75", float("nan"))])
def test_a_malformed_paired_speedup_is_rejected(tmp_path, key, value):
    path = write(tmp_path / "bad.json", document([crf("fastseg-cpp", "fastseg", 0.08, **{**PAIRED, key: value})]))
    with pytest.raises(RunFileError, match=f"{key} {value!r} is not a positive number"):
        load_run(path)


def test_chart_is_a_png(tmp_path):
    path = write(tmp_path / "run.json", a_run())
    out = tmp_path / "out"
    assert bench("--report", path, "--output", out) == 0
    png = (out / "run.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 5000
    # more rows, a taller image (its height is sized from the row count)
    many = document([pool("torch", "torch", 2e-3)] + [pool(f"fastseg-b{i}-flat", "fastseg", 1e-3) for i in range(40)])
    bench("--report", write(tmp_path / "many.json", many), "--output", out)
    assert png_height(out / "many.png") > 2 * png_height(out / "run.png")


def png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # IHDR: width at 16, height at 20


# --- the comparison ------------------------------------------------------------------------------

def compare_runs(tmp_path, factor: float, iqr_fraction: float) -> tuple[int, str]:
    old = write(tmp_path / "old.json", document([pool("torch", "torch", 2e-3, iqr_fraction),
                                                 pool("fastseg-triton-flat", "fastseg", 1e-3, iqr_fraction)]))
    new = write(tmp_path / "new.json", document([pool("torch", "torch", 2e-3, iqr_fraction),
                                                 pool("fastseg-triton-flat", "fastseg", factor * 1e-3, iqr_fraction)]))
    return bench("--compare", old, new, "--output", tmp_path / "cmp"), (tmp_path / "cmp" / "old-vs-new.md").read_text()


def test_compare_flags_a_30_percent_slowdown(tmp_path, capsys):
    code, text = compare_runs(tmp_path, 1.3, iqr_fraction=0.01)
    assert code == 1
    assert "| 1.000 | 1.300 | 1.300 | ±5.0% | **slower** |" in table_row(text, "fastseg-triton-flat")
    assert "within noise" in table_row(text, "[torch-")
    assert "max(5%, 1 × combined noise)" in text and "1 of 2 benchmarks slower" in text
    assert text == capsys.readouterr().out  # the same Markdown on stdout


def test_compare_within_noise(tmp_path):
    code, text = compare_runs(tmp_path, 1.02, iqr_fraction=0.01)
    assert code == 0 and "within noise" in table_row(text, "fastseg-triton-flat")
    # 30% slower, but the rounds spread over 40% of the median in both runs
    code, text = compare_runs(tmp_path, 1.3, iqr_fraction=0.4)
    assert code == 0 and "±56.6% | within noise |" in table_row(text, "fastseg-triton-flat")


def test_compare_faster_and_unmatched(tmp_path):
    old = write(tmp_path / "old.json",
                document([pool("torch", "torch", 2e-3), pool("fastseg-a-flat", "fastseg", 1e-3)]))
    new = write(tmp_path / "new.json", document([pool("torch", "torch", 1e-3), pool("fastseg-b-flat", "fastseg", 1e-3)],
                                                device="AMD EPYC (2 threads)"))
    assert bench("--compare", old, new, "--output", tmp_path) == 0  # faster is no regression
    text = (tmp_path / "old-vs-new.md").read_text()
    assert "| 2.000 | 1.000 | 0.500 | ±5.0% | faster |" in table_row(text, "[torch-")
    assert "Only in the old run: `max_pool2d 1x512x22x30 f32 nchw test[fastseg-a-flat" in text
    assert "Only in the new run: `max_pool2d 1x512x22x30 f32 nchw test[fastseg-b-flat" in text
    assert "different devices" in text


# --- a run: naming, arguments, errors ---------------------------------------------------------------

def test_device_slug():
    assert run.device_slug({"device": "NVIDIA H100 80GB HBM3"}) == "nvidia-h100-80gb-hbm3"
    assert run.device_slug({"device": "AMD EPYC 7R13 Processor (2 threads)"}) == "amd-epyc-7r13-processor"


@pytest.fixture
def fake_clone(tmp_path, monkeypatch):
    """A clone whose suite run writes a_run() instead of measuring;
    the pytest commands it was given are collected in the list returned."""
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "conftest.py").write_text("")
    commands = []

    def run_suite(root, command, log):
        commands.append(command)
        json_path = next(arg.split("=", 1)[1] for arg in command if arg.startswith("--benchmark-json="))
        write(Path(json_path), a_run())
        return 0

    monkeypatch.setattr(run, "repository_root", lambda: tmp_path)
    monkeypatch.setattr(run, "run_suite", run_suite)
    return commands


def test_run_names_files_and_never_overwrites(fake_clone, tmp_path, capsys):
    results = tmp_path / "benchmarks" / "results"
    today = datetime.date.today().isoformat()
    assert bench("--quick", "-k", "max_pool2d", "--", "--fastseg-device", "cpu") == 0
    first = results / f"nvidia-h100-80gb-hbm3-{today}"
    assert all(Path(f"{first}{suffix}").exists() for suffix in (".json", ".md", ".png"))
    before = Path(f"{first}.json").read_bytes()
    assert bench() == 0
    second = results / f"nvidia-h100-80gb-hbm3-{today}-2"
    assert all(Path(f"{second}{suffix}").exists() for suffix in (".json", ".md", ".png"))
    assert Path(f"{first}.json").read_bytes() == before
    assert len(load_run(f"{second}.json").skipped) == 3  # the skipped cases travel in the JSON
    assert f"wrote {second}.png" in capsys.readouterr().out

    quick, plain = fake_clone
    assert quick[quick.index("--fastseg-shapes") + 1] == "quick" and quick[quick.index("-k") + 1] == "max_pool2d"
    assert quick[-2:] == ["--fastseg-device", "cpu"] and "benchmarks/" in quick and "--benchmark-only" in quick
    assert "--fastseg-shapes" not in plain and "-k" not in plain


def test_unique_stem_counts_up(tmp_path):
    day = datetime.date(2026, 11, 23)
    assert run.unique_stem(tmp_path, "gpu", day).name == "gpu-2026-11-23"
    (tmp_path / "gpu-2026-11-23.png").write_bytes(b"")  # any of the three files takes the name
    (tmp_path / "gpu-2026-11-23-2.md").write_text("")
    assert run.unique_stem(tmp_path, "gpu", day).name == "gpu-2026-11-23-3"


def test_run_without_benchmarks_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "repository_root", lambda: tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        bench("--quick")
    assert exit_info.value.code == 2
    assert "run it from a clone" in capsys.readouterr().err.lower()


def test_malformed_json(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    no_median = write(tmp_path / "no_median.json", document([{"group": "g", "name": "t", "stats": {}}]))
    for path, message in ((bad, "not valid JSON"), (no_median, "benchmarks[0] (t) has no positive stats.median"),
                          (tmp_path / "missing.json", "cannot read it")):
        with pytest.raises(SystemExit) as exit_info:
            bench("--report", path)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and path.name in err


def test_report_rejects_run_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench("--report", write(tmp_path / "run.json", a_run()), "--quick")
    assert exit_info.value.code == 2 and "run nothing" in capsys.readouterr().err


# --- the README table ----------------------------------------------------------------------------

def test_readme_table(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    page = tmp_path / "README.md"
    page.write_text(f"# x\n\n## Results\n\n{readme.START}\nold text\n{readme.END}\n\nafter\n")
    assert readme.update_readme(page, results)
    text = page.read_text()
    assert "not measured" in text and "old text" not in text and text.endswith(f"{readme.END}\n\nafter\n")

    # two runs of one GPU (the later one counts), a model on the GPU, and a CPU
    # run whose fastseg records run no fastseg kernel: the reference backend,
    # a model on the CPU (the reference twin's convs)
    write(results / "gpu-old.json", document([pool("torch", "torch", 2e-3), pool("fastseg-t-flat", "fastseg", 2e-3)],
                                             when="2026-11-01T00:00:00"))
    write(results / "gpu-new.json", document([pool("torch", "torch", 3e-3), pool("fastseg-t-flat", "fastseg", 1e-3),
                                              pool("fastseg-r-flat", "fastseg", 2e-3)], when="2026-11-23T00:00:00"))
    write(results / "gpu-model.json", document([model("torch", 30e-3), model("fastseg", 10e-3)],
                                               when="2026-11-24T00:00:00"))
    write(results / "cpu.json", document([model("torch", 30e-3), model("fastseg", 20e-3), pool("torch", "torch", 4e-3),
                                          pool("fastseg-reference-flat", "fastseg", 2e-3)],
                                         device="AMD EPYC (2 threads)"))
    readme.update_readme(page, results)
    text = page.read_text()
    assert "| NVIDIA H100 80GB HBM3 (cuda) | max_pool2d | 1 | 3.00x (3.00–3.00x) | 12.5% | [gpu-new.json]" in text
    assert "| NVIDIA H100 80GB HBM3 (cuda) | model | 1 | 3.00x (3.00–3.00x) | — | [gpu-model.json]" in text
    assert "AMD EPYC" not in text and "cpu.json" not in text
    assert "gpu-old.json" not in text and "not measured" not in text

    page.write_text("no markers\n")
    with pytest.raises(readme.ReadmeError, match="bench-results:start"):
        readme.update_readme(page, results)


def test_readme_table_prefers_the_paired_speedup(tmp_path):
    """A CRF run with paired rounds: the group's speed-up is the paired one
    (3.5x, not the medians' 4x) and the legend says so; without pairs the
    medians' ratio and the legend of before."""
    cpu = "AMD EPYC (2 threads)"
    results = tmp_path / "results"
    results.mkdir()
    write(results / "cpu-crf.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                              crf("fastseg-cpp", "fastseg", 0.08, **PAIRED)], device=cpu))
    text = readme.results_table(results)
    assert "| AMD EPYC (2 threads) (cpu) | dense_crf | 1 | 3.50x (3.50–3.50x) | 20.0% | [cpu-crf.json]" in text
    assert ("same run or, for dense_crf in runs that timed paired rounds, the median over those rounds of a "
            "baseline call's time over that of the fastseg call next to it on the same inputs") in text

    write(results / "cpu-crf.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                              crf("fastseg-cpp", "fastseg", 0.08)], device=cpu))
    text = readme.results_table(results)
    assert "| dense_crf | 1 | 4.00x (4.00–4.00x) |" in text
    assert "paired" not in text and "in the same run, for the fastest fastseg variant" in text
    assert "spatial kernel's lattice" not in text  # a run from before the lattice was kept says nothing of it


def test_readme_table_says_where_the_spatial_lattice_was_kept(tmp_path):
    """A CRF run whose records say whether the spatial lattice was kept: the
    legend says the dense_crf rows are of a stream of same-size images."""
    results = tmp_path / "results"
    results.mkdir()
    write(results / "cpu-crf.json", document([crf("pydensecrf", "pydensecrf", 0.32),
                                              crf("fastseg-cpp", "fastseg", 0.08, fresh_lattices=False),
                                              crf("fastseg-cpp-fresh", "fastseg", 0.1, fresh_lattices=True)],
                                             device="AMD EPYC (2 threads)"))
    text = readme.results_table(results)
    assert ("For dense_crf, the calls after the first on images of one size reuse the spatial kernel's lattice "
            "(kept between calls, as for a stream of same-size images)") in text
    assert "| dense_crf | 1 | 4.00x (4.00–4.00x) |" in text  # the faster variant: the kept lattice's


def test_repository_readme_is_generated():
    """The README's results table is what --readme makes of benchmarks/results/."""
    text = (ROOT / "README.md").read_text()
    generated = text.split(readme.START + "\n", 1)[1].split(readme.END, 1)[0]
    assert generated == readme.results_table(ROOT / "benchmarks" / "results")


# --- a real run ------------------------------------------------------------------------------------

def test_quick_run_end_to_end(tmp_path):
    """One max-pool shape on the CPU: PyTorch, fastseg's reference backend,
    and its triton backend (skipped on the CPU)."""
    # This process has TRITON_INTERPRET=1 (tests/conftest.py); the run must leave
    # it out of the suite's environment, or every record would be dropped.
    selection = "test_max_pool2d and b1-512x22x30-f32-nchw and not unpool and not compact"
    done = subprocess.run([sys.executable, "-m", "fastseg", "bench", "--quick", "--output", str(tmp_path),
                           "-k", selection, "--", "--fastseg-device", "cpu"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stem = re.search(r"wrote (\S+)\.json", done.stdout).group(1)
    recorded = load_run(stem + ".json")
    medians = {b["extra_info"]["variant"]: b["stats"]["median"] for b in recorded.benchmarks}
    assert set(medians) == {"torch", "fastseg-reference-flat"}
    text = Path(stem + ".md").read_text()
    assert f"{medians['torch'] / medians['fastseg-reference-flat']:.2f}x" in table_row(text, "reference, flat")
    assert "- 1 case: triton on cpu: benchmarked on CUDA only" in text and "A CPU run is for development" in text
    assert Path(stem + ".png").read_bytes().startswith(PNG_SIGNATURE)
    assert "3/3" in done.stderr  # the progress bar over the three selected cases, on stderr
