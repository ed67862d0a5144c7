"""What every benchmark here shares: timing, results with targets, the machine, the report.

Results are ratios of things measured side by side in the same run, because the machines are
shared and noisy; absolute numbers are printed for context only.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


# -- timing ----------------------------------------------------------------------------------------


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the wall seconds of the block."""
    out: list[float] = []
    start = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - start)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; enough for p10 / p90 of a few hundred runs."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A goal for a ratio: ``value < threshold`` or ``value >= threshold``."""

    op: str
    threshold: float

    def met(self, value: float) -> bool:
        return value < self.threshold if self.op == "<" else value >= self.threshold

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Metric:
    """One measured number. Ratios carry a target; absolute numbers are context."""

    name: str
    value: float | None
    unit: str
    target: Target | None = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        if self.value is None:
            return "n/a"
        return "met" if self.target.met(self.value) else "MISSED"


@dataclass
class CaseResult:
    """The metrics and notes of one benchmark case."""

    key: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: object, **kwargs: object) -> Metric:
        metric = Metric(*args, **kwargs)  # type: ignore[arg-type]
        self.metrics.append(metric)
        return metric


def format_value(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "s":
        return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "x":
        return f"{value:.2f}x" if value < 100 else f"{value:.0f}x"
    if unit == "MiB/s":
        return f"{value:.0f} MiB/s"
    if unit == "":
        return f"{value:,.0f}"
    return f"{value:.3g} {unit}"


def _rows(result: CaseResult) -> list[list[str]]:
    return [
        [
            m.name,
            format_value(m.value, m.unit),
            str(m.target) if m.target else "",
            m.verdict,
            m.detail,
        ]
        for m in result.metrics
    ]


HEADER = ["measurement", "value", "target", "", "detail"]


def render_text(result: CaseResult) -> str:
    """A plain aligned table for the terminal."""
    rows = [HEADER, *_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [f"== {result.title}"]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.extend(f"   note: {n}" for n in result.notes)
    return "\n".join(lines)


def render_markdown(result: CaseResult) -> str:
    lines = [
        "| " + " | ".join(h or "verdict" for h in HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    for row in _rows(result):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    if result.notes:
        lines.append("")
        lines.extend(f"- {n}" for n in result.notes)
    return "\n".join(lines)


# -- the machine -----------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: str | None = None) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip("\n")  # keep leading spaces: `free -h` aligns its header


def machine_info(workdir: str) -> dict[str, str]:
    """Date, CPUs, memory (``free -h``), disk and code version, for the results file."""
    cpu = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", text)
        cpu = found.group(1).strip() if found else ""
    except OSError:
        pass
    repo = str(Path(__file__).resolve().parent.parent)
    commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=repo)
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    usage = shutil.disk_usage(workdir)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": _run(["nproc"]) or str(os.cpu_count()),
        "cpu": cpu or platform.processor(),
        "free -h": _run(["free", "-h"]),
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "disk": f"{workdir} ({usage.free / 2**30:.0f} GiB free of {usage.total / 2**30:.0f} GiB)",
        "python": f"{platform.python_version()} on {platform.platform()}",
        "code": f"{commit}{' + uncommitted changes' if dirty else ''}" if commit else "unknown",
    }


def command_line(module: str, env: Sequence[str] = ()) -> str:
    """The command that is running, as one could type it again (``env``: variables it read)."""
    assignments = [f"{name}={shlex.quote(os.environ[name])}" for name in env if name in os.environ]
    args = [shlex.quote(a) for a in sys.argv[1:]]
    return " ".join([*assignments, f".venv/bin/python -m {module}", *args])


# -- the results file ------------------------------------------------------------------------------


def section_markers(key: str) -> tuple[str, str]:
    return f"<!-- begin {key} -->", f"<!-- end {key} -->"


def write_section(path: Path, key: str, body: str, preamble: str) -> None:
    """Replace the section ``key`` of a markdown file (between its markers), or append it.

    ``preamble`` starts the file when it does not exist yet. Other sections are left alone, so
    running one case does not erase the others' results.
    """
    begin, end = section_markers(key)
    block = f"{begin}\n{body.rstrip()}\n{end}"
    text = path.read_text() if path.exists() else preamble.rstrip() + "\n"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text, count=1)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
