"""The one table `make bench` prints and writes to `bench-results.md`.

Benchmarks add rows as they finish; `conftest.py` renders the table at the end of the session. A row
with a numeric target is judged here (PASS / MISS), never asserted: a timing target missed on a
loaded 2-core machine is a finding to read, not a failing test.

    table.check("Option scoring", "shared prefix vs from scratch, F=5", ratio, at_least=3, fmt="{:.2f}x")
    table.add("Training", "samples/s, ZeRO-2, 2 processes", f"{sps:.0f}")
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

# Sections in the order of the issue, whatever order pytest runs the files in.
AREAS = ("Option scoring", "vCoT task", "Infill cache", "Batched generation", "Training", "Data")
COLUMNS = ("Area", "Measurement", "Result", "Target", "Status", "Note")


@dataclass
class Row:
    area: str
    measurement: str
    result: str
    target: str = ""
    status: str = ""
    note: str = ""

    def cells(self) -> tuple[str, ...]:
        return self.area, self.measurement, self.result, self.target, self.status, self.note


@dataclass
class Table:
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    load_at_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    torch_threads: int | None = None
    """Threads torch ran the benchmarks with (set by conftest)."""

    def add(self, area: str, measurement: str, result: str, note: str = "") -> Row:
        """An informative row (no target)."""
        if area not in AREAS:
            raise ValueError(f"unknown area {area!r}; known: {', '.join(AREAS)}")
        row = Row(area, measurement, result, note=note)
        self.rows.append(row)
        return row

    def check(self, area: str, measurement: str, value: float, *, fmt: str = "{:.2f}",
              at_least: float | None = None, at_most: float | None = None, note: str = "",
              detail: str = "") -> Row:
        """A row judged against `at_least` / `at_most`; `detail` follows the value in the result cell."""
        if (at_least is None) == (at_most is None):
            raise ValueError("give exactly one of at_least / at_most")
        ok = value >= at_least if at_least is not None else value <= at_most
        target = f">= {fmt.format(at_least)}" if at_least is not None else f"<= {fmt.format(at_most)}"
        row = self.add(area, measurement, fmt.format(value) + (f" ({detail})" if detail else ""), note)
        row.target, row.status = target, "PASS" if ok else "MISS"
        return row

    def ordered(self) -> list[Row]:
        return sorted(self.rows, key=lambda r: AREAS.index(r.area))  # stable: insertion order within an area

    def markdown(self) -> str:
        import torch

        rows = [COLUMNS, tuple("---" for _ in COLUMNS)] + [r.cells() for r in self.ordered()]
        body = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in rows)
        minutes = (time.time() - self.started) / 60
        load = lambda t: "/".join(f"{x:.1f}" for x in t)  # noqa: E731
        missed = [r for r in self.rows if r.status == "MISS"]
        return "\n".join([
            "# betweenframes benchmarks (`make bench`)",
            "",
            f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores, {platform.python_version()}, "
            f"torch {torch.__version__} on {self.torch_threads} thread(s), "
            f"load average {load(self.load_at_start)} at start and {load(os.getloadavg())} at the end, "
            f"{minutes:.1f} min in all.",
            "",
            "Ratios compare alternatives measured side by side in this run: the alternatives are interleaved "
            "round by round and a ratio is the median of the per-round ratios. Absolute times are this "
            "machine's, under its load at the time, and are not comparable between runs.",
            "",
            body,
            "",
            f"{sum(r.status == 'PASS' for r in self.rows)} targets met, {len(missed)} missed"
            + (": " + "; ".join(f"{r.area} / {r.measurement}" for r in missed) if missed else "") + ".",
            "",
        ])

    def write(self, path: Path) -> Path:
        path.write_text(self.markdown())
        return path


TABLE = Table()
