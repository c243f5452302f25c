"""One way to time phases of work: wall-clock and process-CPU seconds per named phase.

``sw = Stopwatch(); with sw.phase("lanczos"): ...`` accumulates both clocks over every block of that name
(``calls`` counts the blocks). ``sw.as_dict()`` is the JSON form written with results
(``{"lanczos": {"wall_s": ..., "cpu_s": ..., "calls": ...}}``) and :meth:`Stopwatch.from_dict` reads it
back. ``cpu_s`` is :func:`time.process_time` (all threads of this process): on a shared machine
``wall_s`` > ``cpu_s`` shows waiting, not work.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator, Mapping

__all__ = ["PhaseTime", "Stopwatch"]


@dataclass
class PhaseTime:
    """Seconds spent in one phase, summed over its blocks."""

    wall_s: float = 0.0  # wall-clock seconds (time.perf_counter)
    cpu_s: float = 0.0  # CPU seconds of this process, all threads (time.process_time)
    calls: int = 0  # number of timed blocks


class Stopwatch:
    """Wall and CPU seconds per named phase (module docstring); phases keep their first-use order."""

    def __init__(self, phases: Mapping[str, PhaseTime] | None = None):
        self.phases: dict[str, PhaseTime] = dict(phases or {})

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseTime]:
        """Time the block as phase ``name`` (also when it raises)."""
        t = self.phases.setdefault(name, PhaseTime())
        w, c = time.perf_counter(), time.process_time()
        try:
            yield t
        finally:
            t.wall_s += time.perf_counter() - w
            t.cpu_s += time.process_time() - c
            t.calls += 1

    def wall(self, name: str) -> float:
        """Wall seconds of phase ``name`` (0 when it never ran)."""
        t = self.phases.get(name)
        return 0.0 if t is None else t.wall_s

    @property
    def total_wall_s(self) -> float:
        return sum(t.wall_s for t in self.phases.values())

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {k: {"wall_s": t.wall_s, "cpu_s": t.cpu_s, "calls": t.calls} for k, t in self.phases.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, float]] | None) -> "Stopwatch":
        return cls({k: PhaseTime(float(v.get("wall_s", 0.0)), float(v.get("cpu_s", 0.0)), int(v.get("calls", 0)))
                    for k, v in (d or {}).items()})

    def __repr__(self) -> str:
        return "Stopwatch(" + ", ".join(f"{k}={t.wall_s:.3g}s" for k, t in self.phases.items()) + ")"
