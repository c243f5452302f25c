"""Atomic file writes, CSV/JSON helpers and run provenance (config, seed, package versions, git hash).

Every file is written to a temporary file in the same directory and moved into place with
:func:`os.replace`, so a crash never leaves a half-written ``config.json``, ``summary.json``, CSV or
checkpoint behind.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "atomic_write_bytes", "atomic_write_text", "write_json", "read_json", "write_csv", "read_csv",
    "package_versions", "git_hash", "provenance", "jsonable",
]


_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def jsonable(obj: Any) -> Any:
    """Recursively convert numpy/torch scalars and arrays to JSON types; non-finite floats become None."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if np is not None and isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if np is not None and isinstance(obj, np.generic):
        obj = obj.item()
    if hasattr(obj, "item") and hasattr(obj, "numel") and obj.numel() == 1:  # torch scalar tensor
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    return str(obj)


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
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


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a result depends on (``"absent"`` when not importable)."""
    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "numpy", "sklearn", "tqdm", "quadsgd", "realnet"):
        try:
            mod = __import__(name)
            out[name] = str(getattr(mod, "__version__", "unknown"))
        except Exception:  # pragma: no cover - optional packages
            out[name] = "absent"
    try:
        import torch
        out["cuda"] = str(torch.version.cuda)
        out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
    except Exception:  # pragma: no cover
        pass
    return out


def git_hash(cwd: str | Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding this package (``"unknown"`` if unavailable);
    a ``+dirty`` suffix marks uncommitted changes to tracked files."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                           timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not h:
        return "unknown"
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        dirty = ""
    return h + ("+dirty" if dirty else "")


def provenance(seed: int | None = None, config: Any = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to know what produced a result: time, command, seed, config, versions, git."""
    import dataclasses
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return jsonable({
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "seed": seed,
        "config": config,
        "versions": package_versions(),
        "git": git_hash(),
        **extra,
    })
