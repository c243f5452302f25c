"""Files written once for every package: atomic writes, JSON and CSV.

* Atomic writes: every file goes to a temporary file in the same directory (``.NAME.XXXX.tmp``, mode 0666
  less the process umask), is fsynced and moved into place with :func:`os.replace`; the directory is fsynced
  too. A crash never leaves a half-written file; :func:`remove_stale_temps` removes a killed writer's temps.
* JSON: :func:`jsonable` turns numpy / torch scalars and arrays, paths and dataclasses into JSON types;
  non-finite floats become ``null`` (or ``"inf"`` / ``"-inf"`` with ``nonfinite="string"``).
* CSV: :func:`write_csv` (floats in their shortest exact form) and :func:`read_csv` (rows as dicts of str).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "atomic_output", "write_json", "read_json", "write_csv", "read_csv",
    "jsonable", "remove_stale_temps", "TEMP_SUFFIX",
]

#: suffix of the temporary files of atomic writes
TEMP_SUFFIX = ".tmp"


@functools.cache
def _umask() -> int:
    """The process umask, read without changing it where /proc allows (Linux), else by a set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(d: Path) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass


@contextlib.contextmanager
def atomic_output(path: str | Path, fsync: bool = True):
    """Context manager yielding a temporary path beside ``path``; on success it is moved onto ``path``.

    For writers that need a file name (parquet, torch.save): ``with atomic_output(p) as tmp: write(tmp)``.
    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield Path(tmp)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, os.replace)."""
    path = Path(path)
    with atomic_output(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return path


def atomic_write_text(path: str | Path, text: str, fsync: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def remove_stale_temps(directory: str | Path, recursive: bool = False) -> list[Path]:
    """Delete the temporary files (``.NAME.XXXX.tmp``) an interrupted atomic write left in ``directory``.

    Call it only where no other writer is active (e.g. under the directory's lock). Returns what was removed.
    """
    d = Path(directory)
    if not d.is_dir():
        return []
    pattern = f".*{TEMP_SUFFIX}"
    found = d.rglob(pattern) if recursive else d.glob(pattern)
    removed = []
    for p in found:
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def jsonable(obj: Any, nonfinite: str = "null") -> Any:
    """Recursively convert to JSON types: numpy / torch scalars and arrays, paths, dataclasses, tuples.

    Non-finite floats become None (``nonfinite="null"``) or ``"inf"`` / ``"-inf"`` / None for NaN
    (``nonfinite="string"``). Other objects become their ``str``.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v, nonfinite) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, nonfinite) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj), nonfinite)
    if isinstance(obj, Path):
        return str(obj)
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(obj, np.ndarray):
            return jsonable(obj.tolist(), nonfinite)
        if isinstance(obj, np.generic):
            obj = obj.item()
    if hasattr(obj, "item") and hasattr(obj, "numel") and obj.numel() == 1:  # torch scalar tensor
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        if nonfinite == "string" and not math.isnan(obj):
            return "inf" if obj > 0 else "-inf"
        return None
    return str(obj)


def write_json(path: str | Path, obj: Any, nonfinite: str = "null", indent: int = 2) -> Path:
    """Atomic JSON file of ``jsonable(obj)`` (strict JSON: no NaN literals)."""
    return atomic_write_text(path, json.dumps(jsonable(obj, nonfinite), indent=indent, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Parsed JSON; ValueError naming the file when it is corrupt."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt JSON file {str(path)!r}: {e}") from None


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(float(v))  # shortest exact representation; 'nan'/'inf' for non-finite
    if hasattr(v, "item"):
        return _fmt(v.item())
    return str(v)


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence[Any] | dict]) -> Path:
    """Write a CSV atomically. ``rows`` are sequences in ``columns`` order or dicts keyed by column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        if isinstance(r, dict):
            r = [r.get(c) for c in columns]
        w.writerow([_fmt(v) for v in r])
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
