"""Provenance, one schema everywhere: what produced a result.

:func:`provenance` = time, command, host, seed, config, ``versions`` (python and the packages of
:data:`PACKAGES`), ``git`` (commit hash or ``"unknown"``), ``git_dirty`` (uncommitted changes to tracked
files: True / False / None when unknown) and ``platform``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .files import jsonable

__all__ = ["package_versions", "git_info", "environment", "provenance", "PACKAGES"]

#: distributions whose versions are recorded with every result (None when not installed)
PACKAGES = ("sgd-trajectories", "numpy", "scipy", "numba", "matplotlib", "tqdm", "hypothesis", "pandas", "pyarrow",
            "dask", "distributed", "torch", "torchvision", "scikit-learn", "safetensors")


def package_versions() -> dict[str, str | None]:
    """``python`` and the version of every distribution of :data:`PACKAGES` (None when not installed);
    when torch is loaded, its runtime version, ``cuda`` and ``cudnn``."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(torch.__version__)
        out["cuda"] = str(torch.version.cuda)
        try:
            out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"
        except Exception:  # pragma: no cover
            out["cudnn"] = "unknown"
    return out


def git_info(cwd: str | Path | None = None) -> tuple[str, bool | None]:
    """(commit hash of the source tree or ``"unknown"``, uncommitted changes to tracked files or None)."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(cwd), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if r.returncode != 0 or not r.stdout.strip():
            return "unknown", None
        d = subprocess.run(["git", "-C", str(cwd), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip(), (bool(d.stdout.strip()) if d.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def environment() -> dict[str, Any]:
    """``versions``, ``git``, ``git_dirty``, ``platform`` (the reproducibility part of :func:`provenance`)."""
    git, dirty = git_info()
    return {"versions": package_versions(), "git": git, "git_dirty": dirty, "platform": platform.platform()}


def provenance(seed: int | None = None, config: Any = None, **extra: Any) -> dict[str, Any]:
    """Everything needed to know what produced a result: time, command, host, seed, config, versions, git."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    return jsonable({
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "host": socket.gethostname(),
        "seed": seed,
        "config": config,
        **environment(),
        **extra,
    })
