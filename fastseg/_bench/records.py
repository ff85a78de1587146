"""A recorded run (pytest-benchmark's JSON) read and checked, and each
fastseg record paired with the baseline it is measured against.

A record is one entry of the JSON's ``benchmarks`` list: ``group``,
``name``, ``stats`` (seconds: median, iqr, ...) and the ``extra_info`` the
suite writes (``implementation``, ``op``, the roofline figures). A fastseg
record of the dense CRF may also hold ``paired_speedup``, the median over
pairs of adjacent calls of pydensecrf's time over fastseg's, and its
quartiles (benchmarks/paired.py); runs recorded before the suite timed
pairs have none.
"""

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# The key under which ``python -m fastseg bench`` adds the skipped cases to
# the JSON (fastseg/_bench/plugin.py): pytest-benchmark records only what ran.
SKIPPED_KEY = "fastseg_skipped"

# The baseline a group's fastseg records are measured against: PyTorch's
# own op, or pydensecrf for the dense CRF (BENCHMARKING.md).
EAGER_IMPLEMENTATIONS = ("torch", "pydensecrf")
BASELINE_IMPLEMENTATIONS = (*EAGER_IMPLEMENTATIONS, "torch.compile")


# The paired speed-up of a dense-CRF record and its quartiles
# (benchmarks/paired.py): ratios, each a positive number where present.
PAIRED_RATIOS = ("paired_speedup", "paired_speedup_p25", "paired_speedup_p75")


class RunFileError(ValueError):
    """A results file that cannot be read as a pytest-benchmark run."""


@dataclass(frozen=True)
class Run:
    """One recorded run: ``machine`` is ``machine_info.fastseg`` (device,
    versions, copy bandwidth, matmul rates); ``benchmarks`` its records
    without the Triton-interpreter ones (``interpreted`` counts those);
    ``skipped`` the (nodeid, reason) of skipped cases, None when the file
    does not say (recorded by plain pytest)."""

    path: Path
    machine: dict
    datetime: str
    benchmarks: list[dict]
    skipped: list[dict] | None
    interpreted: int

    @property
    def device(self) -> str:
        return self.machine.get("device") or "unknown device"


def _record(path: Path, index: int, raw) -> dict:
    where = f"{path}: benchmarks[{index}]"
    if not isinstance(raw, dict):
        raise RunFileError(f"{where} is not an object")
    if not isinstance(raw.get("name"), str):
        raise RunFileError(f"{where} has no name")
    median = raw.get("stats", {}).get("median") if isinstance(raw.get("stats"), dict) else None
    if not isinstance(median, (int, float)) or not math.isfinite(median) or median <= 0:
        raise RunFileError(f"{where} ({raw['name']}) has no positive stats.median")
    info = raw.get("extra_info") or {}
    if not isinstance(info, dict):
        raise RunFileError(f"{where} ({raw['name']}): extra_info is not an object")
    for key in PAIRED_RATIOS:
        ratio = info.get(key)
        if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                                  or not math.isfinite(ratio) or ratio <= 0):
            raise RunFileError(f"{where} ({raw['name']}): extra_info.{key} {ratio!r} is not a positive number")
    # an ungrouped record is a group of its own
    return {**raw, "group": raw.get("group") or raw["name"], "extra_info": info}


