"""Wall-clock and process-CPU time of the parts of a ``reproduce`` run, written to ``OUT/timings.json``.

The machine running the main job may be shared, so every part records both: ``wall_s`` (what a user waits)
and ``cpu_s`` (:func:`time.process_time`: CPU seconds of this process, all threads; the quick job runs torch on
one thread, so on a quiet machine ``wall_s`` ~ ``cpu_s`` for the real-network parts). Part names:

* ``claim:<id>`` -- one claim, everything it computed in this session (its side-trips when it was the first to
  need them, figures); a claim read back from its part file (resume) records nothing;
* ``training`` -- the realnet trajectory of ``--quick`` / ``--full``; ``regime`` -- the premises' measurement;
* ``sidetrip:<key>`` -- one side-trip (the directory name under ``OUT/sidetrips``), and ``sidetrip:<key>:<part>``
  for the parts a side-trip times itself (e.g. the eq. 13 pairs inside ``divergence``).

A re-run merges its records into the existing file (a part measured again replaces the old record).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from sgdtraj.files import write_json
from sgdtraj.timing import Stopwatch

__all__ = ["timed", "record", "records", "reset", "write", "read"]

_RECORDS: dict[str, dict] = {}


def record(name: str, wall_s: float, cpu_s: float, **extra) -> None:
    """Record part ``name`` (seconds of wall clock and of process CPU)."""
    _RECORDS[name] = dict(wall_s=float(wall_s), cpu_s=float(cpu_s), time=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)


@contextlib.contextmanager
def timed(name: str, **extra):
    """``with timed("training"): ...`` records the block's wall and CPU time (also when it raises)."""
    sw = Stopwatch()
    try:
        with sw.phase(name):
            yield
    finally:
        t = sw.phases[name]
        record(name, t.wall_s, t.cpu_s, **extra)


def records() -> dict[str, dict]:
    return dict(_RECORDS)


def reset() -> None:
    _RECORDS.clear()


def read(out) -> dict[str, dict]:
    """The parts recorded in ``OUT/timings.json`` ({} if none)."""
    p = Path(out) / "timings.json"
    try:
        return dict(json.loads(p.read_text()).get("parts", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def write(out) -> Path:
    """Merge this session's records into ``OUT/timings.json`` (with the load average, when known)."""
    parts = read(out)
    parts.update(_RECORDS)
    try:
        load = [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        load = None
    return write_json(Path(out) / "timings.json", {"parts": parts, "load_average_at_write": load})