def load_run(path) -> Run:
    """The run recorded in ``path``; RunFileError naming the file and the
    entry when it is not pytest-benchmark JSON."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except OSError as error:
        raise RunFileError(f"{path}: cannot read it ({error.strerror or error})") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFileError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("benchmarks"), list):
        raise RunFileError(f"{path}: not pytest-benchmark JSON (no 'benchmarks' list)")
    records = [_record(path, i, raw) for i, raw in enumerate(document["benchmarks"])]
    # Triton interpreter timings are never reported (BENCHMARKING.md).
    kept = [b for b in records if not b["extra_info"].get("triton_interpret")]
    machine = (document.get("machine_info") or {}).get("fastseg") or {}
    skipped = document.get(SKIPPED_KEY)
    return Run(path=path, machine=machine, datetime=str(document.get("datetime", "")), benchmarks=kept,
               skipped=skipped if isinstance(skipped, list) else None, interpreted=len(records) - len(kept))


def skip_summary(skipped: list[dict]) -> list[tuple[int, str]]:
    """(count, reason) of the skipped cases, most frequent first."""
    counts = Counter(str(entry.get("reason", "no reason given")) for entry in skipped)
    return sorted(((n, reason) for reason, n in counts.items()), key=lambda item: (-item[0], item[1]))


def groups(benchmarks) -> dict[str, list[dict]]:
    grouped = {}
    for b in benchmarks:
        grouped.setdefault(b["group"], []).append(b)
    return grouped


def median(record) -> float:
    return record["stats"]["median"]


def eager_baseline(record, members):
    """The group's eager baseline in ``record``'s dtype and layout (like for
    like), else its first eager baseline, else None. A pooling group holds
    one dtype and layout, so one PyTorch record."""
    eager = [b for b in members if b["extra_info"].get("implementation") in EAGER_IMPLEMENTATIONS]
    info = record["extra_info"]
    same = [b for b in eager if (b["extra_info"].get("dtype"), b["extra_info"].get("layout"))
            == (info.get("dtype"), info.get("layout"))]
    return (same or eager or [None])[0]


def fastest_baseline(members):
    """The fastest of the group's PyTorch records (eager in any dtype and
    layout, or torch.compile): the best PyTorch did for this layer."""
    baselines = [b for b in members if b["extra_info"].get("implementation") in BASELINE_IMPLEMENTATIONS]
    return min(baselines, key=median, default=None)


def model_twin(record, members):
    """A model's reference-backend twin in the same group: ``torch`` for
    eager fastseg, ``torch.compile`` for ``fastseg-compile``."""
    variant = record["extra_info"].get("variant", "")
    wanted = "torch.compile" if variant.endswith("compile") else "torch"
    return next((b for b in members if b["extra_info"].get("variant") == wanted), None)


def baseline_label(record) -> str:
    info = record["extra_info"]
    return f"{info['implementation']} {info.get('dtype', '')} {info.get('layout', '')}".strip()


def speedup_text(baseline, seconds: float) -> str:
    return f"{median(baseline) / seconds:.2f}x" if baseline else "not measured"


@dataclass(frozen=True)
class Pairing:
    """A fastseg record and the baseline of its group it is compared with
    (None where the run has none); ``speedup`` is baseline median over
    fastseg median, both from the same run; ``paired_speedup`` the
    record's paired figure, where it has one."""

    record: dict
    baseline: dict | None

    @property
    def speedup(self) -> float | None:
        return median(self.baseline) / median(self.record) if self.baseline else None

    @property
    def paired_speedup(self) -> float | None:
        """The median over paired rounds of the baseline's call time over
        the fastseg call's next to it, where the suite timed pairs (the
        dense CRF against pydensecrf), else None."""
        return self.record["extra_info"].get("paired_speedup")

    @property
    def reported_speedup(self) -> float | None:
        """The paired speed-up where there is one (a slow spell of the
        machine hits both calls of a pair alike), else ``speedup``."""
        return self.speedup if self.paired_speedup is None else self.paired_speedup

    @property
    def label(self) -> str:
        info = self.record["extra_info"]
        return f"{self.record['group']} {info.get('variant', self.record['name'])}"


def pairings(benchmarks) -> list[Pairing]:
    """Every fastseg record beside its baseline: a model's reference twin,
    any other op's eager baseline in the same dtype and layout."""
    paired = []
    for members in groups(benchmarks).values():
        for b in members:
            info = b["extra_info"]
            if info.get("implementation") != "fastseg":
                continue
            choose = model_twin if info.get("op") == "model" else eager_baseline
            paired.append(Pairing(b, choose(b, members)))
    return paired


def roofline_percent(info: dict) -> float | None:
    """The fraction of the roofline a record reached (the tighter of memory
    and compute), else of the copy bandwidth, else None (whole models)."""
    return info.get("pct_of_roofline", info.get("pct_of_copy_bandwidth"))
